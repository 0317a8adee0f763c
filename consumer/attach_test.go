package consumer

import (
	"context"
	"testing"

	"github.com/ferrymq/ferry/internal/clock"
	"github.com/ferrymq/ferry/storage"
)

// TestAttachCancelledLeavesNoConsumer: an Attach whose ctx ends before
// the loop has taken it fails, and must then leave no consumer behind. A
// consumer left attached has no stream and no Close: it holds credit, and
// what is delivered to it is stuck until the ack timeout, again and again
// (seen in a cluster: a forwarded Subscribe cancelled while the new owner
// loaded the cursors left the subscription with two consumers for one
// client, its deliveries redelivered every ack timeout).
func TestAttachCancelledLeavesNoConsumer(t *testing.T) {
	e, st := testEngine(t, clock.NewFake(t0))
	ctx := context.Background()
	if _, err := st.CreateTopic(ctx, "orders", storage.TopicConfig{Partitions: 1}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.CreateSubscription(ctx, "orders", "kitchen", DefaultOptions(EffectivelyOnce)); err != nil {
		t.Fatal(err)
	}
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	failed := 0
	for range 200 {
		c, err := e.Attach(cancelled, "orders", "kitchen", AttachOptions{Credit: 1})
		if err != nil {
			failed++
			continue
		}
		c.Close()
	}
	info, err := e.Subscription(ctx, "orders", "kitchen")
	if err != nil {
		t.Fatal(err)
	}
	if info.Stats.Consumers != 0 {
		t.Fatalf("%d consumers left attached after 200 attaches with a cancelled ctx (%d failed) and a Close of each that succeeded",
			info.Stats.Consumers, failed)
	}
}
