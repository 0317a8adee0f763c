package storage

import (
	"context"
	"fmt"
	"runtime"
	"strings"
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
