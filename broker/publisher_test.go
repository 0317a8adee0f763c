package broker

import (
	"bytes"
	"context"
	"fmt"
	"hash/fnv"
	"io"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"

	ferryv1 "github.com/ferrymq/ferry/proto/ferry/v1"
	"github.com/ferrymq/ferry/storage"
)

// Topics the bad-input tests publish to. Nothing may ever be stored in them.
const (
	topicSmall   = "bad-small"   // 4 partitions, max_message_bytes 1000
	topicDefault = "bad-default" // 1 partition, default max_message_bytes (1 MiB)
	topicGood    = "good"        // takes the good requests that follow bad ones
)

type badPublish struct {
	name  string
	topic string
	msgs  []*ferryv1.PublishMessage
	code  codes.Code
	words []string // the message must contain each
}

func part(p uint32) *uint32 { return &p }

// ok is a valid message; cases put one before the bad one, and it must not
// be stored either.
func ok() *ferryv1.PublishMessage {
	return &ferryv1.PublishMessage{Id: "valid-first", Payload: []byte("valid")}
}

func manyHeaders(n, valueLen int) map[string]string {
	h := make(map[string]string, n)
	for i := range n {
		h[fmt.Sprintf("h%03d", i)] = strings.Repeat("v", valueLen)
	}
	return h
}

func badPublishes() []badPublish {
	msgs := func(n int, payloadLen int) []*ferryv1.PublishMessage {
		payload := bytes.Repeat([]byte("p"), payloadLen)
		ms := make([]*ferryv1.PublishMessage, n)
		for i := range ms {
			ms[i] = &ferryv1.PublishMessage{Id: fmt.Sprintf("m-%d", i), Payload: payload}
		}
		return ms
	}
	one := []*ferryv1.PublishMessage{{Payload: []byte("x")}}
	return []badPublish{
		{"unknown topic", "no-such-topic", one, codes.NotFound, []string{`"no-such-topic"`, "not found"}},
		{"topic name with space", "has space", one, codes.InvalidArgument, []string{"topic name", `' '`}},
		{"empty topic name", "", one, codes.InvalidArgument, []string{"topic name", "1 to 200"}},
		{"topic name of 201 chars", strings.Repeat("t", 201), one, codes.InvalidArgument, []string{"topic name", "1 to 200"}},
		{"topic name with slash", "a/b", one, codes.InvalidArgument, []string{"topic name", `'/'`}},
		{"payload over topic max", topicSmall,
			[]*ferryv1.PublishMessage{ok(), {Payload: make([]byte, 1001)}},
			codes.InvalidArgument, []string{"message 1", "payload", "1001", "1000", "max_message_bytes"}},
		{"payload over default max", topicDefault,
			[]*ferryv1.PublishMessage{ok(), {Payload: make([]byte, 1<<20+1)}},
			codes.InvalidArgument, []string{"message 1", "payload", "1048577", "1048576", "max_message_bytes"}},
		{"id of 129 bytes", topicSmall,
			[]*ferryv1.PublishMessage{ok(), {Id: strings.Repeat("i", 129), Payload: []byte("x")}},
			codes.InvalidArgument, []string{"message 1", "id", "129", "128"}},
		{"key over 4 KiB", topicSmall,
			[]*ferryv1.PublishMessage{ok(), {Key: make([]byte, 4<<10+1), Payload: []byte("x")}},
			codes.InvalidArgument, []string{"message 1", "key", "4097", "4096"}},
		{"65 headers", topicSmall,
			[]*ferryv1.PublishMessage{ok(), {Headers: manyHeaders(65, 1), Payload: []byte("x")}},
			codes.InvalidArgument, []string{"message 1", "headers", "65", "64"}},
		{"headers over 16 KiB", topicSmall,
			[]*ferryv1.PublishMessage{ok(), {Headers: manyHeaders(2, 8<<10), Payload: []byte("x")}},
			codes.InvalidArgument, []string{"message 1", "headers", "16392", "16384"}},
		{"empty batch", topicSmall, nil, codes.InvalidArgument, []string{"no messages"}},
		{"batch of 1001 messages", topicSmall, msgs(1001, 1), codes.InvalidArgument, []string{"1001", "1000", "split"}},
		{"batch over 4 MiB", topicDefault, msgs(5, 900<<10), codes.InvalidArgument,
			[]string{"batch", "bytes", strconv.Itoa(MaxBatchBytes), "split"}},
		{"partition out of range", topicSmall,
			[]*ferryv1.PublishMessage{ok(), {Partition: part(4), Payload: []byte("x")}},
			codes.InvalidArgument, []string{"message 1", "partition 4", "out of range", "0 to 3"}},
		{"partition far out of range", topicSmall,
			[]*ferryv1.PublishMessage{ok(), {Partition: part(1 << 31), Payload: []byte("x")}},
			codes.InvalidArgument, []string{"partition", "out of range"}},
	}
}

// startBadInputServer starts a broker with the bad-input topics.
func startBadInputServer(t *testing.T) *testServer {
	ts := startServer(t)
	ts.createTopic(t, topicSmall, &ferryv1.TopicConfig{Partitions: 4, MaxMessageBytes: 1000})
	ts.createTopic(t, topicDefault, nil)
	ts.createTopic(t, topicGood, nil)
	return ts
}

// wantNothingStored checks the bad-input topics are empty and that no topic
// was created on the way.
func (ts *testServer) wantNothingStored(t *testing.T) {
	t.Helper()
	ts.wantEmpty(t, topicSmall, topicDefault)
	names := ts.topicNames(t)
	if want := []string{topicSmall, topicDefault, topicGood}; len(names) != len(want) {
		t.Errorf("topics are %q, want only %q", names, want)
	}
}

// wantNothingQueued is a barrier: a message published to each partition of
// the bad-input topics gets offset 0 only if nothing from a bad request was
// queued before it.
func (ts *testServer) wantNothingQueued(t *testing.T) {
	t.Helper()
	for _, c := range []struct {
		topic string
		parts uint32
	}{{topicSmall, 4}, {topicDefault, 1}} {
		for p := range c.parts {
			r := ts.publish(t, c.topic, &ferryv1.PublishMessage{Partition: part(p), Id: "valid-first", Payload: []byte("barrier")})[0]
			if r.GetOffset() != 0 || r.GetDuplicate() {
				t.Errorf("topic %q partition %d: barrier message got %v, want offset 0, not a duplicate", c.topic, p, r)
			}
		}
	}
}

func TestPublishBadInput(t *testing.T) {
	ts := startBadInputServer(t)
	for _, tc := range badPublishes() {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := ts.pub.Publish(testContext(t), &ferryv1.PublishRequest{Topic: tc.topic, Messages: tc.msgs})
			if err == nil {
				t.Fatalf("Publish succeeded with %v", resp.GetResults())
			}
			wantStatus(t, err, tc.code, tc.words...)
			ts.wantNothingStored(t)
		})
	}
	ts.wantNothingQueued(t)
}

func TestPublishStreamBadInput(t *testing.T) {
	ts := startBadInputServer(t)
	for i, tc := range badPublishes() {
		t.Run(tc.name, func(t *testing.T) {
			stream, err := ts.pub.PublishStream(testContext(t))
			if err != nil {
				t.Fatalf("PublishStream: %v", err)
			}
			bad := uint64(100 + 2*i)
			if err := stream.Send(&ferryv1.PublishStreamRequest{Sequence: bad, Topic: tc.topic, Messages: tc.msgs}); err != nil {
				t.Fatalf("Send bad request: %v", err)
			}
			goodID := fmt.Sprintf("good-%d", i)
			if err := stream.Send(&ferryv1.PublishStreamRequest{
				Sequence: bad + 1, Topic: topicGood,
				Messages: []*ferryv1.PublishMessage{{Id: goodID, Payload: []byte("good")}},
			}); err != nil {
				t.Fatalf("Send good request: %v", err)
			}
			if err := stream.CloseSend(); err != nil {
				t.Fatalf("CloseSend: %v", err)
			}

			resp, err := stream.Recv()
			if err != nil {
				t.Fatalf("Recv for the bad request: %v", err)
			}
			if resp.GetSequence() != bad {
				t.Errorf("first response has sequence %d, want %d", resp.GetSequence(), bad)
			}
			if resp.GetError() == nil {
				t.Fatalf("bad request got no error: %v", resp)
			}
			if len(resp.GetResults()) != 0 {
				t.Errorf("bad request got results %v as well as an error", resp.GetResults())
			}
			wantCodeMessage(t, codes.Code(resp.GetError().GetCode()), resp.GetError().GetMessage(), tc.code, tc.words...)

			resp, err = stream.Recv()
			if err != nil {
				t.Fatalf("Recv for the good request after a bad one: %v", err)
			}
			if resp.GetSequence() != bad+1 || resp.GetError() != nil || len(resp.GetResults()) != 1 || resp.GetResults()[0].GetDuplicate() {
				t.Errorf("good request after a bad one got %v, want sequence %d and one new result", resp, bad+1)
			}
			if _, err := stream.Recv(); err != io.EOF {
				t.Errorf("stream end: %v, want EOF", err)
			}
			ts.wantNothingStored(t)
		})
	}
	if got := ts.heads(t, topicGood)[0]; got != uint64(len(badPublishes())) {
		t.Errorf("topic %q holds %d messages, want one per case, %d", topicGood, got, len(badPublishes()))
	}
	ts.wantNothingQueued(t)
}

// TestPublishStreamManyBadOneStream sends every bad request, each followed
// by a good one, on a single stream without waiting.
func TestPublishStreamManyBadOneStream(t *testing.T) {
	ts := startBadInputServer(t)
	stream, err := ts.pub.PublishStream(testContext(t))
	if err != nil {
		t.Fatalf("PublishStream: %v", err)
	}
	cases := badPublishes()
	go func() {
		for i, tc := range cases {
			_ = stream.Send(&ferryv1.PublishStreamRequest{Sequence: uint64(2 * i), Topic: tc.topic, Messages: tc.msgs})
			_ = stream.Send(&ferryv1.PublishStreamRequest{
				Sequence: uint64(2*i + 1), Topic: topicGood,
				Messages: []*ferryv1.PublishMessage{{Payload: []byte(tc.name)}},
			})
		}
		_ = stream.CloseSend()
	}()
	var offsets []uint64
	for i, tc := range cases {
		resp, err := stream.Recv()
		if err != nil {
			t.Fatalf("Recv %d: %v", 2*i, err)
		}
		if resp.GetSequence() != uint64(2*i) || resp.GetError() == nil {
			t.Fatalf("response %d = %v, want an error for case %q", 2*i, resp, tc.name)
		}
		wantCodeMessage(t, codes.Code(resp.GetError().GetCode()), resp.GetError().GetMessage(), tc.code, tc.words...)
		resp, err = stream.Recv()
		if err != nil {
			t.Fatalf("Recv %d: %v", 2*i+1, err)
		}
		if resp.GetSequence() != uint64(2*i+1) || resp.GetError() != nil || len(resp.GetResults()) != 1 {
			t.Fatalf("response %d = %v, want one result", 2*i+1, resp)
		}
		offsets = append(offsets, resp.GetResults()[0].GetOffset())
	}
	if _, err := stream.Recv(); err != io.EOF {
		t.Errorf("stream end: %v, want EOF", err)
	}
	for i, o := range offsets {
		if o != uint64(i) {
			t.Fatalf("good request offsets %v, want 0..%d in order", offsets, len(cases)-1)
		}
	}
	ts.wantNothingStored(t)
	ts.wantNothingQueued(t)
}

// TestPublishAtLimits checks that requests exactly at each limit are
// accepted and stored intact.
func TestPublishAtLimits(t *testing.T) {
	ts := startServer(t)
	ts.createTopic(t, "small", &ferryv1.TopicConfig{MaxMessageBytes: 1000})
	ts.createTopic(t, "big", &ferryv1.TopicConfig{MaxMessageBytes: 4 << 20})
	cases := []struct {
		name  string
		topic string
		msgs  []*ferryv1.PublishMessage
	}{
		{"payload of max_message_bytes", "small", []*ferryv1.PublishMessage{{Payload: bytes.Repeat([]byte("p"), 1000)}}},
		{"id of 128 bytes", "small", []*ferryv1.PublishMessage{{Id: strings.Repeat("i", 128), Payload: []byte("x")}}},
		{"key of 4 KiB", "small", []*ferryv1.PublishMessage{{Key: bytes.Repeat([]byte("k"), 4<<10), Payload: []byte("x")}}},
		{"64 headers", "small", []*ferryv1.PublishMessage{{Headers: manyHeaders(64, 10), Payload: []byte("x")}}},
		// 2 headers of a 4-byte name and a value: 16 KiB in all.
		{"16 KiB of headers", "small", []*ferryv1.PublishMessage{{Headers: manyHeaders(2, 8<<10-4), Payload: []byte("x")}}},
		{"1000 messages", "small", func() []*ferryv1.PublishMessage {
			ms := make([]*ferryv1.PublishMessage, 1000)
			for i := range ms {
				ms[i] = &ferryv1.PublishMessage{Payload: []byte(strconv.Itoa(i))}
			}
			return ms
		}()},
		{"4 MiB batch", "big", []*ferryv1.PublishMessage{{Payload: bytes.Repeat([]byte("b"), 4<<20)}}},
		{"empty message", "small", []*ferryv1.PublishMessage{{}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := ts.heads(t, tc.topic)[0]
			res := ts.publish(t, tc.topic, tc.msgs...)
			for i, r := range res {
				if r.GetOffset() != before+uint64(i) || r.GetDuplicate() {
					t.Fatalf("result %d = %v, want offset %d", i, r, before+uint64(i))
				}
			}
			// A 4 MiB message is more than gRPC's default 4 MiB receive
			// limit once framed; raise it to read it back.
			resp, err := ts.admin.ReadMessages(testContext(t), &ferryv1.ReadMessagesRequest{
				Topic: tc.topic, FromOffset: before, MaxMessages: MaxReadMessages,
			}, grpc.MaxCallRecvMsgSize(16<<20))
			if err != nil {
				t.Fatalf("ReadMessages: %v", err)
			}
			got := resp.GetMessages()
			if len(got) != len(tc.msgs) {
				t.Fatalf("read %d messages back, want %d", len(got), len(tc.msgs))
			}
			for i, m := range got {
				w := tc.msgs[i]
				if m.GetId() != w.GetId() || !bytes.Equal(m.GetKey(), w.GetKey()) || !bytes.Equal(m.GetPayload(), w.GetPayload()) || len(m.GetHeaders()) != len(w.GetHeaders()) {
					t.Fatalf("message %d read back differs from what was sent", i)
				}
				for k, v := range w.GetHeaders() {
					if m.GetHeaders()[k] != v {
						t.Fatalf("message %d header %q read back differs", i, k)
					}
				}
			}
		})
	}
}

func fnv32a(b []byte) uint32 {
	h := fnv.New32a()
	h.Write(b)
	return h.Sum32()
}

func TestRoutingSameKeySamePartition(t *testing.T) {
	ts := startServer(t)
	ts.createTopic(t, "orders", &ferryv1.TopicConfig{Partitions: 8})
	keys := make([][]byte, 20)
	for i := range keys {
		keys[i] = []byte(fmt.Sprintf("customer-%d", i))
	}
	where := map[string]uint32{}
	used := map[uint32]bool{}
	for round := range 3 {
		// One batch with every key, then each key alone.
		var batch []*ferryv1.PublishMessage
		for _, k := range keys {
			batch = append(batch, &ferryv1.PublishMessage{Key: k, Payload: []byte("batch")})
		}
		results := ts.publish(t, "orders", batch...)
		for _, k := range keys {
			results = append(results, ts.publish(t, "orders", &ferryv1.PublishMessage{Key: k, Id: fmt.Sprintf("%s-%d", k, round), Payload: []byte("alone")})...)
		}
		for i, r := range results {
			k := string(keys[i%len(keys)])
			p, seen := where[k]
			if !seen {
				where[k] = r.GetPartition()
				used[r.GetPartition()] = true
			} else if r.GetPartition() != p {
				t.Errorf("key %q went to partition %d, earlier to %d", k, r.GetPartition(), p)
			}
			// The hash is FNV-1a 32, documented as stable across versions.
			if want := fnv32a([]byte(k)) % 8; r.GetPartition() != want {
				t.Errorf("key %q went to partition %d, want FNV-1a %% 8 = %d", k, r.GetPartition(), want)
			}
		}
	}
	if len(used) < 2 {
		t.Errorf("20 keys all went to partitions %v", used)
	}
	// A key beats an id, and an explicit partition beats both.
	r := ts.publish(t, "orders", &ferryv1.PublishMessage{Key: keys[0], Id: "other-id", Payload: []byte("x")})[0]
	if r.GetPartition() != where[string(keys[0])] {
		t.Errorf("key and id: partition %d, want the key's %d", r.GetPartition(), where[string(keys[0])])
	}
	explicit := (where[string(keys[0])] + 1) % 8
	r = ts.publish(t, "orders", &ferryv1.PublishMessage{Key: keys[0], Partition: part(explicit), Payload: []byte("x")})[0]
	if r.GetPartition() != explicit {
		t.Errorf("explicit partition %d: got %d", explicit, r.GetPartition())
	}
}

func TestRoutingSameIDIsDuplicate(t *testing.T) {
	ts := startServer(t)
	ts.createTopic(t, "events", &ferryv1.TopicConfig{Partitions: 8})
	first := map[string]*ferryv1.PublishResult{}
	var batch []*ferryv1.PublishMessage
	for i := range 16 {
		batch = append(batch, &ferryv1.PublishMessage{Id: fmt.Sprintf("evt-%d", i), Payload: []byte("original")})
	}
	for i, r := range ts.publish(t, "events", batch...) {
		if r.GetDuplicate() {
			t.Fatalf("first publish of evt-%d is a duplicate", i)
		}
		first[fmt.Sprintf("evt-%d", i)] = r
	}
	stored := func() uint64 {
		var n uint64
		for _, h := range ts.heads(t, "events") {
			n += h
		}
		return n
	}
	if n := stored(); n != 16 {
		t.Fatalf("%d messages stored, want 16", n)
	}

	// Retries one by one, in a reversed batch, and on a stream: all
	// duplicates with the original partition and offset, payload ignored.
	check := func(how string, id string, r *ferryv1.PublishResult) {
		t.Helper()
		o := first[id]
		if !r.GetDuplicate() || r.GetPartition() != o.GetPartition() || r.GetOffset() != o.GetOffset() {
			t.Errorf("%s retry of %s = %v, want duplicate at partition %d offset %d", how, id, r, o.GetPartition(), o.GetOffset())
		}
	}
	for id := range first {
		check("single", id, ts.publish(t, "events", &ferryv1.PublishMessage{Id: id, Payload: []byte("retry")})[0])
	}
	var rev []*ferryv1.PublishMessage
	for i := 15; i >= 0; i-- {
		rev = append(rev, &ferryv1.PublishMessage{Id: fmt.Sprintf("evt-%d", i), Payload: []byte("retry")})
	}
	for i, r := range ts.publish(t, "events", rev...) {
		check("batch", fmt.Sprintf("evt-%d", 15-i), r)
	}
	stream, err := ts.pub.PublishStream(testContext(t))
	if err != nil {
		t.Fatalf("PublishStream: %v", err)
	}
	if err := stream.Send(&ferryv1.PublishStreamRequest{Sequence: 7, Topic: "events", Messages: rev}); err != nil {
		t.Fatalf("Send: %v", err)
	}
	resp, err := stream.Recv()
	if err != nil || resp.GetError() != nil || len(resp.GetResults()) != 16 {
		t.Fatalf("stream retry = %v, %v", resp, err)
	}
	for i, r := range resp.GetResults() {
		check("stream", fmt.Sprintf("evt-%d", 15-i), r)
	}
	_ = stream.CloseSend()

	// The same id twice in one new batch is stored once.
	res := ts.publish(t, "events",
		&ferryv1.PublishMessage{Id: "twice", Payload: []byte("a")},
		&ferryv1.PublishMessage{Id: "twice", Payload: []byte("b")})
	if res[0].GetDuplicate() || !res[1].GetDuplicate() || res[0].GetPartition() != res[1].GetPartition() || res[0].GetOffset() != res[1].GetOffset() {
		t.Errorf("same id twice in a batch = %v, want the second a duplicate of the first", res)
	}
	if n := stored(); n != 17 {
		t.Errorf("%d messages stored after retries, want 17", n)
	}
	got := ts.read(t, "events", first["evt-3"].GetPartition(), first["evt-3"].GetOffset(), 1).GetMessages()
	if len(got) != 1 || got[0].GetId() != "evt-3" || string(got[0].GetPayload()) != "original" {
		t.Errorf("evt-3 reads back as %v, want the original", got)
	}
}

func TestRoutingResultsInRequestOrder(t *testing.T) {
	ts := startServer(t)
	ts.createTopic(t, "spread", &ferryv1.TopicConfig{Partitions: 8})
	const n = 200
	var batch []*ferryv1.PublishMessage
	for i := range n {
		m := &ferryv1.PublishMessage{Payload: []byte(strconv.Itoa(i))}
		switch i % 3 {
		case 0:
			m.Key = []byte(fmt.Sprintf("key-%d", i%17))
		case 1:
			m.Id = fmt.Sprintf("id-%d", i)
		case 2:
			m.Partition = part(uint32(i % 8))
		}
		batch = append(batch, m)
	}
	results := ts.publish(t, "spread", batch...)
	parts := map[uint32]bool{}
	last := map[uint32]int64{}
	for i, r := range results {
		parts[r.GetPartition()] = true
		if l, seen := last[r.GetPartition()]; seen && int64(r.GetOffset()) != l+1 {
			t.Errorf("result %d: partition %d offset %d after %d; want dense, increasing in request order", i, r.GetPartition(), r.GetOffset(), l)
		} else if !seen && r.GetOffset() != 0 {
			t.Errorf("result %d: partition %d starts at offset %d, want 0", i, r.GetPartition(), r.GetOffset())
		}
		last[r.GetPartition()] = int64(r.GetOffset())
		if batch[i].Partition != nil && r.GetPartition() != *batch[i].Partition {
			t.Errorf("result %d: partition %d, asked for %d", i, r.GetPartition(), *batch[i].Partition)
		}
	}
	if len(parts) < 4 {
		t.Errorf("a batch of %d mixed messages used only partitions %v", n, parts)
	}
	// Each result names where its own message is.
	for p := range parts {
		for _, m := range ts.read(t, "spread", p, 0, MaxReadMessages).GetMessages() {
			i, err := strconv.Atoi(string(m.GetPayload()))
			if err != nil || i < 0 || i >= n {
				t.Fatalf("partition %d offset %d: payload %q", p, m.GetOffset(), m.GetPayload())
			}
			if r := results[i]; r.GetPartition() != p || r.GetOffset() != m.GetOffset() {
				t.Errorf("message %d is at partition %d offset %d, but its result says %v", i, p, m.GetOffset(), r)
			}
		}
	}
}

func TestRoutingIDsSpread(t *testing.T) {
	ts := startServer(t)
	for _, n := range []uint32{2, 8, 64} {
		name := fmt.Sprintf("ids-%d", n)
		ts.createTopic(t, name, &ferryv1.TopicConfig{Partitions: n})
		var batch []*ferryv1.PublishMessage
		for i := range 100 {
			batch = append(batch, &ferryv1.PublishMessage{Id: fmt.Sprintf("msg-%d", i), Payload: []byte("x")})
		}
		parts := map[uint32]int{}
		for _, r := range ts.publish(t, name, batch...) {
			if r.GetPartition() >= n {
				t.Fatalf("%s: partition %d of %d", name, r.GetPartition(), n)
			}
			parts[r.GetPartition()]++
		}
		if len(parts) < 2 {
			t.Errorf("%s: 100 ids all went to one partition: %v", name, parts)
		}
	}
}

func TestRoutingRoundRobin(t *testing.T) {
	ts := startServer(t)
	ts.createTopic(t, "rr", &ferryv1.TopicConfig{Partitions: 4})
	used := map[uint32]bool{}
	for b := range 8 {
		var batch []*ferryv1.PublishMessage
		for range 5 {
			batch = append(batch, &ferryv1.PublishMessage{Payload: []byte("x")})
		}
		res := ts.publish(t, "rr", batch...)
		for i, r := range res {
			if r.GetPartition() != res[0].GetPartition() {
				t.Errorf("batch %d: message %d on partition %d, message 0 on %d; a batch without keys or ids should stay on one partition",
					b, i, r.GetPartition(), res[0].GetPartition())
			}
		}
		used[res[0].GetPartition()] = true
	}
	if len(used) != 4 {
		t.Errorf("8 batches without keys or ids used partitions %v, want all 4", used)
	}
}

func TestPublishStreamPipelining(t *testing.T) {
	ts := startServer(t)
	ts.createTopic(t, "pipe", nil)
	stream, err := ts.pub.PublishStream(testContext(t))
	if err != nil {
		t.Fatalf("PublishStream: %v", err)
	}
	const requests, perRequest = 200, 10
	for i := range requests {
		req := &ferryv1.PublishStreamRequest{Sequence: uint64(1000 + i), Topic: "pipe"}
		for j := range perRequest {
			req.Messages = append(req.Messages, &ferryv1.PublishMessage{Payload: []byte(strconv.Itoa(i*perRequest + j))})
		}
		if err := stream.Send(req); err != nil {
			t.Fatalf("Send %d: %v", i, err)
		}
	}
	if err := stream.CloseSend(); err != nil {
		t.Fatalf("CloseSend: %v", err)
	}
	next := uint64(0)
	for i := range requests {
		resp, err := stream.Recv()
		if err != nil {
			t.Fatalf("Recv %d: %v", i, err)
		}
		if resp.GetSequence() != uint64(1000+i) {
			t.Fatalf("response %d has sequence %d, want %d", i, resp.GetSequence(), 1000+i)
		}
		if resp.GetError() != nil {
			t.Fatalf("response %d: error %v", i, resp.GetError())
		}
		if len(resp.GetResults()) != perRequest {
			t.Fatalf("response %d: %d results, want %d", i, len(resp.GetResults()), perRequest)
		}
		for j, r := range resp.GetResults() {
			if r.GetPartition() != 0 || r.GetOffset() != next || r.GetDuplicate() {
				t.Fatalf("response %d result %d = %v, want partition 0 offset %d", i, j, r, next)
			}
			next++
		}
	}
	if _, err := stream.Recv(); err != io.EOF {
		t.Errorf("stream end: %v, want EOF", err)
	}
	// The log holds the messages in request order.
	for from := uint64(0); from < requests*perRequest; from += MaxReadMessages {
		for _, m := range ts.read(t, "pipe", 0, from, MaxReadMessages).GetMessages() {
			if string(m.GetPayload()) != strconv.FormatUint(m.GetOffset(), 10) {
				t.Fatalf("offset %d holds payload %q", m.GetOffset(), m.GetPayload())
			}
		}
	}
	if h := ts.heads(t, "pipe")[0]; h != requests*perRequest {
		t.Errorf("head offset %d, want %d", h, requests*perRequest)
	}
}

// TestPublishFullBatchMinMemtable publishes the largest valid batches —
// 1000 messages with 128-byte ids and values just under the value-log
// threshold (kept inline in the LSM tree: the most a transaction can
// weigh), and 4 messages of just under 1 MiB — to a broker with the
// smallest memtable storage accepts, and checks a smaller one is refused at
// Open, naming the option.
func TestPublishFullBatchMinMemtable(t *testing.T) {
	small := DefaultOptions(t.TempDir())
	small.GRPCAddr, small.HTTPAddr = "127.0.0.1:0", ""
	small.Storage.MemTableBytes = storage.MinMemTableBytesFor(small.Storage.ValueThreshold) / 2
	if srv, err := Open(small); err == nil {
		_ = srv.Shutdown(context.Background())
		t.Fatalf("Open accepted a %d MiB memtable", small.Storage.MemTableBytes>>20)
	} else if !strings.Contains(err.Error(), "MemTableBytes") {
		t.Fatalf("Open with a %d MiB memtable: %v; want the option named", small.Storage.MemTableBytes>>20, err)
	}
	ts := startServer(t, func(o *Options) {
		o.Storage.ValueThreshold = 1 << 10
		o.Storage.MemTableBytes = storage.MinMemTableBytesFor(1 << 10)
	})
	ts.createTopic(t, "full", nil)
	var inline []*ferryv1.PublishMessage
	for i := range MaxBatchMessages {
		id := fmt.Sprintf("%0128d", i)
		inline = append(inline, &ferryv1.PublishMessage{Id: id, Payload: make([]byte, 1<<10-200)})
	}
	if res := ts.publish(t, "full", inline...); res[MaxBatchMessages-1].GetOffset() != MaxBatchMessages-1 {
		t.Errorf("last result %v, want offset %d", res[MaxBatchMessages-1], MaxBatchMessages-1)
	}
	payload := make([]byte, 1<<20-1<<10)
	var batch []*ferryv1.PublishMessage
	for range 4 {
		batch = append(batch, &ferryv1.PublishMessage{Payload: payload})
	}
	res := ts.publish(t, "full", batch...)
	if res[3].GetOffset() != MaxBatchMessages+3 {
		t.Errorf("results %v, want offsets %d to %d", res, MaxBatchMessages, MaxBatchMessages+3)
	}
}

// TestPublishOverGRPCLimit sends a batch over gRPC's own receive limit
// (twice MaxBatchBytes): gRPC refuses it before the broker sees it, and the
// broker carries on.
func TestPublishOverGRPCLimit(t *testing.T) {
	ts := startServer(t)
	ts.createTopic(t, "huge", &ferryv1.TopicConfig{MaxMessageBytes: 4 << 20})
	payload := make([]byte, 3<<20)
	_, err := ts.pub.Publish(testContext(t), &ferryv1.PublishRequest{Topic: "huge", Messages: []*ferryv1.PublishMessage{
		{Payload: payload}, {Payload: payload}, {Payload: payload},
	}})
	wantStatus(t, err, codes.ResourceExhausted)
	ts.wantEmpty(t, "huge")
	if r := ts.publish(t, "huge", &ferryv1.PublishMessage{Payload: []byte("small")})[0]; r.GetOffset() != 0 {
		t.Errorf("publish after the oversize one = %v, want offset 0", r)
	}
}

// A publish stream that ends with batches unanswered — its client gone
// mid-flight — gives their bytes back to the in-flight budget once they
// are stored: afterwards a publish as big as the whole budget goes
// through. Batches answered give theirs back as they are answered.
func TestPublishStreamEndReleasesBudget(t *testing.T) {
	const budget = 32 << 10
	ts := startServer(t, func(o *Options) { o.MaxPublishBytesInFlight = budget })
	ts.createTopic(t, "rel", nil)
	for round := range 3 {
		ctx, cancel := context.WithCancel(testContext(t))
		stream, err := ts.pub.PublishStream(ctx)
		if err != nil {
			t.Fatalf("PublishStream: %v", err)
		}
		// 64 batches of 1 KiB: twice the budget, so the stream's own
		// answers must free it as it goes.
		for i := range 64 {
			req := &ferryv1.PublishStreamRequest{Sequence: uint64(i), Topic: "rel",
				Messages: []*ferryv1.PublishMessage{{Payload: make([]byte, 1<<10)}}}
			if err := stream.Send(req); err != nil {
				t.Fatalf("round %d: Send %d: %v", round, i, err)
			}
		}
		if round > 0 {
			// Wait for one answer, so the handler is past its first
			// batches, and leave the rest unread.
			if _, err := stream.Recv(); err != nil {
				t.Fatalf("round %d: Recv: %v", round, err)
			}
		}
		cancel()
	}
	// A batch of the whole budget waits for every byte to be back.
	ctx, cancel := context.WithTimeout(testContext(t), 10*time.Second)
	defer cancel()
	_, err := ts.pub.Publish(ctx, &ferryv1.PublishRequest{Topic: "rel",
		Messages: []*ferryv1.PublishMessage{{Payload: make([]byte, budget-100)}}})
	if err != nil {
		t.Fatalf("publish of the whole budget after the streams ended: %v (bytes not given back?)", err)
	}
}
