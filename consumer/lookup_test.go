package consumer

import (
	"context"
	"log/slog"
	"testing"

	"github.com/ferrymq/ferry/internal/clock"
	"github.com/ferrymq/ferry/storage"
)

// TestEngineAckAfterRestartReachesHorizon: after a restart, an
// EFFECTIVELY_ONCE ack of a delivery whose message is not in memory (no
// consumer, so nothing fetched) has its message id read by the loop
// (lookUp) before the machine takes it, so the id reaches the acked-id
// horizon: a later message with that id (in another partition) is
// skipped.
func TestEngineAckAfterRestartReachesHorizon(t *testing.T) {
	clk := clock.NewFake(t0)
	e, st := testEngine(t, clk)
	ctx := context.Background()
	if _, err := st.CreateTopic(ctx, "t", storage.TopicConfig{Partitions: 2}); err != nil {
		t.Fatal(err)
	}
	o := DefaultOptions(EffectivelyOnce)
	o.Start = StartPosition{Kind: StartEarliest}
	if _, err := e.CreateSubscription(ctx, "t", "s", o); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Append(ctx, "t", 0, []storage.Message{{ID: "a", Payload: []byte("1")}}); err != nil {
		t.Fatal(err)
	}
	c, err := e.Attach(ctx, "t", "s", AttachOptions{Credit: 1})
	if err != nil {
		t.Fatal(err)
	}
	d := receiveN(t, c, 1)[0]
	e.Close() // the delivery's attempt is stored; its ack is not

	e2 := New(EngineOptions{Log: st, Clock: clk, Logger: slog.New(slog.DiscardHandler), Route: testRoute(st)})
	t.Cleanup(e2.Close)
	results, err := e2.Ack(ctx, "t", "s", []DeliveryID{d.ID})
	if err != nil || len(results) != 1 || results[0] != nil {
		t.Fatalf("ack after the restart: %v, %v", results, err)
	}
	// In the other partition: the publish dedup window is per partition,
	// the acked-id horizon per subscription.
	if _, err := st.Append(ctx, "t", 1, []storage.Message{{ID: "a", Payload: []byte("2")}, {ID: "b", Payload: []byte("3")}}); err != nil {
		t.Fatal(err)
	}
	c2, err := e2.Attach(ctx, "t", "s", AttachOptions{Credit: 10})
	if err != nil {
		t.Fatal(err)
	}
	if got := receiveN(t, c2, 1)[0]; got.Message.ID != "b" {
		t.Fatalf("after the ack of a: delivered %s (offset %d), want b: the acked id a was not skipped", got.Message.ID, got.ID.Offset)
	}
}
