package client_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ferrymq/ferry/broker"
	"github.com/ferrymq/ferry/client"
	"github.com/ferrymq/ferry/internal/limits"
	ferryv1 "github.com/ferrymq/ferry/proto/ferry/v1"
	"github.com/ferrymq/ferry/storage"
)

// The SDK under the broker's per-principal limits (ferry serve --limit-*):
// a refusal is RESOURCE_EXHAUSTED with a RetryInfo, and the SDK waits it
// out instead of failing. Every client here is the principal 127.0.0.1.

func startLimitedBroker(tb testing.TB, lim limits.Options) *testBroker {
	tb.Helper()
	opts := broker.DefaultOptions(tb.TempDir())
	opts.GRPCAddr = "127.0.0.1:0"
	opts.HTTPAddr = ""
	opts.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	opts.Storage.MemTableBytes = storage.MinMemTableBytes
	opts.Limits = lim
	srv, err := broker.Open(opts)
	if err != nil {
		tb.Fatal(err)
	}
	go func() { _ = srv.Serve() }()
	b := &testBroker{srv: srv, addr: srv.GRPCAddr().String()}
	tb.Cleanup(func() { b.stop(tb) })
	return b
}

// refusals is the broker's ferry_limits_refusals_total{limit=kind}.
func (b *testBroker) refusals(tb testing.TB, kind limits.Kind) float64 {
	tb.Helper()
	mfs, err := b.srv.Registry().Gather()
	if err != nil {
		tb.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "ferry_limits_refusals_total" {
			for _, m := range mf.GetMetric() {
				if m.GetLabel()[0].GetValue() == string(kind) {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

// A producer over its principal's publish rate is slowed down to it, not
// failed: every message is acknowledged and stored once, in no less time
// than the rate allows.
func TestProducerSlowedByPublishLimit(t *testing.T) {
	const rate, n = 200, 800 // messages/s (a bucket of 200), messages
	b := startLimitedBroker(t, limits.Options{PublishMessages: rate})
	c := dial(t, b.addr)
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	if _, err := c.CreateTopic(ctx, "orders", client.TopicConfig{Partitions: 1}); err != nil {
		t.Fatal(err)
	}
	// Full batches (100), so that each refusal is one batch's.
	p := c.NewProducer("orders", client.ProducerOptions{Linger: 20 * time.Millisecond})
	start := time.Now()
	fs := make([]*client.PublishFuture, n)
	for i := range fs {
		fs[i] = p.PublishAsync(&client.Message{ID: fmt.Sprint(i), Payload: []byte("x")})
	}
	for i, f := range fs {
		if _, err := f.Wait(ctx); err != nil {
			t.Fatalf("message %d failed: %v", i, err)
		}
	}
	took := time.Since(start)
	if err := p.Close(ctx); err != nil {
		t.Fatal(err)
	}
	// The first 200 spend the bucket; the other 600 take 3s at 200/s.
	if want := time.Duration(n-rate) * time.Second / rate; took < want-50*time.Millisecond {
		t.Fatalf("%d messages acknowledged in %v, faster than the limit allows (%v)", n, took, want)
	}
	// Refused, and it waited as asked each time rather than coming back
	// at once: about one refusal per batch past the bucket (6 of 100
	// messages), not thousands.
	refused := b.refusals(t, limits.PublishMessages)
	if refused == 0 || refused > 100 {
		t.Fatalf("%v refusals; want some, each waited out (at most 100)", refused)
	}
	t.Logf("%d messages in %v (%.0f msgs/s, limit %d/s), %v refusals waited out", n, took, float64(n)/took.Seconds(), rate, refused)
	msgs := readAll(t, rawConn(t, b.addr), "orders", 1)
	seen := map[string]bool{}
	for _, m := range msgs {
		seen[m.GetId()] = true
	}
	if len(msgs) != n || len(seen) != n {
		t.Fatalf("%d messages stored, %d distinct ids; want %d of each", len(msgs), len(seen), n)
	}
	for i, m := range msgs {
		if m.GetId() != fmt.Sprint(i) {
			t.Fatalf("offset %d holds id %s: order lost", i, m.GetId())
		}
	}
}

// A consumer whose stream is refused for its principal's stream limit
// waits and attaches once a place is free; Subscribe does not fail.
func TestConsumerWaitsForStreamLimit(t *testing.T) {
	b := startLimitedBroker(t, limits.Options{Streams: 1})
	c := dial(t, b.addr)
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	if _, err := c.CreateTopic(ctx, "orders", client.TopicConfig{Partitions: 1}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.CreateSubscription(ctx, "orders", "kitchen", client.SubscriptionConfig{Guarantee: client.AtLeastOnce, Type: client.Shared}); err != nil {
		t.Fatal(err)
	}
	publishAll(t, c, "orders", &client.Message{ID: "m1", Payload: []byte("x")})
	// Another stream of the same principal takes its one place. The
	// producer's stream above is closed, but the broker frees its place
	// when its handler returns, a moment later (CI run 44 saw the holding
	// stream refused): open it until it is taken.
	hold, release := context.WithCancel(ctx)
	pub := ferryv1.NewPublisherServiceClient(rawConn(t, b.addr))
	waitFor(t, waitLimit, "the holding stream taken", func() bool {
		stream, err := pub.PublishStream(hold)
		if err != nil {
			t.Fatal(err)
		}
		err = stream.Send(&ferryv1.PublishStreamRequest{Sequence: 1, Topic: "orders", Messages: []*ferryv1.PublishMessage{{Id: "m1", Payload: []byte("x")}}})
		if err == nil {
			_, err = stream.Recv()
		}
		if err == io.EOF || status.Code(err) == codes.ResourceExhausted {
			return false // refused: Send sees EOF, Recv the status
		}
		if err != nil {
			t.Fatal(err)
		}
		return true
	})
	refused := b.refusals(t, limits.Streams)
	got := make(chan string, 10)
	subCtx, stop := context.WithCancel(ctx)
	errc := subscribe(t, subCtx, c, "orders", "kitchen", func(_ context.Context, m *client.Message) error {
		got <- m.ID
		return nil
	})
	waitFor(t, waitLimit, "the consumer's stream refused", func() bool { return b.refusals(t, limits.Streams) > refused })
	select {
	case err := <-errc:
		t.Fatalf("Subscribe returned %v while refused for the stream limit; want it to wait", err)
	case id := <-got:
		t.Fatalf("delivered %s with the stream limit taken", id)
	default:
	}
	release()
	select {
	case id := <-got:
		if id != "m1" {
			t.Fatalf("delivered %s, want m1", id)
		}
	case err := <-errc:
		t.Fatalf("Subscribe returned %v", err)
	case <-ctx.Done():
		t.Fatal("nothing delivered after the stream's place was freed")
	}
	stopSubscribe(t, stop, errc)
}

// CreateSubscription refused for the subscriptions quota waits the
// RetryInfo and tries again, and succeeds once a place is free.
func TestCreateSubscriptionWaitsForQuota(t *testing.T) {
	b := startLimitedBroker(t, limits.Options{Subscriptions: 1})
	c := dial(t, b.addr)
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	if _, err := c.CreateTopic(ctx, "orders", client.TopicConfig{Partitions: 1}); err != nil {
		t.Fatal(err)
	}
	cfg := client.SubscriptionConfig{Guarantee: client.AtLeastOnce, Type: client.Shared}
	if _, err := c.CreateSubscription(ctx, "orders", "s1", cfg); err != nil {
		t.Fatal(err)
	}
	created := make(chan error, 1)
	go func() {
		_, err := c.CreateSubscription(ctx, "orders", "s2", cfg)
		created <- err
	}()
	waitFor(t, waitLimit, "the second subscription refused", func() bool { return b.refusals(t, limits.Subscriptions) > 0 })
	select {
	case err := <-created:
		t.Fatalf("CreateSubscription returned %v over the quota; want it to wait", err)
	default:
	}
	if err := c.DeleteSubscription(ctx, "orders", "s1"); err != nil {
		t.Fatal(err)
	}
	if err := <-created; err != nil {
		t.Fatalf("CreateSubscription after a place was freed: %v", err)
	}
}

// Process over its principal's publish rate is slowed, not broken: each
// refused commit waits the RetryInfo and goes again, and every input's
// output is stored once, well before any ack timeout redelivers.
func TestProcessSlowedByPublishLimit(t *testing.T) {
	const rate, n = 50, 100
	b := startLimitedBroker(t, limits.Options{PublishMessages: rate})
	c := dial(t, b.addr)
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	for _, topic := range []string{"in", "out"} {
		if _, err := c.CreateTopic(ctx, topic, client.TopicConfig{Partitions: 1}); err != nil {
			t.Fatal(err)
		}
	}
	cfg := client.SubscriptionConfig{Guarantee: client.EffectivelyOnce, Type: client.Shared, AckTimeout: time.Minute}
	if _, err := c.CreateSubscription(ctx, "in", "proc", cfg); err != nil {
		t.Fatal(err)
	}
	var msgs []*client.Message
	for i := range n {
		msgs = append(msgs, &client.Message{ID: fmt.Sprint(i), Payload: []byte("x")})
	}
	publishAll(t, c, "in", msgs...)
	before := b.refusals(t, limits.PublishMessages)
	pctx, stop := context.WithCancel(ctx)
	errc := make(chan error, 1)
	go func() {
		errc <- c.Process(pctx, "in", "proc", func(_ context.Context, in *client.Message) ([]*client.Message, error) {
			return []*client.Message{{Topic: "out", Payload: in.Payload}}, nil
		})
	}()
	conn := rawConn(t, b.addr)
	admin := ferryv1.NewAdminServiceClient(conn)
	waitFor(t, 20*time.Second, "every output stored", func() bool {
		resp, err := admin.GetTopic(ctx, &ferryv1.GetTopicRequest{Name: "out"})
		return err == nil && resp.GetPartitions()[0].GetHeadOffset() >= n
	})
	stop()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if got := len(readAll(t, conn, "out", 1)); got != n {
		t.Fatalf("%d outputs stored, want %d", got, n)
	}
	if b.refusals(t, limits.PublishMessages) == before {
		t.Fatal("no commit was refused")
	}
}
