package consumer

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"testing"
	"time"

	"github.com/ferrymq/ferry/internal/clock"
	"github.com/ferrymq/ferry/storage"
)

// testEngine opens a store in a temp dir and an engine over it, both on
// clk.
func testEngine(tb testing.TB, clk clock.Clock) (*Engine, *storage.Store) {
	tb.Helper()
	opts := storage.DefaultOptions(tb.TempDir())
	opts.Clock = clk
	opts.MemTableBytes = storage.MinMemTableBytes
	opts.Logger = slog.New(slog.DiscardHandler)
	st, err := storage.Open(opts)
	if err != nil {
		tb.Fatal(err)
	}
	e := New(EngineOptions{Log: st, Clock: clk, Logger: opts.Logger, Route: testRoute(st)})
	tb.Cleanup(func() {
		e.Close()
		_ = st.Close(context.Background())
	})
	return e, st
}

// testRoute routes by key hash, as the broker does.
func testRoute(st *storage.Store) func(string, *storage.Message) (uint32, error) {
	return func(topic string, m *storage.Message) (uint32, error) {
		t, err := st.Topic(topic)
		if err != nil {
			return 0, err
		}
		h := fnv.New32a()
		h.Write(m.Key)
		return h.Sum32() % t.Config.Partitions, nil
	}
}

func receiveN(tb testing.TB, c *Consumer, n int) []Delivery {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var got []Delivery
	for len(got) < n {
		ds, err := c.Receive(ctx)
		if err != nil {
			tb.Fatalf("Receive after %d of %d: %v", len(got), n, err)
		}
		got = append(got, ds...)
	}
	return got
}

func TestEngineAtLeastOnceSmoke(t *testing.T) {
	clk := clock.NewFake(t0)
	e, st := testEngine(t, clk)
	ctx := context.Background()
	if _, err := st.CreateTopic(ctx, "orders", storage.TopicConfig{Partitions: 2}); err != nil {
		t.Fatal(err)
	}
	o := DefaultOptions(AtLeastOnce)
	o.Start = StartPosition{Kind: StartEarliest}
	if _, err := e.CreateSubscription(ctx, "orders", "kitchen", o); err != nil {
		t.Fatal(err)
	}
	for i := range 10 {
		if _, err := st.Append(ctx, "orders", uint32(i%2), []storage.Message{{ID: fmt.Sprint(i), Payload: []byte("x")}}); err != nil {
			t.Fatal(err)
		}
	}
	c, err := e.Attach(ctx, "orders", "kitchen", AttachOptions{Credit: 100})
	if err != nil {
		t.Fatal(err)
	}
	got := receiveN(t, c, 10)
	ids := make([]DeliveryID, len(got))
	for i, d := range got {
		ids[i] = d.ID
	}
	// Ack half; the rest is redelivered after the ack timeout.
	res, err := c.Ack(ctx, ids[:5])
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range res {
		if r != nil {
			t.Fatalf("ack %d: %v", i, r)
		}
	}
	clk.Advance(31 * time.Second)
	again := receiveN(t, c, 5)
	for _, d := range again {
		if d.ID.Attempt != 2 {
			t.Fatalf("redelivery %v: want attempt 2", d.ID)
		}
	}
	info, err := e.Subscription(ctx, "orders", "kitchen")
	if err != nil {
		t.Fatal(err)
	}
	if info.Stats.Backlog != 5 || info.Stats.Inflight != 5 || info.Stats.Redelivered != 5 {
		t.Fatalf("stats %+v", info.Stats)
	}
}

// TestEngineCloseStoresLastAcks: acks taken while a write was in flight are
// stored before Close returns, not lost to a clean shutdown.
func TestEngineCloseStoresLastAcks(t *testing.T) {
	clk := clock.NewFake(t0)
	e, st := testEngine(t, clk)
	ctx := context.Background()
	if _, err := st.CreateTopic(ctx, "t", storage.TopicConfig{}); err != nil {
		t.Fatal(err)
	}
	o := DefaultOptions(AtLeastOnce)
	o.Start = StartPosition{Kind: StartEarliest}
	if _, err := e.CreateSubscription(ctx, "t", "s", o); err != nil {
		t.Fatal(err)
	}
	const n = 500
	msgs := make([]storage.Message, n)
	for i := range msgs {
		msgs[i] = storage.Message{Payload: []byte("x")}
	}
	if _, err := st.Append(ctx, "t", 0, msgs); err != nil {
		t.Fatal(err)
	}
	c, err := e.Attach(ctx, "t", "s", AttachOptions{Credit: n})
	if err != nil {
		t.Fatal(err)
	}
	// One ack per call: most arrive while the previous write is in flight.
	for _, d := range receiveN(t, c, n) {
		if _, err := c.Ack(ctx, []DeliveryID{d.ID}); err != nil {
			t.Fatal(err)
		}
	}
	e.Close()
	sub, err := st.Subscription("t", "s")
	if err != nil {
		t.Fatal(err)
	}
	raw, err := st.Cursors("t", sub.ID)
	if err != nil {
		t.Fatal(err)
	}
	ps, err := decodeCursorRecord(raw[0])
	if err != nil {
		t.Fatal(err)
	}
	if ps.cursor.Floor() != n {
		t.Fatalf("after Close the stored floor is %d, want %d: acks were lost", ps.cursor.Floor(), n)
	}
}

// TestEngineLoopEndsWithItsTopic: a subscription whose topic is deleted
// under it (a consumer attached between the broker stopping its delivery
// and deleting the topic) detaches its consumers and leaves the engine,
// instead of retrying reads for ever.
func TestEngineLoopEndsWithItsTopic(t *testing.T) {
	clk := clock.NewFake(t0)
	e, st := testEngine(t, clk)
	ctx := context.Background()
	if _, err := st.CreateTopic(ctx, "t", storage.TopicConfig{}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.CreateSubscription(ctx, "t", "s", DefaultOptions(AtLeastOnce)); err != nil {
		t.Fatal(err)
	}
	c, err := e.Attach(ctx, "t", "s", AttachOptions{Credit: 10})
	if err != nil {
		t.Fatal(err)
	}
	if err := st.DeleteTopic(ctx, "t"); err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := c.Receive(rctx); !errors.Is(err, ErrDetached) {
		t.Fatalf("Receive after the topic was deleted: %v, want ErrDetached", err)
	}
	e.mu.Lock()
	n := len(e.loops)
	e.mu.Unlock()
	if n != 0 {
		t.Fatalf("the engine still runs %d loops", n)
	}
}

// TestEngineEndedNoneIsNotFound: a listing that saw a NONE subscription a
// moment before its last consumer left, and asks its ended loop for
// stats, is told the subscription is gone (ErrSubscriptionNotFound, which
// a listing skips), not ErrDetached, which the broker answers UNAVAILABLE
// "reconnect". CI run 43 caught ListSubscriptions failing that way.
func TestEngineEndedNoneIsNotFound(t *testing.T) {
	clk := clock.NewFake(t0)
	e, st := testEngine(t, clk)
	ctx := context.Background()
	if _, err := st.CreateTopic(ctx, "t", storage.TopicConfig{}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.CreateSubscription(ctx, "t", "tail", DefaultOptions(None)); err != nil {
		t.Fatal(err)
	}
	l := e.ephemeral("t", "tail")
	if l == nil {
		t.Fatal("the none subscription has no loop")
	}
	if info, err := l.info(ctx, []uint64{0}); err != nil || info.Name != "tail" {
		t.Fatalf("info of the running loop = %+v, %v", info, err)
	}
	c, err := e.Attach(ctx, "t", "tail", AttachOptions{Credit: 10})
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	<-l.done // the last consumer left: the loop ended
	if _, err := l.info(ctx, []uint64{0}); !errors.Is(err, ErrSubscriptionNotFound) {
		t.Fatalf("info of the ended loop: %v, want ErrSubscriptionNotFound", err)
	}
	if _, err := e.Subscription(ctx, "t", "tail"); !errors.Is(err, ErrSubscriptionNotFound) {
		t.Fatalf("Subscription after the loop ended: %v, want ErrSubscriptionNotFound", err)
	}
}
