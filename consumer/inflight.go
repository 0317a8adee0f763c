package consumer

import (
	"cmp"
	"container/heap"
	"slices"
	"time"
)

// Lease is one outstanding delivery of a message to a consumer.
type Lease struct {
	Offset   uint64    // the message's offset in its partition
	Attempt  uint32    // 1 for the first delivery; the fencing token
	Consumer uint64    // the consumer holding it
	Deadline time.Time // when it is due again unless acked, nacked or extended
}

// Inflight holds the outstanding deliveries of one subscription in one
// partition: at most one per offset, ordered by deadline so the earliest
// due is found at once. It is not safe for concurrent use.
type Inflight struct {
	h        deadlineHeap
	byOffset map[uint64]*inflightEntry
	// byConsumer indexes the entries by consumer, so RemoveConsumer costs
	// what that consumer holds, not what everyone holds.
	byConsumer map[uint64]map[uint64]*inflightEntry
}

type inflightEntry struct {
	Lease
	index int // position in the heap
}

// NewInflight returns an empty Inflight.
func NewInflight() *Inflight {
	return &Inflight{byOffset: make(map[uint64]*inflightEntry), byConsumer: make(map[uint64]map[uint64]*inflightEntry)}
}

// Len is the number of outstanding deliveries.
func (f *Inflight) Len() int { return len(f.h) }

// Add records d. It reports false, and changes nothing, if d's offset is
// already outstanding: a message is never out twice at once.
func (f *Inflight) Add(d Lease) bool {
	if _, ok := f.byOffset[d.Offset]; ok {
		return false
	}
	e := &inflightEntry{Lease: d}
	f.byOffset[d.Offset] = e
	held := f.byConsumer[d.Consumer]
	if held == nil {
		held = make(map[uint64]*inflightEntry)
		f.byConsumer[d.Consumer] = held
	}
	held[d.Offset] = e
	heap.Push(&f.h, e)
	return true
}

// unindex takes e out of byOffset and byConsumer.
func (f *Inflight) unindex(e *inflightEntry) {
	delete(f.byOffset, e.Offset)
	held := f.byConsumer[e.Consumer]
	delete(held, e.Offset)
	if len(held) == 0 {
		delete(f.byConsumer, e.Consumer)
	}
}

// Get returns the outstanding delivery of off.
func (f *Inflight) Get(off uint64) (Lease, bool) {
	e, ok := f.byOffset[off]
	if !ok {
		return Lease{}, false
	}
	return e.Lease, true
}

// Remove takes the delivery of off out (acked, nacked, dead-lettered) and
// returns it.
func (f *Inflight) Remove(off uint64) (Lease, bool) {
	e, ok := f.byOffset[off]
	if !ok {
		return Lease{}, false
	}
	heap.Remove(&f.h, e.index)
	f.unindex(e)
	return e.Lease, true
}

// Extend moves the deadline of off's delivery. It reports false if off is
// not outstanding.
func (f *Inflight) Extend(off uint64, deadline time.Time) bool {
	e, ok := f.byOffset[off]
	if !ok {
		return false
	}
	e.Deadline = deadline
	heap.Fix(&f.h, e.index)
	return true
}

// NextDeadline is the earliest deadline, if anything is outstanding.
func (f *Inflight) NextDeadline() (time.Time, bool) {
	if len(f.h) == 0 {
		return time.Time{}, false
	}
	return f.h[0].Deadline, true
}

// Due removes and returns the deliveries whose deadline is at or before now,
// earliest first (ties by offset).
func (f *Inflight) Due(now time.Time) []Lease {
	var due []Lease
	for len(f.h) > 0 && !f.h[0].Deadline.After(now) {
		e := heap.Pop(&f.h).(*inflightEntry)
		f.unindex(e)
		due = append(due, e.Lease)
	}
	return due
}

// RemoveConsumer removes and returns every delivery held by consumer, in
// offset order: what is redelivered at once when a consumer disconnects.
// It costs what the consumer holds, whatever others hold.
func (f *Inflight) RemoveConsumer(consumer uint64) []Lease {
	held := f.byConsumer[consumer]
	if len(held) == 0 {
		return nil
	}
	out := make([]Lease, 0, len(held))
	for _, e := range held {
		out = append(out, e.Lease)
	}
	for _, d := range out {
		f.Remove(d.Offset)
	}
	slices.SortFunc(out, func(a, b Lease) int { return cmp.Compare(a.Offset, b.Offset) })
	return out
}

// deadlineHeap orders entries by deadline, then offset, so equal deadlines
// come due in offset order.
type deadlineHeap []*inflightEntry

func (h deadlineHeap) Len() int { return len(h) }

func (h deadlineHeap) Less(i, j int) bool {
	if !h[i].Deadline.Equal(h[j].Deadline) {
		return h[i].Deadline.Before(h[j].Deadline)
	}
	return h[i].Offset < h[j].Offset
}

func (h deadlineHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].index = i
	h[j].index = j
}

func (h *deadlineHeap) Push(x any) {
	e := x.(*inflightEntry)
	e.index = len(*h)
	*h = append(*h, e)
}

func (h *deadlineHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	e.index = -1
	return e
}
