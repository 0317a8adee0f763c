package cluster

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/ferrymq/ferry/storage"
)

// metaKind is what a metadata entry does.
type metaKind byte

const (
	metaCreateTopic metaKind = iota + 1
	metaUpdateTopic
	metaDeleteTopic
	metaCreateSub
	metaUpdateSub
	metaDeleteSub
)

func (k metaKind) String() string {
	switch k {
	case metaCreateTopic:
		return "create topic"
	case metaUpdateTopic:
		return "update topic"
	case metaDeleteTopic:
		return "delete topic"
	case metaCreateSub:
		return "create subscription"
	case metaUpdateSub:
		return "update subscription"
	case metaDeleteSub:
		return "delete subscription"
	}
	return fmt.Sprintf("metadata op %d", byte(k))
}

// metaOp is one metadata entry: one topic or subscription change, with the
// leader's time and the proposal it answers.
type metaOp struct {
	node, seq uint64    // the proposing node and its proposal number
	at        time.Time // the leader's clock at the proposal
	kind      metaKind
	topic     string              // every kind
	cfg       storage.TopicConfig // create and update topic
	sub       string              // subscription kinds
	subConfig []byte              // create and update subscription
	cursors   [][]byte            // create subscription
}

// errBadMeta is wrapped by the decoders for data that is not a metadata
// entry or snapshot.
var errBadMeta = errors.New("malformed metadata")

// metaEntryVersion is the first byte of a metadata entry.
const metaEntryVersion = 1

// A metadata entry (integers big-endian; str and bytes are a uvarint length
// and the bytes):
//
//	ver u8 (1) | node u64 | seq u64 | at i64 (unix ns) | kind u8 | topic str, then
//	  create topic, update topic: config
//	  delete topic:               nothing
//	  create subscription:        sub str | config bytes | ncursors uvar | (cursor bytes)*
//	  update subscription:        sub str | config bytes
//	  delete subscription:        sub str
//	config: partitions u32 | max age i64 ns | max bytes u64 | max messages u64
//	        | dedup window i64 ns | max message bytes u32
//
// On update topic, partitions 0 keeps the topic's count.
func encodeMetaOp(op *metaOp) []byte {
	b := []byte{metaEntryVersion}
	b = binary.BigEndian.AppendUint64(b, op.node)
	b = binary.BigEndian.AppendUint64(b, op.seq)
	b = binary.BigEndian.AppendUint64(b, uint64(op.at.UnixNano()))
	b = append(b, byte(op.kind))
	b = appendBytes(b, []byte(op.topic))
	switch op.kind {
	case metaCreateTopic, metaUpdateTopic:
		b = appendTopicConfig(b, op.cfg)
	case metaCreateSub:
		b = appendBytes(b, []byte(op.sub))
		b = appendBytes(b, op.subConfig)
		b = binary.AppendUvarint(b, uint64(len(op.cursors)))
		for _, c := range op.cursors {
			b = appendBytes(b, c)
		}
	case metaUpdateSub:
		b = appendBytes(b, []byte(op.sub))
		b = appendBytes(b, op.subConfig)
	case metaDeleteSub:
		b = appendBytes(b, []byte(op.sub))
	}
	return b
}

func decodeMetaOp(b []byte) (*metaOp, error) {
	d := metaDecoder{b: b}
	if v := d.u8(); v != metaEntryVersion && d.err == nil {
		return nil, fmt.Errorf("metadata entry version %d; this node knows %d: %w", v, metaEntryVersion, errBadMeta)
	}
	op := &metaOp{node: d.u64(), seq: d.u64(), at: time.Unix(0, int64(d.u64())).UTC(), kind: metaKind(d.u8())}
	op.topic = string(d.bytes())
	switch op.kind {
	case metaCreateTopic, metaUpdateTopic:
		op.cfg = d.topicConfig()
	case metaDeleteTopic:
	case metaCreateSub:
		op.sub = string(d.bytes())
		op.subConfig = d.bytes()
		op.cursors = d.list()
	case metaUpdateSub:
		op.sub = string(d.bytes())
		op.subConfig = d.bytes()
	case metaDeleteSub:
		op.sub = string(d.bytes())
	default:
		d.fail()
	}
	if err := d.end(); err != nil {
		return nil, fmt.Errorf("metadata entry (%v): %w", op.kind, err)
	}
	return op, nil
}

// metaSnapshot is the metadata group's state: every topic and subscription
// with its ids and create time, and the ids the next creates get.
type metaSnapshot struct {
	next   storage.NextIDs
	topics []metaTopic
}

type metaTopic struct {
	topic storage.Topic
	id    uint32
	subs  []metaSub
}

type metaSub struct {
	sub     storage.Subscription
	cursors [][]byte // this node's cursor states when the snapshot was taken
}

// metaSnapshotVersion is the first byte of a metadata snapshot.
const metaSnapshotVersion = 1

// A metadata snapshot (see encodeMetaOp for str, bytes and config):
//
//	ver u8 (1) | next topic id u32 | next subscription id u32 | ntopics uvar | topic*
//	topic: name str | id u32 | create time i64 | config | nsubs uvar | sub*
//	sub:   name str | id u32 | create time i64 | config bytes | ncursors uvar | (cursor bytes)*
//
// Empty data is the empty state, whose next ids are 1.
func encodeMetaSnapshot(s *metaSnapshot) []byte {
	b := []byte{metaSnapshotVersion}
	b = binary.BigEndian.AppendUint32(b, s.next.Topic)
	b = binary.BigEndian.AppendUint32(b, s.next.Subscription)
	b = binary.AppendUvarint(b, uint64(len(s.topics)))
	for _, t := range s.topics {
		b = appendBytes(b, []byte(t.topic.Name))
		b = binary.BigEndian.AppendUint32(b, t.id)
		b = binary.BigEndian.AppendUint64(b, uint64(t.topic.CreateTime.UnixNano()))
		b = appendTopicConfig(b, t.topic.Config)
		b = binary.AppendUvarint(b, uint64(len(t.subs)))
		for _, s := range t.subs {
			b = appendBytes(b, []byte(s.sub.Name))
			b = binary.BigEndian.AppendUint32(b, s.sub.ID)
			b = binary.BigEndian.AppendUint64(b, uint64(s.sub.CreateTime.UnixNano()))
			b = appendBytes(b, s.sub.Config)
			b = binary.AppendUvarint(b, uint64(len(s.cursors)))
			for _, c := range s.cursors {
				b = appendBytes(b, c)
			}
		}
	}
	return b
}

func decodeMetaSnapshot(b []byte) (*metaSnapshot, error) {
	s := &metaSnapshot{next: storage.NextIDs{Topic: 1, Subscription: 1}}
	if len(b) == 0 {
		return s, nil
	}
	d := metaDecoder{b: b}
	if v := d.u8(); v != metaSnapshotVersion && d.err == nil {
		return nil, fmt.Errorf("metadata snapshot version %d; this node knows %d: %w", v, metaSnapshotVersion, errBadMeta)
	}
	s.next = storage.NextIDs{Topic: d.u32(), Subscription: d.u32()}
	for n := d.count(); n > 0 && d.err == nil; n-- {
		var t metaTopic
		t.topic.Name = string(d.bytes())
		t.id = d.u32()
		t.topic.CreateTime = time.Unix(0, int64(d.u64())).UTC()
		t.topic.Config = d.topicConfig()
		for m := d.count(); m > 0 && d.err == nil; m-- {
			var s metaSub
			s.sub.Topic = t.topic.Name
			s.sub.Name = string(d.bytes())
			s.sub.ID = d.u32()
			s.sub.CreateTime = time.Unix(0, int64(d.u64())).UTC()
			s.sub.Config = d.bytes()
			s.cursors = d.list()
			t.subs = append(t.subs, s)
		}
		s.topics = append(s.topics, t)
	}
	if err := d.end(); err != nil {
		return nil, fmt.Errorf("metadata snapshot: %w", err)
	}
	return s, nil
}

func appendBytes(b, v []byte) []byte {
	b = binary.AppendUvarint(b, uint64(len(v)))
	return append(b, v...)
}

func appendTopicConfig(b []byte, c storage.TopicConfig) []byte {
	b = binary.BigEndian.AppendUint32(b, c.Partitions)
	b = binary.BigEndian.AppendUint64(b, uint64(c.RetentionMaxAge))
	b = binary.BigEndian.AppendUint64(b, c.RetentionMaxBytes)
	b = binary.BigEndian.AppendUint64(b, c.RetentionMaxMessages)
	b = binary.BigEndian.AppendUint64(b, uint64(c.DedupWindow))
	return binary.BigEndian.AppendUint32(b, c.MaxMessageBytes)
}

// metaDecoder reads big-endian integers and length-prefixed bytes; the
// first short or bad read sets err and makes every later read return zero.
type metaDecoder struct {
	b   []byte
	err error
}

func (d *metaDecoder) fail() {
	if d.err == nil {
		d.err = errBadMeta
	}
	d.b = nil
}

func (d *metaDecoder) take(n int) []byte {
	if d.err != nil || n < 0 || len(d.b) < n {
		d.fail()
		return nil
	}
	v := d.b[:n]
	d.b = d.b[n:]
	return v
}

func (d *metaDecoder) u8() byte {
	if v := d.take(1); v != nil {
		return v[0]
	}
	return 0
}

func (d *metaDecoder) u32() uint32 {
	if v := d.take(4); v != nil {
		return binary.BigEndian.Uint32(v)
	}
	return 0
}

func (d *metaDecoder) u64() uint64 {
	if v := d.take(8); v != nil {
		return binary.BigEndian.Uint64(v)
	}
	return 0
}

// count reads a uvarint count of items, each of at least one byte: a count
// beyond what is left is malformed (and would allocate for nothing).
func (d *metaDecoder) count() int {
	if d.err != nil {
		return 0
	}
	n, k := binary.Uvarint(d.b)
	if k <= 0 || n > uint64(len(d.b)-k) {
		d.fail()
		return 0
	}
	d.b = d.b[k:]
	return int(n)
}

// bytes reads a length-prefixed byte string, copied: entries' data must not
// be kept by what they decode into (the stores keep it).
func (d *metaDecoder) bytes() []byte {
	n := d.count()
	v := d.take(n)
	if v == nil {
		return nil
	}
	return append([]byte(nil), v...)
}

func (d *metaDecoder) list() [][]byte {
	n := d.count()
	var l [][]byte
	for ; n > 0 && d.err == nil; n-- {
		l = append(l, d.bytes())
	}
	return l
}

func (d *metaDecoder) topicConfig() storage.TopicConfig {
	return storage.TopicConfig{
		Partitions:           d.u32(),
		RetentionMaxAge:      time.Duration(d.u64()),
		RetentionMaxBytes:    d.u64(),
		RetentionMaxMessages: d.u64(),
		DedupWindow:          time.Duration(d.u64()),
		MaxMessageBytes:      d.u32(),
	}
}

func (d *metaDecoder) end() error {
	if d.err == nil && len(d.b) != 0 {
		d.fail()
	}
	return d.err
}
