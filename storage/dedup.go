package storage

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/dgraph-io/badger/v4"
)

// Dedup. Each id published within the dedup window has a d key in Badger,
// written by apply in the same transaction as its message, so every
// replica that applies the same entries holds the same keys and makes the
// same decisions:
//
//	d <tid u32> <part u32> <id> → offset u64 | publish time i64 (unix ns)
//
// A repeat is a duplicate if its id's d key names a time less than the
// window before the append's time. In front of the keys, dedupIndex keeps
// bloom filters of the ids added (dedup_filter.go): a fresh id, the common
// case, needs no Badger read, and memory is about 2 bytes an id, not an
// id's worth (a map of every id took ~85 bytes an id), with a bound per
// partition past which the filter only gets less selective. Expiry deletes
// the d keys of messages a window old, walking message keys (which hold
// the ids) from where it stopped last; what it misses (the d keys of
// messages retention removed first) goes when the partition is next opened.

// dedupExpireLimit bounds the d keys one expiry deletes, and four times it
// the message keys it walks: a pass continues in the next command
// (result.more), so no transaction grows too big and no apply takes long.
const dedupExpireLimit = deleteLimit

// dedupIndex is one partition's in-memory part of the dedup index: the
// filters and where expiry stands. It is part of the partition's state,
// owned by its writer goroutine. Nothing in it decides a lookup: a filter
// only answers "maybe" for every id added, and the d key decides.
type dedupIndex struct {
	filter dedupFilter
	// floor is the partition's first offset when it was opened: an id
	// whose message retention removed before then is forgotten, as the
	// index rebuilt from the retained messages always did.
	floor uint64
	// expiredTo is where expiry's walk of message keys goes on: the d keys
	// of messages below it were deleted (or never were).
	expiredTo uint64
}

// dedupEntry is where an id was stored and when.
type dedupEntry struct {
	offset uint64
	time   time.Time
}

// dedupRecord is an id's entry.
type dedupRecord struct {
	id string
	dedupEntry
}

func newDedupIndex() *dedupIndex { return &dedupIndex{} }

func dedupKey(tid, part uint32, id string) []byte {
	return append(partitionPrefix(kindDedup, tid, part), id...)
}

func encodeDedupEntry(e dedupEntry) []byte {
	b := binary.BigEndian.AppendUint64(make([]byte, 0, 16), e.offset)
	return binary.BigEndian.AppendUint64(b, uint64(e.time.UnixNano()))
}

func decodeDedupEntry(b []byte) (dedupEntry, error) {
	if len(b) != 16 {
		return dedupEntry{}, fmt.Errorf("dedup entry %x: %w", b, ErrCorrupt)
	}
	return dedupEntry{offset: binary.BigEndian.Uint64(b), time: time.Unix(0, int64(binary.BigEndian.Uint64(b[8:]))).UTC()}, nil
}

// lookup returns the entry of id if it was stored less than window before
// now, reading its d key in txn unless the filter rules the id out.
func (d *dedupIndex) lookup(txn *badger.Txn, tid, part uint32, id string, now time.Time, window time.Duration) (dedupEntry, bool, error) {
	if !d.filter.mayContain(id) {
		return dedupEntry{}, false, nil
	}
	item, err := txn.Get(dedupKey(tid, part, id))
	if errors.Is(err, badger.ErrKeyNotFound) {
		return dedupEntry{}, false, nil
	}
	if err != nil {
		return dedupEntry{}, false, fmt.Errorf("read dedup id: %w", err)
	}
	var e dedupEntry
	if err := item.Value(func(v []byte) (err error) {
		e, err = decodeDedupEntry(v)
		return err
	}); err != nil {
		return dedupEntry{}, false, err
	}
	if e.offset < d.floor || now.Sub(e.time) >= window {
		return dedupEntry{}, false, nil
	}
	return e, true, nil
}

// put writes id's d key in txn. The filter learns the id once txn commits
// (add).
func putDedup(txn *badger.Txn, tid, part uint32, r dedupRecord) error {
	if err := txn.Set(dedupKey(tid, part, r.id), encodeDedupEntry(r.dedupEntry)); err != nil {
		return fmt.Errorf("set dedup id: %w", err)
	}
	return nil
}

// add lets the filter know an id whose d key was committed.
func (d *dedupIndex) add(r dedupRecord) { d.filter.add(r.id, r.time) }

// len is about how many ids the filters hold (expired ones included until
// their filter goes).
func (d *dedupIndex) len() int { return d.filter.count() }

// expiryDue reports whether an expiry at now would forget anything: the
// first message expiry has not walked past is a window old. Publish times
// only grow along a partition, so if that one is younger, all are. One key
// read, no value. A replicated writer asks before proposing an expiry, so
// that a partition at rest is not woken by retention for nothing.
func (s *partitionState) expiryDue(db *badger.DB, now time.Time, window time.Duration) (bool, error) {
	from := max(s.dedup.expiredTo, s.meta.first)
	if from >= s.meta.head {
		return false, nil
	}
	due := false
	err := db.View(func(txn *badger.Txn) error {
		it := messageKeys(txn, s.tid, s.part)
		defer it.Close()
		it.Seek(messageSeekKey(s.tid, s.part, from))
		if !it.Valid() {
			return nil
		}
		info, err := decodeMessageKey(it.Item().Key())
		if err != nil {
			return err
		}
		due = info.offset < s.meta.head && now.Sub(info.publishTime) >= window
		return nil
	})
	return due, err
}

// expire deletes in txn the d keys of messages stored window or more
// before now, at most dedupExpireLimit of them, walking message keys from
// expiredTo; more says a limit stopped it. It drops the filters whose ids
// all expired.
func (s *partitionState) expireDedup(txn *badger.Txn, now time.Time, window time.Duration) (deleted int, more bool, err error) {
	d := s.dedup
	d.filter.expire(now, window)
	from := max(d.expiredTo, s.meta.first)
	if from >= s.meta.head {
		return 0, false, nil
	}
	it := messageKeys(txn, s.tid, s.part)
	defer it.Close()
	walked := 0
	for it.Seek(messageSeekKey(s.tid, s.part, from)); it.Valid(); it.Next() {
		info, err := decodeMessageKey(it.Item().Key())
		if err != nil {
			return deleted, false, err
		}
		if info.offset >= s.meta.head || now.Sub(info.publishTime) < window {
			break
		}
		if walked++; walked > 4*dedupExpireLimit {
			return deleted, true, nil
		}
		if info.id != "" {
			if deleted == dedupExpireLimit {
				return deleted, true, nil
			}
			n, err := deleteDedup(txn, s.tid, s.part, info.id, info.offset)
			if err != nil {
				return deleted, false, err
			}
			deleted += n
		}
		d.expiredTo = info.offset + 1
	}
	return deleted, false, nil
}

// deleteDedup deletes id's d key if it names offset (a later store of the
// id, after the window, keeps its own) and says how many it deleted.
func deleteDedup(txn *badger.Txn, tid, part uint32, id string, offset uint64) (int, error) {
	k := dedupKey(tid, part, id)
	item, err := txn.Get(k)
	if errors.Is(err, badger.ErrKeyNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read dedup id: %w", err)
	}
	var e dedupEntry
	if err := item.Value(func(v []byte) (err error) {
		e, err = decodeDedupEntry(v)
		return err
	}); err != nil {
		return 0, err
	}
	if e.offset != offset {
		return 0, nil
	}
	if err := txn.Delete(k); err != nil {
		return 0, fmt.Errorf("delete dedup id: %w", err)
	}
	return 1, nil
}

// openDedup builds a partition's in-memory index when it is opened: it
// reads the d keys, deletes those that expired before now or whose message
// retention removed (below the first offset), and puts the others in the
// filter. Expiry goes on from the first message of the window. An empty
// partition is not read (so opening many idle partitions stays cheap): the
// d keys it may hold are below its first offset, forgotten.
func openDedup(db *badger.DB, tid, part uint32, meta partitionMeta, now time.Time, window time.Duration) (*dedupIndex, error) {
	d := &dedupIndex{floor: meta.first, expiredTo: meta.first}
	if meta.head == meta.first {
		return d, nil
	}
	dead := db.NewWriteBatch()
	defer dead.Cancel()
	err := db.View(func(txn *badger.Txn) error {
		opts := badger.DefaultIteratorOptions
		opts.Prefix = partitionPrefix(kindDedup, tid, part)
		it := txn.NewIterator(opts)
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			var e dedupEntry
			if err := it.Item().Value(func(v []byte) (err error) {
				e, err = decodeDedupEntry(v)
				return err
			}); err != nil {
				return err
			}
			k := it.Item().Key()
			if e.offset < meta.first || now.Sub(e.time) >= window {
				if err := dead.Delete(it.Item().KeyCopy(nil)); err != nil {
					return err
				}
				continue
			}
			d.filter.add(string(k[partitionPrefixLen:]), e.time)
		}
		mit := messageKeys(txn, tid, part)
		defer mit.Close()
		var err error
		d.expiredTo, err = searchTime(mit, tid, part, meta.first, meta.head, func(t time.Time) bool { return now.Sub(t) >= window })
		return err
	})
	if err != nil {
		return nil, err
	}
	if err := dead.Flush(); err != nil {
		return nil, fmt.Errorf("delete expired dedup ids: %w", err)
	}
	return d, nil
}

// importDedup writes the d keys of a partition being imported, whose
// messages are written and whose meta is not yet, for the ids of its
// messages stored less than window before its last publish time (every
// entry to come is applied at that time or later), and returns its index.
// Its old d keys were deleted when the import began; a crash before the
// meta is written leaves the import marker, and the import is done again.
func importDedup(db *badger.DB, tid, part uint32, meta partitionMeta, window time.Duration) (*dedupIndex, error) {
	d := &dedupIndex{floor: meta.first, expiredTo: meta.first}
	if meta.head == meta.first {
		return d, nil
	}
	wb := db.NewWriteBatch()
	defer wb.Cancel()
	err := db.View(func(txn *badger.Txn) error {
		it := messageKeys(txn, tid, part)
		defer it.Close()
		lo, err := searchTime(it, tid, part, meta.first, meta.head, func(t time.Time) bool { return meta.lastTime.Sub(t) >= window })
		if err != nil {
			return err
		}
		d.expiredTo = lo
		for it.Seek(messageSeekKey(tid, part, lo)); it.Valid(); it.Next() {
			info, err := decodeMessageKey(it.Item().Key())
			if err != nil {
				return err
			}
			if info.offset >= meta.head {
				break
			}
			if info.id == "" {
				continue
			}
			// In offset order: a later store of an id overwrites an
			// earlier one, as apply does.
			e := dedupEntry{offset: info.offset, time: info.publishTime}
			if err := wb.Set(dedupKey(tid, part, info.id), encodeDedupEntry(e)); err != nil {
				return err
			}
			d.filter.add(info.id, e.time)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if err := wb.Flush(); err != nil {
		return nil, fmt.Errorf("write dedup ids: %w", err)
	}
	return d, nil
}

// searchTime returns the first offset in [first, head) whose publish time
// is not before(t), or head if there is none. Publish times never go back,
// so before holds for a prefix of the offsets and a binary search over
// keys (no values) finds its end. it iterates the partition's message keys.
func searchTime(it *badger.Iterator, tid, part uint32, first, head uint64, before func(time.Time) bool) (uint64, error) {
	lo, hi := first, head
	for lo < hi {
		mid := lo + (hi-lo)/2
		it.Seek(messageSeekKey(tid, part, mid))
		if !it.Valid() {
			return 0, fmt.Errorf("no message at offset %d below head %d: %w", mid, head, ErrCorrupt)
		}
		info, err := decodeMessageKey(it.Item().Key())
		if err != nil {
			return 0, err
		}
		if before(info.publishTime) {
			lo = mid + 1
		} else {
			hi = mid
		}
	}
	return lo, nil
}
