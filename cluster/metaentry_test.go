package cluster

import (
	"errors"
	"reflect"
	"testing"
	"time"

	"github.com/ferrymq/ferry/storage"
)

// Fuzz targets for the metadata group's decoders (metaentry.go). Entries
// and snapshots come from the leader, but a decoder must still never
// panic, must fail only with errBadMeta, and what it decodes must encode
// back to the same thing.
//
//	go test -run '^$' -fuzz FuzzDecodeMetaOp -fuzztime 30s ./cluster

func FuzzDecodeMetaOp(f *testing.F) {
	at := time.Date(2025, 3, 1, 12, 0, 0, 7000, time.UTC)
	cfg := storage.TopicConfig{Partitions: 3, RetentionMaxAge: time.Hour, DedupWindow: time.Minute, MaxMessageBytes: 1 << 20}
	for _, op := range []*metaOp{
		{node: 1, seq: 2, at: at, kind: metaCreateTopic, topic: "orders", cfg: cfg},
		{node: 1, seq: 3, at: at, kind: metaUpdateTopic, topic: "orders", cfg: storage.TopicConfig{RetentionMaxMessages: 9}},
		{node: 2, seq: 4, at: at, kind: metaDeleteTopic, topic: "orders"},
		{node: 3, seq: 5, at: at, kind: metaCreateSub, topic: "orders", sub: "kitchen", subConfig: []byte("cfg"), cursors: [][]byte{[]byte("c0"), nil}},
		{node: 3, seq: 6, at: at, kind: metaUpdateSub, topic: "orders", sub: "kitchen", subConfig: []byte("cfg2")},
		{node: 3, seq: 7, at: at, kind: metaDeleteSub, topic: "orders", sub: "kitchen"},
	} {
		f.Add(encodeMetaOp(op))
	}
	f.Add([]byte{})
	f.Add([]byte{metaEntryVersion, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		op, err := decodeMetaOp(b)
		if err != nil {
			if !errors.Is(err, errBadMeta) {
				t.Fatalf("decodeMetaOp: %v, want errBadMeta", err)
			}
			return
		}
		again, err := decodeMetaOp(encodeMetaOp(op))
		if err != nil || !reflect.DeepEqual(again, op) {
			t.Fatalf("round trip: %+v, %v; want %+v", again, err, op)
		}
	})
}

func FuzzDecodeMetaSnapshot(f *testing.F) {
	at := time.Date(2025, 3, 1, 12, 0, 0, 7000, time.UTC)
	snap := &metaSnapshot{next: storage.NextIDs{Topic: 4, Subscription: 2}, topics: []metaTopic{
		{topic: storage.Topic{Name: "a", CreateTime: at, Config: storage.TopicConfig{Partitions: 2}}, id: 1,
			subs: []metaSub{{sub: storage.Subscription{Topic: "a", Name: "s", ID: 1, CreateTime: at, Config: []byte("x")}, cursors: [][]byte{[]byte("c"), nil}}}},
		{topic: storage.Topic{Name: "b", CreateTime: at}, id: 3},
	}}
	f.Add(encodeMetaSnapshot(snap))
	f.Add(encodeMetaSnapshot(&metaSnapshot{}))
	f.Add([]byte{metaSnapshotVersion, 0, 0, 0, 1, 0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff, 0x0f})
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := decodeMetaSnapshot(b)
		if err != nil {
			if !errors.Is(err, errBadMeta) {
				t.Fatalf("decodeMetaSnapshot: %v, want errBadMeta", err)
			}
			return
		}
		again, err := decodeMetaSnapshot(encodeMetaSnapshot(s))
		if err != nil || !reflect.DeepEqual(again, s) {
			t.Fatalf("round trip: %+v, %v; want %+v", again, err, s)
		}
	})
}
