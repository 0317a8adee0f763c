package storage

import (
	"encoding/binary"
	"fmt"
	"slices"
	"time"

	"github.com/ferrymq/ferry/internal/wire"
)

// Message is one message of a partition. Append reads ID, Key, Payload and
// Headers; Read fills in every field.
type Message struct {
	ID          string            // dedup id, may be empty
	Key         []byte            // routing key, may be empty
	Payload     []byte            // the payload
	Headers     map[string]string // application headers, may be nil
	Partition   uint32            // assigned by the store
	Offset      uint64            // assigned by the store
	PublishTime time.Time         // assigned by the store, UTC
}

// recordVersion is the first byte of every stored value; a decoder refuses
// a version it does not know rather than misread it.
const recordVersion = 1

// Message record, the value of an m key. Headers are sorted by name so the
// same message always encodes to the same bytes (replicas must agree). The
// offset, publish time, size and id live in the key.
//
//	+-----+--------+-----+----------+---------------------------------+---------+
//	| ver | keyLen | key | nHeaders | (nameLen name valueLen value)*  | payload |
//	| u8  | uvar   |     | uvar     |                                 | rest    |
//	+-----+--------+-----+----------+---------------------------------+---------+
func appendMessageRecord(b []byte, m *Message) []byte {
	b = append(b, recordVersion)
	b = binary.AppendUvarint(b, uint64(len(m.Key)))
	b = append(b, m.Key...)
	b = binary.AppendUvarint(b, uint64(len(m.Headers)))
	if len(m.Headers) > 0 {
		names := make([]string, 0, len(m.Headers))
		for k := range m.Headers {
			names = append(names, k)
		}
		slices.Sort(names)
		for _, k := range names {
			b = binary.AppendUvarint(b, uint64(len(k)))
			b = append(b, k...)
			v := m.Headers[k]
			b = binary.AppendUvarint(b, uint64(len(v)))
			b = append(b, v...)
		}
	}
	return append(b, m.Payload...)
}

// messageRecordSize is len(appendMessageRecord(nil, m)) without encoding.
func messageRecordSize(m *Message) int {
	n := 1 + uvarintLen(len(m.Key)) + len(m.Key) + uvarintLen(len(m.Headers))
	for k, v := range m.Headers {
		n += uvarintLen(len(k)) + len(k) + uvarintLen(len(v)) + len(v)
	}
	return n + len(m.Payload)
}

func uvarintLen(n int) int {
	l := 1
	for x := uint64(n); x >= 0x80; x >>= 7 {
		l++
	}
	return l
}

// decodeMessageRecord decodes a record into m, leaving m.ID (which is in
// the key) as it is. The message's slices are copies: v may be reused by
// Badger after the transaction.
func decodeMessageRecord(v []byte, m *Message) error {
	d := wire.NewDecoder(v, ErrCorrupt)
	if ver := d.Byte(); ver != recordVersion {
		return fmt.Errorf("message record version %d: %w", ver, ErrCorrupt)
	}
	if key := d.Bytes(); len(key) > 0 {
		m.Key = slices.Clone(key)
	}
	n := d.Uvarint()
	if n > uint64(len(v)) { // each header takes at least two bytes
		return fmt.Errorf("message record header count %d: %w", n, ErrCorrupt)
	}
	if n > 0 {
		m.Headers = make(map[string]string, n)
		for range n {
			k := string(d.Bytes())
			m.Headers[k] = string(d.Bytes())
		}
	}
	if d.Err() != nil {
		return fmt.Errorf("message record: %w", d.Err())
	}
	m.Payload = slices.Clone(d.Rest())
	if m.Payload == nil {
		m.Payload = []byte{}
	}
	return nil
}

// Topic record, the value of a t key:
//
//	ver u8 | tid u32 | create time i64 | partitions u32 | retention max age i64 |
//	retention max bytes u64 | retention max messages u64 | dedup window i64 |
//	max message bytes u32
//
// Durations and times are in nanoseconds.
func encodeTopicRecord(t *Topic) []byte {
	b := make([]byte, 0, 53)
	b = append(b, recordVersion)
	b = binary.BigEndian.AppendUint32(b, t.id)
	b = binary.BigEndian.AppendUint64(b, uint64(t.CreateTime.UnixNano()))
	c := t.Config
	b = binary.BigEndian.AppendUint32(b, c.Partitions)
	b = binary.BigEndian.AppendUint64(b, uint64(c.RetentionMaxAge))
	b = binary.BigEndian.AppendUint64(b, c.RetentionMaxBytes)
	b = binary.BigEndian.AppendUint64(b, c.RetentionMaxMessages)
	b = binary.BigEndian.AppendUint64(b, uint64(c.DedupWindow))
	return binary.BigEndian.AppendUint32(b, c.MaxMessageBytes)
}

func decodeTopicRecord(name string, v []byte) (Topic, error) {
	d := wire.NewDecoder(v, ErrCorrupt)
	if ver := d.Byte(); ver != recordVersion {
		return Topic{}, fmt.Errorf("topic record %q version %d: %w", name, ver, ErrCorrupt)
	}
	t := Topic{Name: name}
	t.id = d.U32()
	t.CreateTime = time.Unix(0, int64(d.U64())).UTC()
	t.Config.Partitions = d.U32()
	t.Config.RetentionMaxAge = time.Duration(d.U64())
	t.Config.RetentionMaxBytes = d.U64()
	t.Config.RetentionMaxMessages = d.U64()
	t.Config.DedupWindow = time.Duration(d.U64())
	t.Config.MaxMessageBytes = d.U32()
	if err := d.End(); err != nil {
		return Topic{}, fmt.Errorf("topic record %q: %w", name, err)
	}
	if err := t.Config.Validate(); err != nil {
		return Topic{}, fmt.Errorf("topic record %q: %w: %w", name, ErrCorrupt, err)
	}
	return t, nil
}

// partitionMeta is the value of a p key, rewritten by every transaction that
// appends to or trims the partition.
//
//	ver u8 | first offset u64 | head offset u64 | bytes u64 | last publish time i64
//	[| applied u64 [| pin u64 | pin offset u64]]
type partitionMeta struct {
	first    uint64    // offset of the oldest retained message
	head     uint64    // offset the next message gets
	bytes    uint64    // sum of the retained records' sizes
	lastTime time.Time // publish time of the newest message; times never go back
	applied  uint64    // in a cluster, the Raft index of the last entry applied (entry.go); 0 on a single node
	// pin is the Raft index of the oldest entry a retained message
	// references (refs.go), and pinOff that message's offset; both 0 if
	// no retained message is a reference.
	pin, pinOff uint64
}

// unixNanos is t in unix nanoseconds, 0 for the zero time (a partition
// that never held a message): the zero time's own UnixNano is out of
// range, and read back it is a time in 1754, not zero.
func unixNanos(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

// legacyZeroNanos is what metas written before unixNanos hold for the zero
// time; read back as zero, as 0 is.
var legacyZeroNanos = time.Time{}.UnixNano()

// fromUnixNanos is the time unixNanos encoded as ns.
func fromUnixNanos(ns int64) time.Time {
	if ns == 0 || ns == legacyZeroNanos {
		return time.Time{}
	}
	return time.Unix(0, ns).UTC()
}

// equal reports whether pm and o describe the same partition state.
func (pm partitionMeta) equal(o partitionMeta) bool {
	return pm.first == o.first && pm.head == o.head && pm.bytes == o.bytes && pm.lastTime.Equal(o.lastTime) &&
		pm.applied == o.applied && pm.pin == o.pin && pm.pinOff == o.pinOff
}

// encode is the partition meta record: version, first, head, bytes and
// lastTime as big-endian u64s, then applied only when it is not 0 — so a
// single node's record is what it was before clusters — and the pin only
// when it is not 0, so a partition without references has the record it
// had before them.
func (pm *partitionMeta) encode() []byte {
	b := make([]byte, 0, 57)
	b = append(b, recordVersion)
	b = binary.BigEndian.AppendUint64(b, pm.first)
	b = binary.BigEndian.AppendUint64(b, pm.head)
	b = binary.BigEndian.AppendUint64(b, pm.bytes)
	b = binary.BigEndian.AppendUint64(b, uint64(unixNanos(pm.lastTime)))
	if pm.applied != 0 {
		b = binary.BigEndian.AppendUint64(b, pm.applied)
		if pm.pin != 0 {
			b = binary.BigEndian.AppendUint64(b, pm.pin)
			b = binary.BigEndian.AppendUint64(b, pm.pinOff)
		}
	}
	return b
}

func decodePartitionMeta(v []byte) (partitionMeta, error) {
	d := wire.NewDecoder(v, ErrCorrupt)
	if ver := d.Byte(); ver != recordVersion {
		return partitionMeta{}, fmt.Errorf("partition meta version %d: %w", ver, ErrCorrupt)
	}
	pm := partitionMeta{first: d.U64(), head: d.U64(), bytes: d.U64()}
	pm.lastTime = fromUnixNanos(int64(d.U64()))
	if len(d.Rest()) > 0 {
		// Written only when not 0: one meta, one encoding.
		if pm.applied = d.U64(); pm.applied == 0 {
			d.Fail()
		}
	}
	if len(d.Rest()) > 0 {
		if pm.pin, pm.pinOff = d.U64(), d.U64(); pm.pin == 0 || pm.pin > pm.applied {
			d.Fail()
		}
	}
	if err := d.End(); err != nil {
		return partitionMeta{}, fmt.Errorf("partition meta: %w", err)
	}
	if pm.first > pm.head {
		return partitionMeta{}, fmt.Errorf("partition meta first %d > head %d: %w", pm.first, pm.head, ErrCorrupt)
	}
	if pm.pin != 0 && (pm.pinOff < pm.first || pm.pinOff >= pm.head) {
		return partitionMeta{}, fmt.Errorf("partition meta pins offset %d outside %d to %d: %w", pm.pinOff, pm.first, pm.head, ErrCorrupt)
	}
	return pm, nil
}
