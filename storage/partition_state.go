package storage

import (
	"errors"
	"fmt"
	"time"

	"github.com/dgraph-io/badger/v4"
)

// commandKind says what a command asks of a partition.
type commandKind uint8

const (
	cmdAppend      commandKind = iota + 1 // store msgs, dedup by id
	cmdTrim                               // delete messages below trimTo
	cmdExpireDedup                        // forget ids published more than dedupWindow ago
)

// command is one input to a partition's state machine. Everything apply
// needs is in the command or the state, never read from a clock or a
// config: replaying the same commands with the same times gives the same
// offsets and dedup decisions (the seam for replication).
type command struct {
	kind        commandKind
	msgs        []Message     // cmdAppend
	dedupWindow time.Duration // cmdAppend, cmdExpireDedup
	trimTo      uint64        // cmdTrim: first offset to keep
	limit       int           // cmdTrim, cmdExpireDedup: most keys to delete
	size        int           // cmdAppend: record bytes, for group sizing
}

// result is apply's answer to one command.
type result struct {
	appended []AppendResult // cmdAppend: one per message
	deleted  int            // cmdTrim, cmdExpireDedup: entries removed
	more     bool           // cmdTrim, cmdExpireDedup: limit reached, call again
}

// AppendResult says where one appended message is.
type AppendResult struct {
	Offset    uint64 // offset of the message, or of the original if Duplicate
	Duplicate bool   // the id was seen within the dedup window; nothing was stored
}

// partitionState is the state of one partition's write path. It is owned by
// the partition's writer goroutine (or, in a cluster, by the Raft apply loop).
type partitionState struct {
	tid, part uint32
	meta      partitionMeta
}

// apply runs cmds against txn and returns one result per command and the
// state after them. It is deterministic: the same state, commands and now
// give the same writes and results. It reads no clock and starts no
// goroutine; on error the caller discards txn and keeps the old state.
func (s partitionState) apply(txn *badger.Txn, cmds []*command, now time.Time) (partitionState, []result, error) {
	results := make([]result, len(cmds))
	for i, c := range cmds {
		var err error
		switch c.kind {
		case cmdAppend:
			results[i].appended, err = s.append(txn, c, now)
		case cmdTrim:
			results[i].deleted, results[i].more, err = s.trim(txn, c.trimTo, c.limit)
		case cmdExpireDedup:
			results[i].deleted, results[i].more, err = s.expireDedup(txn, now, c.dedupWindow, c.limit)
		default:
			err = fmt.Errorf("command kind %d: %w", c.kind, ErrCorrupt)
		}
		if err != nil {
			return s, nil, err
		}
	}
	if err := txn.Set(partitionKey(s.tid, s.part), s.meta.encode()); err != nil {
		return s, nil, fmt.Errorf("set partition meta: %w", err)
	}
	return s, results, nil
}

// append stores c.msgs at the head. A message whose id was stored within the
// dedup window is not stored again; its result names the original offset.
// Publish times never go back, even if the clock does, so offset order is
// time order (expiry and age retention rely on it).
func (s *partitionState) append(txn *badger.Txn, c *command, now time.Time) ([]AppendResult, error) {
	t := now.UTC()
	if t.Before(s.meta.lastTime) {
		t = s.meta.lastTime
	}
	res := make([]AppendResult, len(c.msgs))
	for i := range c.msgs {
		m := &c.msgs[i]
		if m.ID != "" {
			dup, off, err := s.lookupID(txn, m.ID, t, c.dedupWindow)
			if err != nil {
				return nil, err
			}
			if dup {
				res[i] = AppendResult{Offset: off, Duplicate: true}
				continue
			}
		}
		off := s.meta.head
		// Badger keeps the value slice until the transaction commits, so
		// each record gets its own, sized exactly.
		rec := appendMessageRecord(make([]byte, 0, messageRecordSize(m)), m)
		if err := txn.Set(messageKey(s.tid, s.part, off, t, uint32(len(rec))), rec); err != nil {
			return nil, fmt.Errorf("set message %d: %w", off, err)
		}
		if m.ID != "" {
			if err := txn.Set(dedupKey(s.tid, s.part, m.ID), encodeDedupValue(off, t)); err != nil {
				return nil, fmt.Errorf("set dedup entry: %w", err)
			}
			if err := txn.Set(expiryKey(s.tid, s.part, off), encodeExpiryValue(t, m.ID)); err != nil {
				return nil, fmt.Errorf("set dedup expiry: %w", err)
			}
		}
		s.meta.head++
		s.meta.bytes += uint64(len(rec))
		res[i] = AppendResult{Offset: off}
	}
	s.meta.lastTime = t
	return res, nil
}

// lookupID reports whether id was stored less than window before now, and
// at which offset.
func (s *partitionState) lookupID(txn *badger.Txn, id string, now time.Time, window time.Duration) (dup bool, off uint64, err error) {
	item, err := txn.Get(dedupKey(s.tid, s.part, id))
	if errors.Is(err, badger.ErrKeyNotFound) {
		return false, 0, nil
	}
	if err != nil {
		return false, 0, fmt.Errorf("get dedup entry: %w", err)
	}
	var t time.Time
	err = item.Value(func(v []byte) error {
		off, t, err = decodeDedupValue(v)
		return err
	})
	if err != nil {
		return false, 0, err
	}
	if now.Sub(t) >= window {
		return false, 0, nil // expired; a sweep has not removed it yet
	}
	return true, off, nil
}

// trim deletes messages below trimTo, oldest first, at most limit of them.
// It walks keys only: the record size in each key keeps bytes exact.
func (s *partitionState) trim(txn *badger.Txn, trimTo uint64, limit int) (deleted int, more bool, err error) {
	trimTo = min(trimTo, s.meta.head)
	if trimTo <= s.meta.first {
		return 0, false, nil
	}
	opts := badger.DefaultIteratorOptions
	opts.PrefetchValues = false
	opts.Prefix = partitionPrefix(kindMessage, s.tid, s.part)
	it := txn.NewIterator(opts)
	defer it.Close()
	for it.Seek(messageSeekKey(s.tid, s.part, s.meta.first)); it.Valid(); it.Next() {
		if deleted == limit {
			return deleted, true, nil
		}
		k := it.Item().KeyCopy(nil)
		info, err := decodeMessageKey(k)
		if err != nil {
			return deleted, false, err
		}
		if info.offset >= trimTo {
			break
		}
		if err := txn.Delete(k); err != nil {
			return deleted, false, fmt.Errorf("delete message %d: %w", info.offset, err)
		}
		s.meta.first = info.offset + 1
		s.meta.bytes -= min(s.meta.bytes, uint64(info.size))
		deleted++
	}
	s.meta.first = max(s.meta.first, trimTo)
	return deleted, false, nil
}

// expireDedup forgets ids stored window or more before now, oldest first,
// at most limit of them. An id whose dedup entry was since overwritten by a
// later publish keeps that entry.
func (s *partitionState) expireDedup(txn *badger.Txn, now time.Time, window time.Duration, limit int) (deleted int, more bool, err error) {
	opts := badger.DefaultIteratorOptions
	opts.PrefetchSize = 64
	opts.Prefix = partitionPrefix(kindExpiry, s.tid, s.part)
	it := txn.NewIterator(opts)
	var expired []expiredID
	for it.Rewind(); it.Valid(); it.Next() {
		if len(expired) == limit {
			more = true
			break
		}
		item := it.Item()
		off, err := decodeExpiryKey(item.Key())
		if err != nil {
			it.Close()
			return 0, false, err
		}
		var t time.Time
		var id string
		if err := item.Value(func(v []byte) error {
			t, id, err = decodeExpiryValue(v)
			return err
		}); err != nil {
			it.Close()
			return 0, false, err
		}
		if now.Sub(t) < window {
			break
		}
		expired = append(expired, expiredID{off: off, id: id})
	}
	// A read-write transaction allows one iterator at a time, and the Gets
	// below need the iterator closed.
	it.Close()
	for _, e := range expired {
		if err := txn.Delete(expiryKey(s.tid, s.part, e.off)); err != nil {
			return 0, false, fmt.Errorf("delete dedup expiry: %w", err)
		}
		dk := dedupKey(s.tid, s.part, e.id)
		item, err := txn.Get(dk)
		if errors.Is(err, badger.ErrKeyNotFound) {
			continue
		}
		if err != nil {
			return 0, false, fmt.Errorf("get dedup entry: %w", err)
		}
		var cur uint64
		if err := item.Value(func(v []byte) error {
			cur, _, err = decodeDedupValue(v)
			return err
		}); err != nil {
			return 0, false, err
		}
		if cur == e.off {
			if err := txn.Delete(dk); err != nil {
				return 0, false, fmt.Errorf("delete dedup entry: %w", err)
			}
		}
	}
	return len(expired), more, nil
}

type expiredID struct {
	off uint64
	id  string
}
