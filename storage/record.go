package storage

import (
	"encoding/binary"
	"fmt"
	"slices"
	"time"
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
	d := decoder{b: v}
	if ver := d.byte(); ver != recordVersion {
		return fmt.Errorf("message record version %d: %w", ver, ErrCorrupt)
	}
	if key := d.bytes(); len(key) > 0 {
		m.Key = slices.Clone(key)
	}
	n := d.uvarint()
	if n > uint64(len(v)) { // each header takes at least two bytes
		return fmt.Errorf("message record header count %d: %w", n, ErrCorrupt)
	}
	if n > 0 {
		m.Headers = make(map[string]string, n)
		for range n {
			k := string(d.bytes())
			m.Headers[k] = string(d.bytes())
		}
	}
	if d.err != nil {
		return fmt.Errorf("message record: %w", d.err)
	}
	m.Payload = slices.Clone(d.b)
	if m.Payload == nil {
		m.Payload = []byte{}
	}
	return nil
}

// decoder reads a record front to back; the first error sticks and makes
// every later read return zero values.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) fail() {
	if d.err == nil {
		d.err = ErrCorrupt
	}
	d.b = nil
}

func (d *decoder) byte() byte {
	if len(d.b) < 1 {
		d.fail()
		return 0
	}
	c := d.b[0]
	d.b = d.b[1:]
	return c
}

func (d *decoder) uvarint() uint64 {
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail()
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) bytes() []byte {
	n := d.uvarint()
	if n > uint64(len(d.b)) {
		d.fail()
		return nil
	}
	v := d.b[:n]
	d.b = d.b[n:]
	return v
}

func (d *decoder) u32() uint32 {
	if len(d.b) < 4 {
		d.fail()
		return 0
	}
	v := binary.BigEndian.Uint32(d.b)
	d.b = d.b[4:]
	return v
}

func (d *decoder) u64() uint64 {
	if len(d.b) < 8 {
		d.fail()
		return 0
	}
	v := binary.BigEndian.Uint64(d.b)
	d.b = d.b[8:]
	return v
}

// end fails the decode if bytes are left over.
func (d *decoder) end() error {
	if d.err == nil && len(d.b) != 0 {
		d.err = ErrCorrupt
	}
	return d.err
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
	d := decoder{b: v}
	if ver := d.byte(); ver != recordVersion {
		return Topic{}, fmt.Errorf("topic record %q version %d: %w", name, ver, ErrCorrupt)
	}
	t := Topic{Name: name}
	t.id = d.u32()
	t.CreateTime = time.Unix(0, int64(d.u64())).UTC()
	t.Config.Partitions = d.u32()
	t.Config.RetentionMaxAge = time.Duration(d.u64())
	t.Config.RetentionMaxBytes = d.u64()
	t.Config.RetentionMaxMessages = d.u64()
	t.Config.DedupWindow = time.Duration(d.u64())
	t.Config.MaxMessageBytes = d.u32()
	if err := d.end(); err != nil {
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
type partitionMeta struct {
	first    uint64    // offset of the oldest retained message
	head     uint64    // offset the next message gets
	bytes    uint64    // sum of the retained records' sizes
	lastTime time.Time // publish time of the newest message; times never go back
	applied  uint64    // in a cluster, the Raft index of the last entry applied (entry.go); 0 on a single node
}

// equal reports whether pm and o describe the same partition state.
func (pm partitionMeta) equal(o partitionMeta) bool {
	return pm.first == o.first && pm.head == o.head && pm.bytes == o.bytes && pm.lastTime.Equal(o.lastTime) &&
		pm.applied == o.applied
}

// encode is the partition meta record: version, first, head, bytes and
// lastTime as big-endian u64s, then applied only when it is not 0 — so a
// single node's record is what it was before clusters.
func (pm *partitionMeta) encode() []byte {
	b := make([]byte, 0, 41)
	b = append(b, recordVersion)
	b = binary.BigEndian.AppendUint64(b, pm.first)
	b = binary.BigEndian.AppendUint64(b, pm.head)
	b = binary.BigEndian.AppendUint64(b, pm.bytes)
	b = binary.BigEndian.AppendUint64(b, uint64(pm.lastTime.UnixNano()))
	if pm.applied != 0 {
		b = binary.BigEndian.AppendUint64(b, pm.applied)
	}
	return b
}

func decodePartitionMeta(v []byte) (partitionMeta, error) {
	d := decoder{b: v}
	if ver := d.byte(); ver != recordVersion {
		return partitionMeta{}, fmt.Errorf("partition meta version %d: %w", ver, ErrCorrupt)
	}
	pm := partitionMeta{first: d.u64(), head: d.u64(), bytes: d.u64()}
	pm.lastTime = time.Unix(0, int64(d.u64())).UTC()
	if len(d.b) > 0 {
		// Written only when not 0: one meta, one encoding.
		if pm.applied = d.u64(); pm.applied == 0 {
			d.fail()
		}
	}
	if err := d.end(); err != nil {
		return partitionMeta{}, fmt.Errorf("partition meta: %w", err)
	}
	if pm.first > pm.head {
		return partitionMeta{}, fmt.Errorf("partition meta first %d > head %d: %w", pm.first, pm.head, ErrCorrupt)
	}
	return pm, nil
}
