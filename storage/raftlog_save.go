package storage

// RaftLog's write path: Save (entries, hard state and snapshot in one
// transaction, synced with the store's group commit), the checks on what it
// is given, and the tail cache the saved entries go into.

import (
	"errors"
	"fmt"
	"math"

	"github.com/dgraph-io/badger/v4"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// wait blocks until r is answered and returns its error.
func (r *request) wait() error {
	<-r.done
	return r.err
}

// Save stores what a Ready asks to persist, in one Badger transaction, and
// returns once it is durable under the fsync policy (with FsyncNever, once
// committed: it survives a process crash, not a power loss). In order:
//
//   - a non-empty snapshot (raft.IsEmptySnap is false) replaces the log:
//     the log then ends at the snapshot's index, as MemoryStorage's
//     ApplySnapshot. It returns raft.ErrSnapOutOfDate if the latest
//     snapshot is not older.
//   - entries are appended, replacing any from their first index on (a
//     conflicting suffix); those below FirstIndex are ignored. They must be
//     consecutive, with terms that never go down, and start at most at
//     LastIndex+1.
//   - a non-empty hard state (raft.IsEmptyHardState is false) replaces
//     the saved one; its commit index must not be beyond the last entry.
//
// A request that breaks these rules fails with ErrInvalidRaftRequest and
// writes nothing, as does one that does not fit in a transaction
// (ErrTooLarge). Save keeps the entries (see RaftLog). Bootstrapping a
// group is saving a snapshot at index 1 or more with the initial ConfState,
// as raft.NewRawNode recommends.
func (l *RaftLog) Save(hs *raftpb.HardState, entries []*raftpb.Entry, snap *raftpb.Snapshot) error {
	l.logMu.Lock()
	r, err := l.save(hs, entries, snap)
	l.logMu.Unlock()
	if err == raft.ErrSnapOutOfDate {
		return err // raft's sentinels stay bare, as from MemoryStorage
	}
	if err != nil {
		return fmt.Errorf("raft group %d save: %w", l.group, err)
	}
	if r == nil {
		return nil
	}
	if err := r.wait(); err != nil {
		return fmt.Errorf("raft group %d save: %w", l.group, err)
	}
	return nil
}

// save commits Save's transaction and queues its sync; the caller holds
// logMu. It returns a nil request if there was nothing to write.
func (l *RaftLog) save(hs *raftpb.HardState, entries []*raftpb.Entry, snap *raftpb.Snapshot) (*request, error) {
	if l.closed {
		return nil, ErrClosed
	}
	if err := checkRaftEntries(entries); err != nil {
		return nil, err
	}
	txn := l.db.NewTransaction(true)
	defer txn.Discard()
	b, lastTerm, meta := l.b, l.lastTerm, l.snap
	wrote := false
	var sizes []int // encoded sizes of the entries appended

	applySnap := !raft.IsEmptySnap(snap)
	if applySnap {
		if l.snap.GetIndex() >= snap.GetMetadata().GetIndex() {
			return nil, raft.ErrSnapOutOfDate
		}
		meta = raftpb.EnsureSnapshotMetadata(proto.Clone(snap.GetMetadata()).(*raftpb.SnapshotMetadata))
		if err := l.setSnapshot(txn, meta, snap.GetData()); err != nil {
			return nil, err
		}
		b = raftBounds{prev: meta.GetIndex(), prevTerm: meta.GetTerm(), last: meta.GetIndex()}
		lastTerm = meta.GetTerm()
		wrote = true
	}

	if len(entries) > 0 {
		first := entries[0].GetIndex()
		if last := first + uint64(len(entries)) - 1; last > b.prev {
			if first <= b.prev {
				entries = entries[b.prev+1-first:]
				first = b.prev + 1
			}
			if first > b.last+1 {
				return nil, fmt.Errorf("entries from %d would leave a gap after the last index %d: %w", first, b.last, ErrInvalidRaftRequest)
			}
			sizes = make([]int, len(entries))
			for i, e := range entries {
				v, err := proto.Marshal(e)
				if err != nil {
					return nil, fmt.Errorf("encode entry %d: %w", e.GetIndex(), err)
				}
				if err := txn.Set(raftEntryKey(l.group, e.GetIndex()), v); err != nil {
					return nil, tooLarge(err)
				}
				sizes[i] = len(v)
			}
			b.last = last
			lastTerm = entries[len(entries)-1].GetTerm()
			wrote = true
		} else {
			entries = nil // all compacted away: nothing to append
		}
	}

	newHS, err := l.setHardState(txn, hs, b.last)
	if err != nil {
		return nil, err
	}
	wrote = wrote || newHS != nil
	if !wrote {
		return nil, nil
	}
	if b != l.b {
		if err := txn.Set(raftKey(l.group, raftKeyBounds), b.encode()); err != nil {
			return nil, tooLarge(err)
		}
	}
	if err := l.commit(txn); err != nil {
		return nil, tooLarge(err)
	}
	l.sync.guard.grew(totalBytes(sizes))

	old := l.b
	l.b, l.lastTerm, l.snap = b, lastTerm, meta
	if newHS != nil {
		l.hs = newHS
	}
	if applySnap {
		l.tail, l.tailBytes = nil, 0
		l.terms.reset()
	}
	l.cacheTail(entries, sizes)
	l.terms.append(entries)
	r := enqueueSync(l.sync)
	// Entries of the old log outside the new bounds (compacted by the
	// snapshot, or truncated) are garbage now; the sync runs meanwhile —
	// except those a partition's messages still reference: the snapshot
	// is a marker, and until the import it asks for replaces the
	// partition, reads resolve the references (refs.go). The import
	// deletes them (dropReplaced), or the group's next load.
	if err := l.deleteOutside(old, b); err != nil {
		return nil, errors.Join(err, r.wait())
	}
	return r, nil
}

// totalBytes is the sum of sizes.
func totalBytes(sizes []int) int {
	n := 0
	for _, size := range sizes {
		n += size
	}
	return n
}

// setHardState writes hs in txn unless it is empty, and returns the copy
// to keep (nil if empty). last is the log's last index once txn commits.
func (l *RaftLog) setHardState(txn *badger.Txn, hs *raftpb.HardState, last uint64) (*raftpb.HardState, error) {
	if raft.IsEmptyHardState(hs) {
		return nil, nil
	}
	if hs.GetCommit() > last {
		return nil, fmt.Errorf("hard state commits %d beyond the last index %d: %w", hs.GetCommit(), last, ErrInvalidRaftRequest)
	}
	newHS := proto.Clone(hs).(*raftpb.HardState)
	v, err := proto.Marshal(newHS)
	if err != nil {
		return nil, fmt.Errorf("encode hard state: %w", err)
	}
	if err := txn.Set(raftKey(l.group, raftKeyHardState), v); err != nil {
		return nil, tooLarge(err)
	}
	return newHS, nil
}

// deleteOutside deletes the entries of the old log outside the new bounds
// b, but those a partition's messages still reference (l.retain).
func (l *RaftLog) deleteOutside(old, b raftBounds) error {
	replaced := min(old.last, b.prev)
	if l.retain != nil {
		if pin := l.retain(); pin != 0 {
			replaced = min(replaced, pin-1)
		}
	}
	if err := l.deleteEntries(old.prev+1, replaced); err != nil {
		return fmt.Errorf("delete entries replaced by the snapshot: %w", err)
	}
	if err := l.deleteEntries(max(b.last, old.prev)+1, old.last); err != nil {
		return fmt.Errorf("delete truncated entries: %w", err)
	}
	return nil
}

// checkRaftEntries checks that entries are consecutive with terms that
// never go down.
func checkRaftEntries(entries []*raftpb.Entry) error {
	for i, e := range entries {
		if e == nil {
			return fmt.Errorf("entry %d of %d is nil: %w", i, len(entries), ErrInvalidRaftRequest)
		}
		if i == 0 {
			if e.GetIndex() > math.MaxUint64-uint64(len(entries)) {
				return fmt.Errorf("entries from %d overflow the index: %w", e.GetIndex(), ErrInvalidRaftRequest)
			}
			continue
		}
		p := entries[i-1]
		if e.GetIndex() != p.GetIndex()+1 {
			return fmt.Errorf("entry %d follows entry %d: %w", e.GetIndex(), p.GetIndex(), ErrInvalidRaftRequest)
		}
		if e.GetTerm() < p.GetTerm() {
			return fmt.Errorf("entry %d has term %d below the previous entry's %d: %w", e.GetIndex(), e.GetTerm(), p.GetTerm(), ErrInvalidRaftRequest)
		}
	}
	return nil
}

// setSnapshot writes a snapshot's metadata and data in txn. Nil data is
// no d key; empty data is an empty value, so Snapshot gives back what was
// saved.
func (l *RaftLog) setSnapshot(txn *badger.Txn, meta *raftpb.SnapshotMetadata, data []byte) error {
	v, err := proto.Marshal(meta)
	if err != nil {
		return fmt.Errorf("encode snapshot metadata: %w", err)
	}
	if err := txn.Set(raftKey(l.group, raftKeySnapshot), v); err != nil {
		return tooLarge(err)
	}
	if data == nil {
		return txn.Delete(raftKey(l.group, raftKeySnapData))
	}
	return tooLarge(txn.Set(raftKey(l.group, raftKeySnapData), data))
}

// cacheTail adds newly appended entries, of encoded sizes, to the tail
// cache, replacing the cached ones from their first index on, and trims the
// cache to its limit. The caller has set l.b to the new bounds.
func (l *RaftLog) cacheTail(entries []*raftpb.Entry, sizes []int) {
	if len(entries) == 0 {
		return
	}
	if len(l.tail) > 0 {
		t0 := l.tail[0].e.GetIndex()
		if first := entries[0].GetIndex(); first <= t0 {
			l.tail, l.tailBytes = nil, 0
		} else if keep := int(first - t0); keep < len(l.tail) {
			for _, te := range l.tail[keep:] {
				l.tailBytes -= te.size
			}
			// A new array: slices Entries returned still see the old one.
			l.tail = append([]raftTailEntry(nil), l.tail[:keep]...)
		}
	}
	for i, e := range entries {
		l.tail = append(l.tail, raftTailEntry{e: e, size: sizes[i]})
		l.tailBytes += sizes[i]
	}
	l.trimTail(0)
}

// trimTail drops cached entries at or below index, then the oldest until
// the cache is within its limit.
func (l *RaftLog) trimTail(index uint64) {
	n := 0
	for n < len(l.tail) && (l.tail[n].e.GetIndex() <= index || l.tailBytes > l.tailLimit) {
		l.tailBytes -= l.tail[n].size
		n++
	}
	if n == len(l.tail) {
		l.tail, l.tailBytes = nil, 0
		return
	}
	l.tail = l.tail[n:]
}

// commit commits txn through the disk guard (diskGuard.commit).
func (l *RaftLog) commit(txn *badger.Txn) error {
	if l.sync == nil {
		return txn.Commit()
	}
	return l.sync.guard.commit(txn.Commit)
}
