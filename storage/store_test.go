package storage

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"

	"github.com/ferrymq/ferry/internal/clock"

	"github.com/ferrymq/ferry/internal/ferrytest"
)

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// testOptions returns options for a store in a fresh temp dir on a fake
// clock, logging into the test.
func testOptions(tb testing.TB, clk clock.Clock) Options {
	tb.Helper()
	opts := DefaultOptions(tb.TempDir())
	opts.Clock = clk
	opts.Logger = slog.New(slog.NewTextHandler(ferrytest.Writer{TB: tb}, &slog.HandlerOptions{Level: slog.LevelWarn}))
	opts.MemTableBytes = MinMemTableBytes
	opts.BlockCacheBytes = 4 << 20
	return opts
}

func openStore(tb testing.TB, opts Options) *Store {
	tb.Helper()
	s, err := Open(opts)
	if err != nil {
		tb.Fatalf("Open: %v", err)
	}
	tb.Cleanup(func() { _ = s.Close(context.Background()) })
	return s
}

func mustCreate(tb testing.TB, s *Store, name string, cfg TopicConfig) {
	tb.Helper()
	if _, err := s.CreateTopic(context.Background(), name, cfg); err != nil {
		tb.Fatalf("CreateTopic(%q): %v", name, err)
	}
}

func mustAppend(tb testing.TB, s *Store, topic string, part uint32, msgs ...Message) []AppendResult {
	tb.Helper()
	res, err := s.Append(context.Background(), topic, part, msgs)
	if err != nil {
		tb.Fatalf("Append: %v", err)
	}
	return res
}

func mustRead(tb testing.TB, s *Store, topic string, part uint32, from uint64, n int) []Message {
	tb.Helper()
	msgs, err := s.Read(context.Background(), topic, part, from, n, 1<<30)
	if err != nil {
		tb.Fatalf("Read(%d, %d): %v", from, n, err)
	}
	return msgs
}

func msg(id, payload string) Message {
	return Message{ID: id, Payload: []byte(payload)}
}

func TestAppendReadDenseOffsets(t *testing.T) {
	clk := clock.NewFake(t0)
	s := openStore(t, testOptions(t, clk))
	mustCreate(t, s, "orders", TopicConfig{Partitions: 2})

	in := []Message{
		{ID: "a", Key: []byte("k1"), Payload: []byte("one"), Headers: map[string]string{"h": "v", "z": ""}},
		{Payload: []byte{}},
		{ID: "c", Payload: bytes.Repeat([]byte{0xff, 0}, 2000)},
	}
	res := mustAppend(t, s, "orders", 1, in...)
	clk.Advance(time.Second)
	res = append(res, mustAppend(t, s, "orders", 1, msg("d", "four"))...)
	for i, r := range res {
		if r.Offset != uint64(i) || r.Duplicate {
			t.Fatalf("result %d = %+v, want offset %d, not duplicate", i, r, i)
		}
	}
	got := mustRead(t, s, "orders", 1, 0, 10)
	if len(got) != 4 {
		t.Fatalf("read %d messages, want 4", len(got))
	}
	for i, m := range in {
		g := got[i]
		if g.ID != m.ID || !bytes.Equal(g.Key, m.Key) || !bytes.Equal(g.Payload, m.Payload) || fmt.Sprint(g.Headers) != fmt.Sprint(m.Headers) {
			t.Errorf("message %d = %+v, want %+v", i, g, m)
		}
		if g.Offset != uint64(i) || g.Partition != 1 || !g.PublishTime.Equal(t0) {
			t.Errorf("message %d at partition %d offset %d time %v", i, g.Partition, g.Offset, g.PublishTime)
		}
	}
	if !got[3].PublishTime.Equal(t0.Add(time.Second)) {
		t.Errorf("fourth publish time %v, want t0+1s", got[3].PublishTime)
	}
	if tail := mustRead(t, s, "orders", 1, 2, 10); len(tail) != 2 || tail[0].Offset != 2 {
		t.Errorf("read from 2: %d messages", len(tail))
	}
	if empty := mustRead(t, s, "orders", 0, 0, 10); len(empty) != 0 {
		t.Errorf("partition 0 has %d messages, want 0", len(empty))
	}
	if head := mustRead(t, s, "orders", 1, 4, 10); len(head) != 0 {
		t.Errorf("read at head returned %d messages", len(head))
	}
	var oor *OffsetOutOfRangeError
	if _, err := s.Read(context.Background(), "orders", 1, 5, 10, 1<<20); !errors.As(err, &oor) || oor.Head != 4 {
		t.Errorf("read beyond head: %v, want OffsetOutOfRangeError with head 4", err)
	}
	if _, err := s.Read(context.Background(), "orders", 2, 0, 10, 1<<20); !errors.Is(err, ErrPartitionNotFound) {
		t.Errorf("read partition 2: %v, want ErrPartitionNotFound", err)
	}
	long := Message{ID: string(bytes.Repeat([]byte("i"), MaxIDBytes+1)), Payload: []byte("x")}
	if _, err := s.Append(context.Background(), "orders", 0, []Message{msg("ok", "y"), long}); !errors.Is(err, ErrInvalidMessage) {
		t.Errorf("append with a %d-byte id: %v, want ErrInvalidMessage", len(long.ID), err)
	}
	if infos, _ := s.Partitions("orders"); infos[0].Head != 0 {
		t.Errorf("a refused batch stored %d messages", infos[0].Head)
	}
	if _, err := s.Append(context.Background(), "nope", 0, []Message{msg("", "x")}); !errors.Is(err, ErrTopicNotFound) {
		t.Errorf("append to unknown topic: %v, want ErrTopicNotFound", err)
	}
	if byBytes, _ := s.Read(context.Background(), "orders", 1, 0, 10, 1); len(byBytes) != 1 {
		t.Errorf("maxBytes 1 read %d messages, want 1", len(byBytes))
	}
}

func TestDedupWithinWindowAndExpiry(t *testing.T) {
	clk := clock.NewFake(t0)
	s := openStore(t, testOptions(t, clk))
	mustCreate(t, s, "pay", TopicConfig{DedupWindow: time.Minute})

	first := mustAppend(t, s, "pay", 0, msg("id-1", "a"), msg("id-2", "b"), msg("id-1", "again in batch"))
	want := []AppendResult{{0, false}, {1, false}, {0, true}}
	if fmt.Sprint(first) != fmt.Sprint(want) {
		t.Fatalf("first batch = %v, want %v", first, want)
	}
	clk.Advance(59 * time.Second)
	if r := mustAppend(t, s, "pay", 0, msg("id-2", "retry")); !r[0].Duplicate || r[0].Offset != 1 {
		t.Fatalf("retry inside window = %+v, want duplicate of offset 1", r[0])
	}
	clk.Advance(time.Second) // the window has now passed for id-1 and id-2
	if r := mustAppend(t, s, "pay", 0, msg("id-1", "new")); r[0].Duplicate || r[0].Offset != 2 {
		t.Fatalf("publish after window = %+v, want new offset 2", r[0])
	}
	// The sweep forgets id-2 but keeps id-1's new entry.
	if err := s.EnforceRetention(context.Background()); err != nil {
		t.Fatal(err)
	}
	clk.Advance(30 * time.Second)
	if r := mustAppend(t, s, "pay", 0, msg("id-1", "dup of new")); !r[0].Duplicate || r[0].Offset != 2 {
		t.Fatalf("id-1 after sweep = %+v, want duplicate of offset 2", r[0])
	}
	if r := mustAppend(t, s, "pay", 0, msg("id-2", "fresh")); r[0].Duplicate || r[0].Offset != 3 {
		t.Fatalf("id-2 after sweep = %+v, want new offset 3", r[0])
	}
	// One Badger entry per message: the ids ride in the message keys.
	if n, msgs := countKeys(t, s, kindMessage), 4; n != msgs {
		t.Errorf("%d keys for %d messages", n, msgs)
	}
}

func TestDedupSurvivesReopen(t *testing.T) {
	clk := clock.NewFake(t0)
	opts := testOptions(t, clk)
	s, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	mustCreate(t, s, "t", TopicConfig{Partitions: 3})
	mustAppend(t, s, "t", 2, msg("x", "1"), msg("y", "2"))
	if err := s.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	s = openStore(t, opts)
	r := mustAppend(t, s, "t", 2, msg("y", "again"), msg("z", "3"))
	if !r[0].Duplicate || r[0].Offset != 1 || r[1].Duplicate || r[1].Offset != 2 {
		t.Fatalf("after reopen = %+v", r)
	}
	infos, err := s.Partitions("t")
	if err != nil {
		t.Fatal(err)
	}
	if len(infos) != 3 || infos[2].Head != 3 || infos[2].First != 0 || infos[0].Head != 0 {
		t.Fatalf("partitions after reopen = %+v", infos)
	}
}

func TestRetention(t *testing.T) {
	payload := bytes.Repeat([]byte("p"), 100)
	recSize := uint64(messageRecordSize(&Message{Payload: payload}))
	tests := []struct {
		name      string
		cfg       TopicConfig
		advance   time.Duration // between each of the 10 appends
		wantFirst uint64
	}{
		{"count", TopicConfig{RetentionMaxMessages: 3}, 0, 7},
		{"bytes", TopicConfig{RetentionMaxBytes: 4*recSize + 1}, 0, 6},
		{"age", TopicConfig{RetentionMaxAge: 25 * time.Second}, 10 * time.Second, 7},
		{"none", TopicConfig{}, 10 * time.Second, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			clk := clock.NewFake(t0)
			s := openStore(t, testOptions(t, clk))
			mustCreate(t, s, "r", tc.cfg)
			for i := range 10 {
				mustAppend(t, s, "r", 0, Message{Payload: payload})
				if i < 9 {
					clk.Advance(tc.advance)
				}
			}
			if err := s.EnforceRetention(context.Background()); err != nil {
				t.Fatal(err)
			}
			infos, _ := s.Partitions("r")
			p := infos[0]
			if p.First != tc.wantFirst || p.Head != 10 || p.Messages != 10-tc.wantFirst || p.Bytes != (10-tc.wantFirst)*recSize {
				t.Fatalf("after retention %+v, want first %d head 10 bytes %d", p, tc.wantFirst, (10-tc.wantFirst)*recSize)
			}
			var oor *OffsetOutOfRangeError
			if tc.wantFirst > 0 {
				if _, err := s.Read(context.Background(), "r", 0, tc.wantFirst-1, 1, 1<<20); !errors.As(err, &oor) || oor.First != tc.wantFirst {
					t.Fatalf("read below first: %v", err)
				}
			}
			if got := mustRead(t, s, "r", 0, tc.wantFirst, 100); uint64(len(got)) != 10-tc.wantFirst {
				t.Fatalf("read %d retained messages", len(got))
			}
			if n := countKeys(t, s, kindMessage); uint64(n) != 10-tc.wantFirst {
				t.Fatalf("%d message keys left, want %d", n, 10-tc.wantFirst)
			}
		})
	}
}

func TestRetentionRunsOnClock(t *testing.T) {
	clk := clock.NewFake(t0)
	opts := testOptions(t, clk)
	opts.RetentionInterval = 5 * time.Second
	s := openStore(t, opts)
	mustCreate(t, s, "r", TopicConfig{RetentionMaxAge: time.Minute})
	mustAppend(t, s, "r", 0, msg("", "old"))
	clk.Advance(61 * time.Second) // ticks run inside Advance
	infos, _ := s.Partitions("r")
	if infos[0].First != 1 {
		t.Fatalf("first = %d after the background pass, want 1", infos[0].First)
	}
}

func TestTopicAdmin(t *testing.T) {
	clk := clock.NewFake(t0)
	opts := testOptions(t, clk)
	s := openStore(t, opts)
	ctx := context.Background()
	a, err := s.CreateTopic(ctx, "a", TopicConfig{Partitions: 2})
	if err != nil {
		t.Fatal(err)
	}
	if a.Config.DedupWindow != DefaultDedupWindow || a.Config.MaxMessageBytes != DefaultMaxMessageBytes {
		t.Fatalf("defaults not filled in: %+v", a.Config)
	}
	if again, err := s.CreateTopic(ctx, "a", TopicConfig{Partitions: 2, DedupWindow: DefaultDedupWindow}); err != nil || again != a {
		t.Fatalf("identical create = %+v, %v; want no-op", again, err)
	}
	if _, err := s.CreateTopic(ctx, "a", TopicConfig{Partitions: 3}); !errors.Is(err, ErrTopicExists) {
		t.Fatalf("create with other config: %v, want ErrTopicExists", err)
	}
	for _, bad := range []string{"", "has space", "slash/", string(make([]byte, 201))} {
		if _, err := s.CreateTopic(ctx, bad, TopicConfig{}); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("create %q: %v, want ErrInvalidConfig", bad, err)
		}
	}
	for _, cfg := range []TopicConfig{{Partitions: 1025}, {MaxMessageBytes: 5 << 20}, {DedupWindow: -1}, {RetentionMaxAge: -1}} {
		if _, err := s.CreateTopic(ctx, "b", cfg); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("create with %+v: %v, want ErrInvalidConfig", cfg, err)
		}
	}
	u, err := s.UpdateTopic(ctx, "a", func(c *TopicConfig) { c.RetentionMaxMessages = 5 })
	if err != nil || u.Config.RetentionMaxMessages != 5 {
		t.Fatalf("update = %+v, %v", u, err)
	}
	if _, err := s.UpdateTopic(ctx, "a", func(c *TopicConfig) { c.Partitions = 4 }); !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("update partitions: %v, want ErrInvalidConfig", err)
	}
	mustAppend(t, s, "a", 1, msg("i", "x"))
	if err := s.DeleteTopic(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteTopic(ctx, "a"); !errors.Is(err, ErrTopicNotFound) {
		t.Fatalf("second delete: %v, want ErrTopicNotFound", err)
	}
	if _, err := s.Append(ctx, "a", 0, []Message{msg("", "x")}); !errors.Is(err, ErrTopicNotFound) {
		t.Fatalf("append after delete: %v", err)
	}
	// Recreated, it starts empty, and the old id is not a duplicate.
	mustCreate(t, s, "a", TopicConfig{Partitions: 2})
	if r := mustAppend(t, s, "a", 1, msg("i", "y")); r[0].Offset != 0 || r[0].Duplicate {
		t.Fatalf("append to recreated topic = %+v", r[0])
	}
	if err := s.Close(ctx); err != nil {
		t.Fatal(err)
	}
	s = openStore(t, opts)
	if ts := s.Topics(); len(ts) != 1 || ts[0].Name != "a" || ts[0].Config.RetentionMaxMessages != 0 {
		t.Fatalf("topics after reopen = %+v", ts)
	}
	s.bg.Wait() // a drop cut short by Close resumes at Open
	if n := countKeys(t, s, kindTombstone); n != 0 {
		t.Fatalf("%d tombstones left", n)
	}
	if n := countKeys(t, s, kindMessage); n != 1 {
		t.Fatalf("%d message keys, want only the recreated topic's 1", n)
	}
}

func TestConcurrentAppendsGroupCommit(t *testing.T) {
	s := openStore(t, testOptions(t, clock.Real()))
	mustCreate(t, s, "c", TopicConfig{Partitions: 2})
	const writers, each = 16, 50
	var wg sync.WaitGroup
	offsets := make([]map[uint64]bool, 2)
	offsets[0], offsets[1] = map[uint64]bool{}, map[uint64]bool{}
	var mu sync.Mutex
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				part := uint32(w % 2)
				r, err := s.Append(context.Background(), "c", part, []Message{msg(fmt.Sprintf("%d-%d", w, i), "x")})
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				if offsets[part][r[0].Offset] {
					t.Errorf("offset %d given twice", r[0].Offset)
				}
				offsets[part][r[0].Offset] = true
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	for part, offs := range offsets {
		for o := range uint64(len(offs)) {
			if !offs[o] {
				t.Fatalf("partition %d: offset %d missing: not dense", part, o)
			}
		}
	}
	if syncs := s.Syncs(); syncs >= writers*each {
		t.Logf("fsyncs %d for %d appends: no grouping happened", syncs, writers*each)
	}
}

func TestClosedStore(t *testing.T) {
	s := openStore(t, testOptions(t, clock.NewFake(t0)))
	mustCreate(t, s, "x", TopicConfig{})
	if err := s.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(context.Background()); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := s.Append(context.Background(), "x", 0, []Message{msg("", "a")}); !errors.Is(err, ErrClosed) {
		t.Fatalf("append after close: %v, want ErrClosed", err)
	}
}

func countKeys(tb testing.TB, s *Store, kind byte) int {
	tb.Helper()
	n := 0
	err := s.db.View(func(txn *badger.Txn) error {
		opts := badger.DefaultIteratorOptions
		opts.PrefetchValues = false
		opts.Prefix = []byte{kind}
		it := txn.NewIterator(opts)
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			n++
		}
		return nil
	})
	if err != nil {
		tb.Fatal(err)
	}
	return n
}

// TestNoFsyncWithoutWrites checks that a group that changes nothing — a
// retry answered as a duplicate, a retention pass with nothing to remove —
// is answered without an fsync, while a real append is not.
func TestNoFsyncWithoutWrites(t *testing.T) {
	clk := clock.NewFake(t0)
	s := openStore(t, testOptions(t, clk))
	mustCreate(t, s, "f", TopicConfig{Partitions: 2})
	mustAppend(t, s, "f", 0, msg("a", "1"))
	before := s.Syncs()
	if r := mustAppend(t, s, "f", 0, msg("a", "retry")); !r[0].Duplicate {
		t.Fatalf("retry = %+v, want duplicate", r[0])
	}
	if err := s.EnforceRetention(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n := s.Syncs() - before; n != 0 {
		t.Fatalf("%d fsyncs for a duplicate and an idle retention pass, want 0", n)
	}
	mustAppend(t, s, "f", 1, msg("b", "2"))
	if n := s.Syncs() - before; n != 1 {
		t.Fatalf("%d fsyncs after one real append, want 1", n)
	}
}

// TestEnqueueRefusesAfterCtxEnds: once ctx has ended, Enqueue fails every
// time, though the queue has room. (A random pick between the two let a
// dying publish stream have an earlier batch refused and a later one
// stored, and the earlier one, sent again, land after it.)
func TestEnqueueRefusesAfterCtxEnds(t *testing.T) {
	s := openStore(t, testOptions(t, clock.NewFake(t0)))
	mustCreate(t, s, "t", TopicConfig{Partitions: 1})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	for i := range 200 {
		if _, err := s.Enqueue(ctx, "t", 0, []Message{{Payload: []byte("x")}}); !errors.Is(err, context.Canceled) {
			t.Fatalf("enqueue %d with an ended ctx: %v, want context.Canceled", i, err)
		}
	}
	if ps, _ := s.Partitions("t"); ps[0].Head != 0 {
		t.Fatalf("%d messages stored through an ended ctx", ps[0].Head)
	}
}
