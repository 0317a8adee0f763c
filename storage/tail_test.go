package storage

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/ferrymq/ferry/internal/clock"
)

func tailMsgs(from uint64, n int) ([]Message, []int) {
	msgs := make([]Message, n)
	sizes := make([]int, n)
	for i := range msgs {
		msgs[i] = Message{Offset: from + uint64(i), Payload: []byte{byte(i)}}
		sizes[i] = 10
	}
	return msgs, sizes
}

func cachedOffsets(t *testing.T, c *tailCache, from, head uint64) []uint64 {
	t.Helper()
	msgs, ok := c.read(from, head, 1000, 1<<20)
	if !ok {
		return nil
	}
	offs := make([]uint64, len(msgs))
	for i, m := range msgs {
		offs[i] = m.Offset
	}
	return offs
}

func TestTailCache(t *testing.T) {
	c := newTailCache(50, nil) // five 10-byte records
	c.append(tailMsgs(0, 3))
	c.append(tailMsgs(3, 4)) // 7 records: the oldest two are evicted
	if got := cachedOffsets(t, c, 2, 7); len(got) != 5 || got[0] != 2 || got[4] != 6 {
		t.Fatalf("after eviction read from 2 = %v, want 2..6", got)
	}
	if _, ok := c.read(1, 7, 10, 100); ok {
		t.Fatal("offset 1 was evicted but read from the cache")
	}
	if got := cachedOffsets(t, c, 4, 6); len(got) != 2 {
		t.Fatalf("read below head 6 = %v, want 4 and 5", got)
	}
	if msgs, _ := c.read(2, 7, 10, 25); len(msgs) != 2 {
		t.Fatalf("25-byte read returned %d records of 10 bytes, want 2", len(msgs))
	}
	if msgs, _ := c.read(2, 7, 10, 1); len(msgs) != 1 {
		t.Fatalf("1-byte read returned %d records, want the first anyway", len(msgs))
	}
	c.trim(4)
	if _, ok := c.read(3, 7, 10, 100); ok {
		t.Fatal("offset 3 was trimmed but read from the cache")
	}
	if c.bytes != 30 {
		t.Fatalf("bytes after trim = %d, want 30", c.bytes)
	}
	c.append(tailMsgs(9, 1)) // a gap (7 and 8 never came): start over at 9
	if _, ok := c.read(6, 10, 10, 100); ok {
		t.Fatal("a gap did not reset the cache")
	}
	if got := cachedOffsets(t, c, 9, 10); len(got) != 1 || got[0] != 9 {
		t.Fatalf("after the gap read from 9 = %v", got)
	}
	off := newTailCache(0, nil)
	off.append(tailMsgs(0, 3))
	if _, ok := off.read(0, 3, 10, 100); ok {
		t.Fatal("a zero-byte cache served a read")
	}
}

func TestWaitHead(t *testing.T) {
	s := openStore(t, testOptions(t, clock.NewFake(t0)))
	mustCreate(t, s, "w", TopicConfig{})
	ctx := context.Background()

	got := make(chan uint64, 1)
	go func() {
		head, err := s.WaitHead(ctx, "w", 0, 0)
		if err != nil {
			t.Error(err)
		}
		got <- head
	}()
	select {
	case h := <-got:
		t.Fatalf("WaitHead returned %d before anything was appended", h)
	default:
	}
	mustAppend(t, s, "w", 0, msg("", "a"), msg("", "b"))
	if h := <-got; h != 2 {
		t.Fatalf("WaitHead = %d, want 2", h)
	}
	if h, err := s.WaitHead(ctx, "w", 0, 1); err != nil || h != 2 {
		t.Fatalf("WaitHead for a readable offset = %d, %v; want 2 at once", h, err)
	}

	short, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	if _, err := s.WaitHead(short, "w", 0, 2); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("WaitHead past the head with a deadline: %v", err)
	}

	// Waiting on the partition itself: whether the wait starts before or
	// after the delete, it must end with ErrClosed.
	_, p, err := s.partition("w", 0)
	if err != nil {
		t.Fatal(err)
	}
	gone := make(chan error, 1)
	go func() {
		_, err := p.waitHead(ctx, 5)
		gone <- err
	}()
	if err := s.DeleteTopic(ctx, "w"); err != nil {
		t.Fatal(err)
	}
	if err := <-gone; !errors.Is(err, ErrClosed) {
		t.Fatalf("WaitHead on a deleted topic: %v, want ErrClosed", err)
	}
	if _, err := s.WaitHead(ctx, "w", 0, 0); !errors.Is(err, ErrTopicNotFound) {
		t.Fatalf("WaitHead on a missing topic: %v", err)
	}
}

// TestTailBudget: the store-wide bound evicts the oldest groups first,
// whichever partition holds them, so a partition gone idle gives its cache
// up to busy ones, and the caches together never exceed the bound.
func TestTailBudget(t *testing.T) {
	b := newTailBudget(100) // ten 10-byte records, all partitions
	idle, busy := newTailCache(1000, b), newTailCache(1000, b)
	idle.append(tailMsgs(0, 4))
	for off := uint64(0); off < 20; off += 2 {
		busy.append(tailMsgs(off, 2))
		if total := idle.bytes + busy.bytes; total > 100 || b.bytes != total {
			t.Fatalf("after busy's %d: caches hold %d bytes, budget counts %d; want at most 100, counted right", off+2, total, b.bytes)
		}
	}
	if _, ok := idle.read(0, 4, 10, 1000); ok || idle.msgs != nil {
		t.Fatalf("the idle partition kept %d messages (array kept: %v); the oldest go first", len(idle.msgs), idle.msgs != nil)
	}
	if got := cachedOffsets(t, busy, 10, 20); len(got) != 10 {
		t.Fatalf("busy partition holds %v, want its newest ten, 10..19", got)
	}
	busy.trim(15)
	busy.reset()
	if b.bytes != 0 || b.msgs != 0 {
		t.Fatalf("after trim and reset the budget counts %d bytes, %d messages; want none", b.bytes, b.msgs)
	}
	for off := uint64(20); off < 3000; off++ { // retention trims each at once
		busy.append(tailMsgs(off, 1))
		busy.trim(off + 1)
	}
	if live := len(b.spans) - b.head; live > 1024 {
		t.Fatalf("%d spans remembered for an empty cache, want them pruned", live)
	}
}
