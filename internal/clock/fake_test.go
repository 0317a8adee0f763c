package clock

import (
	"runtime"
	"testing"
	"time"
)

func TestFakeRunsTimersInOrder(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	c := NewFake(t0)
	var got []string
	c.AfterFunc(2*time.Second, func() { got = append(got, "b") })
	c.AfterFunc(time.Second, func() {
		got = append(got, "a")
		c.AfterFunc(500*time.Millisecond, func() { got = append(got, "a2") })
	})
	stopped := c.AfterFunc(1500*time.Millisecond, func() { got = append(got, "never") })
	if !stopped.Stop() {
		t.Fatal("Stop of a pending timer reported false")
	}
	c.AfterFunc(10*time.Second, func() { got = append(got, "late") })

	c.Advance(3 * time.Second)
	want := []string{"a", "a2", "b"}
	if len(got) != len(want) {
		t.Fatalf("ran %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("ran %v, want %v", got, want)
		}
	}
	if !c.Now().Equal(t0.Add(3 * time.Second)) {
		t.Fatalf("Now = %v, want t0+3s", c.Now())
	}
	if c.Pending() != 1 {
		t.Fatalf("Pending = %d, want 1", c.Pending())
	}
}

// TestSleep: Sleep returns true once d has passed on the clock, and false
// at once when done closes first, stopping its timer.
func TestSleep(t *testing.T) {
	c := NewFake(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	slept := make(chan bool)
	go func() { slept <- Sleep(c, time.Second, nil) }()
	for c.Pending() == 0 {
		runtime.Gosched()
	}
	c.Advance(time.Second)
	if !<-slept {
		t.Fatal("Sleep reported false after its duration passed")
	}
	done := make(chan struct{})
	close(done)
	if Sleep(c, time.Hour, done) {
		t.Fatal("Sleep reported true with done closed")
	}
	if c.Pending() != 0 {
		t.Fatalf("%d timers pending after Sleep gave up, want 0", c.Pending())
	}
}
