package storage

import (
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
	cmdFence                              // raise a subscription's owner epoch (fence.go)
	cmdBarrier                            // hand the state to a multi-partition write (write.go)
	// Control commands of a replicated partition (replica.go): the writer
	// acts on them itself, they never reach apply or an entry.
	cmdReplicate      // from now on, propose groups to proposer instead of committing them
	cmdApplyEntry     // apply a committed Raft entry
	cmdProposalFailed // answer a proposal's requests with cause: it will not be applied as proposed
	cmdHold           // hand the state to an export or import (hold) and wait for it back
)

// control reports whether c is one the writer handles itself, outside a
// group.
func (c *command) control() bool { return c.kind >= cmdBarrier }

// command is one input to a partition's state machine. Everything apply
// needs is in the command or the state, never read from a clock or a
// config: replaying the same commands with the same times gives the same
// offsets and dedup decisions (the seam for replication).
type command struct {
	kind        commandKind
	msgs        []Message     // cmdAppend
	dedupWindow time.Duration // cmdAppend, cmdExpireDedup
	trimTo      uint64        // cmdTrim: first offset to keep
	limit       int           // cmdTrim: most keys to delete
	size        int           // cmdAppend: record bytes, for group sizing
	// cmdAppend may also carry cursor writes, stored in the same
	// transaction as its messages (Commit, dead-lettering), or carry only
	// them (acks, cursor moves).
	cursors []cursorWrite
	acked   *ackedIDs
	// epoch is the subscription owner epoch its cursor writes and acked
	// ids were decided under (cmdAppend), or the one to raise to
	// (cmdFence, for subscription sid); 0 on a single node (fence.go).
	epoch   uint64
	sid     uint32   // cmdFence
	barrier *barrier // cmdBarrier, cmdHold

	proposer Proposer // cmdReplicate
	refLog   *RaftLog // cmdReplicate: the log the partition's references are to, if it has any
	entries  []Entry  // cmdApplyEntry: committed entries, in log order
	proposal uint64   // cmdProposalFailed
	cause    error    // cmdProposalFailed
}

// cursorWrite sets one subscription's cursor state in this partition.
type cursorWrite struct {
	sid   uint32
	state []byte
}

// ackedIDs are ids a subscription acked, remembered until now+ttl (for
// ever if ttl is 0).
type ackedIDs struct {
	sid uint32
	ids []string
	ttl time.Duration
}

// result is apply's answer to one command.
type result struct {
	appended []AppendResult // cmdAppend: one per message
	sizes    []int          // cmdAppend: record size per message, 0 for duplicates
	at       time.Time      // cmdAppend: the publish time given to the stored messages
	deleted  int            // cmdTrim: messages removed; cmdExpireDedup: ids forgotten
	more     bool           // cmdTrim: limit reached, call again
	// err refuses the command alone, which changed nothing: ErrFenced.
	// Its request is answered with it; the rest of the group applies.
	err error
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
	dedup     *dedupIndex
	// added holds the ids an apply stored, for commitDedup to put in the
	// index once the transaction has committed; addedIDs indexes it once it
	// is long enough for a scan to cost.
	added    []dedupRecord
	addedIDs map[string]int
	// epochs are the highest owner epoch seen per subscription (fence.go),
	// loaded on first need; raised holds an apply's raises, for committed
	// to put in epochs once the transaction has committed.
	epochs map[uint32]uint64
	raised map[uint32]uint64
	// ref, while applyEntry applies an entry of a log in this store, is
	// that entry: append stores references to it (refs.go), not records.
	ref *entryRef
}

// apply runs cmds against txn and returns one result per command and the
// state after them; it writes the partition meta only if it changed. It is deterministic: the same state, commands and now
// give the same writes and results. It reads no clock and starts no
// goroutine. On error the caller discards txn and keeps the old state; on
// success it commits txn and then calls committed on the new state. s is
// a committed state, or the state an earlier apply in the same
// transaction returned (applyRun chains a run of entries): its ids and
// raises not committed yet (added, raised) count as stored. Only
// expiry changes the dedup index in place (its filters and where its walk
// stands), which is harmless if the transaction then fails: an expired id
// is no longer a duplicate anyway, and a d key left behind is read as
// expired and goes at the next open.
func (s partitionState) apply(txn *badger.Txn, cmds []*command, now time.Time) (partitionState, []result, error) {
	before := s.meta
	results := make([]result, len(cmds))
	nmsgs := 0 // messages of the commands before c: where c's are in an entry
	for i, c := range cmds {
		var err error
		switch c.kind {
		case cmdAppend:
			base := nmsgs
			nmsgs += len(c.msgs)
			if results[i].err, err = s.admit(txn, c); results[i].err != nil || err != nil {
				break // fenced: nothing of c is written, its messages neither
			}
			if len(c.msgs) > 0 {
				results[i].appended, results[i].sizes, err = s.append(txn, c, now, base)
				results[i].at = s.meta.lastTime
			}
			if err == nil {
				err = s.writeCursors(txn, c, now)
			}
		case cmdTrim:
			results[i].deleted, results[i].more, err = s.trim(txn, c.trimTo, c.limit)
		case cmdExpireDedup:
			results[i].deleted, results[i].more, err = s.expireDedup(txn, now, c.dedupWindow)
		case cmdFence:
			results[i].err, err = s.fence(txn, c.sid, c.epoch)
		default:
			err = fmt.Errorf("command kind %d: %w", c.kind, ErrCorrupt)
		}
		if err != nil {
			return s, nil, err
		}
	}
	if !s.meta.equal(before) {
		if err := txn.Set(partitionKey(s.tid, s.part), s.meta.encode()); err != nil {
			return s, nil, fmt.Errorf("set partition meta: %w", err)
		}
	}
	return s, results, nil
}

// committed lets the dedup index's filter know the ids of a committed
// apply, and the epochs its raises.
func (s *partitionState) committed() {
	for _, r := range s.added {
		s.dedup.add(r)
	}
	for sid, e := range s.raised {
		s.epochs[sid] = e
	}
	s.added, s.addedIDs, s.raised = nil, nil, nil
}

// append stores c.msgs at the head. A message whose id was stored within the
// dedup window is not stored again; its result names the original offset.
// Publish times never go back, even if the clock does, so offset order is
// time order (dedup expiry and age retention rely on it). While an entry
// of a log in this store is applied (s.ref), each message is stored as a
// reference to it, the message base+i of the entry (refs.go), and the
// first reference of the partition pins the entry.
func (s *partitionState) append(txn *badger.Txn, c *command, now time.Time, base int) ([]AppendResult, []int, error) {
	t := now.UTC()
	if t.Before(s.meta.lastTime) {
		t = s.meta.lastTime
	}
	s.dedup.filter.expire(t, c.dedupWindow)
	res := make([]AppendResult, len(c.msgs))
	sizes := make([]int, len(c.msgs))
	for i := range c.msgs {
		m := &c.msgs[i]
		if m.ID != "" {
			e, ok, err := s.lookupID(txn, m.ID, t, c.dedupWindow)
			if err != nil {
				return nil, nil, err
			}
			if ok {
				res[i] = AppendResult{Offset: e.offset, Duplicate: true}
				continue
			}
		}
		off := s.meta.head
		// Badger keeps the value slice until the transaction commits, so
		// each record gets its own, sized exactly.
		size := messageRecordSize(m)
		var v []byte
		if s.ref != nil {
			v = appendMessageRef(make([]byte, 0, refMaxLen), *s.ref, base+i)
			if s.meta.pin == 0 {
				s.meta.pin, s.meta.pinOff = s.ref.index, off
			}
		} else {
			v = appendMessageRecord(make([]byte, 0, size), m)
		}
		if err := txn.Set(messageKey(s.tid, s.part, off, t, uint32(size), m.ID), v); err != nil {
			return nil, nil, fmt.Errorf("set message %d: %w", off, err)
		}
		sizes[i] = size
		if m.ID != "" {
			r := dedupRecord{id: m.ID, dedupEntry: dedupEntry{offset: off, time: t}}
			if err := putDedup(txn, s.tid, s.part, r); err != nil {
				return nil, nil, err
			}
			s.noteAdded(r)
		}
		s.meta.head++
		s.meta.bytes += uint64(size)
		res[i] = AppendResult{Offset: off}
	}
	s.meta.lastTime = t
	return res, sizes, nil
}

// lookupID finds id among the ids stored within window before now: those
// of this apply first (the filter learns them on commit), then the index.
func (s *partitionState) lookupID(txn *badger.Txn, id string, now time.Time, window time.Duration) (dedupEntry, bool, error) {
	if s.addedIDs != nil {
		if i, ok := s.addedIDs[id]; ok {
			return s.added[i].dedupEntry, true, nil
		}
	} else {
		for i := len(s.added) - 1; i >= 0; i-- {
			if s.added[i].id == id {
				return s.added[i].dedupEntry, true, nil
			}
		}
	}
	return s.dedup.lookup(txn, s.tid, s.part, id, now, window)
}

// noteAdded records an id this apply stored.
func (s *partitionState) noteAdded(r dedupRecord) {
	s.added = append(s.added, r)
	switch {
	case s.addedIDs != nil:
		s.addedIDs[r.id] = len(s.added) - 1
	case len(s.added) > 16:
		s.addedIDs = make(map[string]int, 2*len(s.added))
		for i, a := range s.added {
			s.addedIDs[a.id] = i
		}
	}
}

// writeCursors stores c's cursor states and acked ids. The expiry of an
// acked id is computed from now, so a replay gives the same writes.
func (s *partitionState) writeCursors(txn *badger.Txn, c *command, now time.Time) error {
	for _, w := range c.cursors {
		if err := txn.Set(cursorKey(s.tid, s.part, w.sid), w.state); err != nil {
			return fmt.Errorf("set cursor of subscription %d: %w", w.sid, err)
		}
	}
	if c.acked == nil {
		return nil
	}
	for _, id := range c.acked.ids {
		e := badger.NewEntry(ackedIDKey(s.tid, c.acked.sid, id), nil)
		if c.acked.ttl > 0 {
			e.ExpiresAt = uint64(now.Add(c.acked.ttl).Unix())
		}
		if err := txn.SetEntry(e); err != nil {
			return fmt.Errorf("set acked id of subscription %d: %w", c.acked.sid, err)
		}
	}
	return nil
}

// writes reports whether c stores something besides messages.
func (c *command) writes() bool {
	return len(c.cursors) > 0 || (c.acked != nil && len(c.acked.ids) > 0) || c.kind == cmdFence
}

// trim deletes messages below trimTo, oldest first, at most limit of them.
// It walks keys only: the record size in each key keeps bytes exact.
func (s *partitionState) trim(txn *badger.Txn, trimTo uint64, limit int) (deleted int, more bool, err error) {
	trimTo = min(trimTo, s.meta.head)
	if trimTo <= s.meta.first {
		return 0, false, nil
	}
	it := messageKeys(txn, s.tid, s.part)
	defer it.Close()
	for it.Seek(messageSeekKey(s.tid, s.part, s.meta.first)); it.Valid(); it.Next() {
		if deleted == limit {
			more = true
			break
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
	if !more {
		s.meta.first = max(s.meta.first, trimTo)
	}
	it.Close()
	if s.meta.pin != 0 && s.meta.pinOff < s.meta.first {
		if err := s.repin(txn); err != nil {
			return deleted, false, err
		}
	}
	return deleted, more, nil
}
