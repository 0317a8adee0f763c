package consumer

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ferrymq/ferry/internal/clock"
	"github.com/ferrymq/ferry/storage"
)

// kib1 is n messages of 1 KiB payload.
func kib1(n int) []storage.Message {
	msgs := make([]storage.Message, n)
	for i := range msgs {
		msgs[i] = storage.Message{Payload: bytes.Repeat([]byte{'x'}, 1<<10)}
	}
	return msgs
}

// queuedOf is what consumer id's queue holds, as the core counts it.
func queuedOf(h *harness, id uint64) (n, bytes int) {
	c := h.sub.consumer(id)
	return c.queued, c.queuedBytes
}

// TestStuckConsumerCostsItsQueue: a consumer whose stream stops taking
// deliveries is handed at most QueueBytes of them (plus one), though its
// credit allows far more; the other consumer of the SHARED subscription
// gets the rest at once, and the stuck one resumes where it stopped.
func TestStuckConsumerCostsItsQueue(t *testing.T) {
	for _, g := range []Guarantee{AtLeastOnce, EffectivelyOnce, AtMostOnce} {
		t.Run(g.String(), func(t *testing.T) {
			h := newHarness(t)
			h.createTopic("orders", storage.TopicConfig{Partitions: 1})
			if err := h.createSub("orders", "kitchen", DefaultOptions(g)); err != nil {
				t.Fatal(err)
			}
			h.stick(1)
			if err := h.attach(1, MaxCredit); err != nil {
				t.Fatal(err)
			}
			h.publish("orders", 0, kib1(2000))
			n, b := queuedOf(h, 1)
			// Deliveries that waited for a write join the queue at once
			// when it is done (up to pendingQueues×QueueBytes).
			size := 1<<10 + deliveryOverhead
			bound := DefaultQueueBytes
			if g != AtLeastOnce {
				bound += pendingQueues * DefaultQueueBytes
			}
			if limit := bound/size + 1; n > limit || b > bound+size {
				t.Fatalf("stuck consumer holds %d deliveries (%d bytes) queued; want at most %d (QueueBytes %d)", n, b, limit, DefaultQueueBytes)
			}
			if got := len(h.stuck[1]); got != n {
				t.Fatalf("the core counts %d queued, the stream was handed %d", n, got)
			}
			// A healthy consumer of the same subscription gets the rest.
			if err := h.attach(2, 1000); err != nil {
				t.Fatal(err)
			}
			if got := countTo(h.takeSent(), 2); got != 1000 {
				t.Fatalf("healthy consumer got %d deliveries, want its credit 1000", got)
			}
			// Unstuck, the first consumer takes what waited and more.
			waited := h.unstick(1)
			if len(waited) != n {
				t.Fatalf("unstuck consumer took %d, want the %d queued", len(waited), n)
			}
			if got := countTo(h.takeSent(), 1); got != 2000-1000-n {
				t.Fatalf("unstuck consumer then got %d, want the other %d", got, 2000-1000-n)
			}
		})
	}
}

func countTo(ds []Delivery, id uint64) int {
	n := 0
	for _, d := range ds {
		if d.Consumer == id {
			n++
		}
	}
	return n
}

// TestNoneSkipsForward: a NONE consumer that stops reading gets a bounded
// queue, after which its subscription reads nothing more (a stuck NONE
// consumer costs no work per message); once it reads again more than
// noneMaxLag later, what its subscription held is skipped, counted in
// Stats.Dropped, and delivery resumes at the head.
func TestNoneSkipsForward(t *testing.T) {
	h := newHarness(t)
	h.createTopic("ticks", storage.TopicConfig{Partitions: 1})
	if err := h.createSub("ticks", "screen", DefaultOptions(None)); err != nil {
		t.Fatal(err)
	}
	h.stick(1)
	if err := h.attach(1, 100); err != nil {
		t.Fatal(err)
	}
	h.publish("ticks", 0, kib1(3000))
	n, _ := queuedOf(h, 1)
	if limit := DefaultQueueBytes/(1<<10+deliveryOverhead) + 1; n > limit {
		t.Fatalf("stuck NONE consumer has %d queued, want at most %d", n, limit)
	}
	if len(h.pending) != 0 {
		t.Fatalf("a NONE subscription whose consumer has no room still reads: %d fetches pending", len(h.pending))
	}
	held := len(h.sub.parts[0].buf)
	if held > fetchMax {
		t.Fatalf("NONE subscription buffers %d messages, want at most fetchMax %d", held, fetchMax)
	}
	h.advance(noneMaxLag + time.Second)
	h.publish("ticks", 0, kib1(10)) // offsets 3000..3009, while it is still stuck
	waited := h.unstick(1)
	if len(waited) != n {
		t.Fatalf("took %d queued, want %d", len(waited), n)
	}
	h.publish("ticks", 0, kib1(5)) // offsets 3010..3014
	sent := h.takeSent()
	for _, d := range sent {
		if d.ID.Offset < 3010 && d.ID.Offset >= uint64(n) {
			t.Fatalf("after falling %v behind the consumer got offset %d, want only the head (3010 on)", noneMaxLag, d.ID.Offset)
		}
	}
	if got := countTo(sent, 1); got < 5 {
		t.Fatalf("got %d deliveries after resuming, want the 5 published since", got)
	}
	if st := h.stats(); st.Dropped != uint64(3010-n) {
		t.Fatalf("Stats.Dropped = %d, want the %d messages skipped", st.Dropped, 3010-n)
	}
}

// TestNoneKeepsUpWithoutLoss: a NONE consumer that reads, however bursty
// the publishing, loses nothing; its queue bound only paces it.
func TestNoneKeepsUpWithoutLoss(t *testing.T) {
	h := newHarness(t)
	h.createTopic("ticks", storage.TopicConfig{Partitions: 1})
	if err := h.createSub("ticks", "screen", DefaultOptions(None)); err != nil {
		t.Fatal(err)
	}
	if err := h.attach(1, 1); err != nil {
		t.Fatal(err)
	}
	h.publish("ticks", 0, kib1(3000))
	if got := len(h.takeSent()); got != 3000 {
		t.Fatalf("got %d of 3000", got)
	}
	if st := h.stats(); st.Dropped != 0 {
		t.Fatalf("Dropped = %d for a consumer that keeps up", st.Dropped)
	}
}

// TestCreditMaximum: credit above MaxCredit is refused, naming the
// maximum, at attach and later; MaxCredit itself is taken.
func TestCreditMaximum(t *testing.T) {
	e, st := testEngine(t, clock.NewFake(t0))
	ctx := context.Background()
	if _, err := st.CreateTopic(ctx, "orders", storage.TopicConfig{Partitions: 1}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.CreateSubscription(ctx, "orders", "kitchen", DefaultOptions(AtLeastOnce)); err != nil {
		t.Fatal(err)
	}
	for _, credit := range []int{0, MaxCredit + 1, 1<<31 - 1} {
		_, err := e.Attach(ctx, "orders", "kitchen", AttachOptions{Credit: credit})
		if !errors.Is(err, ErrInvalidCredit) || !strings.Contains(err.Error(), fmt.Sprint(MaxCredit)) {
			t.Fatalf("attach with credit %d: %v, want ErrInvalidCredit naming %d", credit, err, MaxCredit)
		}
	}
	c, err := e.Attach(ctx, "orders", "kitchen", AttachOptions{Credit: MaxCredit})
	if err != nil {
		t.Fatalf("attach with credit MaxCredit: %v", err)
	}
	defer c.Close()
	if err := c.SetCredit(ctx, MaxCredit+1); !errors.Is(err, ErrInvalidCredit) {
		t.Fatalf("SetCredit(MaxCredit+1): %v, want ErrInvalidCredit", err)
	}
}

// TestMassDetachRedeliversAll: 1,000 consumers of an at-least-once
// subscription, each holding its credit, leave one after another; every
// message they held is due again, in offset order, and a new consumer gets
// each exactly once. (This is the path a mass disconnect takes: retries
// merged per consumer, dispatch stalled without copying.)
func TestMassDetachRedeliversAll(t *testing.T) {
	h := newHarness(t)
	h.createTopic("jobs", storage.TopicConfig{Partitions: 1})
	if err := h.createSub("jobs", "workers", DefaultOptions(AtLeastOnce)); err != nil {
		t.Fatal(err)
	}
	const consumers, credit = 1000, 5
	for id := uint64(1); id <= consumers; id++ {
		if err := h.attach(id, credit); err != nil {
			t.Fatal(err)
		}
	}
	msgs := make([]storage.Message, consumers*credit)
	for i := range msgs {
		msgs[i] = storage.Message{Payload: []byte{byte(i)}}
	}
	h.publish("jobs", 0, msgs)
	if got := len(h.takeSent()); got != consumers*credit {
		t.Fatalf("%d delivered, want %d", got, consumers*credit)
	}
	for id := uint64(1); id <= consumers; id++ {
		h.detach(id)
	}
	p := h.sub.parts[0]
	if len(p.retry) != consumers*credit || !slices.IsSorted(p.retry) {
		t.Fatalf("after every consumer left: %d retries (sorted: %v), want %d in offset order", len(p.retry), slices.IsSorted(p.retry), consumers*credit)
	}
	if err := h.attach(consumers+1, MaxCredit); err != nil {
		t.Fatal(err)
	}
	seen := map[uint64]int{}
	for _, d := range h.takeSent() {
		seen[d.ID.Offset]++
		if d.ID.Attempt != 2 {
			t.Fatalf("offset %d redelivered as attempt %d, want 2", d.ID.Offset, d.ID.Attempt)
		}
	}
	for off := range uint64(consumers * credit) {
		if seen[off] != 1 {
			t.Fatalf("offset %d redelivered %d times, want once", off, seen[off])
		}
	}
}
