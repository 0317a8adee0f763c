package storage

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/dgraph-io/badger/v4"

	"github.com/ferrymq/ferry/internal/wire"
)

// Partition entries: the seam for replication. In a cluster each partition
// is a Raft group, and what its writer gathers into one group commit on a
// single node — appends, cursor writes, acked ids, trims, dedup expiry — is
// instead encoded as one entry, proposed to the group, and applied by every
// replica with applyEntry. apply is deterministic given the state, the
// commands and the time, and the time is the one the leader put in the
// entry, never a replica's clock: so every replica makes the same writes
// and gives the same offsets and dedup answers. The entry's Raft index is
// stored in the partition meta in the same transaction, so a replica that
// restarts knows what it applied and a replayed entry is recognised.
//
//	entry:
//	+-----+---------------+----------+------+-----------+
//	| ver | at            | proposal | n    | command*n |
//	| u8  | u64 unix nano | u64      | uvar |           |
//	+-----+---------------+----------+------+-----------+
//
// proposal names the entry to the writer that proposed it, so that when the
// entry is applied there its requests get their results; apply ignores it.
//
//	command: kind u8, then by kind
//	  append:       window uvar (ns) | nmsgs uvar | (id bytes | record bytes)*
//	                | ncursors uvar | (sid u32 | state bytes)*
//	                | hasAcked u8 [| sid u32 | ttl uvar (ns) | nids uvar | (id bytes)*]
//	                | epoch uvar                                   (version 2)
//	  trim:         trimTo u64 | limit uvar
//	  expire dedup: window uvar (ns)
//	  fence:        sid u32 | epoch uvar                           (version 2)
//
// Version 2 added the subscription owner epochs (fence.go); an entry of
// version 1, from before, decodes with epoch 0 and has no fences.
// "bytes" is a uvarint length and the bytes; a record is a message record
// as stored under its m key (record.go), so headers are encoded sorted and
// the same message always gives the same entry. A barrier (write.go) is a
// single-node device and is never encoded.

// Entry versions: 1 had no owner epochs, 2 has them.
const (
	entryVersion1 = 1
	entryVersion  = 2
)

// errNotReplicable is what encodeEntry says of a command that has no place
// in an entry.
var errNotReplicable = errors.New("command cannot be replicated")

// encodeEntry encodes cmds, to be applied with the time at, as proposal.
func encodeEntry(at time.Time, proposal uint64, cmds []*command) ([]byte, error) {
	b := make([]byte, 0, entrySize(cmds))
	b = append(b, entryVersion)
	b = binary.BigEndian.AppendUint64(b, uint64(at.UnixNano()))
	b = binary.BigEndian.AppendUint64(b, proposal)
	b = binary.AppendUvarint(b, uint64(len(cmds)))
	for _, c := range cmds {
		b = append(b, byte(c.kind))
		switch c.kind {
		case cmdAppend:
			b = binary.AppendUvarint(b, uint64(c.dedupWindow))
			b = binary.AppendUvarint(b, uint64(len(c.msgs)))
			for i := range c.msgs {
				m := &c.msgs[i]
				b = appendBytes(b, []byte(m.ID))
				b = binary.AppendUvarint(b, uint64(messageRecordSize(m)))
				b = appendMessageRecord(b, m)
			}
			b = binary.AppendUvarint(b, uint64(len(c.cursors)))
			for _, w := range c.cursors {
				b = binary.BigEndian.AppendUint32(b, w.sid)
				b = appendBytes(b, w.state)
			}
			b = appendAcked(b, c.acked)
			b = binary.AppendUvarint(b, c.epoch)
		case cmdFence:
			b = binary.BigEndian.AppendUint32(b, c.sid)
			b = binary.AppendUvarint(b, c.epoch)
		case cmdTrim:
			b = binary.BigEndian.AppendUint64(b, c.trimTo)
			b = binary.AppendUvarint(b, uint64(c.limit))
		case cmdExpireDedup:
			b = binary.AppendUvarint(b, uint64(c.dedupWindow))
		default:
			return nil, fmt.Errorf("command kind %d: %w", c.kind, errNotReplicable)
		}
	}
	return b, nil
}

// appendAcked encodes an append's acked ids: hasAcked and, if set, them.
func appendAcked(b []byte, a *ackedIDs) []byte {
	if a == nil {
		return append(b, 0)
	}
	b = append(b, 1)
	b = binary.BigEndian.AppendUint32(b, a.sid)
	b = binary.AppendUvarint(b, uint64(a.ttl))
	b = binary.AppendUvarint(b, uint64(len(a.ids)))
	for _, id := range a.ids {
		b = appendBytes(b, []byte(id))
	}
	return b
}

// entrySize is about len(encodeEntry(at, cmds)), for sizing its buffer.
func entrySize(cmds []*command) int {
	n := 1 + 8 + 8 + binary.MaxVarintLen64
	for _, c := range cmds {
		n += 1 + 4 + 4*binary.MaxVarintLen64
		for i := range c.msgs {
			n += 2*binary.MaxVarintLen64 + len(c.msgs[i].ID) + messageRecordSize(&c.msgs[i])
		}
		for _, w := range c.cursors {
			n += 4 + binary.MaxVarintLen64 + len(w.state)
		}
		if c.acked != nil {
			for _, id := range c.acked.ids {
				n += binary.MaxVarintLen64 + len(id)
			}
		}
	}
	return n
}

func appendBytes(b, v []byte) []byte {
	b = binary.AppendUvarint(b, uint64(len(v)))
	return append(b, v...)
}

// decodeEntry decodes an entry. The commands' slices are copies: b may be
// reused once it returns. A malformed entry is ErrCorrupt.
func decodeEntry(b []byte) (at time.Time, proposal uint64, cmds []*command, err error) {
	d := wire.NewDecoder(b, ErrCorrupt)
	ver := d.Byte()
	if ver != entryVersion1 && ver != entryVersion {
		return time.Time{}, 0, nil, fmt.Errorf("entry version %d: %w", ver, ErrCorrupt)
	}
	at = time.Unix(0, int64(d.U64())).UTC()
	proposal = d.U64()
	// count bounds a count read from b by what b can hold, each item taking
	// at least min bytes, so a corrupt count cannot make a huge slice.
	count := func(min int) int {
		n := d.Uvarint()
		if n > uint64(len(d.Rest())/min) {
			d.Fail()
			return 0
		}
		return int(n)
	}
	duration := func() time.Duration {
		v := d.Uvarint()
		if v > 1<<62 {
			d.Fail()
			return 0
		}
		return time.Duration(v)
	}
	n := count(1)
	cmds = make([]*command, 0, n)
	for range n {
		if d.Err() != nil {
			break
		}
		c := &command{kind: commandKind(d.Byte())}
		switch c.kind {
		case cmdAppend:
			c.dedupWindow = duration()
			if k := count(2); k > 0 {
				c.msgs = make([]Message, k)
			}
			for i := range c.msgs {
				c.msgs[i].ID = string(d.Bytes())
				rec := d.Bytes()
				if d.Err() != nil {
					break
				}
				if err := decodeMessageRecord(rec, &c.msgs[i]); err != nil {
					return time.Time{}, 0, nil, fmt.Errorf("entry message %d: %w", i, err)
				}
				c.size += len(rec)
			}
			if k := count(5); k > 0 {
				c.cursors = make([]cursorWrite, k)
			}
			for i := range c.cursors {
				c.cursors[i] = cursorWrite{sid: d.U32(), state: cloneBytes(d.Bytes())}
			}
			switch d.Byte() {
			case 0:
			case 1:
				c.acked = &ackedIDs{sid: d.U32(), ttl: duration()}
				if k := count(1); k > 0 {
					c.acked.ids = make([]string, k)
				}
				for i := range c.acked.ids {
					c.acked.ids[i] = string(d.Bytes())
				}
			default:
				d.Fail()
			}
			if ver >= entryVersion {
				c.epoch = d.Uvarint()
			}
		case cmdFence:
			if ver < entryVersion {
				d.Fail()
			}
			c.sid, c.epoch = d.U32(), d.Uvarint()
		case cmdTrim:
			c.trimTo = d.U64()
			l := d.Uvarint()
			if l > 1<<31 {
				d.Fail()
			}
			c.limit = int(l)
		case cmdExpireDedup:
			c.dedupWindow = duration()
		default:
			d.Fail()
		}
		cmds = append(cmds, c)
	}
	if err := d.End(); err != nil {
		return time.Time{}, 0, nil, fmt.Errorf("entry: %w", err)
	}
	return at, proposal, cmds, nil
}

// cloneBytes copies v; an empty v is nil (Badger stores both alike).
func cloneBytes(v []byte) []byte {
	if len(v) == 0 {
		return nil
	}
	return append(make([]byte, 0, len(v)), v...)
}

// errApplied is what applyEntry says of an entry at or below the index the
// partition has applied: a replay, which changes nothing.
var errApplied = errors.New("entry already applied")

// appliedEntry is what applyEntry applied: the entry's proposal, its
// commands and their results.
type appliedEntry struct {
	proposal uint64
	cmds     []*command
	results  []result
}

// applyEntry applies the entry data at Raft index index against txn, as
// apply does, and records index in the partition meta in the same
// transaction. If ref is not nil it says where the entry is in a log of
// this store, and the messages are stored as references to it (refs.go),
// not records. An entry at or below the applied index is errApplied and
// writes nothing; a malformed one is ErrCorrupt and writes nothing either
// (skipEntry records it as applied).
func (s partitionState) applyEntry(txn *badger.Txn, ref *entryRef, index uint64, data []byte) (partitionState, appliedEntry, error) {
	if index <= s.meta.applied {
		return s, appliedEntry{}, fmt.Errorf("index %d, applied %d: %w", index, s.meta.applied, errApplied)
	}
	at, proposal, cmds, err := decodeEntry(data)
	if err != nil {
		return s, appliedEntry{}, err
	}
	in := s
	in.ref = ref
	next, results, err := in.apply(txn, cmds, at)
	next.ref = nil
	if err != nil {
		return s, appliedEntry{}, err
	}
	next, err = next.skipEntry(txn, index)
	if err != nil {
		return s, appliedEntry{}, err
	}
	return next, appliedEntry{proposal: proposal, cmds: cmds, results: results}, nil
}

// skipEntry records index as applied without applying anything: for an
// entry every replica finds malformed alike.
func (s partitionState) skipEntry(txn *badger.Txn, index uint64) (partitionState, error) {
	s.meta.applied = index
	if err := txn.Set(partitionKey(s.tid, s.part), s.meta.encode()); err != nil {
		return s, fmt.Errorf("set partition meta: %w", err)
	}
	return s, nil
}
