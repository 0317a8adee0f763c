package broker

import (
	"context"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/fieldmaskpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	ferryv1 "github.com/ferrymq/ferry/proto/ferry/v1"
)

func (ts *testServer) subNames(tb testing.TB, topic string) []string {
	tb.Helper()
	resp, err := ts.admin.ListSubscriptions(testContext(tb), &ferryv1.ListSubscriptionsRequest{Topic: topic})
	if err != nil {
		tb.Fatalf("ListSubscriptions(%q): %v", topic, err)
	}
	if len(resp.GetStats()) != len(resp.GetSubscriptions()) {
		tb.Errorf("ListSubscriptions(%q): %d stats for %d subscriptions", topic, len(resp.GetStats()), len(resp.GetSubscriptions()))
	}
	var names []string
	for _, s := range resp.GetSubscriptions() {
		names = append(names, s.GetName())
	}
	return names
}

func (ts *testServer) getSub(tb testing.TB, topic, name string) *ferryv1.Subscription {
	tb.Helper()
	resp, err := ts.admin.GetSubscription(testContext(tb), &ferryv1.GetSubscriptionRequest{Topic: topic, Name: name})
	if err != nil {
		tb.Fatalf("GetSubscription(%q, %q): %v", topic, name, err)
	}
	return resp.GetSubscription()
}

func TestCreateSubscriptionIdempotent(t *testing.T) {
	ts := startServer(t)
	ts.createTopic(t, "in", nil)
	cfg := subConfig(atLeast, shared)
	cfg.AckTimeout = durationpb.New(10 * time.Second)
	orig := ts.createSub(t, "in", "s", cfg)
	want := &ferryv1.SubscriptionConfig{
		Guarantee:  atLeast,
		Type:       shared,
		Start:      &ferryv1.Position{Kind: ferryv1.PositionKind_POSITION_KIND_EARLIEST},
		AckTimeout: durationpb.New(10 * time.Second),
		BackoffMin: durationpb.New(time.Second),
		BackoffMax: durationpb.New(time.Minute),
	}
	if !proto.Equal(orig.GetConfig(), want) || orig.GetTopic() != "in" || orig.GetName() != "s" || orig.GetCreateTime() == nil {
		t.Errorf("created %v, want config %v", orig, want)
	}
	// Identical creates, as sent or with the defaults spelt out, are no-ops.
	for _, c := range []*ferryv1.SubscriptionConfig{cfg, orig.GetConfig()} {
		if again := ts.createSub(t, "in", "s", c); !proto.Equal(again, orig) {
			t.Errorf("identical create returned %v, want %v", again, orig)
		}
	}
	for _, tc := range []struct {
		name   string
		change func(*ferryv1.SubscriptionConfig)
	}{
		{"other ack timeout", func(c *ferryv1.SubscriptionConfig) { c.AckTimeout = durationpb.New(11 * time.Second) }},
		{"other guarantee", func(c *ferryv1.SubscriptionConfig) { c.Guarantee = effOnce }},
		{"other type", func(c *ferryv1.SubscriptionConfig) { c.Type = failover }},
		{"other start", func(c *ferryv1.SubscriptionConfig) { c.Start = nil }},
		{"none", func(c *ferryv1.SubscriptionConfig) { c.Guarantee, c.Start = none, nil }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := proto.Clone(cfg).(*ferryv1.SubscriptionConfig)
			tc.change(c)
			_, err := ts.admin.CreateSubscription(testContext(t), &ferryv1.CreateSubscriptionRequest{Topic: "in", Name: "s", Config: c})
			wantStatus(t, err, codes.AlreadyExists, `"s"`, "different config")
			if got := ts.getSub(t, "in", "s"); !proto.Equal(got, orig) {
				t.Errorf("after a refused create: %v, want %v", got, orig)
			}
		})
	}
	if names := ts.subNames(t, "in"); len(names) != 1 {
		t.Errorf("subscriptions %v, want only s", names)
	}
}

func TestGetSubscriptionStats(t *testing.T) {
	ts, clk := startFakeServer(t)
	ts.createTopic(t, "in", nil)
	ts.publishN(t, "in", "g", 5)
	ts.createSub(t, "in", "s", subConfig(atLeast, shared))
	st := ts.stats(t, "in", "s")
	if st.GetBacklog() != 5 || st.GetInFlight() != 0 || st.GetDelivered() != 0 || st.GetAcked() != 0 || st.GetConsumers() != 0 {
		t.Errorf("before any consumer: %v, want backlog 5 and nothing else", st)
	}

	s := ts.attach(t, "in", "s", 2)
	d := s.take(t, 2)
	clk.Advance(10 * time.Second)
	st = ts.stats(t, "in", "s")
	if st.GetBacklog() != 5 || st.GetInFlight() != 2 || st.GetDelivered() != 2 || st.GetConsumers() != 1 {
		t.Errorf("with 2 delivered: %v, want backlog 5, in_flight 2, delivered 2, consumers 1", st)
	}
	if got := st.GetOldestUnackedAge().AsDuration(); got != 10*time.Second {
		t.Errorf("oldest_unacked_age = %v, want 10s", got)
	}
	resp, err := ts.subClient().Ack(testContext(t), &ferryv1.AckRequest{Topic: "in", Subscription: "s", DeliveryIds: ids(d...)})
	if err != nil {
		t.Fatalf("Ack: %v", err)
	}
	for i, r := range resp.GetResults() {
		wantResult(t, r, d[i].GetDeliveryId(), codes.OK)
	}
	st = ts.waitStats(t, "in", "s", "two more deliveries", func(st *ferryv1.SubscriptionStats) bool { return st.GetDelivered() == 4 })
	if st.GetBacklog() != 3 || st.GetAcked() != 2 || st.GetInFlight() != 2 {
		t.Errorf("after acking 2: %v, want backlog 3, acked 2, in_flight 2, delivered 4", st)
	}
	s.close(t)
}

func TestListSubscriptions(t *testing.T) {
	ts := startServer(t)
	ts.createTopic(t, "in", nil)
	ts.createTopic(t, "other", nil)
	for _, n := range []string{"charlie", "alpha", "bravo"} {
		ts.createSub(t, "in", n, subConfig(atLeast, shared))
	}
	ts.createSub(t, "other", "zulu", subConfig(atMost, shared))
	if got, want := strings.Join(ts.subNames(t, "in"), ","), "alpha,bravo,charlie"; got != want {
		t.Errorf("ListSubscriptions(in) = %s, want %s", got, want)
	}
	if got := ts.subNames(t, "other"); len(got) != 1 || got[0] != "zulu" {
		t.Errorf("ListSubscriptions(other) = %v, want [zulu]", got)
	}
	ts.createTopic(t, "empty", nil)
	if got := ts.subNames(t, "empty"); len(got) != 0 {
		t.Errorf("ListSubscriptions(empty) = %v", got)
	}
}

func TestUpdateSubscription(t *testing.T) {
	ts, clk := startFakeServer(t)
	ts.createTopic(t, "in", nil)
	ts.createTopic(t, "dlq", nil)
	orig := ts.createSub(t, "in", "s", subConfig(atLeast, shared))
	s := ts.attach(t, "in", "s", 1)
	ts.waitStats(t, "in", "s", "the consumer", func(st *ferryv1.SubscriptionStats) bool { return st.GetConsumers() == 1 })

	update := func(t *testing.T, cfg *ferryv1.SubscriptionConfig, paths ...string) (*ferryv1.Subscription, error) {
		resp, err := ts.admin.UpdateSubscription(testContext(t), &ferryv1.UpdateSubscriptionRequest{
			Topic: "in", Name: "s", Config: cfg, UpdateMask: &fieldmaskpb.FieldMask{Paths: paths}})
		return resp.GetSubscription(), err
	}
	for _, tc := range []struct {
		name  string
		cfg   *ferryv1.SubscriptionConfig
		paths []string
		words []string
	}{
		{"guarantee", &ferryv1.SubscriptionConfig{Guarantee: effOnce}, []string{"guarantee"}, []string{"guarantee", "cannot be changed"}},
		{"type", &ferryv1.SubscriptionConfig{Type: failover}, []string{"type"}, []string{"type", "cannot be changed"}},
		{"start", &ferryv1.SubscriptionConfig{}, []string{"start"}, []string{"start"}},
		{"unknown path", &ferryv1.SubscriptionConfig{}, []string{"colour"}, []string{"colour"}},
		{"empty mask", &ferryv1.SubscriptionConfig{AckTimeout: durationpb.New(5 * time.Second)}, nil, []string{"update_mask"}},
		{"ack timeout too short", &ferryv1.SubscriptionConfig{AckTimeout: durationpb.New(500 * time.Millisecond)}, []string{"ack_timeout"}, []string{"ack timeout"}},
		{"ack timeout unset", &ferryv1.SubscriptionConfig{}, []string{"ack_timeout"}, []string{"ack timeout"}},
		{"ack timeout over 12h", &ferryv1.SubscriptionConfig{AckTimeout: durationpb.New(13 * time.Hour)}, []string{"ack_timeout"}, []string{"ack timeout"}},
		{"max deliveries alone", &ferryv1.SubscriptionConfig{MaxDeliveries: 3}, []string{"max_deliveries"}, []string{"dead-letter"}},
		{"dead letter to itself", &ferryv1.SubscriptionConfig{MaxDeliveries: 3, DeadLetterTopic: "in"}, []string{"max_deliveries", "dead_letter_topic"}, []string{"own topic"}},
		{"backoff max below min", &ferryv1.SubscriptionConfig{BackoffMax: durationpb.New(time.Millisecond)}, []string{"backoff_max"}, []string{"backoff max"}},
		{"negative duration", &ferryv1.SubscriptionConfig{BackoffMin: durationpb.New(-time.Second)}, []string{"backoff_min"}, []string{"backoff_min", "negative"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := update(t, tc.cfg, tc.paths...)
			wantStatus(t, err, codes.InvalidArgument, tc.words...)
			if got := ts.getSub(t, "in", "s"); !proto.Equal(got, orig) {
				t.Errorf("after a refused update: %v, want %v", got, orig)
			}
		})
	}
	_, err := update(t, &ferryv1.SubscriptionConfig{MaxDeliveries: 3, DeadLetterTopic: "nope"}, "max_deliveries", "dead_letter_topic")
	wantStatus(t, err, codes.NotFound, "nope")
	if got := ts.getSub(t, "in", "s"); !proto.Equal(got, orig) {
		t.Errorf("after a refused update: %v, want %v", got, orig)
	}
	if s.queued() != 0 || func() bool {
		select {
		case <-s.done:
			return true
		default:
			return false
		}
	}() {
		t.Fatalf("a refused update disturbed the attached consumer: %v", s.err)
	}

	got, err := update(t, &ferryv1.SubscriptionConfig{AckTimeout: durationpb.New(5 * time.Second), Guarantee: effOnce}, "ack_timeout")
	if err != nil {
		t.Fatalf("UpdateSubscription(ack_timeout): %v", err)
	}
	want := proto.Clone(orig.GetConfig()).(*ferryv1.SubscriptionConfig)
	want.AckTimeout = durationpb.New(5 * time.Second)
	if !proto.Equal(got.GetConfig(), want) || !proto.Equal(got.GetCreateTime(), orig.GetCreateTime()) {
		t.Errorf("updated to %v, want config %v and the original create time", got, want)
	}
	if g := ts.getSub(t, "in", "s"); !proto.Equal(g, got) {
		t.Errorf("GetSubscription after the update = %v, want %v", g, got)
	}
	// The consumer attached before is told to attach again.
	s.wantEnd(t, codes.Unavailable, "updated")

	// The new ack timeout is in force.
	ts.publishN(t, "in", "u", 1)
	s = ts.attach(t, "in", "s", 1)
	if d := s.next(t); d.GetAttempt() != 1 {
		t.Fatalf("first delivery has attempt %d", d.GetAttempt())
	}
	ts.stats(t, "in", "s") // the deadline's timer is armed
	clk.Advance(5 * time.Second)
	if d := s.next(t); d.GetAttempt() != 2 {
		t.Errorf("after the new 5s ack timeout got attempt %d, want 2", d.GetAttempt())
	}
	s.close(t)
}

func TestDeleteSubscription(t *testing.T) {
	ts := startServer(t)
	ts.createTopic(t, "in", nil)
	ts.createSub(t, "in", "a", subConfig(atLeast, shared))
	ts.createSub(t, "in", "b", subConfig(atLeast, shared))
	s := ts.attach(t, "in", "a", 1)
	ts.waitStats(t, "in", "a", "the consumer", func(st *ferryv1.SubscriptionStats) bool { return st.GetConsumers() == 1 })

	if _, err := ts.admin.DeleteSubscription(testContext(t), &ferryv1.DeleteSubscriptionRequest{Topic: "in", Name: "a"}); err != nil {
		t.Fatalf("DeleteSubscription: %v", err)
	}
	s.wantEnd(t, codes.Unavailable, "deleted")
	_, err := ts.admin.GetSubscription(testContext(t), &ferryv1.GetSubscriptionRequest{Topic: "in", Name: "a"})
	wantStatus(t, err, codes.NotFound, `"a"`)
	_, err = ts.admin.DeleteSubscription(testContext(t), &ferryv1.DeleteSubscriptionRequest{Topic: "in", Name: "a"})
	wantStatus(t, err, codes.NotFound, `"a"`)
	if got := ts.subNames(t, "in"); len(got) != 1 || got[0] != "b" {
		t.Errorf("after deleting a: %v, want [b]", got)
	}
	s = ts.attach(t, "in", "a", 1)
	s.wantEnd(t, codes.NotFound, `"a"`)
	// The name can be used again, starting afresh.
	ts.publishN(t, "in", "d", 1)
	ts.createSub(t, "in", "a", subConfig(atLeast, shared))
	if st := ts.stats(t, "in", "a"); st.GetBacklog() != 1 || st.GetDelivered() != 0 {
		t.Errorf("recreated subscription: %v, want backlog 1 and nothing delivered", st)
	}
}

func TestDeleteTopicWithSubscriptions(t *testing.T) {
	ts := startServer(t)
	ts.createTopic(t, "in", nil)
	ts.publishN(t, "in", "t", 2)
	ts.createSub(t, "in", "a", subConfig(atLeast, shared))
	ts.createSub(t, "in", "b", subConfig(effOnce, shared))
	s := ts.attach(t, "in", "a", 1)
	s.next(t)

	_, err := ts.admin.DeleteTopic(testContext(t), &ferryv1.DeleteTopicRequest{Name: "in"})
	wantStatus(t, err, codes.FailedPrecondition, `"in"`, "a, b", "force")
	if h := ts.heads(t, "in"); len(h) != 1 || h[0] != 2 {
		t.Errorf("after a refused delete the heads are %v, want [2]", h)
	}
	if got := ts.subNames(t, "in"); len(got) != 2 {
		t.Errorf("after a refused delete the subscriptions are %v", got)
	}
	if st := ts.stats(t, "in", "a"); st.GetConsumers() != 1 || st.GetInFlight() != 1 {
		t.Errorf("after a refused delete: %v, want the consumer still attached", st)
	}

	if _, err := ts.admin.DeleteTopic(testContext(t), &ferryv1.DeleteTopicRequest{Name: "in", Force: true}); err != nil {
		t.Fatalf("DeleteTopic with force: %v", err)
	}
	if err := s.end(t); err == nil {
		t.Errorf("the consumer's stream ended cleanly when its topic was deleted")
	} else {
		t.Logf("the consumer's stream ended with %v", err)
	}
	_, err = ts.admin.GetTopic(testContext(t), &ferryv1.GetTopicRequest{Name: "in"})
	wantStatus(t, err, codes.NotFound)
	_, err = ts.admin.GetSubscription(testContext(t), &ferryv1.GetSubscriptionRequest{Topic: "in", Name: "a"})
	wantStatus(t, err, codes.NotFound)

	// A new topic of the same name has none of the old subscriptions.
	ts.createTopic(t, "in", nil)
	if got := ts.subNames(t, "in"); len(got) != 0 {
		t.Errorf("the recreated topic has subscriptions %v", got)
	}
	for _, n := range []string{"a", "b"} {
		_, err = ts.admin.GetSubscription(testContext(t), &ferryv1.GetSubscriptionRequest{Topic: "in", Name: n})
		wantStatus(t, err, codes.NotFound, `"`+n+`"`)
	}
	s = ts.attach(t, "in", "a", 1)
	s.wantEnd(t, codes.NotFound)
	// And its subscriptions start afresh.
	ts.createSub(t, "in", "a", subConfig(atLeast, shared))
	ts.publishN(t, "in", "new", 1)
	s = ts.attach(t, "in", "a", 1)
	if d := s.next(t); d.GetMessage().GetId() != "new-0" || d.GetAttempt() != 1 {
		t.Errorf("on the recreated topic got %v, want new-0 attempt 1", d)
	}
	s.close(t)
}

// TestSubscriptionBadInput: bad requests get a clear status, change
// nothing, and the broker keeps serving.
func TestSubscriptionBadInput(t *testing.T) {
	ts := startServer(t)
	ts.createTopic(t, "bi", nil)
	ts.createTopic(t, "dlq", nil)
	ts.publishN(t, "bi", "b", 1)
	orig := ts.createSub(t, "bi", "s", subConfig(atLeast, shared))
	sub := ts.subClient()
	long := strings.Repeat("n", 201)
	tooMany := make([]string, MaxAckIDs+1)
	for i := range tooMany {
		tooMany[i] = "0.0.1.0"
	}
	cfgWith := func(change func(*ferryv1.SubscriptionConfig)) *ferryv1.SubscriptionConfig {
		c := subConfig(atLeast, shared)
		change(c)
		return c
	}
	create := func(topic, name string, cfg *ferryv1.SubscriptionConfig) func(context.Context) error {
		return func(ctx context.Context) error {
			_, err := ts.admin.CreateSubscription(ctx, &ferryv1.CreateSubscriptionRequest{Topic: topic, Name: name, Config: cfg})
			return err
		}
	}
	ack := func(topic, name string, dids ...string) func(context.Context) error {
		return func(ctx context.Context) error {
			_, err := sub.Ack(ctx, &ferryv1.AckRequest{Topic: topic, Subscription: name, DeliveryIds: dids})
			return err
		}
	}
	seek := func(topic, name string, p *ferryv1.Position) func(context.Context) error {
		return func(ctx context.Context) error {
			_, err := sub.Seek(ctx, &ferryv1.SeekRequest{Topic: topic, Subscription: name, Position: p})
			return err
		}
	}
	commit := func(req *ferryv1.CommitRequest) func(context.Context) error {
		return func(ctx context.Context) error {
			_, err := sub.Commit(ctx, req)
			return err
		}
	}
	earliest := &ferryv1.Position{Kind: ferryv1.PositionKind_POSITION_KIND_EARLIEST}
	outMsgs := []*ferryv1.PublishMessage{{Id: "o", Payload: []byte("o")}}
	for _, tc := range []struct {
		name  string
		call  func(context.Context) error
		code  codes.Code
		words []string
	}{
		// CreateSubscription.
		{"create on unknown topic", create("nope", "x", subConfig(atLeast, shared)), codes.NotFound, []string{`"nope"`}},
		{"create with bad topic name", create("has space", "x", subConfig(atLeast, shared)), codes.InvalidArgument, []string{"topic name"}},
		{"create with empty name", create("bi", "", subConfig(atLeast, shared)), codes.InvalidArgument, []string{"subscription name", "1 to 200"}},
		{"create with long name", create("bi", long, subConfig(atLeast, shared)), codes.InvalidArgument, []string{"subscription name", "1 to 200"}},
		{"create with slash in name", create("bi", "a/b", subConfig(atLeast, shared)), codes.InvalidArgument, []string{"subscription name", "'/'"}},
		{"create without config", create("bi", "x", nil), codes.InvalidArgument, []string{"config"}},
		{"guarantee unspecified", create("bi", "x", subConfig(0, shared)), codes.InvalidArgument, []string{"guarantee"}},
		{"type unspecified", create("bi", "x", subConfig(atLeast, 0)), codes.InvalidArgument, []string{"type"}},
		{"guarantee out of range", create("bi", "x", subConfig(9, shared)), codes.InvalidArgument, []string{"guarantee"}},
		{"type out of range", create("bi", "x", subConfig(atLeast, 9)), codes.InvalidArgument, []string{"type"}},
		{"dead letter to itself", create("bi", "x", cfgWith(func(c *ferryv1.SubscriptionConfig) { c.MaxDeliveries, c.DeadLetterTopic = 3, "bi" })),
			codes.InvalidArgument, []string{"own topic"}},
		{"dead letter to a missing topic", create("bi", "x", cfgWith(func(c *ferryv1.SubscriptionConfig) { c.MaxDeliveries, c.DeadLetterTopic = 3, "gone" })),
			codes.NotFound, []string{`"gone"`}},
		{"max deliveries without dead letter topic", create("bi", "x", cfgWith(func(c *ferryv1.SubscriptionConfig) { c.MaxDeliveries = 3 })),
			codes.InvalidArgument, []string{"dead-letter"}},
		{"dead letter topic without max deliveries", create("bi", "x", cfgWith(func(c *ferryv1.SubscriptionConfig) { c.DeadLetterTopic = "dlq" })),
			codes.InvalidArgument, []string{"max deliveries"}},
		{"ack timeout under 1s", create("bi", "x", cfgWith(func(c *ferryv1.SubscriptionConfig) { c.AckTimeout = durationpb.New(999 * time.Millisecond) })),
			codes.InvalidArgument, []string{"ack timeout"}},
		{"ack timeout over 12h", create("bi", "x", cfgWith(func(c *ferryv1.SubscriptionConfig) { c.AckTimeout = durationpb.New(12*time.Hour + time.Second) })),
			codes.InvalidArgument, []string{"ack timeout"}},
		{"negative backoff", create("bi", "x", cfgWith(func(c *ferryv1.SubscriptionConfig) { c.BackoffMin = durationpb.New(-time.Second) })),
			codes.InvalidArgument, []string{"backoff_min", "negative"}},
		{"malformed duration", create("bi", "x", cfgWith(func(c *ferryv1.SubscriptionConfig) { c.DedupHorizon = &durationpb.Duration{Seconds: 1, Nanos: -1} })),
			codes.InvalidArgument, []string{"dedup_horizon"}},
		{"start offset out of range", create("bi", "x", cfgWith(func(c *ferryv1.SubscriptionConfig) {
			c.Start = &ferryv1.Position{Kind: ferryv1.PositionKind_POSITION_KIND_OFFSET, Offset: 5}
		})), codes.OutOfRange, []string{"5"}},
		{"none that dead-letters", create("bi", "x", &ferryv1.SubscriptionConfig{Guarantee: none, Type: shared, MaxDeliveries: 2, DeadLetterTopic: "dlq"}),
			codes.InvalidArgument, []string{"none"}},
		{"none from earliest", create("bi", "x", subConfig(none, shared)), codes.InvalidArgument, []string{"none"}},
		// Get, List, Update, Delete.
		{"get unknown subscription", func(ctx context.Context) error {
			_, err := ts.admin.GetSubscription(ctx, &ferryv1.GetSubscriptionRequest{Topic: "bi", Name: "nope"})
			return err
		}, codes.NotFound, []string{`"nope"`}},
		{"get on unknown topic", func(ctx context.Context) error {
			_, err := ts.admin.GetSubscription(ctx, &ferryv1.GetSubscriptionRequest{Topic: "nope", Name: "s"})
			return err
		}, codes.NotFound, []string{`"nope"`}},
		{"get with bad name", func(ctx context.Context) error {
			_, err := ts.admin.GetSubscription(ctx, &ferryv1.GetSubscriptionRequest{Topic: "bi", Name: "a b"})
			return err
		}, codes.InvalidArgument, []string{"subscription name"}},
		{"list unknown topic", func(ctx context.Context) error {
			_, err := ts.admin.ListSubscriptions(ctx, &ferryv1.ListSubscriptionsRequest{Topic: "nope"})
			return err
		}, codes.NotFound, []string{`"nope"`}},
		{"list bad topic name", func(ctx context.Context) error {
			_, err := ts.admin.ListSubscriptions(ctx, &ferryv1.ListSubscriptionsRequest{Topic: ""})
			return err
		}, codes.InvalidArgument, []string{"topic name"}},
		{"update unknown subscription", func(ctx context.Context) error {
			_, err := ts.admin.UpdateSubscription(ctx, &ferryv1.UpdateSubscriptionRequest{Topic: "bi", Name: "nope",
				Config: &ferryv1.SubscriptionConfig{AckTimeout: durationpb.New(5 * time.Second)}, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"ack_timeout"}}})
			return err
		}, codes.NotFound, []string{`"nope"`}},
		{"delete unknown subscription", func(ctx context.Context) error {
			_, err := ts.admin.DeleteSubscription(ctx, &ferryv1.DeleteSubscriptionRequest{Topic: "bi", Name: "nope"})
			return err
		}, codes.NotFound, []string{`"nope"`}},
		{"delete on unknown topic", func(ctx context.Context) error {
			_, err := ts.admin.DeleteSubscription(ctx, &ferryv1.DeleteSubscriptionRequest{Topic: "nope", Name: "s"})
			return err
		}, codes.NotFound, []string{`"nope"`}},
		// Ack, Nack, ModifyAckDeadline.
		{"ack on unknown subscription", ack("bi", "nope", "0.0.1.0"), codes.NotFound, []string{`"nope"`}},
		{"ack on unknown topic", ack("nope", "s", "0.0.1.0"), codes.NotFound, []string{`"nope"`}},
		{"ack with bad topic name", ack("a/b", "s", "0.0.1.0"), codes.InvalidArgument, []string{"topic name"}},
		{"ack with no ids", ack("bi", "s"), codes.InvalidArgument, []string{"0 delivery ids"}},
		{"ack with too many ids", ack("bi", "s", tooMany...), codes.InvalidArgument, []string{"10001 delivery ids", "10000"}},
		{"nack with no ids", func(ctx context.Context) error {
			_, err := sub.Nack(ctx, &ferryv1.NackRequest{Topic: "bi", Subscription: "s"})
			return err
		}, codes.InvalidArgument, []string{"delivery ids"}},
		{"nack on unknown subscription", func(ctx context.Context) error {
			_, err := sub.Nack(ctx, &ferryv1.NackRequest{Topic: "bi", Subscription: "nope", DeliveryIds: []string{"0.0.1.0"}})
			return err
		}, codes.NotFound, []string{`"nope"`}},
		{"ack deadline 0", func(ctx context.Context) error {
			_, err := sub.ModifyAckDeadline(ctx, &ferryv1.ModifyAckDeadlineRequest{Topic: "bi", Subscription: "s", DeliveryIds: []string{"0.0.1.0"}})
			return err
		}, codes.InvalidArgument, []string{"ack_deadline"}},
		{"ack deadline over 12h", func(ctx context.Context) error {
			_, err := sub.ModifyAckDeadline(ctx, &ferryv1.ModifyAckDeadlineRequest{Topic: "bi", Subscription: "s", DeliveryIds: []string{"0.0.1.0"},
				AckDeadline: durationpb.New(13 * time.Hour)})
			return err
		}, codes.InvalidArgument, []string{"ack_deadline"}},
		{"ack deadline with no ids", func(ctx context.Context) error {
			_, err := sub.ModifyAckDeadline(ctx, &ferryv1.ModifyAckDeadlineRequest{Topic: "bi", Subscription: "s", AckDeadline: durationpb.New(time.Minute)})
			return err
		}, codes.InvalidArgument, []string{"delivery ids"}},
		// Commit.
		{"empty commit", commit(&ferryv1.CommitRequest{Topic: "bi", Subscription: "s"}), codes.InvalidArgument, []string{"empty"}},
		{"commit with a malformed id", commit(&ferryv1.CommitRequest{Topic: "bi", Subscription: "s", DeliveryIds: []string{"x.y"},
			Publishes: []*ferryv1.CommitPublish{{Topic: "dlq", Messages: outMsgs}}}), codes.InvalidArgument, []string{"malformed"}},
		{"commit to an unknown topic", commit(&ferryv1.CommitRequest{Topic: "bi", Subscription: "s",
			Publishes: []*ferryv1.CommitPublish{{Topic: "dlq", Messages: outMsgs}, {Topic: "nope", Messages: outMsgs}}}), codes.NotFound, []string{`"nope"`}},
		{"commit on unknown subscription", commit(&ferryv1.CommitRequest{Topic: "bi", Subscription: "nope",
			Publishes: []*ferryv1.CommitPublish{{Topic: "dlq", Messages: outMsgs}}}), codes.NotFound, []string{`"nope"`}},
		{"commit of an unknown delivery", commit(&ferryv1.CommitRequest{Topic: "bi", Subscription: "s", DeliveryIds: []string{ts.sealedID(t, "bi", "s", "0.0.1.0")},
			Publishes: []*ferryv1.CommitPublish{{Topic: "dlq", Messages: outMsgs}}}), codes.FailedPrecondition, nil},
		{"commit with too many ids", commit(&ferryv1.CommitRequest{Topic: "bi", Subscription: "s", DeliveryIds: tooMany}), codes.InvalidArgument, []string{"10001"}},
		// Seek.
		{"seek unspecified", seek("bi", "s", &ferryv1.Position{}), codes.InvalidArgument, []string{"position"}},
		{"seek out of range", seek("bi", "s", &ferryv1.Position{Kind: ferryv1.PositionKind_POSITION_KIND_OFFSET, Offset: 2}), codes.OutOfRange, nil},
		{"seek to a malformed time", seek("bi", "s", &ferryv1.Position{Kind: ferryv1.PositionKind_POSITION_KIND_TIME,
			Time: &timestamppb.Timestamp{Nanos: -1}}), codes.InvalidArgument, []string{"time"}},
		{"seek on unknown subscription", seek("bi", "nope", earliest), codes.NotFound, []string{`"nope"`}},
		{"seek on unknown topic", seek("nope", "s", earliest), codes.NotFound, []string{`"nope"`}},
		{"seek with bad name", seek("bi", "", earliest), codes.InvalidArgument, []string{"subscription name"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			wantStatus(t, tc.call(testContext(t)), tc.code, tc.words...)
		})
	}

	// Malformed ids fail alone, in the results.
	resp, err := sub.Ack(testContext(t), &ferryv1.AckRequest{Topic: "bi", Subscription: "s", DeliveryIds: []string{"0.0.1", "0.0.x.0", "00.0.1.0"}})
	if err != nil {
		t.Fatalf("Ack of malformed ids: %v", err)
	}
	for i, id := range []string{"0.0.1", "0.0.x.0", "00.0.1.0"} {
		wantResult(t, resp.GetResults()[i], id, codes.InvalidArgument, "malformed")
	}

	// Nothing changed.
	if got := ts.subNames(t, "bi"); len(got) != 1 || got[0] != "s" {
		t.Errorf("subscriptions of bi after the bad requests: %v, want [s]", got)
	}
	if got := ts.getSub(t, "bi", "s"); !proto.Equal(got, orig) {
		t.Errorf("subscription s after the bad requests: %v, want %v", got, orig)
	}
	if st := ts.stats(t, "bi", "s"); st.GetBacklog() != 1 || st.GetDelivered() != 0 || st.GetAcked() != 0 || st.GetInFlight() != 0 {
		t.Errorf("stats of s after the bad requests: %v", st)
	}
	ts.wantEmpty(t, "dlq")
	if h := ts.heads(t, "bi"); h[0] != 1 {
		t.Errorf("bi's head is %d after the bad requests, want 1", h[0])
	}

	// Still serving: s delivers its message from the start.
	s := ts.attach(t, "bi", "s", 1)
	if d := s.next(t); d.GetMessage().GetId() != "b-0" || d.GetAttempt() != 1 {
		t.Errorf("after the bad requests got %v, want b-0 attempt 1", d)
	}
	s.close(t)
}

// TestSubscribeBadFrames: a malformed frame ends the stream with a clear
// status; the subscription is unchanged and the broker keeps serving.
func TestSubscribeBadFrames(t *testing.T) {
	ts := startServer(t)
	ts.createTopic(t, "bf", nil)
	ts.createSub(t, "bf", "s", subConfig(atLeast, shared))
	ts.createSub(t, "bf", "eo", subConfig(effOnce, shared))
	tooMany := make([]string, MaxAckIDs+1)
	for i := range tooMany {
		tooMany[i] = "0.0.1.0"
	}
	empty := &ferryv1.SubscribeRequest{}
	init := subInit("bf", "s", 1)
	withInit := func(frames ...*ferryv1.SubscribeRequest) []*ferryv1.SubscribeRequest {
		return append([]*ferryv1.SubscribeRequest{init}, frames...)
	}
	initWith := func(in *ferryv1.SubscribeInit) *ferryv1.SubscribeRequest {
		return &ferryv1.SubscribeRequest{Frame: &ferryv1.SubscribeRequest_Init{Init: in}}
	}
	for _, tc := range []struct {
		name   string
		frames []*ferryv1.SubscribeRequest
		code   codes.Code
		words  []string
	}{
		{"first frame credit", []*ferryv1.SubscribeRequest{subCredit(5)}, codes.InvalidArgument, []string{"first frame", "init"}},
		{"first frame ack", []*ferryv1.SubscribeRequest{subAck(1, "0.0.1.0")}, codes.InvalidArgument, []string{"first frame", "init"}},
		{"first frame empty", []*ferryv1.SubscribeRequest{empty}, codes.InvalidArgument, []string{"first frame", "init"}},
		{"init with credit 0", []*ferryv1.SubscribeRequest{subInit("bf", "s", 0)}, codes.InvalidArgument, []string{"credit"}},
		{"init with credit -1", []*ferryv1.SubscribeRequest{subInit("bf", "s", -1)}, codes.InvalidArgument, []string{"credit"}},
		{"init on unknown topic", []*ferryv1.SubscribeRequest{subInit("nope", "s", 1)}, codes.NotFound, []string{`"nope"`}},
		{"init on unknown subscription", []*ferryv1.SubscribeRequest{subInit("bf", "nope", 1)}, codes.NotFound, []string{`"nope"`}},
		{"create_none on unknown topic", []*ferryv1.SubscribeRequest{initWith(&ferryv1.SubscribeInit{Topic: "nope", Subscription: "x", Credit: 1, CreateNone: true})},
			codes.NotFound, []string{`"nope"`}},
		{"init with bad topic name", []*ferryv1.SubscribeRequest{subInit("a b", "s", 1)}, codes.InvalidArgument, []string{"topic name"}},
		{"init with bad subscription name", []*ferryv1.SubscribeRequest{subInit("bf", "", 1)}, codes.InvalidArgument, []string{"subscription name"}},
		{"second init", withInit(init), codes.InvalidArgument, []string{"init"}},
		{"empty frame", withInit(empty), codes.InvalidArgument, []string{"empty"}},
		{"credit 0", withInit(subCredit(0)), codes.InvalidArgument, []string{"credit"}},
		{"credit -5", withInit(subCredit(-5)), codes.InvalidArgument, []string{"credit"}},
		{"ack with no ids", withInit(subAck(1)), codes.InvalidArgument, []string{"0 delivery ids"}},
		{"ack with too many ids", withInit(subAck(1, tooMany...)), codes.InvalidArgument, []string{"10001 delivery ids"}},
		{"nack with no ids", withInit(subNack()), codes.InvalidArgument, []string{"delivery ids"}},
		{"extend with no ids", withInit(subExtend(durationpb.New(time.Minute))), codes.InvalidArgument, []string{"delivery ids"}},
		{"extend without deadline", withInit(subExtend(nil, "0.0.1.0")), codes.InvalidArgument, []string{"ack_deadline"}},
		{"extend by 999ms", withInit(subExtend(durationpb.New(999*time.Millisecond), "0.0.1.0")), codes.InvalidArgument, []string{"ack_deadline"}},
		{"extend by 13h", withInit(subExtend(durationpb.New(13*time.Hour), "0.0.1.0")), codes.InvalidArgument, []string{"ack_deadline"}},
		{"extend by a malformed duration", withInit(subExtend(&durationpb.Duration{Seconds: 5, Nanos: -1}, "0.0.1.0")), codes.InvalidArgument, []string{"ack_deadline"}},
		{"eo ack with no ids", []*ferryv1.SubscribeRequest{subInit("bf", "eo", 1), subAck(1)}, codes.InvalidArgument, []string{"0 delivery ids"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := ts.subscribe(t, nil)
			for _, f := range tc.frames {
				s.send(t, f)
			}
			s.wantEnd(t, tc.code, tc.words...)
		})
	}

	// Nothing changed; once the streams are gone nobody is attached.
	for _, name := range []string{"s", "eo"} {
		st := ts.waitStats(t, "bf", name, "every consumer to leave", func(st *ferryv1.SubscriptionStats) bool { return st.GetConsumers() == 0 })
		if st.GetDelivered() != 0 || st.GetAcked() != 0 || st.GetBacklog() != 0 {
			t.Errorf("%s after the bad streams: %v", name, st)
		}
	}
	if got := ts.subNames(t, "bf"); len(got) != 2 {
		t.Errorf("subscriptions after the bad streams: %v, want [eo s]", got)
	}

	// Still serving, on one connection and a new one.
	s := ts.attach(t, "bf", "s", 1)
	ts.waitStats(t, "bf", "s", "the consumer", func(st *ferryv1.SubscriptionStats) bool { return st.GetConsumers() == 1 })
	ts.publishN(t, "bf", "after", 1)
	d := s.next(t)
	if d.GetMessage().GetId() != "after-0" {
		t.Errorf("after the bad streams got %v", d)
	}
	// Malformed ids in an ack frame do not end the stream; the good one acks.
	s.send(t, subAck(1, "garbage", d.GetDeliveryId()))
	ts.waitStats(t, "bf", "s", "the ack", func(st *ferryv1.SubscriptionStats) bool { return st.GetAcked() == 1 })
	s.close(t)
	conn := dial(t, ts.srv.GRPCAddr().String())
	if _, err := ferryv1.NewAdminServiceClient(conn).GetSubscription(testContext(t), &ferryv1.GetSubscriptionRequest{Topic: "bf", Name: "s"}); err != nil {
		t.Errorf("GetSubscription on a new connection: %v", err)
	}
}
