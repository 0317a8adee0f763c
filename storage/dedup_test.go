package storage

import (
	"context"
	"os"
	"runtime"
	"strconv"
	"testing"
	"time"

	"github.com/ferrymq/ferry/internal/clock"
)

// TestDedupMemoryBounded publishes 300,000 distinct ids to one partition
// within a one-hour dedup window, and the same number of messages without
// ids to another store, and reopens both: the ids may cost at most 16 MiB
// of Go heap more, Badger's block cache (4 MiB here) included (the map of
// every id the index was took about 210 bytes an id here: 63 MB; the
// filters take about 2 bytes an id). Then a repeat of the first, a middle and the last id
// is still a duplicate of its original offset, and stays one after another
// reopen.
func TestDedupMemoryBounded(t *testing.T) {
	if testing.Short() {
		t.Skip("publishes 600,000 messages")
	}
	const n, bound = 300_000, 16 << 20
	clk := clock.NewFake(t0)
	without, s, _ := dedupHeap(t, clk, n, false)
	if err := s.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	with, s, opts := dedupHeap(t, clk, n, true)
	perID := float64(with-without) / n
	t.Logf("heap: %d bytes with ids, %d without: %.1f bytes/id", with, without, perID)
	if with-without > bound {
		t.Errorf("%d ids cost %d bytes of heap (%.1f bytes/id), want at most %d", n, with-without, perID, bound)
	}
	check := func(s *Store, fresh uint64) {
		t.Helper()
		for _, i := range []uint64{0, n / 2, n - 1} {
			if r := mustAppend(t, s, "t", 0, Message{ID: benchID(i), Payload: []byte("again")}); !r[0].Duplicate || r[0].Offset != i {
				t.Fatalf("repeat of id %d = %+v, want duplicate of offset %d", i, r[0], i)
			}
		}
		if r := mustAppend(t, s, "t", 0, Message{ID: benchID(fresh), Payload: []byte("new")}); r[0].Duplicate {
			t.Fatalf("a fresh id = %+v, want stored", r[0])
		}
	}
	check(s, n)
	if err := s.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	check(openStore(t, opts), n+1)
}

// dedupHeap opens a store, publishes n messages to topic t (one partition,
// dedup window 1h), with distinct ids or none, in batches of 1,000, closes
// it and opens it again (so Badger's memtables start empty, whatever the
// writes were, and the partition's dedup index is read back), and returns
// the live heap after a GC, with the store open.
func dedupHeap(tb testing.TB, clk clock.Clock, n int, ids bool) (uint64, *Store, Options) {
	tb.Helper()
	opts := testOptions(tb, clk)
	opts.Fsync = FsyncNever
	opts.TailCacheBytes = 0 // it would hold the newest messages, ids and all
	s := openStore(tb, opts)
	mustCreate(tb, s, "t", TopicConfig{DedupWindow: time.Hour})
	msgs := make([]Message, 1000)
	for off := 0; off < n; off += len(msgs) {
		for i := range msgs {
			msgs[i] = Message{Payload: []byte("p")}
			if ids {
				msgs[i].ID = benchID(uint64(off + i))
			}
		}
		if _, err := s.Append(context.Background(), "t", 0, msgs); err != nil {
			tb.Fatal(err)
		}
	}
	if err := s.Close(context.Background()); err != nil {
		tb.Fatal(err)
	}
	s = openStore(tb, opts)
	mustAppend(tb, s, "t", 0, Message{Payload: []byte("after the index is read")})
	return liveHeap(), s, opts
}

// liveHeap returns the bytes of live heap objects after two GCs.
func liveHeap() uint64 {
	var ms runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// BenchmarkDedupMemory publishes FERRY_BENCH_DEDUP_IDS (default 1,000,000)
// messages with distinct ids to one partition within the dedup window, and
// as many without ids to another store, reopens both, and reports the heap
// the ids cost (bytes/id, after a GC), Badger's block cache included.
//
//	go test -run '^$' -bench DedupMemory -benchtime 1x ./storage
func BenchmarkDedupMemory(b *testing.B) {
	n := 1_000_000
	if v, err := strconv.Atoi(os.Getenv("FERRY_BENCH_DEDUP_IDS")); err == nil && v > 0 {
		n = v
	}
	for b.Loop() {
		clk := clock.NewFake(t0)
		without, s, _ := dedupHeap(b, clk, n, false)
		_ = s.Close(context.Background())
		with, s, _ := dedupHeap(b, clk, n, true)
		_ = s.Close(context.Background())
		b.ReportMetric(float64(int64(with)-int64(without))/float64(n), "bytes/id")
	}
}
