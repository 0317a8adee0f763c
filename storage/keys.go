package storage

import (
	"encoding/binary"
	"fmt"
	"time"

	"github.com/dgraph-io/badger/v4"
)

// Keys. One byte names the kind; integers are big-endian so Badger iterates
// in numeric order. A topic's data is keyed by its numeric id, not its name:
// a deleted topic's keys can be dropped in the background while a new topic
// of the same name starts clean, and message keys stay short.
//
//	t <name>                                   → topic record (id, config, create time)
//	n                                          → next topic id, u32
//	z <tid u32>                                → tombstone: the topic's data is being dropped
//	p <tid u32> <part u32>                     → partition meta (first, head, bytes, last time,
//	                                             and in a cluster the Raft index applied)
//	i <tid u32> <part u32>                     → import marker: the partition's keys are being
//	                                             replaced by a peer's export (import.go); its
//	                                             meta is empty meanwhile
//	m <tid u32> <part u32> <off u64> <t i64> <size u32> <id>
//	                                           → message record, or in a cluster a reference
//	                                             to the message in its Raft entry (record.go);
//	                                             t is the publish time in unix nanoseconds,
//	                                             size the record's length (a reference's too)
//	                                             and id the dedup id (may be empty)
//	d <tid u32> <part u32> <id>                → offset u64 | publish time i64: the id's latest
//	                                             store, while within the dedup window (dedup.go)
//	o                                          → next subscription id, u32
//	s <tid u32> <name>                         → subscription record (sid, config, create time)
//	c <tid u32> <part u32> <sid u32>           → a subscription's cursor state in a partition,
//	                                             opaque bytes the delivery engine encodes
//	c <tid u32> <part u32> <sid u32> 'e'       → the highest owner epoch the partition has seen
//	                                             for the subscription, u64 (cluster; fence.go)
//	a <tid u32> <sid u32> <id>                 → an id the subscription acked (its dedup horizon);
//	                                             empty value, Badger TTL = the horizon
//	y <tid u32> <sid u32>                      → tombstone: a deleted subscription's acked ids
//	                                             are being dropped
//	r <group u64> b                            → a Raft group's log bounds: index and term of
//	                                             the entry before the first, and the last index
//	r <group u64> e <index u64>                → a Raft log entry (raftpb.Entry, protobuf)
//	r <group u64> h                            → the group's Raft hard state (raftpb.HardState)
//	r <group u64> s                            → its latest snapshot's metadata
//	                                             (raftpb.SnapshotMetadata)
//	r <group u64> d                            → that snapshot's data, raw bytes; absent if nil
//	r <group u64> a                            → the index of the group's last entry whose topic or
//	                                             subscription change was stored (Stamp), u64
//
// Per partition the m keys are dense in offset. What retention and dedup need
// is in the key, so both walk keys without reading values: retention sums
// sizes and compares times; dedup expiry walks them to find the d keys a
// window old. A message with an id has its d key written in the same
// transaction, so a lookup by id is one read. The partition meta is
// rewritten in every append's transaction, so opening a store reads one key
// per partition to find every head, never the whole log.
//
// Every key of a topic's data starts with its kind and the topic id, so a
// deleted topic's subscriptions go with it: dropping a topic deletes the
// topicDataKinds prefixes. A cursor is written by the partition's writer in
// the same transaction as the messages (and, for Commit, as the messages of
// other partitions), so it is exactly as durable as they are.
//
// In a cluster the Raft entry is the data: a replicated partition whose
// group's log is in this store (Replica, EntryLog) stores an applied
// message as a reference — the group, the entry's index and the message's
// place among the entry's messages — not a second copy of its payload. A
// read resolves references against the entries in the same read
// transaction, decoding each entry once per read; an export to a peer
// resolves them into records, and what a replica imports, or applies
// before its group's log is known, stays a record. The partition meta
// holds the index of the oldest entry a retained message references (its
// pin, advanced by the trims of retention), and the group's log is never
// compacted past it (RaftLog.Compact): a message is written once per node,
// in its entry, and its entry lives exactly as long as the message.
//
// The r keys are Raft's (raftlog.go), one set per group, and belong to no
// topic: dropping a topic never touches them. Every key of a group starts
// with r and the group id, so a group's compaction and deletion stay inside
// its own prefix. Snapshot data has its own key so that loading a group
// reads only the metadata; Snapshot reads the data. The b key, not the e
// keys present, says which entries exist: e keys outside its bounds are
// left over from a compaction, truncation or snapshot whose deletions were
// cut short by a crash, are never read, and go when the group is next loaded.
const (
	kindTopic     byte = 't'
	kindNextID    byte = 'n'
	kindTombstone byte = 'z'
	kindPartition byte = 'p'
	kindMessage   byte = 'm'
	kindDedup     byte = 'd'
	kindNextSubID byte = 'o'
	kindSub       byte = 's'
	kindCursor    byte = 'c'
	kindAckedID   byte = 'a'
	kindSubTomb   byte = 'y'
	kindRaft      byte = 'r'
	kindImport    byte = 'i'
)

// The byte after r <group u64>: which record of the group the key holds.
const (
	raftKeyBounds    byte = 'b'
	raftKeyEntry     byte = 'e'
	raftKeyHardState byte = 'h'
	raftKeySnapshot  byte = 's'
	raftKeySnapData  byte = 'd'
	raftKeyApplied   byte = 'a'
)

// topicDataKinds are the kinds of key dropped with a deleted topic.
var topicDataKinds = []byte{kindMessage, kindDedup, kindCursor, kindAckedID, kindSubTomb, kindSub, kindImport}

const (
	partitionPrefixLen = 1 + 4 + 4
	// messageKeyLen is the length of a message key without its id.
	messageKeyLen = partitionPrefixLen + 8 + 8 + 4
	// raftKeyLen is the length of a Raft group's singleton keys; an entry
	// key adds its index.
	raftKeyLen      = 1 + 8 + 1
	raftEntryKeyLen = raftKeyLen + 8
)

func topicKey(name string) []byte {
	return append([]byte{kindTopic}, name...)
}

func nextIDKey() []byte { return []byte{kindNextID} }

func tombstoneKey(tid uint32) []byte {
	return binary.BigEndian.AppendUint32([]byte{kindTombstone}, tid)
}

// topicPrefix is the prefix of every key of kind for topic tid.
func topicPrefix(kind byte, tid uint32) []byte {
	return binary.BigEndian.AppendUint32([]byte{kind}, tid)
}

// partitionPrefix is the prefix of every key of kind for one partition.
func partitionPrefix(kind byte, tid, part uint32) []byte {
	b := make([]byte, partitionPrefixLen, partitionPrefixLen+24)
	b[0] = kind
	binary.BigEndian.PutUint32(b[1:], tid)
	binary.BigEndian.PutUint32(b[5:], part)
	return b
}

func partitionKey(tid, part uint32) []byte { return partitionPrefix(kindPartition, tid, part) }

func importKey(tid, part uint32) []byte { return partitionPrefix(kindImport, tid, part) }

// messageSeekKey is where an iterator seeks to find offset off: every
// message key of that offset sorts at or after it.
func messageSeekKey(tid, part uint32, off uint64) []byte {
	return binary.BigEndian.AppendUint64(partitionPrefix(kindMessage, tid, part), off)
}

func messageKey(tid, part uint32, off uint64, t time.Time, size uint32, id string) []byte {
	b := make([]byte, 0, messageKeyLen+len(id))
	b = append(b, kindMessage)
	b = binary.BigEndian.AppendUint32(b, tid)
	b = binary.BigEndian.AppendUint32(b, part)
	b = binary.BigEndian.AppendUint64(b, off)
	b = binary.BigEndian.AppendUint64(b, uint64(t.UnixNano()))
	b = binary.BigEndian.AppendUint32(b, size)
	return append(b, id...)
}

// messageKeyInfo is what a message key tells without reading the value.
type messageKeyInfo struct {
	tid, part   uint32
	offset      uint64
	publishTime time.Time
	size        uint32
	id          string
}

func decodeMessageKey(k []byte) (messageKeyInfo, error) {
	if len(k) < messageKeyLen || len(k) > messageKeyLen+MaxIDBytes || k[0] != kindMessage {
		return messageKeyInfo{}, fmt.Errorf("message key %x: %w", k, ErrCorrupt)
	}
	return messageKeyInfo{
		tid:         binary.BigEndian.Uint32(k[1:]),
		part:        binary.BigEndian.Uint32(k[5:]),
		offset:      binary.BigEndian.Uint64(k[9:]),
		publishTime: time.Unix(0, int64(binary.BigEndian.Uint64(k[17:]))).UTC(),
		size:        binary.BigEndian.Uint32(k[25:]),
		id:          string(k[messageKeyLen:]),
	}, nil
}

func nextSubIDKey() []byte { return []byte{kindNextSubID} }

func subKey(tid uint32, name string) []byte {
	return append(topicPrefix(kindSub, tid), name...)
}

func cursorKey(tid, part, sid uint32) []byte {
	return binary.BigEndian.AppendUint32(partitionPrefix(kindCursor, tid, part), sid)
}

// ackedIDPrefix is the prefix of every acked-id key of one subscription.
func ackedIDPrefix(tid, sid uint32) []byte {
	return binary.BigEndian.AppendUint32(topicPrefix(kindAckedID, tid), sid)
}

func ackedIDKey(tid, sid uint32, id string) []byte {
	return append(ackedIDPrefix(tid, sid), id...)
}

func subTombstoneKey(tid, sid uint32) []byte {
	return binary.BigEndian.AppendUint32(topicPrefix(kindSubTomb, tid), sid)
}

func decodeSubTombstoneKey(k []byte) (tid, sid uint32, err error) {
	if len(k) != 9 || k[0] != kindSubTomb {
		return 0, 0, fmt.Errorf("subscription tombstone key %x: %w", k, ErrCorrupt)
	}
	return binary.BigEndian.Uint32(k[1:]), binary.BigEndian.Uint32(k[5:]), nil
}

func decodeTombstoneKey(k []byte) (tid uint32, err error) {
	if len(k) != 5 || k[0] != kindTombstone {
		return 0, fmt.Errorf("tombstone key %x: %w", k, ErrCorrupt)
	}
	return binary.BigEndian.Uint32(k[1:]), nil
}

// raftGroupPrefix is the prefix of every key of a Raft group.
func raftGroupPrefix(group uint64) []byte {
	b := make([]byte, 0, raftEntryKeyLen)
	b = append(b, kindRaft)
	return binary.BigEndian.AppendUint64(b, group)
}

// raftKey is the key of a Raft group's record sub (raftKeyBounds,
// raftKeyHardState, raftKeySnapshot, raftKeySnapData, raftKeyApplied) or, with
// raftKeyEntry, the prefix of its entry keys.
func raftKey(group uint64, sub byte) []byte {
	return append(raftGroupPrefix(group), sub)
}

func raftEntryKey(group, index uint64) []byte {
	return binary.BigEndian.AppendUint64(raftKey(group, raftKeyEntry), index)
}

func decodeRaftEntryKey(k []byte) (group, index uint64, err error) {
	if len(k) != raftEntryKeyLen || k[0] != kindRaft || k[9] != raftKeyEntry {
		return 0, 0, fmt.Errorf("raft entry key %x: %w", k, ErrCorrupt)
	}
	return binary.BigEndian.Uint64(k[1:]), binary.BigEndian.Uint64(k[10:]), nil
}

// messageKeys returns an iterator over the message keys of partition part
// of topic tid in txn, values not prefetched (what is needed is in the
// key; a value is read on demand). The caller closes it.
func messageKeys(txn *badger.Txn, tid, part uint32) *badger.Iterator {
	opts := badger.DefaultIteratorOptions
	opts.PrefetchValues = false
	opts.Prefix = partitionPrefix(kindMessage, tid, part)
	return txn.NewIterator(opts)
}
