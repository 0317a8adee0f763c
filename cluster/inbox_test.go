package cluster

import (
	"testing"
	"time"
)

// TestInbox: an inbox is FIFO, refuses a push beyond its limit, lets a
// waiting pusher in once the loop pops, and drops its buffer once emptied.
func TestInbox(t *testing.T) {
	q := newInbox[int](100)
	for i := range 100 {
		if !q.push(i) {
			t.Fatalf("push %d refused below the limit", i)
		}
	}
	if q.push(100) {
		t.Fatal("push beyond the limit taken")
	}
	stop := make(chan struct{})
	pushed := make(chan bool)
	go func() { pushed <- q.pushWait(100, stop, nil) }()
	select {
	case <-pushed:
		t.Fatal("pushWait returned while the inbox was full")
	case <-time.After(20 * time.Millisecond):
	}
	for want := range 101 {
		if want == 1 {
			if !<-pushed {
				t.Fatal("pushWait gave up with room made")
			}
		}
		got, ok := q.pop()
		if !ok || got != want {
			t.Fatalf("pop = %d, %v; want %d", got, ok, want)
		}
	}
	if _, ok := q.pop(); ok {
		t.Fatal("pop from an empty inbox")
	}
	if q.items != nil {
		t.Fatalf("an emptied inbox keeps a buffer of %d", cap(q.items))
	}
	for i := range 1000 { // push and pop interleaved: the buffer stays bounded
		q.push(i)
		q.push(i)
		q.pop()
	}
	if c := cap(q.items); c > 2*q.limit {
		t.Fatalf("buffer of %d for at most %d items", c, q.limit)
	}
	q.push(0) // full again
	close(stop)
	if q.pushWait(1, stop, nil) {
		t.Fatal("pushWait into a full inbox returned true after stop")
	}
}
