package broker

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	ferryv1 "github.com/ferrymq/ferry/proto/ferry/v1"
)

// placeholder stands in for a string field when a request is built; the
// marshalled bytes then get badUTF8, of the same length, in its place.
const (
	placeholder = "PLACEHOLDER"
	badUTF8     = "ab\xff\xfe\xc0defghi"
)

// rawCall sends req, with placeholder replaced by invalid UTF-8, as a
// unary call to method, as a client whose encoder does not check would.
func (ts *testServer) rawCall(tb testing.TB, method string, req proto.Message) error {
	tb.Helper()
	var out []byte
	return ts.conn.Invoke(testContext(tb), method, rawMessage(corrupt(tb, req)), &out, grpc.ForceCodec(rawCodec{}))
}

// rawStream opens a stream to method, sends frame (placeholder replaced by
// invalid UTF-8) and returns how the stream ended.
func (ts *testServer) rawStream(tb testing.TB, method string, frame proto.Message) error {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := ts.conn.NewStream(ctx, &grpc.StreamDesc{ClientStreams: true, ServerStreams: true}, method, grpc.ForceCodec(rawCodec{}))
	if err != nil {
		tb.Fatal(err)
	}
	if err := s.SendMsg(rawMessage(corrupt(tb, frame))); err != nil {
		tb.Fatal(err)
	}
	var out []byte
	for {
		if err := s.RecvMsg(&out); err != nil {
			return err
		}
	}
}

func corrupt(tb testing.TB, m proto.Message) []byte {
	tb.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		tb.Fatal(err)
	}
	if !bytes.Contains(b, []byte(placeholder)) {
		tb.Fatalf("no placeholder in %v", m)
	}
	return bytes.ReplaceAll(b, []byte(placeholder), []byte(badUTF8))
}

// snapshot is everything a bad request must not change: every topic with
// its config and heads, every subscription with its config.
func (ts *testServer) snapshot(tb testing.TB) string {
	tb.Helper()
	ctx := testContext(tb)
	var b strings.Builder
	topics, err := ts.admin.ListTopics(ctx, &ferryv1.ListTopicsRequest{})
	if err != nil {
		tb.Fatal(err)
	}
	for _, t := range topics.GetTopics() {
		fmt.Fprintf(&b, "topic %s %v heads %v\n", t.GetName(), t.GetConfig(), ts.heads(tb, t.GetName()))
		for _, s := range ts.subs(tb, t.GetName()) {
			fmt.Fprintf(&b, "  sub %s %v\n", s.GetName(), s.GetConfig())
		}
	}
	return b.String()
}

func (ts *testServer) subs(tb testing.TB, topic string) []*ferryv1.Subscription {
	tb.Helper()
	resp, err := ts.admin.ListSubscriptions(testContext(tb), &ferryv1.ListSubscriptionsRequest{Topic: topic})
	if err != nil {
		tb.Fatal(err)
	}
	return resp.GetSubscriptions()
}

// levelCounter counts log records by level.
type levelCounter struct {
	mu     sync.Mutex
	counts map[slog.Level]int
	last   []string // the WARN and ERROR lines
}

func (c *levelCounter) Enabled(context.Context, slog.Level) bool { return true }
func (c *levelCounter) Handle(_ context.Context, r slog.Record) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.counts[r.Level]++
	if r.Level >= slog.LevelWarn {
		line := r.Message
		r.Attrs(func(a slog.Attr) bool { line += " " + a.String(); return true })
		c.last = append(c.last, line)
	}
	return nil
}
func (c *levelCounter) WithAttrs([]slog.Attr) slog.Handler { return c }
func (c *levelCounter) WithGroup(string) slog.Handler      { return c }

func (c *levelCounter) count(l slog.Level) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.counts[l]
}

// TestBadInput: each bad request named in issue 16 gets its code, a
// status message of at most 1 KiB that does not repeat a large input
// whole, and changes nothing. Requests that do not decode (invalid UTF-8)
// are logged at WARN, at most once per badInputLogInterval, never at
// ERROR.
func TestBadInput(t *testing.T) {
	logs := &levelCounter{counts: map[slog.Level]int{}}
	ts, clk := startFakeServer(t, func(o *Options) { o.Logger = slog.New(logs) })
	ts.createTopic(t, "t", nil)
	ts.createTopic(t, "dlq", nil)
	ts.createSub(t, "t", "alo", subConfig(atLeast, shared))
	ts.createSub(t, "t", "eo", subConfig(effOnce, shared))
	ts.publishN(t, "t", "m", 2)
	before := ts.snapshot(t)
	ctx := testContext(t)
	admin, pub, sub := ts.admin, ts.pub, ts.subClient()

	huge := strings.Repeat("n", 7<<20) // 7 MB
	years := func(n int64) *durationpb.Duration { return &durationpb.Duration{Seconds: n * 365 * 24 * 3600} }
	createSub := func(name string, set func(c *ferryv1.SubscriptionConfig)) func() error {
		return func() error {
			c := subConfig(atLeast, shared)
			set(c)
			_, err := admin.CreateSubscription(ctx, &ferryv1.CreateSubscriptionRequest{Topic: "t", Name: name, Config: c})
			return err
		}
	}
	updateSub := func(name, path string, c *ferryv1.SubscriptionConfig) func() error {
		return func() error {
			_, err := admin.UpdateSubscription(ctx, &ferryv1.UpdateSubscriptionRequest{Topic: "t", Name: name, Config: c,
				UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{path}}})
			return err
		}
	}
	createTopic := func(name string, c *ferryv1.TopicConfig) func() error {
		return func() error {
			_, err := admin.CreateTopic(ctx, &ferryv1.CreateTopicRequest{Name: name, Config: c})
			return err
		}
	}
	publish := func(headers map[string]string) func() error {
		return func() error {
			_, err := pub.Publish(ctx, &ferryv1.PublishRequest{Topic: "t", Messages: []*ferryv1.PublishMessage{{Payload: []byte("x"), Headers: headers}}})
			return err
		}
	}
	rawPublish := &ferryv1.PublishRequest{Topic: "t", Messages: []*ferryv1.PublishMessage{{Id: placeholder, Payload: []byte("x")}}}
	cases := []struct {
		name  string
		call  func() error
		code  codes.Code
		words []string
	}{
		// Invalid UTF-8, in every service, unary and streaming.
		{"utf8: topic name", func() error {
			return ts.rawCall(t, "/ferry.v1.AdminService/CreateTopic", &ferryv1.CreateTopicRequest{Name: placeholder})
		}, codes.InvalidArgument, []string{"UTF-8"}},
		{"utf8: message id", func() error { return ts.rawCall(t, "/ferry.v1.PublisherService/Publish", rawPublish) },
			codes.InvalidArgument, []string{"UTF-8"}},
		{"utf8: header name", func() error {
			return ts.rawCall(t, "/ferry.v1.PublisherService/Publish", &ferryv1.PublishRequest{Topic: "t",
				Messages: []*ferryv1.PublishMessage{{Headers: map[string]string{placeholder: "v"}}}})
		}, codes.InvalidArgument, []string{"UTF-8"}},
		{"utf8: header value", func() error {
			return ts.rawCall(t, "/ferry.v1.PublisherService/Publish", &ferryv1.PublishRequest{Topic: "t",
				Messages: []*ferryv1.PublishMessage{{Headers: map[string]string{"h": placeholder}}}})
		}, codes.InvalidArgument, []string{"UTF-8"}},
		{"utf8: dead-letter topic", func() error {
			c := subConfig(atLeast, shared)
			c.DeadLetterTopic, c.MaxDeliveries = placeholder, 3
			return ts.rawCall(t, "/ferry.v1.AdminService/CreateSubscription", &ferryv1.CreateSubscriptionRequest{Topic: "t", Name: "x", Config: c})
		}, codes.InvalidArgument, []string{"UTF-8"}},
		{"utf8: delivery id", func() error {
			return ts.rawCall(t, "/ferry.v1.SubscriberService/Ack", &ferryv1.AckRequest{Topic: "t", Subscription: "alo", DeliveryIds: []string{placeholder}})
		}, codes.InvalidArgument, []string{"UTF-8"}},
		{"utf8: commit output", func() error {
			return ts.rawCall(t, "/ferry.v1.SubscriberService/Commit", &ferryv1.CommitRequest{Topic: "t", Subscription: "eo",
				Publishes: []*ferryv1.CommitPublish{{Topic: "dlq", Messages: []*ferryv1.PublishMessage{{Id: placeholder}}}}})
		}, codes.InvalidArgument, []string{"UTF-8"}},
		{"utf8: subscribe init", func() error {
			return ts.rawStream(t, "/ferry.v1.SubscriberService/Subscribe", subInit("t", placeholder, 1))
		}, codes.InvalidArgument, []string{"UTF-8"}},
		{"utf8: publish stream", func() error {
			return ts.rawStream(t, "/ferry.v1.PublisherService/PublishStream", &ferryv1.PublishStreamRequest{Sequence: 1, Topic: "t",
				Messages: []*ferryv1.PublishMessage{{Id: placeholder}}})
		}, codes.InvalidArgument, []string{"UTF-8"}},
		// Echoed input is cut.
		{"7 MB topic name", createTopic(huge, nil), codes.InvalidArgument, []string{"topic name", "7340032 bytes"}},
		{"7 MB subscription name", createSub(huge, func(*ferryv1.SubscriptionConfig) {}), codes.InvalidArgument, []string{"subscription name"}},
		{"7 MB dead-letter topic", createSub("x", func(c *ferryv1.SubscriptionConfig) { c.DeadLetterTopic, c.MaxDeliveries = huge, 3 }),
			codes.InvalidArgument, []string{"dead-letter topic", "7340032 bytes"}},
		{"7 MB update_mask path", updateSub("alo", huge, &ferryv1.SubscriptionConfig{}), codes.InvalidArgument, []string{"update_mask path"}},
		{"7 MB topic update_mask path", func() error {
			_, err := admin.UpdateTopic(ctx, &ferryv1.UpdateTopicRequest{Name: "t", Config: &ferryv1.TopicConfig{},
				UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{huge}}})
			return err
		}, codes.InvalidArgument, []string{"update_mask path"}},
		// Durations out of range: refused, not clamped.
		{"retention 300 years", createTopic("x", &ferryv1.TopicConfig{RetentionMaxAge: years(300)}), codes.InvalidArgument, []string{"retention_max_age", "out of range", "100 years"}},
		{"retention 101 years", createTopic("x", &ferryv1.TopicConfig{RetentionMaxAge: years(101)}), codes.InvalidArgument, []string{"retention_max_age", "at most"}},
		{"retention update 300 years", func() error {
			_, err := admin.UpdateTopic(ctx, &ferryv1.UpdateTopicRequest{Name: "t", Config: &ferryv1.TopicConfig{RetentionMaxAge: years(300)},
				UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"retention_max_age"}}})
			return err
		}, codes.InvalidArgument, []string{"retention_max_age"}},
		{"dedup window 8 days", createTopic("x", &ferryv1.TopicConfig{DedupWindow: durationpb.New(8 * 24 * time.Hour)}), codes.InvalidArgument, []string{"dedup window"}},
		{"ack timeout 13h", createSub("x", func(c *ferryv1.SubscriptionConfig) { c.AckTimeout = durationpb.New(13 * time.Hour) }), codes.InvalidArgument, []string{"ack timeout", "12h"}},
		{"ack timeout 300 years", createSub("x", func(c *ferryv1.SubscriptionConfig) { c.AckTimeout = years(300) }), codes.InvalidArgument, []string{"ack_timeout", "out of range", "1s to 12h"}},
		{"backoff 1ns", createSub("x", func(c *ferryv1.SubscriptionConfig) { c.BackoffMin = durationpb.New(time.Nanosecond) }), codes.InvalidArgument, []string{"backoff min", "10ms"}},
		{"backoff max 13h", createSub("x", func(c *ferryv1.SubscriptionConfig) { c.BackoffMax = durationpb.New(13 * time.Hour) }), codes.InvalidArgument, []string{"backoff max", "12h"}},
		{"update backoff to 1ns", updateSub("alo", "backoff_min", &ferryv1.SubscriptionConfig{BackoffMin: durationpb.New(time.Nanosecond)}), codes.InvalidArgument, []string{"backoff min"}},
		{"extend by 13h", func() error {
			_, err := sub.ModifyAckDeadline(ctx, &ferryv1.ModifyAckDeadlineRequest{Topic: "t", Subscription: "alo", DeliveryIds: []string{"x"},
				AckDeadline: durationpb.New(13 * time.Hour)})
			return err
		}, codes.InvalidArgument, []string{"ack_deadline", "12h"}},
		// dedup_horizon only where acked ids are remembered.
		{"dedup horizon on at-least-once", createSub("x", func(c *ferryv1.SubscriptionConfig) { c.DedupHorizon = durationpb.New(time.Hour) }),
			codes.InvalidArgument, []string{"dedup horizon", "effectively-once"}},
		{"dedup horizon update on at-least-once", updateSub("alo", "dedup_horizon", &ferryv1.SubscriptionConfig{DedupHorizon: durationpb.New(time.Hour)}),
			codes.InvalidArgument, []string{"dedup horizon", "effectively-once"}},
		{"dedup horizon 101 years", createSub("x", func(c *ferryv1.SubscriptionConfig) {
			c.Guarantee, c.DedupHorizon = effOnce, years(101)
		}), codes.InvalidArgument, []string{"dedup horizon"}},
		// Header names.
		{"header with a control character", publish(map[string]string{"a\x01b": "v"}), codes.InvalidArgument, []string{"header name", "printable"}},
		{"header with a space", publish(map[string]string{"a b": "v"}), codes.InvalidArgument, []string{"header name", "printable"}},
		{"header with a newline", publish(map[string]string{"a\nb": "v"}), codes.InvalidArgument, []string{"header name"}},
		{"empty header name", publish(map[string]string{"": "v"}), codes.InvalidArgument, []string{"header name is empty"}},
		{"client-set dead-letter header", publish(map[string]string{"ferry-dead-letter-topic": "t"}), codes.InvalidArgument, []string{"reserved"}},
		{"client-set FERRY- header", publish(map[string]string{"FERRY-anything": "t"}), codes.InvalidArgument, []string{"reserved"}},
		{"reserved header in a commit", func() error {
			_, err := sub.Commit(ctx, &ferryv1.CommitRequest{Topic: "t", Subscription: "eo", Publishes: []*ferryv1.CommitPublish{{Topic: "dlq",
				Messages: []*ferryv1.PublishMessage{{Id: "c", Headers: map[string]string{"ferry-dead-letter-offset": "1"}}}}}})
			return err
		}, codes.InvalidArgument, []string{"reserved"}},
		// The names . and ..
		{"topic named .", createTopic(".", nil), codes.InvalidArgument, []string{"reserved"}},
		{"topic named ..", createTopic("..", nil), codes.InvalidArgument, []string{"reserved"}},
		{"subscription named .", createSub(".", func(*ferryv1.SubscriptionConfig) {}), codes.InvalidArgument, []string{"reserved"}},
		{"subscription named ..", createSub("..", func(*ferryv1.SubscriptionConfig) {}), codes.InvalidArgument, []string{"reserved"}},
		{"publish to ..", func() error {
			_, err := pub.Publish(ctx, &ferryv1.PublishRequest{Topic: "..", Messages: []*ferryv1.PublishMessage{{Payload: []byte("x")}}})
			return err
		}, codes.InvalidArgument, []string{"reserved"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.call()
			st, _ := status.FromError(err)
			wantStatus(t, err, tc.code, tc.words...)
			if n := len(st.Message()); n > maxStatusBytes {
				t.Errorf("a status message of %d bytes", n)
			}
			if strings.Contains(st.Message(), strings.Repeat("n", 300)) {
				t.Errorf("the status message repeats the input: %.300s", st.Message())
			}
			if after := ts.snapshot(t); after != before {
				t.Fatalf("the bad request changed state:\nbefore\n%s\nafter\n%s", before, after)
			}
		})
	}
	if n := logs.count(slog.LevelError); n != 0 {
		t.Errorf("%d ERROR lines for bad input: %q", n, logs.last)
	}
	warns := logs.count(slog.LevelWarn)
	if warns != 1 {
		t.Errorf("%d WARN lines for 9 undecodable requests within one interval, want 1: %q", warns, logs.last)
	}
	clk.Advance(badInputLogInterval)
	_ = ts.rawCall(t, "/ferry.v1.PublisherService/Publish", rawPublish)
	if n := logs.count(slog.LevelWarn); n != warns+1 || !strings.Contains(logs.last[len(logs.last)-1], "left_out=8") {
		t.Errorf("after the interval: %d WARN lines, last %q; want one more saying left_out=8", n, logs.last[len(logs.last)-1])
	}
}

// TestClusterPeerPortBadInput: the node-to-node port, which serves the
// calls nodes forward to each other, answers one that does not decode as
// the client port does: INVALID_ARGUMENT, not INTERNAL; and the rest of
// the API, Publish among it, is refused there (PERMISSION_DENIED) before
// it is decoded, storing nothing.
func TestClusterPeerPortBadInput(t *testing.T) {
	c := startTestCluster(t, 1)
	c[1].createTopic(t, "t", nil)
	peer := &testServer{conn: dial(t, c[1].srv.opts.Cluster.Peers[1])}
	rawPublish := &ferryv1.PublishRequest{Topic: "t", Messages: []*ferryv1.PublishMessage{{Id: placeholder, Payload: []byte("x")}}}
	wantStatus(t, peer.rawCall(t, "/ferry.v1.PublisherService/Publish", rawPublish), codes.PermissionDenied, "only calls between nodes")
	rawCreate := &ferryv1.CreateSubscriptionRequest{Topic: "t", Name: placeholder}
	wantStatus(t, peer.rawCall(t, "/ferry.v1.AdminService/CreateSubscription", rawCreate), codes.InvalidArgument, "UTF-8")
	wantStatus(t, peer.rawStream(t, "/ferry.v1.SubscriberService/Subscribe", subInit("t", placeholder, 1)), codes.InvalidArgument, "UTF-8")
	c[1].wantEmpty(t, "t")
}
