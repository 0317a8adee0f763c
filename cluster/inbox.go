package cluster

import "sync"

// inbox is a bounded FIFO queue into a group's loop that holds no buffer
// while it is empty: a buffered channel of recvQueue messages costs 32 KiB
// per group whether used or not, which 10,000 partitions at rest cannot
// afford. Any goroutine pushes; the loop waits on ready and pops. Safe
// for concurrent use.
type inbox[T any] struct {
	limit int           // most items held; push refuses more
	ready chan struct{} // capacity 1: signaled when items are waiting
	room  chan struct{} // capacity 1: signaled when there may be room for a pusher that found the inbox full

	mu    sync.Mutex // guards items and head
	items []T
	head  int // items[head:] are waiting
}

// shrinkCap is the capacity an emptied inbox keeps; a larger buffer, left
// by a burst, is released.
const shrinkCap = 64

func newInbox[T any](limit int) *inbox[T] {
	return &inbox[T]{limit: limit, ready: make(chan struct{}, 1), room: make(chan struct{}, 1)}
}

// push queues v; false if limit items are waiting already.
func (q *inbox[T]) push(v T) bool {
	q.mu.Lock()
	if len(q.items)-q.head >= q.limit {
		q.mu.Unlock()
		return false
	}
	if q.head > 0 && len(q.items) == cap(q.items) {
		n := copy(q.items, q.items[q.head:]) // reuse the room popped at the front
		clear(q.items[n:])
		q.items, q.head = q.items[:n], 0
	}
	q.items = append(q.items, v)
	q.mu.Unlock()
	signal(q.ready)
	return true
}

// pushWait queues v, waiting for room while limit items are waiting,
// until stop or done is closed (then false).
func (q *inbox[T]) pushWait(v T, stop, done <-chan struct{}) bool {
	waited := false
	for !q.push(v) {
		waited = true
		select {
		case <-q.room:
		case <-stop:
			return false
		case <-done:
			return false
		}
	}
	if waited && q.len() < q.limit {
		signal(q.room) // pass the room on to the next pusher waiting for it
	}
	return true
}

// pop takes the oldest item; false if none is waiting. The loop calls it
// after ready fired, until it returns false or it has taken enough (then
// it calls more, to be woken again).
func (q *inbox[T]) pop() (T, bool) {
	var zero T
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.head == len(q.items) {
		return zero, false
	}
	v := q.items[q.head]
	q.items[q.head] = zero
	q.head++
	if q.head == len(q.items) {
		q.head = 0
		if cap(q.items) > shrinkCap {
			q.items = nil
		} else {
			q.items = q.items[:0]
		}
	}
	if len(q.items)-q.head == q.limit-1 {
		signal(q.room) // it was full: a pusher may wait
	}
	return v, true
}

// more re-signals ready if items are still waiting: the loop stopped
// popping before the inbox was empty.
func (q *inbox[T]) more() {
	if q.len() > 0 {
		signal(q.ready)
	}
}

// len returns how many items are waiting.
func (q *inbox[T]) len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.items) - q.head
}
