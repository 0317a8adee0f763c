package storage

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferrymq/ferry/internal/clock"
)

// idlePartitionBudget is what an idle partition may cost in memory (heap
// and goroutine stacks). The bound is 64 KiB; 100,000 partitions
// starting within 512 MiB (next to Badger's own tables and caches) need
// about 4 KiB, and that is what is asserted. Measured: about 0.6 KiB for a
// partition created and never written, 1.3 KiB for one written once (its
// dedup entry and cached message), 0.5 KiB after a reopen.
const idlePartitionBudget = 4 << 10

// memInUse is the live heap and the goroutine stacks after a collection.
func memInUse() uint64 {
	runtime.GC()
	runtime.GC() // the first may leave finalizers' objects for the second
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc + ms.StackInuse
}

// TestIdlePartitionCost creates 4,000 partitions in a real store, writes
// one message to each and lets them go idle, then reopens the store: each
// time, the memory and goroutines they hold are measured against
// idlePartitionBudget, and no goroutine is kept per partition.
func TestIdlePartitionCost(t *testing.T) {
	const topics, parts = 4, 1000
	const n = topics * parts
	clk := clock.NewFake(t0)
	opts := testOptions(t, clk)
	opts.Fsync = FsyncNever // the cost measured is memory, not fsyncs
	s, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	mustCreate(t, s, "warm", TopicConfig{})
	mustAppend(t, s, "warm", 0, msg("w", "warm"))
	base, g0 := memInUse(), runtime.NumGoroutine()
	check := func(what string, used uint64, goroutines int) {
		t.Helper()
		per := (int64(used) - int64(base)) / n
		t.Logf("%s: %d bytes per idle partition (budget %d), %d goroutines more", what, per, idlePartitionBudget, goroutines-g0)
		if per > idlePartitionBudget {
			t.Errorf("%s: an idle partition costs %d bytes, want at most %d", what, per, idlePartitionBudget)
		}
		if goroutines-g0 > 100 {
			t.Errorf("%s: %d goroutines more for %d idle partitions, want them not to grow with partitions", what, goroutines-g0, n)
		}
	}

	for i := range topics {
		mustCreate(t, s, fmt.Sprintf("t%d", i), TopicConfig{Partitions: parts})
	}
	waitGoroutines(t, g0+100)
	check("created", memInUse(), runtime.NumGoroutine())

	payload := strings.Repeat("p", 100)
	for i := range topics {
		for part := range uint32(parts) {
			topic := fmt.Sprintf("t%d", i)
			mustAppend(t, s, topic, part, msg(fmt.Sprintf("%s-%d", topic, part), payload))
			if got := mustRead(t, s, topic, part, 0, 1); len(got) != 1 {
				t.Fatalf("%s/%d: read %d messages, want 1", topic, part, len(got))
			}
		}
	}
	waitGoroutines(t, g0+100)
	check("written once", memInUse(), runtime.NumGoroutine())

	if err := s.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	s = openStore(t, opts)
	check("reopened", memInUse(), runtime.NumGoroutine())
	for i := range topics {
		infos, err := s.Partitions(fmt.Sprintf("t%d", i))
		if err != nil || len(infos) != parts || infos[parts-1].Head != 1 {
			t.Fatalf("t%d after reopen: %d partitions, %v; want %d, each of head 1", i, len(infos), err, parts)
		}
	}
}

// waitGoroutines waits, up to a deadline, for the goroutines to be at most
// max: writers exit once their queue is empty, not at once.
func waitGoroutines(tb testing.TB, max int) {
	tb.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > max && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
}

// TestPartitionQueueBound drives a partition's queue to Options.QueueLength
// while its writer is held: further appends wait (and fail when their ctx
// ends, storing nothing), then go in, in order, once the writer takes from
// the queue; when it is empty again the writer exits and lets the queue go.
func TestPartitionQueueBound(t *testing.T) {
	opts := testOptions(t, clock.NewFake(t0))
	opts.QueueLength = 4
	s := openStore(t, opts)
	mustCreate(t, s, "q", TopicConfig{})
	_, p, err := s.partition("q", 0)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	st, hold, err := p.hold(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	resume := func() { once.Do(func() { hold(st) }) }
	defer resume() // a failure below must not leave the writer held
	var pending []*Pending
	for i := range 4 {
		pd, err := s.Enqueue(ctx, "q", 0, []Message{msg("", fmt.Sprint(i))})
		if err != nil {
			t.Fatalf("append %d of 4 to a held writer: %v", i, err)
		}
		pending = append(pending, pd)
	}
	short, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	if _, err := s.Enqueue(short, "q", 0, []Message{msg("", "refused")}); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("append to a full queue with a deadline: %v, want context.DeadlineExceeded", err)
	}
	fifth := make(chan error, 1)
	go func() {
		pd, err := s.Enqueue(ctx, "q", 0, []Message{msg("", "4")})
		if err == nil {
			pending = append(pending, pd)
		}
		fifth <- err
	}()
	select {
	case err := <-fifth:
		t.Fatalf("append to a full queue returned %v, want it to wait", err)
	case <-time.After(20 * time.Millisecond):
	}
	p.queueMu.Lock()
	queued := len(p.pending)
	p.queueMu.Unlock()
	if queued != 4 {
		t.Fatalf("%d appends queued, want the bound, 4", queued)
	}
	resume()
	if err := <-fifth; err != nil {
		t.Fatalf("append once the writer took from the queue: %v", err)
	}
	for i, pd := range pending {
		res, err := pd.Wait(ctx)
		if err != nil || res[0].Offset != uint64(i) {
			t.Fatalf("append %d: %v, %v; want offset %d", i, res, err, i)
		}
	}
	for i, m := range mustRead(t, s, "q", 0, 0, 10) {
		if string(m.Payload) != fmt.Sprint(i) {
			t.Fatalf("offset %d holds %q, want %q (nothing of the refused append)", i, m.Payload, fmt.Sprint(i))
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		p.queueMu.Lock()
		idle := !p.running && p.pending == nil && p.room == nil
		p.queueMu.Unlock()
		if idle {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the writer still runs, or holds its queue, 10s after its queue emptied")
		}
		time.Sleep(time.Millisecond)
	}
}
