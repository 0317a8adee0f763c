package broker

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ferrymq/ferry/internal/clock"
)

// TestMemoryBudgetAdmit drives admission with a fake clock and a memory
// reading the test sets: below 55% of the limit a publish goes at once,
// between 55% and 70% it waits on the clock, from 70% it is refused with
// RESOURCE_EXHAUSTED and a RetryInfo, and the in-flight cap holds the
// next publish until one is released.
func TestMemoryBudgetAdmit(t *testing.T) {
	const limit = 1000 << 20
	clk := clock.NewFake(time.Unix(1700000000, 0))
	b := newMemoryBudget(limit, 10<<20, clk, prometheus.NewRegistry())
	var used atomic.Int64
	b.sample = used.Load
	ctx := context.Background()
	admit := func() (chan func(), chan error) {
		rel, errs := make(chan func(), 1), make(chan error, 1)
		go func() {
			r, err := b.admit(ctx, 6<<20)
			rel <- r
			errs <- err
		}()
		return rel, errs
	}
	next := func() { clk.Advance(memorySampleEvery) } // a new sample

	used.Store(limit / 2)
	rel, errs := admit()
	if err := <-errs; err != nil {
		t.Fatalf("admit at 50%%: %v", err)
	}
	first := <-rel

	// At 60%: delayed on the clock, then held by the in-flight cap (6 of
	// 10 MiB taken) until the first is released.
	next()
	used.Store(limit * 60 / 100)
	rel, errs = admit()
	waitPending(t, clk, 1)
	clk.Advance(memoryMaxDelay)
	select {
	case err := <-errs:
		t.Fatalf("admitted over the in-flight cap: %v", err)
	case <-time.After(50 * time.Millisecond):
	}
	first()
	if err := <-errs; err != nil {
		t.Fatalf("admit at 60%%: %v", err)
	}
	(<-rel)()

	// At 70%: refused, with a RetryInfo.
	next()
	used.Store(limit * 70 / 100)
	refused := make(chan error, 1)
	go func() { _, err := b.admit(ctx, 1); refused <- err }()
	var err error
	select {
	case err = <-refused:
	case <-time.After(5 * time.Second):
		t.Fatal("admit at 70% neither admitted nor refused within 5s (delayed on the clock?)")
	}
	st := status.Convert(toStatus(err))
	if st.Code() != codes.ResourceExhausted {
		t.Fatalf("admit at 70%%: %v, want RESOURCE_EXHAUSTED", err)
	}
	var retry time.Duration
	for _, d := range st.Details() {
		if ri, ok := d.(*errdetails.RetryInfo); ok {
			retry = ri.GetRetryDelay().AsDuration()
		}
	}
	if retry != memoryRetryDelay {
		t.Errorf("RetryInfo delay %v, want %v", retry, memoryRetryDelay)
	}
	if got := b.delay(int64(memorySlowFraction * limit)); got <= 0 || got > memoryMaxDelay {
		t.Errorf("delay at the slow threshold = %v, want a little more than 0", got)
	}

	// No limit: only the in-flight cap applies, whatever the reading.
	free := newMemoryBudget(0, 10<<20, clk, prometheus.NewRegistry())
	free.sample = func() int64 { return 1 << 40 }
	r, err := free.admit(ctx, 1<<30) // more than the cap: takes the whole cap
	if err != nil {
		t.Fatalf("admit without a limit: %v", err)
	}
	r()
}

// waitPending waits until n timers are pending on clk.
func waitPending(t *testing.T, clk *clock.Fake, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for clk.Pending() < n {
		if time.Now().After(deadline) {
			t.Fatalf("%d timers pending, want %d", clk.Pending(), n)
		}
		time.Sleep(time.Millisecond)
	}
}
