package cluster

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/ferrymq/ferry/internal/wire"
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
	d := wire.NewDecoder(b, errBadMeta)
	if v := d.Byte(); v != metaEntryVersion && d.Err() == nil {
		return nil, fmt.Errorf("metadata entry version %d; this node knows %d: %w", v, metaEntryVersion, errBadMeta)
	}
	op := &metaOp{node: d.U64(), seq: d.U64(), at: time.Unix(0, int64(d.U64())).UTC(), kind: metaKind(d.Byte())}
	op.topic = string(d.Bytes())
	switch op.kind {
	case metaCreateTopic, metaUpdateTopic:
		op.cfg = metaTopicConfig(&d)
	case metaDeleteTopic:
	case metaCreateSub:
		op.sub = string(d.Bytes())
		op.subConfig = owned(d.Bytes())
		op.cursors = metaList(&d)
	case metaUpdateSub:
		op.sub = string(d.Bytes())
		op.subConfig = owned(d.Bytes())
	case metaDeleteSub:
		op.sub = string(d.Bytes())
	default:
		d.Fail()
	}
	if err := d.End(); err != nil {
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
	d := wire.NewDecoder(b, errBadMeta)
	if v := d.Byte(); v != metaSnapshotVersion && d.Err() == nil {
		return nil, fmt.Errorf("metadata snapshot version %d; this node knows %d: %w", v, metaSnapshotVersion, errBadMeta)
	}
	s.next = storage.NextIDs{Topic: d.U32(), Subscription: d.U32()}
	for n := d.Count(); n > 0 && d.Err() == nil; n-- {
		var t metaTopic
		t.topic.Name = string(d.Bytes())
		t.id = d.U32()
		t.topic.CreateTime = time.Unix(0, int64(d.U64())).UTC()
		t.topic.Config = metaTopicConfig(&d)
		for m := d.Count(); m > 0 && d.Err() == nil; m-- {
			var s metaSub
			s.sub.Topic = t.topic.Name
			s.sub.Name = string(d.Bytes())
			s.sub.ID = d.U32()
			s.sub.CreateTime = time.Unix(0, int64(d.U64())).UTC()
			s.sub.Config = owned(d.Bytes())
			s.cursors = metaList(&d)
			t.subs = append(t.subs, s)
		}
		s.topics = append(s.topics, t)
	}
	if err := d.End(); err != nil {
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

// The decoders keep nothing of the data they read (the Raft log's, or a
// snapshot being restored): byte strings are copied (owned), and a nil
// or empty one decodes as nil.
func owned(b []byte) []byte { return append([]byte(nil), b...) }

// metaList reads a count, then that many byte strings.
func metaList(d *wire.Decoder) [][]byte {
	n := d.Count()
	var l [][]byte
	for ; n > 0 && d.Err() == nil; n-- {
		l = append(l, owned(d.Bytes()))
	}
	return l
}

// metaTopicConfig reads what appendTopicConfig wrote.
func metaTopicConfig(d *wire.Decoder) storage.TopicConfig {
	return storage.TopicConfig{
		Partitions:           d.U32(),
		RetentionMaxAge:      time.Duration(d.U64()),
		RetentionMaxBytes:    d.U64(),
		RetentionMaxMessages: d.U64(),
		DedupWindow:          time.Duration(d.U64()),
		MaxMessageBytes:      d.U32(),
	}
}
