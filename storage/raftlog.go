package storage

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"sync"

	"github.com/dgraph-io/badger/v4"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"

	"github.com/ferrymq/ferry/internal/wire"
)

// RaftLog is one Raft group's log, hard state and latest snapshot, kept in
// the store's Badger database under the group's r keys (keys.go). It
// implements raft.Storage for the group's raft.RawNode (or raft.Node), and
// adds the writes a Ready loop needs: Save, CreateSnapshot and Compact. All
// of them behave as raft.MemoryStorage's do and return its sentinels
// unwrapped (raft compares them with ==), except that where MemoryStorage
// panics on an index out of range, RaftLog returns an error.
//
// As in MemoryStorage, the log holds the entries FirstIndex to LastIndex
// and the term of the entry at FirstIndex-1, which a compaction or a
// snapshot removed (raft's dummy entry). An empty log has first index 1
// and last index 0.
//
// Every method is safe for concurrent use: raft reads from its goroutine
// while the application saves from another. The bounds, the last term, the
// hard state, the snapshot's metadata and the newest entries (up to
// Options.TailCacheBytes) are cached: Term, FirstIndex, LastIndex and
// InitialState read Badger only for a term older than the cached tail;
// Entries reads Badger below the tail and Snapshot for the data. Reads wait
// for a write under way in the same group, not for its fsync.
//
// Entries returned are shared with the cache and with later calls: neither
// the caller nor RaftLog modifies them (raft's rule for Storage). Save
// keeps the entries it is given, so the caller must not modify them either.
//
// A RaftLog comes from Store.RaftLog and lives until the store closes or
// the group is dropped; every method then returns ErrClosed.
type RaftLog struct {
	group     uint64
	db        *badger.DB
	sync      *syncer
	tailLimit int // bytes of entries to cache

	logMu     sync.Mutex // guards the fields below and orders the group's writes
	closed    bool
	b         raftBounds
	lastTerm  uint64
	hs        *raftpb.HardState        // nil until one is saved
	snap      *raftpb.SnapshotMetadata // never nil; index 0 until there is a snapshot
	tail      []raftTailEntry          // the newest entries, consecutive, ending at b.last
	tailBytes int
	terms     termRuns // the terms of the entries saved since the load or the last snapshot
	// retain, if set, is the index of the oldest entry a partition's
	// messages reference (refs.go), 0 if none: Compact keeps it.
	retain func() uint64
}

// raftTailEntry is a cached entry and its encoded size, which Entries'
// maxSize counts.
type raftTailEntry struct {
	e    *raftpb.Entry
	size int
}

var _ raft.Storage = (*RaftLog)(nil)

// raftBounds say which entries a group's log holds: prev+1 to last, and
// the term of entry prev (MemoryStorage's dummy entry: its index is the
// compaction point or the snapshot's index). An empty log is all zero.
//
// Raft log bounds, the value of an r <group> b key:
//
//	ver u8 | prev index u64 | prev term u64 | last index u64
type raftBounds struct {
	prev, prevTerm, last uint64
}

func (rb raftBounds) encode() []byte {
	b := make([]byte, 0, 25)
	b = append(b, recordVersion)
	b = binary.BigEndian.AppendUint64(b, rb.prev)
	b = binary.BigEndian.AppendUint64(b, rb.prevTerm)
	return binary.BigEndian.AppendUint64(b, rb.last)
}

func decodeRaftBounds(v []byte) (raftBounds, error) {
	d := wire.NewDecoder(v, ErrCorrupt)
	if ver := d.Byte(); ver != recordVersion {
		return raftBounds{}, fmt.Errorf("raft log bounds version %d: %w", ver, ErrCorrupt)
	}
	rb := raftBounds{prev: d.U64(), prevTerm: d.U64(), last: d.U64()}
	if err := d.End(); err != nil {
		return raftBounds{}, fmt.Errorf("raft log bounds: %w", err)
	}
	if rb.prev > rb.last {
		return raftBounds{}, fmt.Errorf("raft log bounds prev %d > last %d: %w", rb.prev, rb.last, ErrCorrupt)
	}
	return rb, nil
}

// decodeRaftEntry decodes the value of the entry key of index. The entry
// is a copy: v may be reused by Badger after the transaction.
func decodeRaftEntry(index uint64, v []byte) (*raftpb.Entry, error) {
	e := new(raftpb.Entry)
	if err := proto.Unmarshal(v, e); err != nil {
		return nil, fmt.Errorf("raft entry %d: %w: %w", index, ErrCorrupt, err)
	}
	if e.GetIndex() != index {
		return nil, fmt.Errorf("raft entry under index %d says index %d: %w", index, e.GetIndex(), ErrCorrupt)
	}
	return e, nil
}

// RaftLog returns the Raft log of group, loading it on first use; later
// calls return the same *RaftLog. Loading reads the group's bounds, hard
// state and snapshot metadata, and deletes entries left outside the bounds
// by a crash. Group 0 is refused with ErrInvalidRaftRequest: it is what an
// unset id looks like.
func (s *Store) RaftLog(group uint64) (*RaftLog, error) {
	if group == 0 {
		return nil, fmt.Errorf("raft group 0: %w", ErrInvalidRaftRequest)
	}
	s.raftMu.Lock()
	defer s.raftMu.Unlock()
	if s.isClosing() {
		return nil, ErrClosed
	}
	if l, ok := s.raftLogs[group]; ok {
		return l, nil
	}
	l, err := s.loadRaftLog(group)
	if err != nil {
		return nil, fmt.Errorf("load raft group %d: %w", group, err)
	}
	s.raftLogs[group] = l
	s.log.Debug("raft log loaded", "group", group, "first_index", l.b.prev+1, "last_index", l.b.last, "snapshot_index", l.snap.GetIndex())
	return l, nil
}

func (s *Store) loadRaftLog(group uint64) (*RaftLog, error) {
	l := &RaftLog{
		group:     group,
		db:        s.db,
		sync:      s.sync,
		tailLimit: s.opts.TailCacheBytes,
		snap:      raftpb.EnsureSnapshotMetadata(nil),
	}
	err := s.db.View(func(txn *badger.Txn) error {
		if err := getValue(txn, raftKey(group, raftKeyBounds), func(v []byte) (err error) {
			l.b, err = decodeRaftBounds(v)
			return err
		}); err != nil {
			return err
		}
		if err := getValue(txn, raftKey(group, raftKeyHardState), func(v []byte) error {
			l.hs = new(raftpb.HardState)
			if err := proto.Unmarshal(v, l.hs); err != nil {
				return fmt.Errorf("raft hard state: %w: %w", ErrCorrupt, err)
			}
			return nil
		}); err != nil {
			return err
		}
		if err := getValue(txn, raftKey(group, raftKeySnapshot), func(v []byte) error {
			if err := proto.Unmarshal(v, l.snap); err != nil {
				return fmt.Errorf("raft snapshot metadata: %w: %w", ErrCorrupt, err)
			}
			raftpb.EnsureSnapshotMetadata(l.snap)
			return nil
		}); err != nil {
			return err
		}
		l.lastTerm = l.b.prevTerm
		if l.b.last > l.b.prev {
			e, err := readRaftEntry(txn, group, l.b.last)
			if err != nil {
				return err
			}
			l.lastTerm = e.GetTerm()
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if err := l.deleteEntries(0, l.b.prev); err != nil {
		return nil, err
	}
	if err := l.deleteEntries(l.b.last+1, math.MaxUint64); err != nil {
		return nil, err
	}
	return l, nil
}

// getValue calls fn with the value of key, if there is one.
func getValue(txn *badger.Txn, key []byte, fn func(v []byte) error) error {
	item, err := txn.Get(key)
	if errors.Is(err, badger.ErrKeyNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	return item.Value(fn)
}

// readRaftEntry reads the entry at index, which the bounds say exists.
func readRaftEntry(txn *badger.Txn, group, index uint64) (*raftpb.Entry, error) {
	item, err := txn.Get(raftEntryKey(group, index))
	if errors.Is(err, badger.ErrKeyNotFound) {
		return nil, fmt.Errorf("raft entry %d is missing: %w", index, ErrCorrupt)
	}
	if err != nil {
		return nil, err
	}
	var e *raftpb.Entry
	err = item.Value(func(v []byte) (err error) {
		e, err = decodeRaftEntry(index, v)
		return err
	})
	return e, err
}

// DropRaftLog deletes every key of group, for a replica removed from this
// node: the *RaftLog handed out for it returns ErrClosed from then on, and
// a later RaftLog call starts an empty log. The bounds, hard state and
// snapshot go first, in one transaction that is durable before the entries
// are deleted; a crash meanwhile leaves entries that the group's next load
// deletes. The group's applied index (AdminApplied) goes with them. Other
// groups, and topics, are not touched.
func (s *Store) DropRaftLog(group uint64) error {
	if group == 0 {
		return fmt.Errorf("raft group 0: %w", ErrInvalidRaftRequest)
	}
	s.raftMu.Lock()
	defer s.raftMu.Unlock()
	if s.isClosing() {
		return ErrClosed
	}
	l, ok := s.raftLogs[group]
	if ok {
		l.logMu.Lock()
		l.closed = true
		l.tail = nil
		l.logMu.Unlock()
		delete(s.raftLogs, group)
	} else {
		l = &RaftLog{group: group, db: s.db}
	}
	err := s.db.Update(func(txn *badger.Txn) error {
		for _, sub := range []byte{raftKeyBounds, raftKeyHardState, raftKeySnapshot, raftKeySnapData, raftKeyApplied} {
			if err := txn.Delete(raftKey(group, sub)); err != nil {
				return err
			}
		}
		return nil
	})
	if err == nil {
		// The syncer is open: Close takes raftMu before closing it.
		err = enqueueSync(s.sync).wait()
	}
	if err == nil {
		err = l.deleteEntries(0, math.MaxUint64)
	}
	if err != nil {
		return fmt.Errorf("drop raft group %d: %w", group, err)
	}
	s.log.Debug("raft log dropped", "group", group)
	return nil
}

// closeRaftLogs makes every RaftLog return ErrClosed, before Close closes
// the syncer: a Save that got in first has queued its sync, and the syncer
// answers it while it drains.
func (s *Store) closeRaftLogs() {
	s.raftMu.Lock()
	defer s.raftMu.Unlock()
	for g, l := range s.raftLogs {
		l.logMu.Lock()
		l.closed = true
		l.tail = nil
		l.logMu.Unlock()
		delete(s.raftLogs, g)
	}
}

// InitialState returns the saved hard state (nil if none was saved) and
// the ConfState of the latest snapshot (empty if there is none). Both are
// the caller's.
func (l *RaftLog) InitialState() (*raftpb.HardState, *raftpb.ConfState, error) {
	l.logMu.Lock()
	defer l.logMu.Unlock()
	if l.closed {
		return nil, nil, ErrClosed
	}
	var hs *raftpb.HardState
	if l.hs != nil {
		hs = proto.Clone(l.hs).(*raftpb.HardState)
	}
	cs := proto.Clone(l.snap.GetConfState()).(*raftpb.ConfState)
	return hs, raftpb.EnsureConfState(cs), nil
}

// Entries returns the entries lo to hi-1, fewer if their encoded sizes add
// up to more than maxSize, but at least one. It returns raft.ErrCompacted
// if lo is below FirstIndex, raft.ErrUnavailable if the log has no entries,
// and an error wrapping raft.ErrUnavailable if hi is beyond LastIndex+1.
// The slice is the caller's; the entries are not (see RaftLog).
func (l *RaftLog) Entries(lo, hi, maxSize uint64) ([]*raftpb.Entry, error) {
	l.logMu.Lock()
	defer l.logMu.Unlock()
	switch {
	case l.closed:
		return nil, ErrClosed
	case lo <= l.b.prev:
		return nil, raft.ErrCompacted
	case hi > l.b.last+1:
		return nil, fmt.Errorf("raft group %d entries [%d, %d): last index is %d: %w", l.group, lo, hi, l.b.last, raft.ErrUnavailable)
	case l.b.last == l.b.prev:
		return nil, raft.ErrUnavailable
	case lo > hi:
		return nil, fmt.Errorf("raft group %d entries [%d, %d): %w", l.group, lo, hi, ErrInvalidRaftRequest)
	case lo == hi:
		return []*raftpb.Entry{}, nil
	}
	if len(l.tail) > 0 && lo >= l.tail[0].e.GetIndex() {
		from := l.tail[lo-l.tail[0].e.GetIndex():]
		n, size := 0, uint64(0)
		for n < int(hi-lo) {
			size += uint64(from[n].size)
			if n > 0 && size > maxSize {
				break
			}
			n++
		}
		ents := make([]*raftpb.Entry, n)
		for i := range ents {
			ents[i] = from[i].e
		}
		return ents, nil
	}
	return l.readEntries(lo, hi, maxSize)
}

// readEntries reads entries lo to hi-1 from Badger, up to maxSize bytes
// but at least one. The bounds say they all exist.
func (l *RaftLog) readEntries(lo, hi, maxSize uint64) ([]*raftpb.Entry, error) {
	var ents []*raftpb.Entry
	err := l.db.View(func(txn *badger.Txn) error {
		opts := badger.DefaultIteratorOptions
		opts.Prefix = raftKey(l.group, raftKeyEntry)
		opts.PrefetchValues = false // values are inline in the LSM tree
		it := txn.NewIterator(opts)
		defer it.Close()
		next, size := lo, uint64(0)
		for it.Seek(raftEntryKey(l.group, lo)); it.Valid() && next < hi; it.Next() {
			item := it.Item()
			_, index, err := decodeRaftEntryKey(item.Key())
			if err != nil {
				return err
			}
			if index != next {
				return fmt.Errorf("raft entry %d is missing: %w", next, ErrCorrupt)
			}
			size += uint64(item.ValueSize())
			if len(ents) > 0 && size > maxSize {
				return nil
			}
			var e *raftpb.Entry
			if err := item.Value(func(v []byte) (err error) {
				e, err = decodeRaftEntry(index, v)
				return err
			}); err != nil {
				return err
			}
			ents = append(ents, e)
			next++
		}
		if next < hi {
			return fmt.Errorf("raft entry %d is missing: %w", next, ErrCorrupt)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("raft group %d entries [%d, %d): %w", l.group, lo, hi, err)
	}
	return ents, nil
}

// Term returns the term of entry i, which may be FirstIndex-1 to
// LastIndex. It returns raft.ErrCompacted for an i below that and
// raft.ErrUnavailable for one above.
func (l *RaftLog) Term(i uint64) (uint64, error) {
	l.logMu.Lock()
	defer l.logMu.Unlock()
	if l.closed {
		return 0, ErrClosed
	}
	return l.term(i)
}

// term is Term; the caller holds logMu.
func (l *RaftLog) term(i uint64) (uint64, error) {
	switch {
	case i < l.b.prev:
		return 0, raft.ErrCompacted
	case i == l.b.prev:
		return l.b.prevTerm, nil
	case i > l.b.last:
		return 0, raft.ErrUnavailable
	case i == l.b.last:
		return l.lastTerm, nil
	}
	if len(l.tail) > 0 && i >= l.tail[0].e.GetIndex() {
		return l.tail[i-l.tail[0].e.GetIndex()].e.GetTerm(), nil
	}
	if t, ok := l.terms.term(i); ok {
		return t, nil
	}
	var t uint64
	err := l.db.View(func(txn *badger.Txn) error {
		e, err := readRaftEntry(txn, l.group, i)
		t = e.GetTerm()
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("raft group %d term %d: %w", l.group, i, err)
	}
	return t, nil
}

// LastIndex returns the index of the last entry, or of the snapshot or
// compaction point if no entry follows it (0 for an empty log).
func (l *RaftLog) LastIndex() (uint64, error) {
	l.logMu.Lock()
	defer l.logMu.Unlock()
	if l.closed {
		return 0, ErrClosed
	}
	return l.b.last, nil
}

// FirstIndex returns the index of the first entry Entries may return: one
// past the snapshot or compaction point (1 for an empty log).
func (l *RaftLog) FirstIndex() (uint64, error) {
	l.logMu.Lock()
	defer l.logMu.Unlock()
	if l.closed {
		return 0, ErrClosed
	}
	return l.b.prev + 1, nil
}

// Snapshot returns the latest snapshot, saved or created; an empty one
// (index 0) if there is none. It is the caller's.
func (l *RaftLog) Snapshot() (*raftpb.Snapshot, error) {
	l.logMu.Lock()
	defer l.logMu.Unlock()
	if l.closed {
		return nil, ErrClosed
	}
	snap := &raftpb.Snapshot{Metadata: proto.Clone(l.snap).(*raftpb.SnapshotMetadata)}
	err := l.db.View(func(txn *badger.Txn) error {
		return getValue(txn, raftKey(l.group, raftKeySnapData), func(v []byte) error {
			snap.Data = append([]byte{}, v...)
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("raft group %d snapshot data: %w", l.group, err)
	}
	return snap, nil
}

// CreateSnapshot makes the snapshot at entry i, with cs (the previous
// snapshot's ConfState if nil) and data, the latest one, and returns it
// once it is durable. Entries are not removed: Compact does that. It
// returns raft.ErrSnapOutOfDate if the latest snapshot is not older than
// i, raft.ErrCompacted if i is below FirstIndex-1, and an error wrapping
// raft.ErrUnavailable if i is beyond LastIndex.
func (l *RaftLog) CreateSnapshot(i uint64, cs *raftpb.ConfState, data []byte) (*raftpb.Snapshot, error) {
	l.logMu.Lock()
	snap, r, err := l.createSnapshot(i, cs, data)
	l.logMu.Unlock()
	if err == nil {
		err = r.wait()
	}
	if err != nil {
		if err == raft.ErrSnapOutOfDate || err == raft.ErrCompacted {
			return nil, err // raft's sentinels stay bare
		}
		return nil, fmt.Errorf("raft group %d snapshot at %d: %w", l.group, i, err)
	}
	return snap, nil
}

func (l *RaftLog) createSnapshot(i uint64, cs *raftpb.ConfState, data []byte) (*raftpb.Snapshot, *request, error) {
	switch {
	case l.closed:
		return nil, nil, ErrClosed
	case i <= l.snap.GetIndex():
		return nil, nil, raft.ErrSnapOutOfDate
	case i > l.b.last:
		return nil, nil, fmt.Errorf("last index is %d: %w", l.b.last, raft.ErrUnavailable)
	}
	term, err := l.term(i)
	if err != nil {
		return nil, nil, err
	}
	if cs == nil {
		cs = l.snap.GetConfState()
	}
	meta := raftpb.EnsureSnapshotMetadata(&raftpb.SnapshotMetadata{
		Index:     new(i),
		Term:      new(term),
		ConfState: proto.Clone(cs).(*raftpb.ConfState),
	})
	txn := l.db.NewTransaction(true)
	defer txn.Discard()
	if err := l.setSnapshot(txn, meta, data); err != nil {
		return nil, nil, err
	}
	if err := l.commit(txn); err != nil {
		return nil, nil, tooLarge(err)
	}
	l.snap = meta
	snap := &raftpb.Snapshot{Metadata: proto.Clone(meta).(*raftpb.SnapshotMetadata), Data: data}
	return snap, enqueueSync(l.sync), nil
}

// Compact discards the entries below compactIndex, keeping its term as the
// entry before the first, and returns once that is durable. It returns
// raft.ErrCompacted if compactIndex is not above FirstIndex-1 and an error
// wrapping raft.ErrUnavailable if it is beyond LastIndex. The caller must
// not compact beyond what it applied, and should have a snapshot there.
//
// Unlike MemoryStorage's, it never discards an entry the messages of a
// partition replicated by the group still reference (refs.go): it
// compacts only up to the entry before the oldest such, and a compaction
// that would then discard nothing does nothing and returns nil.
func (l *RaftLog) Compact(compactIndex uint64) error {
	l.logMu.Lock()
	r, err := l.compact(compactIndex)
	l.logMu.Unlock()
	if err == nil && r != nil {
		err = r.wait()
	}
	if err != nil {
		if err == raft.ErrCompacted {
			return err
		}
		return fmt.Errorf("raft group %d compact to %d: %w", l.group, compactIndex, err)
	}
	return nil
}

func (l *RaftLog) compact(ci uint64) (*request, error) {
	switch {
	case l.closed:
		return nil, ErrClosed
	case ci <= l.b.prev:
		return nil, raft.ErrCompacted
	case ci > l.b.last:
		return nil, fmt.Errorf("last index is %d: %w", l.b.last, raft.ErrUnavailable)
	}
	if l.retain != nil {
		if pin := l.retain(); pin != 0 && ci >= pin {
			if ci = pin - 1; ci <= l.b.prev {
				return nil, nil // every entry is still referenced
			}
		}
	}
	term, err := l.term(ci)
	if err != nil {
		return nil, err
	}
	old := l.b
	b := raftBounds{prev: ci, prevTerm: term, last: old.last}
	err = l.db.Update(func(txn *badger.Txn) error {
		return txn.Set(raftKey(l.group, raftKeyBounds), b.encode())
	})
	if err != nil {
		return nil, err
	}
	l.b = b
	l.trimTail(ci)
	l.terms.compact(ci)
	r := enqueueSync(l.sync)
	if err := l.deleteEntries(old.prev+1, ci); err != nil {
		return nil, fmt.Errorf("delete compacted entries: %w", errors.Join(err, r.wait()))
	}
	return r, nil
}

// retainFrom makes Compact keep the entries from pin() on, pin() being the
// index of the oldest entry a partition's messages reference (0: none).
func (l *RaftLog) retainFrom(pin func() uint64) {
	l.logMu.Lock()
	defer l.logMu.Unlock()
	l.retain = pin
}

// dropReplaced deletes the entries below the log's first index that save
// kept because a partition referenced them, once it no longer does.
func (l *RaftLog) dropReplaced() error {
	l.logMu.Lock()
	defer l.logMu.Unlock()
	if l.closed {
		return ErrClosed
	}
	return l.deleteEntries(0, l.b.prev)
}

// raftDeleteBatch is how many entry keys one deletion step removes.
const raftDeleteBatch = 10000

// deleteEntries deletes the group's entry keys from index from to index to
// (inclusive), a step of raftDeleteBatch keys at a time: a compaction can
// remove more keys than one transaction takes. The keys are garbage (out
// of the bounds), so a crash part way only leaves some for the next load.
func (l *RaftLog) deleteEntries(from, to uint64) error {
	if from > to {
		return nil
	}
	for {
		var keys [][]byte
		err := l.db.View(func(txn *badger.Txn) error {
			opts := badger.DefaultIteratorOptions
			opts.PrefetchValues = false
			opts.Prefix = raftKey(l.group, raftKeyEntry)
			it := txn.NewIterator(opts)
			defer it.Close()
			for it.Seek(raftEntryKey(l.group, from)); it.Valid() && len(keys) < raftDeleteBatch; it.Next() {
				_, index, err := decodeRaftEntryKey(it.Item().Key())
				if err != nil {
					return err
				}
				if index > to {
					break
				}
				keys = append(keys, it.Item().KeyCopy(nil))
			}
			return nil
		})
		if err != nil || len(keys) == 0 {
			return err
		}
		wb := l.db.NewWriteBatch()
		for _, k := range keys {
			if err := wb.Delete(k); err != nil {
				wb.Cancel()
				return err
			}
		}
		if err := wb.Flush(); err != nil {
			return err
		}
		if len(keys) < raftDeleteBatch {
			return nil
		}
	}
}
