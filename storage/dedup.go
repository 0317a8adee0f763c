package storage

import (
	"fmt"
	"time"

	"github.com/dgraph-io/badger/v4"
)

// dedupIndex is one partition's memory of the ids published within the
// dedup window: id → offset and publish time, and the same entries in
// publish order for expiry. It is part of the partition's state, owned by
// its writer goroutine. Nothing of it is written to Badger: the ids are in
// the message keys, and Open rebuilds the index from the keys of the last
// window's messages (rebuildDedup), so it survives restarts like the log.
// As in NATS JetStream, its memory is proportional to the ids published in
// one window.
type dedupIndex struct {
	ids  map[string]dedupEntry
	fifo []dedupRecord // publish order; fifo[head:] are live or not yet expired
	head int
}

// dedupEntry is where an id was stored and when.
type dedupEntry struct {
	offset uint64
	time   time.Time
}

// dedupRecord is an id's entry in publish order.
type dedupRecord struct {
	id string
	dedupEntry
}

func newDedupIndex() *dedupIndex {
	return &dedupIndex{ids: make(map[string]dedupEntry)}
}

// lookup returns the entry of id if it was stored less than window before
// now.
func (d *dedupIndex) lookup(id string, now time.Time, window time.Duration) (dedupEntry, bool) {
	e, ok := d.ids[id]
	if !ok || now.Sub(e.time) >= window {
		return dedupEntry{}, false
	}
	return e, true
}

// add records that id was stored at e; a later add of the same id wins.
// Records must come in publish order.
func (d *dedupIndex) add(r dedupRecord) {
	d.ids[r.id] = r.dedupEntry
	d.fifo = append(d.fifo, r)
}

// expire forgets ids stored window or more before now and says how many.
func (d *dedupIndex) expire(now time.Time, window time.Duration) int {
	n := 0
	for d.head < len(d.fifo) && now.Sub(d.fifo[d.head].time) >= window {
		r := d.fifo[d.head]
		if cur, ok := d.ids[r.id]; ok && cur.offset == r.offset {
			delete(d.ids, r.id)
		}
		d.fifo[d.head] = dedupRecord{} // let the id string go
		d.head++
		n++
	}
	if d.head > 1024 && d.head > len(d.fifo)/2 {
		d.fifo = append([]dedupRecord(nil), d.fifo[d.head:]...)
		d.head = 0
	}
	return n
}

// len is the number of ids remembered.
func (d *dedupIndex) len() int { return len(d.ids) }

// rebuildDedup builds a partition's index from the message keys published
// less than window before now. Publish times never go back, so a binary
// search over offsets finds the oldest such message, and a forward walk of
// keys (no values) from there reads the ids.
func rebuildDedup(txn *badger.Txn, tid, part uint32, meta partitionMeta, now time.Time, window time.Duration) (*dedupIndex, error) {
	d := newDedupIndex()
	if meta.head == meta.first {
		return d, nil
	}
	opts := badger.DefaultIteratorOptions
	opts.PrefetchValues = false
	opts.Prefix = partitionPrefix(kindMessage, tid, part)
	it := txn.NewIterator(opts)
	defer it.Close()
	lo, err := searchTime(it, tid, part, meta.first, meta.head, func(t time.Time) bool { return now.Sub(t) >= window })
	if err != nil {
		return nil, err
	}
	for it.Seek(messageSeekKey(tid, part, lo)); it.Valid(); it.Next() {
		info, err := decodeMessageKey(it.Item().Key())
		if err != nil {
			return nil, err
		}
		if info.offset >= meta.head {
			break // committed after the meta was read: not ours yet
		}
		if info.id != "" {
			d.add(dedupRecord{id: info.id, dedupEntry: dedupEntry{offset: info.offset, time: info.publishTime}})
		}
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
