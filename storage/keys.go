package storage

import (
	"encoding/binary"
	"fmt"
	"time"
)

// Keys. One byte names the kind; integers are big-endian so Badger iterates
// in numeric order. A topic's data is keyed by its numeric id, not its name:
// a deleted topic's keys can be dropped in the background while a new topic
// of the same name starts clean, and message keys stay short.
//
//	t <name>                                   → topic record (id, config, create time)
//	n                                          → next topic id, u32
//	z <tid u32>                                → tombstone: the topic's data is being dropped
//	p <tid u32> <part u32>                     → partition meta (first, head, bytes, last time)
//	m <tid u32> <part u32> <off u64> <t i64> <size u32>
//	                                           → message record; t is the publish time in
//	                                             unix nanoseconds and size the record's length,
//	                                             so retention can walk keys without values
//	d <tid u32> <part u32> <id>                → dedup entry: offset u64, publish time i64
//	x <tid u32> <part u32> <off u64>           → dedup expiry: publish time i64, id
//
// Per partition the m keys are dense in offset; x keys exist only for messages
// with an id and are walked oldest first to expire d keys once the dedup
// window has passed. The partition meta is rewritten in every append's
// transaction, so opening a store reads one key per partition and never the
// log itself.
const (
	kindTopic     byte = 't'
	kindNextID    byte = 'n'
	kindTombstone byte = 'z'
	kindPartition byte = 'p'
	kindMessage   byte = 'm'
	kindDedup     byte = 'd'
	kindExpiry    byte = 'x'
)

const (
	partitionPrefixLen = 1 + 4 + 4
	messageKeyLen      = partitionPrefixLen + 8 + 8 + 4
	expiryKeyLen       = partitionPrefixLen + 8
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

// messageSeekKey is where an iterator seeks to find offset off: every
// message key of that offset sorts at or after it.
func messageSeekKey(tid, part uint32, off uint64) []byte {
	return binary.BigEndian.AppendUint64(partitionPrefix(kindMessage, tid, part), off)
}

func messageKey(tid, part uint32, off uint64, t time.Time, size uint32) []byte {
	b := messageSeekKey(tid, part, off)
	b = binary.BigEndian.AppendUint64(b, uint64(t.UnixNano()))
	return binary.BigEndian.AppendUint32(b, size)
}

// messageKeyInfo is what a message key tells without reading the value.
type messageKeyInfo struct {
	tid, part   uint32
	offset      uint64
	publishTime time.Time
	size        uint32
}

func decodeMessageKey(k []byte) (messageKeyInfo, error) {
	if len(k) != messageKeyLen || k[0] != kindMessage {
		return messageKeyInfo{}, fmt.Errorf("message key %x: %w", k, ErrCorrupt)
	}
	return messageKeyInfo{
		tid:         binary.BigEndian.Uint32(k[1:]),
		part:        binary.BigEndian.Uint32(k[5:]),
		offset:      binary.BigEndian.Uint64(k[9:]),
		publishTime: time.Unix(0, int64(binary.BigEndian.Uint64(k[17:]))).UTC(),
		size:        binary.BigEndian.Uint32(k[25:]),
	}, nil
}

func dedupKey(tid, part uint32, id string) []byte {
	return append(partitionPrefix(kindDedup, tid, part), id...)
}

func expiryKey(tid, part uint32, off uint64) []byte {
	return binary.BigEndian.AppendUint64(partitionPrefix(kindExpiry, tid, part), off)
}

func decodeExpiryKey(k []byte) (off uint64, err error) {
	if len(k) != expiryKeyLen || k[0] != kindExpiry {
		return 0, fmt.Errorf("expiry key %x: %w", k, ErrCorrupt)
	}
	return binary.BigEndian.Uint64(k[9:]), nil
}

func decodeTombstoneKey(k []byte) (tid uint32, err error) {
	if len(k) != 5 || k[0] != kindTombstone {
		return 0, fmt.Errorf("tombstone key %x: %w", k, ErrCorrupt)
	}
	return binary.BigEndian.Uint32(k[1:]), nil
}
