package storage

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/dgraph-io/badger/v4"

	"github.com/ferrymq/ferry/internal/wire"
)

// Message references: in a cluster the Raft entry is the data (keys.go).
// A replicated partition that knows its group's log stores, under each
// applied message's m key, where the message is in its entry instead of a
// copy of its record:
//
//	+-----+----------+----------+------+------+
//	| ver | group    | index    | skip | n    |
//	| u8  | u64      | u64      | uvar | uvar |
//	+-----+----------+----------+------+------+
//
// ver is refVersion, which no record has (recordVersion), so a value says
// which it is by its first byte. The message is the n-th of the entry at
// index in group's Raft log, counting every message of the entry's append
// commands in order (duplicates and fenced commands included: the entry,
// not what the apply stored). The partition's entry starts skip bytes into
// the Raft entry's data: the group's own header comes first. The key keeps the record's size, so retention
// and the partition's bytes count the same as for a record.

// refVersion is the first byte of a message reference.
const refVersion = 2

// refMaxLen is the longest reference.
const refMaxLen = 1 + 8 + 8 + 2*binary.MaxVarintLen64

// maxEntrySkip bounds a reference's skip: a group's header is short.
const maxEntrySkip = 1 << 10

// entryRef names a partition entry in a Raft entry of this store: the one
// at index in group's log, skip bytes into its data.
type entryRef struct {
	group, index uint64
	skip         int
}

func appendMessageRef(b []byte, r entryRef, n int) []byte {
	b = append(b, refVersion)
	b = binary.BigEndian.AppendUint64(b, r.group)
	b = binary.BigEndian.AppendUint64(b, r.index)
	b = binary.AppendUvarint(b, uint64(r.skip))
	return binary.AppendUvarint(b, uint64(n))
}

// isMessageRef reports whether v, an m key's value, is a reference.
func isMessageRef(v []byte) bool { return len(v) > 0 && v[0] == refVersion }

func decodeMessageRef(v []byte) (entryRef, int, error) {
	d := wire.NewDecoder(v, ErrCorrupt)
	if ver := d.Byte(); ver != refVersion {
		return entryRef{}, 0, fmt.Errorf("message reference version %d: %w", ver, ErrCorrupt)
	}
	r := entryRef{group: d.U64(), index: d.U64()}
	skip, n := d.Uvarint(), d.Uvarint()
	if err := d.End(); err != nil {
		return entryRef{}, 0, fmt.Errorf("message reference: %w", err)
	}
	if r.group == 0 || r.index == 0 || skip > maxEntrySkip || n > 1<<31 {
		return entryRef{}, 0, fmt.Errorf("message reference to group %d index %d skip %d message %d: %w", r.group, r.index, skip, n, ErrCorrupt)
	}
	r.skip = int(skip)
	return r, int(n), nil
}

// EntryLog is what a Proposer may also tell: the Raft log, in the same
// store, that holds the entries its group commits (Store.RaftLog of the
// group), or nil while it does not know it, and how many bytes of each
// Raft entry's data come before the data given to Replica.Apply (a header
// of the group's). A replicated partition whose proposer tells it stores
// each message it applies as a reference to the message in its entry, not
// a copy, and bounds that log's compaction by what its retained messages
// reference (RaftLog.Compact).
type EntryLog interface {
	EntryLog() (l *RaftLog, skip int)
}

// refReader reads m keys' values in one read transaction, resolving
// references against the entries as that transaction sees them. It keeps
// the last entry it decoded, so a read of a run of messages decodes each
// entry once.
type refReader struct {
	txn  *badger.Txn
	ref  entryRef  // the entry msgs are of
	msgs []Message // its messages, in order; nil before the first
}

// message decodes item, the m key info, into m: its record, or the message
// its reference names. m's ID, partition, offset and time are left as
// they are (the key has them).
func (rr *refReader) message(item *badger.Item, info messageKeyInfo, m *Message) error {
	var ref entryRef
	var n int
	isRef := false
	err := item.Value(func(v []byte) (err error) {
		if isRef = isMessageRef(v); isRef {
			ref, n, err = decodeMessageRef(v)
			return err
		}
		return decodeMessageRecord(v, m)
	})
	if err != nil || !isRef {
		return err
	}
	em, err := rr.resolve(ref, n, info)
	if err != nil {
		return err
	}
	m.Key, m.Payload, m.Headers = em.Key, em.Payload, em.Headers
	return nil
}

// record returns item's record: its value, or the record its reference
// names, encoded as the apply would have stored it.
func (rr *refReader) record(item *badger.Item, info messageKeyInfo) ([]byte, error) {
	v, err := item.ValueCopy(nil)
	if err != nil || !isMessageRef(v) {
		return v, err
	}
	ref, n, err := decodeMessageRef(v)
	if err != nil {
		return nil, err
	}
	em, err := rr.resolve(ref, n, info)
	if err != nil {
		return nil, err
	}
	return appendMessageRecord(make([]byte, 0, info.size), em), nil
}

// resolve returns the n-th message of entry ref, which the m key info
// references: it must have the key's id and record size. The message is
// shared with later calls; the caller must not modify it.
func (rr *refReader) resolve(ref entryRef, n int, info messageKeyInfo) (*Message, error) {
	if rr.msgs == nil || rr.ref != ref {
		msgs, err := rr.entryMessages(ref)
		if err != nil {
			return nil, fmt.Errorf("offset %d: %w", info.offset, err)
		}
		rr.ref, rr.msgs = ref, msgs
	}
	if n >= len(rr.msgs) {
		return nil, fmt.Errorf("offset %d references message %d of raft group %d entry %d, which has %d: %w",
			info.offset, n, ref.group, ref.index, len(rr.msgs), ErrCorrupt)
	}
	em := &rr.msgs[n]
	if em.ID != info.id || messageRecordSize(em) != int(info.size) {
		return nil, fmt.Errorf("offset %d references message %d of raft group %d entry %d, which is another: %w",
			info.offset, n, ref.group, ref.index, ErrCorrupt)
	}
	return em, nil
}

// entryMessages reads entry ref and returns every message of its append
// commands, in order.
func (rr *refReader) entryMessages(ref entryRef) ([]Message, error) {
	item, err := rr.txn.Get(raftEntryKey(ref.group, ref.index))
	if errors.Is(err, badger.ErrKeyNotFound) {
		return nil, fmt.Errorf("raft group %d entry %d, which a message references, is gone: %w", ref.group, ref.index, ErrCorrupt)
	}
	if err != nil {
		return nil, err
	}
	var cmds []*command
	err = item.Value(func(v []byte) error {
		e, err := decodeRaftEntry(ref.index, v)
		if err != nil {
			return err
		}
		data := e.GetData()
		if len(data) < ref.skip {
			return fmt.Errorf("data of %d bytes, skip %d: %w", len(data), ref.skip, ErrCorrupt)
		}
		_, _, cmds, err = decodeEntry(data[ref.skip:])
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("raft group %d entry %d: %w", ref.group, ref.index, err)
	}
	var msgs []Message
	for _, c := range cmds {
		if c.kind == cmdAppend {
			msgs = append(msgs, c.msgs...)
		}
	}
	if msgs == nil {
		msgs = []Message{}
	}
	return msgs, nil
}

// repin moves the pin to the first reference at or after the partition's
// first offset (none: 0), reading values from there until it finds one:
// records sit among references only where a replica applied entries before
// it knew its log, or imported the partition. For a trim that went past the
// pinned message.
func (s *partitionState) repin(txn *badger.Txn) error {
	s.meta.pin, s.meta.pinOff = 0, 0
	it := messageKeys(txn, s.tid, s.part)
	defer it.Close()
	for it.Seek(messageSeekKey(s.tid, s.part, s.meta.first)); it.Valid(); it.Next() {
		info, err := decodeMessageKey(it.Item().Key())
		if err != nil {
			return err
		}
		if info.offset >= s.meta.head {
			return nil
		}
		var ref entryRef
		isRef := false
		err = it.Item().Value(func(v []byte) (err error) {
			if isRef = isMessageRef(v); isRef {
				ref, _, err = decodeMessageRef(v)
			}
			return err
		})
		if err != nil {
			return fmt.Errorf("offset %d: %w", info.offset, err)
		}
		if isRef {
			s.meta.pin, s.meta.pinOff = ref.index, info.offset
			return nil
		}
	}
	return nil
}
