package clock

import (
	"testing"
	"time"
)

// TestPoll: nothing before Start; one call per interval after; a second
// Start adds no second chain of calls; none after Stop, and Start after
// Stop does nothing.
func TestPoll(t *testing.T) {
	c := NewFake(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	calls := 0
	p := NewPoll(c, time.Second, func() { calls++ })
	c.Advance(3 * time.Second)
	if calls != 0 {
		t.Fatalf("%d calls before Start", calls)
	}
	p.Start()
	p.Start()
	c.Advance(3500 * time.Millisecond)
	if calls != 3 {
		t.Fatalf("%d calls in 3.5 intervals, want 3", calls)
	}
	p.Stop()
	p.Stop()
	p.Start()
	c.Advance(5 * time.Second)
	if calls != 3 || c.Pending() != 0 {
		t.Fatalf("%d calls, %d timers pending after Stop; want 3 and 0", calls, c.Pending())
	}
}
