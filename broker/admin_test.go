package broker

import (
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	ferryv1 "github.com/ferrymq/ferry/proto/ferry/v1"
)

func (ts *testServer) getTopic(t *testing.T, name string) *ferryv1.Topic {
	t.Helper()
	resp, err := ts.admin.GetTopic(testContext(t), &ferryv1.GetTopicRequest{Name: name})
	if err != nil {
		t.Fatalf("GetTopic(%q): %v", name, err)
	}
	return resp.GetTopic()
}

func (ts *testServer) topicNames(t *testing.T) []string {
	t.Helper()
	resp, err := ts.admin.ListTopics(testContext(t), &ferryv1.ListTopicsRequest{})
	if err != nil {
		t.Fatalf("ListTopics: %v", err)
	}
	var names []string
	for _, tp := range resp.GetTopics() {
		names = append(names, tp.GetName())
	}
	return names
}

func TestCreateTopicDefaults(t *testing.T) {
	ts := startServer(t)
	got := ts.createTopic(t, "defaults", &ferryv1.TopicConfig{Partitions: 0})
	want := &ferryv1.TopicConfig{
		Partitions:        1,
		DedupWindow:       durationpb.New(2 * time.Minute),
		MaxMessageBytes:   1 << 20,
		ReplicationFactor: 1, // one node
	}
	if !proto.Equal(got.GetConfig(), want) {
		t.Errorf("created with zero config: %v, want %v", got.GetConfig(), want)
	}
	if got.GetCreateTime() == nil || got.GetCreateTime().AsTime().IsZero() {
		t.Errorf("create_time is unset")
	}
	// With no config at all.
	if got := ts.createTopic(t, "no-config", nil); !proto.Equal(got.GetConfig(), want) {
		t.Errorf("created with no config: %v, want %v", got.GetConfig(), want)
	}
	resp, err := ts.admin.GetTopic(testContext(t), &ferryv1.GetTopicRequest{Name: "defaults"})
	if err != nil {
		t.Fatalf("GetTopic: %v", err)
	}
	if len(resp.GetPartitions()) != 1 {
		t.Errorf("GetTopic lists %d partitions, want 1", len(resp.GetPartitions()))
	}
}

func TestCreateTopicExists(t *testing.T) {
	ts := startServer(t)
	cfg := &ferryv1.TopicConfig{Partitions: 3, RetentionMaxMessages: 100, MaxMessageBytes: 2000}
	orig := ts.createTopic(t, "t", cfg)
	ts.publish(t, "t", &ferryv1.PublishMessage{Partition: part(1), Payload: []byte("keep me")})

	// Identical creates, with the same fields or with the defaults spelt out,
	// are no-ops returning the topic as it is.
	spelt := proto.Clone(cfg).(*ferryv1.TopicConfig)
	spelt.DedupWindow = durationpb.New(2 * time.Minute)
	for _, c := range []*ferryv1.TopicConfig{cfg, spelt} {
		again := ts.createTopic(t, "t", c)
		if !proto.Equal(again, orig) {
			t.Errorf("identical create returned %v, want %v", again, orig)
		}
	}

	for _, tc := range []struct {
		name string
		cfg  *ferryv1.TopicConfig
	}{
		{"other partitions", &ferryv1.TopicConfig{Partitions: 4, RetentionMaxMessages: 100, MaxMessageBytes: 2000}},
		{"other retention", &ferryv1.TopicConfig{Partitions: 3, RetentionMaxMessages: 101, MaxMessageBytes: 2000}},
		{"other max_message_bytes", &ferryv1.TopicConfig{Partitions: 3, RetentionMaxMessages: 100}},
		{"other dedup window", &ferryv1.TopicConfig{Partitions: 3, RetentionMaxMessages: 100, MaxMessageBytes: 2000, DedupWindow: durationpb.New(time.Hour)}},
		{"default config", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ts.admin.CreateTopic(testContext(t), &ferryv1.CreateTopicRequest{Name: "t", Config: tc.cfg})
			wantStatus(t, err, codes.AlreadyExists, `"t"`, "exists", "different config")
			if got := ts.getTopic(t, "t"); !proto.Equal(got, orig) {
				t.Errorf("after a failed create the topic is %v, want %v", got, orig)
			}
			if h := ts.heads(t, "t"); len(h) != 3 || h[1] != 1 {
				t.Errorf("after a failed create the heads are %v, want [0 1 0]", h)
			}
		})
	}
}

func TestCreateTopicBadConfig(t *testing.T) {
	ts := startServer(t)
	for _, tc := range []struct {
		name  string
		topic string
		cfg   *ferryv1.TopicConfig
		words []string
	}{
		{"1025 partitions", "t", &ferryv1.TopicConfig{Partitions: 1025}, []string{"partitions", "1025", "1024"}},
		{"max_message_bytes over 4 MiB", "t", &ferryv1.TopicConfig{MaxMessageBytes: 4<<20 + 1}, []string{"max message bytes", "4194305"}},
		{"negative retention age", "t", &ferryv1.TopicConfig{RetentionMaxAge: durationpb.New(-time.Second)}, []string{"retention_max_age", "negative"}},
		{"negative dedup window", "t", &ferryv1.TopicConfig{DedupWindow: durationpb.New(-time.Second)}, []string{"dedup_window", "negative"}},
		{"dedup window over 7 days", "t", &ferryv1.TopicConfig{DedupWindow: durationpb.New(7*24*time.Hour + time.Second)}, []string{"dedup window"}},
		{"malformed duration", "t", &ferryv1.TopicConfig{RetentionMaxAge: &durationpb.Duration{Seconds: 1, Nanos: -5}}, []string{"retention_max_age"}},
		{"bad name", "has space", nil, []string{"topic name"}},
		{"empty name", "", nil, []string{"topic name"}},
		{"long name", strings.Repeat("n", 201), nil, []string{"topic name", "200"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ts.admin.CreateTopic(testContext(t), &ferryv1.CreateTopicRequest{Name: tc.topic, Config: tc.cfg})
			wantStatus(t, err, codes.InvalidArgument, tc.words...)
			if names := ts.topicNames(t); len(names) != 0 {
				t.Errorf("a failed create left topics %q", names)
			}
		})
	}
	// The limits themselves are fine.
	ts.createTopic(t, "max", &ferryv1.TopicConfig{Partitions: 1024, MaxMessageBytes: 4 << 20, DedupWindow: durationpb.New(7 * 24 * time.Hour)})
}

func TestListTopics(t *testing.T) {
	ts := startServer(t)
	if names := ts.topicNames(t); len(names) != 0 {
		t.Errorf("a new broker lists topics %q", names)
	}
	for _, n := range []string{"b", "c.x", "a_1", "A-2"} {
		ts.createTopic(t, n, nil)
	}
	want := []string{"A-2", "a_1", "b", "c.x"}
	if names := ts.topicNames(t); !slices.Equal(names, want) {
		t.Errorf("ListTopics = %q, want %q", names, want)
	}
}

func TestNotFound(t *testing.T) {
	ts := startServer(t)
	ctx := testContext(t)
	_, err := ts.admin.DeleteTopic(ctx, &ferryv1.DeleteTopicRequest{Name: "ghost"})
	wantStatus(t, err, codes.NotFound, `"ghost"`, "not found")
	_, err = ts.admin.GetTopic(ctx, &ferryv1.GetTopicRequest{Name: "ghost"})
	wantStatus(t, err, codes.NotFound, `"ghost"`, "not found")
	_, err = ts.admin.UpdateTopic(ctx, &ferryv1.UpdateTopicRequest{
		Name: "ghost", Config: &ferryv1.TopicConfig{RetentionMaxMessages: 5},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"retention_max_messages"}},
	})
	wantStatus(t, err, codes.NotFound, `"ghost"`, "not found")
	_, err = ts.admin.ReadMessages(ctx, &ferryv1.ReadMessagesRequest{Topic: "ghost"})
	wantStatus(t, err, codes.NotFound, `"ghost"`, "not found")
	_, err = ts.admin.GetTopic(ctx, &ferryv1.GetTopicRequest{Name: "a/b"})
	wantStatus(t, err, codes.InvalidArgument, "topic name")
	_, err = ts.admin.DeleteTopic(ctx, &ferryv1.DeleteTopicRequest{Name: ""})
	wantStatus(t, err, codes.InvalidArgument, "topic name")

	// A deleted topic is gone, and its name can be reused afresh.
	ts.createTopic(t, "gone", &ferryv1.TopicConfig{Partitions: 2})
	ts.publish(t, "gone", &ferryv1.PublishMessage{Id: "x", Payload: []byte("old")})
	if _, err := ts.admin.DeleteTopic(ctx, &ferryv1.DeleteTopicRequest{Name: "gone"}); err != nil {
		t.Fatalf("DeleteTopic: %v", err)
	}
	_, err = ts.admin.GetTopic(ctx, &ferryv1.GetTopicRequest{Name: "gone"})
	wantStatus(t, err, codes.NotFound, `"gone"`)
	_, err = ts.pub.Publish(ctx, &ferryv1.PublishRequest{Topic: "gone", Messages: []*ferryv1.PublishMessage{{Payload: []byte("x")}}})
	wantStatus(t, err, codes.NotFound, `"gone"`)
	_, err = ts.admin.DeleteTopic(ctx, &ferryv1.DeleteTopicRequest{Name: "gone"})
	wantStatus(t, err, codes.NotFound, `"gone"`)
	ts.createTopic(t, "gone", nil)
	if r := ts.publish(t, "gone", &ferryv1.PublishMessage{Id: "x", Payload: []byte("new")})[0]; r.GetDuplicate() || r.GetOffset() != 0 {
		t.Errorf("publish to a recreated topic = %v, want offset 0, not a duplicate", r)
	}
}

func TestUpdateTopic(t *testing.T) {
	ts := startServer(t)
	orig := ts.createTopic(t, "u", &ferryv1.TopicConfig{Partitions: 2, MaxMessageBytes: 5000})
	mask := func(paths ...string) *fieldmaskpb.FieldMask { return &fieldmaskpb.FieldMask{Paths: paths} }
	for _, tc := range []struct {
		name  string
		cfg   *ferryv1.TopicConfig
		mask  *fieldmaskpb.FieldMask
		words []string
	}{
		{"no mask", &ferryv1.TopicConfig{RetentionMaxMessages: 5}, nil, []string{"update_mask", "empty"}},
		{"empty mask", &ferryv1.TopicConfig{RetentionMaxMessages: 5}, mask(), []string{"update_mask", "empty"}},
		{"unknown path", &ferryv1.TopicConfig{RetentionMaxMessages: 5}, mask("retention_max_messages", "colour"), []string{`"colour"`, "not a topic config field"}},
		{"partitions", &ferryv1.TopicConfig{Partitions: 4}, mask("partitions"), []string{"partitions", "cannot be changed"}},
		{"partitions after a good path", &ferryv1.TopicConfig{Partitions: 4, RetentionMaxMessages: 5}, mask("retention_max_messages", "partitions"), []string{"partitions", "cannot be changed"}},
		{"max_message_bytes over 4 MiB", &ferryv1.TopicConfig{MaxMessageBytes: 4<<20 + 1}, mask("max_message_bytes"), []string{"max message bytes"}},
		{"negative retention age", &ferryv1.TopicConfig{RetentionMaxAge: durationpb.New(-time.Minute)}, mask("retention_max_age"), []string{"retention_max_age", "negative"}},
		{"dedup window over 7 days", &ferryv1.TopicConfig{DedupWindow: durationpb.New(8 * 24 * time.Hour)}, mask("dedup_window"), []string{"dedup window"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ts.admin.UpdateTopic(testContext(t), &ferryv1.UpdateTopicRequest{Name: "u", Config: tc.cfg, UpdateMask: tc.mask})
			wantStatus(t, err, codes.InvalidArgument, tc.words...)
			if got := ts.getTopic(t, "u"); !proto.Equal(got, orig) {
				t.Errorf("after a failed update the topic is %v, want %v", got, orig)
			}
		})
	}

	// A good update changes only the masked field.
	resp, err := ts.admin.UpdateTopic(testContext(t), &ferryv1.UpdateTopicRequest{
		Name:       "u",
		Config:     &ferryv1.TopicConfig{RetentionMaxMessages: 10, MaxMessageBytes: 1, Partitions: 9},
		UpdateMask: mask("retention_max_messages"),
	})
	if err != nil {
		t.Fatalf("UpdateTopic: %v", err)
	}
	want := proto.Clone(orig).(*ferryv1.Topic)
	want.Config.RetentionMaxMessages = 10
	if !proto.Equal(resp.GetTopic(), want) {
		t.Errorf("UpdateTopic returned %v, want %v", resp.GetTopic(), want)
	}
	if got := ts.getTopic(t, "u"); !proto.Equal(got, want) {
		t.Errorf("GetTopic after update = %v, want %v", got, want)
	}
	// max_message_bytes applies to publishes at once.
	if _, err := ts.admin.UpdateTopic(testContext(t), &ferryv1.UpdateTopicRequest{
		Name: "u", Config: &ferryv1.TopicConfig{MaxMessageBytes: 10}, UpdateMask: mask("max_message_bytes"),
	}); err != nil {
		t.Fatalf("UpdateTopic max_message_bytes: %v", err)
	}
	_, err = ts.pub.Publish(testContext(t), &ferryv1.PublishRequest{Topic: "u", Messages: []*ferryv1.PublishMessage{{Payload: make([]byte, 11)}}})
	wantStatus(t, err, codes.InvalidArgument, "payload", "max_message_bytes")
	ts.wantEmpty(t, "u")
}

func TestReadMessagesBadInput(t *testing.T) {
	ts := startServer(t)
	ts.createTopic(t, "r", &ferryv1.TopicConfig{Partitions: 2})
	ts.publish(t, "r",
		&ferryv1.PublishMessage{Partition: part(0), Payload: []byte("a")},
		&ferryv1.PublishMessage{Partition: part(0), Payload: []byte("b")})
	for _, tc := range []struct {
		name  string
		req   *ferryv1.ReadMessagesRequest
		code  codes.Code
		words []string
	}{
		{"beyond head", &ferryv1.ReadMessagesRequest{Topic: "r", FromOffset: 3}, codes.OutOfRange, []string{"offset 3", "head offset 2"}},
		{"far beyond head", &ferryv1.ReadMessagesRequest{Topic: "r", Partition: 1, FromOffset: 1 << 60}, codes.OutOfRange, []string{"beyond the head"}},
		{"partition out of range", &ferryv1.ReadMessagesRequest{Topic: "r", Partition: 2}, codes.InvalidArgument, []string{"partition 2", "2 partitions"}},
		{"max_messages 1001", &ferryv1.ReadMessagesRequest{Topic: "r", MaxMessages: 1001}, codes.InvalidArgument, []string{"max_messages", "1001", "1000"}},
		{"bad topic name", &ferryv1.ReadMessagesRequest{Topic: "r r"}, codes.InvalidArgument, []string{"topic name"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ts.admin.ReadMessages(testContext(t), tc.req)
			wantStatus(t, err, tc.code, tc.words...)
		})
	}
	// At the head: nothing, and no error.
	resp := ts.read(t, "r", 0, 2, 0)
	if len(resp.GetMessages()) != 0 || resp.GetNextOffset() != 2 || resp.GetHeadOffset() != 2 {
		t.Errorf("read at head = %v, want no messages, next 2, head 2", resp)
	}
	resp = ts.read(t, "r", 0, 0, MaxReadMessages)
	if len(resp.GetMessages()) != 2 || resp.GetNextOffset() != 2 || string(resp.GetMessages()[1].GetPayload()) != "b" {
		t.Errorf("read from 0 = %v, want a and b", resp)
	}
}

// TestReadMessagesDefaultClient reads with the defaults from a client with
// gRPC's default 4 MiB receive limit.
func TestReadMessagesDefaultClient(t *testing.T) {
	ts := startServer(t)
	ts.createTopic(t, "fat", nil)
	payload := make([]byte, 100<<10)
	var batch []*ferryv1.PublishMessage
	for range 41 { // 4.1 MiB of payloads: the read passes max_bytes on the 41st
		batch = append(batch, &ferryv1.PublishMessage{Payload: payload})
	}
	for len(batch) > 0 { // small batches: the test memtable takes ~1.2 MiB per commit
		n := min(len(batch), 5)
		ts.publish(t, "fat", batch[:n]...)
		batch = batch[n:]
	}
	resp, err := ts.admin.ReadMessages(testContext(t), &ferryv1.ReadMessagesRequest{Topic: "fat"})
	if err != nil {
		t.Fatalf("ReadMessages with default max_bytes: %v", err)
	}
	if len(resp.GetMessages()) == 0 {
		t.Errorf("read nothing")
	}
}
