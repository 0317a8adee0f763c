package consumer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferrymq/ferry/internal/clock"
	"github.com/ferrymq/ferry/storage"
)

// ownerLog is a store whose subscriptions are owned at epoch: Own fences
// the store at it, as a cluster node does at its term.
type ownerLog struct {
	*storage.Store
	epoch atomic.Uint64
}

func (l *ownerLog) Own(ctx context.Context, topic, _ string, sid uint32) (uint64, [][]byte, error) {
	e := l.epoch.Load()
	if err := l.Fence(ctx, topic, sid, e); err != nil {
		return 0, nil, err
	}
	cs, err := l.Cursors(topic, sid)
	return e, cs, err
}

// TestEngineStopsWhenFenced runs an EFFECTIVELY_ONCE subscription loaded
// at owner epoch 1, then fences the store at 2 behind its back, as a newer
// owner would. The next write is refused: the subscription stops at once,
// its consumer is detached (ErrDetached, wrapping storage.ErrFenced) and
// gets nothing more, and the ack changes nothing stored. Loading it again
// at epoch 1 is refused; at 3 it goes on, the unacked messages redelivered
// once their deadline passes.
func TestEngineStopsWhenFenced(t *testing.T) {
	clk := clock.NewFake(t0)
	opts := storage.DefaultOptions(t.TempDir())
	opts.Clock, opts.MemTableBytes, opts.Logger = clk, storage.MinMemTableBytes, slog.New(slog.DiscardHandler)
	st, err := storage.Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	lg := &ownerLog{Store: st}
	lg.epoch.Store(1)
	e := New(EngineOptions{Log: lg, Clock: clk, Logger: opts.Logger, Route: testRoute(st)})
	t.Cleanup(func() {
		e.Close()
		_ = st.Close(context.Background())
	})
	ctx := context.Background()
	if _, err := st.CreateTopic(ctx, "orders", storage.TopicConfig{Partitions: 1}); err != nil {
		t.Fatal(err)
	}
	o := DefaultOptions(EffectivelyOnce)
	o.Start, o.AckTimeout = StartPosition{Kind: StartEarliest}, 30*time.Second
	if _, err := e.CreateSubscription(ctx, "orders", "kitchen", o); err != nil {
		t.Fatal(err)
	}
	for i := range 4 {
		if _, err := st.Append(ctx, "orders", 0, []storage.Message{{ID: fmt.Sprint(i), Payload: []byte("x")}}); err != nil {
			t.Fatal(err)
		}
	}
	c, err := e.Attach(ctx, "orders", "kitchen", AttachOptions{Credit: 2})
	if err != nil {
		t.Fatal(err)
	}
	got := receiveN(t, c, 2)
	sub, err := st.Subscription("orders", "kitchen")
	if err != nil {
		t.Fatal(err)
	}
	before, err := st.Cursors("orders", sub.ID)
	if err != nil {
		t.Fatal(err)
	}

	if err := st.Fence(ctx, "orders", sub.ID, 2); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Ack(ctx, []DeliveryID{got[0].ID}); !errors.Is(err, storage.ErrFenced) && !errors.Is(err, ErrDetached) {
		t.Fatalf("an ack after a newer owner's fence: %v, want ErrFenced or ErrDetached", err)
	}
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	ds, err := c.Receive(rctx)
	if len(ds) > 0 || !errors.Is(err, ErrDetached) || !errors.Is(err, storage.ErrFenced) {
		t.Fatalf("the fenced consumer received %d deliveries, %v; want none and ErrDetached wrapping ErrFenced", len(ds), err)
	}
	if after, _ := st.Cursors("orders", sub.ID); string(after[0]) != string(before[0]) {
		t.Fatal("the fenced owner's ack moved the stored cursor")
	}

	if _, err := e.Attach(ctx, "orders", "kitchen", AttachOptions{Credit: 4}); !errors.Is(err, storage.ErrFenced) {
		t.Fatalf("attach at the fenced epoch: %v, want ErrFenced", err)
	}
	lg.epoch.Store(3)
	clk.Advance(10 * time.Second) // what goes out now is due at t0+40s, after 0 and 1
	c, err = e.Attach(ctx, "orders", "kitchen", AttachOptions{Credit: 4})
	if err != nil {
		t.Fatalf("attach at epoch 3: %v", err)
	}
	first := receiveN(t, c, 2) // offsets 2 and 3, never delivered
	clk.Advance(21 * time.Second)
	again := receiveN(t, c, 2) // 0 and 1: outstanding until their deadline, t0+30s
	for _, d := range append(first, again...) {
		want := uint32(1)
		if d.ID.Offset < 2 {
			want = 2
		}
		if d.ID.Attempt != want {
			t.Errorf("offset %d: attempt %d, want %d", d.ID.Offset, d.ID.Attempt, want)
		}
	}
}
