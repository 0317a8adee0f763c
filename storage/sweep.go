package storage

import (
	"fmt"

	"github.com/dgraph-io/badger/v4"
)

// Badger's value-log GC can bring a deleted message key back. Its rewrite
// of a file looks each entry up at the entry's own version, so it does not
// see a newer tombstone, and writes the value back under that old version
// at the top of the tree. While the tombstone lives the key stays deleted;
// once a compaction drops the tombstone at the last level, with the
// rewritten copy still above it, the key is live again (the class of
// dgraph-io/badger#2143; #2310 closed only the window during a rewrite).
// TestPropertyStoreMatchesModel saw it under load: a message key below a
// partition's first offset after a retention trim and a GC.
//
// Such a key is never read: reads, retention, dedup expiry and exports
// start at first. It would only hold its disk space for ever, trims never
// walking below first. So every GC run is followed by a sweep that deletes
// the live message keys below each partition's first offset, a bounded
// number of keys walked per partition and run, resuming where the last run
// stopped and starting over once it reaches first.

// sweepLimit bounds the keys (tombstones included) one sweep walks in one
// partition, so a partition with many recent trims is swept over several
// runs.
const sweepLimit = 10000

// sweepPartitions sweeps every partition once, unless the store refuses
// writes.
func (s *Store) sweepPartitions() {
	if s.guard.admit(writeFree, 0) != nil {
		return
	}
	s.topicsMu.RLock()
	var parts []*Partition
	for _, h := range s.topics {
		parts = append(parts, h.partitions...)
	}
	s.topicsMu.RUnlock()
	swept := 0
	for _, p := range parts {
		if s.isClosing() {
			return
		}
		n, err := s.sweep(p, sweepLimit)
		if err != nil {
			s.log.Warn("sweep of message keys below the first offset", "topic", p.topic, "partition", p.part, "err", err)
			continue
		}
		swept += n
	}
	if swept > 0 {
		s.log.Info("deleted message keys the value-log GC brought back below their partition's first offset", "keys", swept)
	}
}

// sweep deletes the live message keys of p below its first offset, walking
// at most limit keys from where the last sweep stopped, and returns how
// many it deleted. Nothing else writes below first (trims delete from
// first up and then raise it; appends write at head), so the sweep needs
// no part in the writer; a key it deletes twice is harmless.
func (s *Store) sweep(p *Partition, limit int) (int, error) {
	first := p.visible.Load().first
	from := p.sweptTo.Load()
	if from >= first {
		from = 0
	}
	var dead [][]byte
	next := first
	err := s.db.View(func(txn *badger.Txn) error {
		opts := badger.DefaultIteratorOptions
		opts.PrefetchValues = false
		opts.AllVersions = true // tombstones too, so the walk is bounded
		opts.Prefix = partitionPrefix(kindMessage, p.tid, p.part)
		it := txn.NewIterator(opts)
		defer it.Close()
		var last []byte
		walked := 0
		for it.Seek(messageSeekKey(p.tid, p.part, from)); it.Valid(); it.Next() {
			item := it.Item()
			info, err := decodeMessageKey(item.Key())
			if err != nil {
				return err
			}
			if info.offset >= first {
				return nil
			}
			if walked == limit {
				next = info.offset
				return nil
			}
			walked++
			if last != nil && string(item.Key()) == string(last) {
				continue // an older version: the newest decides
			}
			last = item.KeyCopy(last[:0])
			if !item.IsDeletedOrExpired() {
				dead = append(dead, item.KeyCopy(nil))
			}
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	if err := s.deleteKeys(dead); err != nil {
		return 0, err
	}
	p.sweptTo.Store(next)
	return len(dead), nil
}

// deleteKeys deletes keys in one write batch.
func (s *Store) deleteKeys(keys [][]byte) error {
	if len(keys) == 0 {
		return nil
	}
	wb := s.db.NewWriteBatch()
	defer wb.Cancel()
	for _, k := range keys {
		if err := wb.Delete(k); err != nil {
			return fmt.Errorf("delete key %x: %w", k, err)
		}
	}
	return wb.Flush()
}
