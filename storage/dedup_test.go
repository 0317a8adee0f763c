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
// ids to another store, and reopens both: the ids may cost at most 32 MiB
// of Go heap more, Badger's caches and table indexes included (the map of
// every id the index was took about 210 bytes an id here: 63 MB; the
// filters take about 2 bytes an id; Badger's share is ~9 bytes an id with
// values in the value log, ~90 with the default inline layout). Then a repeat of the first, a middle and the last id
// is still a duplicate of its original offset, and stays one after another
// reopen.
func TestDedupMemoryBounded(t *testing.T) {
	if testing.Short() {
		t.Skip("publishes 600,000 messages")
	}
	const n, bound = 300_000, 32 << 20
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

// TestDedupFilter checks the filters: no id added is ever ruled out, under
// 1% of the others are let through, generations stop at the bound (then
// the newest takes every add), and expiry drops the generations whose ids
// all expired.
func TestDedupFilter(t *testing.T) {
	var f dedupFilter
	const n = 50_000
	for i := range n {
		f.add(benchID(uint64(i)), t0.Add(time.Duration(i)*time.Millisecond))
	}
	for i := range n {
		if !f.mayContain(benchID(uint64(i))) {
			t.Fatalf("id %d added but ruled out", i)
		}
	}
	fp := 0
	for i := n; i < 2*n; i++ {
		if f.mayContain(benchID(uint64(i))) {
			fp++
		}
	}
	if rate := float64(fp) / n; rate > 0.01 {
		t.Errorf("%.2f%% false positives, want under 1%%", 100*rate)
	}
	// 256, 1Ki, 4Ki, 16Ki, 64Ki: 85.25Ki ids in 5 generations.
	if len(f.gens) != 5 || f.count() != n {
		t.Errorf("%d generations holding %d ids, want 5 holding %d", len(f.gens), f.count(), n)
	}
	// At 35s with a 10s window, the generations whose newest id is from
	// 25s or before go: the first four (21.25Ki ids, up to 21.8s). The
	// fifth, whose ids go on to 50s, stays whole.
	const firstFour = 256 + 1<<10 + 4<<10 + 16<<10
	f.expire(t0.Add(35*time.Second), 10*time.Second)
	if len(f.gens) != 1 {
		t.Errorf("%d generations after expiry, want 1 (from id %d on)", len(f.gens), firstFour)
	}
	for i := firstFour; i < n; i++ {
		if !f.mayContain(benchID(uint64(i))) {
			t.Fatalf("id %d of a live generation ruled out after expiry", i)
		}
	}

	var big dedupFilter
	for i := range 3 << 20 { // far past the bound
		big.add(benchID(uint64(i)), t0)
	}
	bytes := 0
	for _, g := range big.gens {
		bytes += 8 * len(g.bits)
	}
	if len(big.gens) != dedupFilterMaxGens || bytes > 9<<19 {
		t.Errorf("%d generations of %d bytes, want %d under 4.5 MiB", len(big.gens), bytes, dedupFilterMaxGens)
	}
	if !big.mayContain(benchID(3<<20 - 1)) {
		t.Error("the last id added to a full filter is ruled out")
	}
}

// TestDedupKeysExpire checks that the d keys go once their window passed:
// expiry deletes them (more than three commands' worth: a background pass
// and EnforceRetention each go on until done), and an open deletes those
// whose message retention removed first.
func TestDedupKeysExpire(t *testing.T) {
	clk := clock.NewFake(t0)
	opts := testOptions(t, clk)
	s := openStore(t, opts)
	mustCreate(t, s, "t", TopicConfig{DedupWindow: time.Minute})
	const n = 3*dedupExpireLimit + 500
	msgs := make([]Message, 1000)
	for off := 0; off < n; off += len(msgs) {
		msgs = msgs[:min(len(msgs), n-off)]
		for i := range msgs {
			msgs[i] = Message{ID: benchID(uint64(off + i)), Payload: []byte("p")}
		}
		mustAppend(t, s, "t", 0, msgs...)
	}
	if got := countKeys(t, s, kindDedup); got != n {
		t.Fatalf("%d d keys for %d ids", got, n)
	}
	clk.Advance(time.Minute)
	mustAppend(t, s, "t", 0, msg("late", "stays"))
	if err := s.EnforceRetention(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := countKeys(t, s, kindDedup); got != 1 {
		t.Fatalf("%d d keys after the window, want 1 (late's)", got)
	}

	// Retention removes late's message within its window: its d key stays
	// (a repeat is still a duplicate) until the next open forgets it.
	if _, err := s.UpdateTopic(context.Background(), "t", func(c *TopicConfig) { c.RetentionMaxMessages = 1 }); err != nil {
		t.Fatal(err)
	}
	mustAppend(t, s, "t", 0, msg("", "newest"))
	if err := s.EnforceRetention(context.Background()); err != nil {
		t.Fatal(err)
	}
	if r := mustAppend(t, s, "t", 0, msg("late", "again")); !r[0].Duplicate {
		t.Fatalf("repeat of late after retention = %+v, want duplicate", r[0])
	}
	if err := s.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	s = openStore(t, opts)
	mustAppend(t, s, "t", 0, msg("", "after open"))
	if got := countKeys(t, s, kindDedup); got != 0 {
		t.Fatalf("%d d keys after an open, want 0", got)
	}
}

// TestReplicatedExpiryOnlyWhenDue: a replicated partition's leader
// proposes a dedup expiry only when an id is a window old — retention
// asks at every pass, and an entry for nothing would wake the partition's
// resting group on every node. Once due, the expiry is proposed and the
// ids are forgotten; after it, nothing is proposed until another is due.
func TestReplicatedExpiryOnlyWhenDue(t *testing.T) {
	clk := clock.NewFake(t0)
	opts := testOptions(t, clk)
	opts.Replicated = true
	s := openStore(t, opts)
	ctx := context.Background()
	if _, err := s.CreateTopic(ctx, "orders", TopicConfig{Partitions: 1, DedupWindow: time.Minute}); err != nil {
		t.Fatal(err)
	}
	g := &leaderEcho{echoGroup: newEchoGroup()}
	g.leads.Store(true)
	g.start(t, s, "orders", 0, g)
	mustAppend(t, s, "orders", 0, msg("a", "1"), msg("b", "2"))
	entries := func() uint64 { return g.rep.Applied() }
	pass := func() {
		t.Helper()
		if err := s.EnforceRetention(ctx); err != nil {
			t.Fatal(err)
		}
	}
	before := entries()
	for range 3 {
		clk.Advance(10 * time.Second)
		pass()
	}
	if got := entries(); got != before {
		t.Fatalf("%d entries proposed by retention passes with no id a window old", got-before)
	}
	clk.Advance(time.Minute)
	pass()
	if got := entries(); got != before+1 {
		t.Fatalf("%d entries proposed once the ids were a window old, want 1 expiry", got-before)
	}
	res, err := s.Append(ctx, "orders", 0, []Message{msg("a", "again")})
	if err != nil || res[0].Duplicate {
		t.Fatalf("append of an expired id: %+v, %v; want stored anew", res, err)
	}
	before = entries()
	pass()
	if got := entries(); got != before {
		t.Fatalf("%d entries proposed by a pass right after the expiry", got-before)
	}
}
