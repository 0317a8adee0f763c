package consumer

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/ferrymq/ferry/internal/clock"
	"github.com/ferrymq/ferry/storage"
)

// TestClosingConsumerGetsNothing ends consumer A's stream (Close) with
// messages waiting and A's credit about to be freed by its last acks,
// which the loop takes before the detach, as it does when a stream ends
// with acks in flight. From its end A is handed nothing, and consumer B
// gets every message A did not ack, each at its first attempt, without
// the fake clock moving: nothing waits for an ack deadline in a queue no
// stream will read, and nothing is made for A and taken back.
func TestClosingConsumerGetsNothing(t *testing.T) {
	for _, g := range []Guarantee{AtLeastOnce, EffectivelyOnce} {
		t.Run(g.String(), func(t *testing.T) { closingScenario(t, g) })
	}
}

func closingScenario(t *testing.T, g Guarantee) {
	clk := clock.NewFake(t0)
	e, st := testEngine(t, clk)
	ctx := context.Background()
	if _, err := st.CreateTopic(ctx, "flow", storage.TopicConfig{Partitions: 1}); err != nil {
		t.Fatal(err)
	}
	o := DefaultOptions(g)
	o.Type = Shared
	o.Start = StartPosition{Kind: StartEarliest}
	if _, err := e.CreateSubscription(ctx, "flow", "work", o); err != nil {
		t.Fatal(err)
	}
	const total = 1000
	for i := 0; i < total; i += 50 {
		batch := make([]storage.Message, 50)
		for j := range batch {
			batch[j] = storage.Message{ID: fmt.Sprintf("m-%04d", i+j), Payload: []byte("x")}
		}
		if _, err := st.Append(ctx, "flow", 0, batch); err != nil {
			t.Fatal(err)
		}
	}
	a, err := e.Attach(ctx, "flow", "work", AttachOptions{Credit: 20})
	if err != nil {
		t.Fatal(err)
	}
	b, err := e.Attach(ctx, "flow", "work", AttachOptions{Credit: 100})
	if err != nil {
		t.Fatal(err)
	}
	done := map[string]bool{} // acked by A
	for range 2 {
		ackAll(t, a, receiveN(t, a, 20), done)
	}
	got := receiveN(t, b, 100) // B's credit is full: messages wait

	// Hold the loop, ack what A holds without waiting, end A's stream;
	// then let the loop go: it takes the acks (A's credit frees, messages
	// wait) before the detach.
	last := receiveN(t, a, 20) // A's credit is full: nothing is on its way to A
	// An info request whose answer no one takes yet holds the loop: it
	// waits in the send (unbuffered), and whatever is posted after waits
	// behind it.
	hold := make(chan Info)
	a.l.post(infoEvent{done: hold})
	for _, d := range last {
		done[d.Message.ID] = true
	}
	acked := make(chan error, 1)
	// AckAsync's ack, posted as it posts it (its id lookup, which waits for
	// the loop, matters only after a restart).
	a.l.post(ackEvent{ids: ids(last), async: func(_ []error, err error) { acked <- err }})
	a.Close()
	<-hold
	if err := <-acked; err != nil {
		t.Fatal(err)
	}

	seen := map[string]bool{}
	for _, d := range got {
		seen[d.Message.ID] = true
	}
	ackAll(t, b, got, nil)
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for len(seen)+len(done) < total {
		ds, err := b.Receive(rctx)
		if err != nil {
			t.Fatalf("B got %d and A acked %d of %d messages with the clock still (the rest wait for an ack deadline?): %v",
				len(seen), len(done), total, err)
		}
		for _, d := range ds {
			if done[d.Message.ID] {
				t.Fatalf("B got %s, which A acked", d.Message.ID)
			}
			if d.ID.Attempt != 1 {
				// Made for A after its end, then taken back.
				t.Fatalf("B got %s at attempt %d: it was delivered before", d.Message.ID, d.ID.Attempt)
			}
			seen[d.Message.ID] = true
		}
		ackAll(t, b, ds, nil)
	}
	info, err := e.Subscription(ctx, "flow", "work")
	if err != nil {
		t.Fatal(err)
	}
	if info.Stats.Delivered != total || info.Stats.Redelivered != 0 {
		t.Fatalf("%d deliveries, %d of them redeliveries; want %d and none: some went to A after its end", info.Stats.Delivered, info.Stats.Redelivered, total)
	}
	a.mu.Lock()
	late := len(a.queue)
	a.mu.Unlock()
	if late > 0 {
		t.Fatalf("%d deliveries were handed to A after its stream ended", late)
	}
}

func ids(ds []Delivery) []DeliveryID {
	out := make([]DeliveryID, len(ds))
	for i, d := range ds {
		out[i] = d.ID
	}
	return out
}

// ackAll acks ds through c, failing on any refusal, and marks them in done
// (if not nil).
func ackAll(t *testing.T, c *Consumer, ds []Delivery, done map[string]bool) {
	t.Helper()
	res, err := c.Ack(context.Background(), ids(ds))
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range res {
		if r != nil {
			t.Fatalf("ack %v: %v", ds[i].ID, r)
		}
		if done != nil {
			done[ds[i].Message.ID] = true
		}
	}
}
