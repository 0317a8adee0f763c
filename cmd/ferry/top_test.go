package main

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/ferrymq/ferry/client"
)

func TestTopRender(t *testing.T) {
	t0 := time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)
	prev := snapshot{at: t0,
		topics: []topicSample{{name: "orders", partitions: 2, messages: 100, head: 100}},
		subs:   []subSample{{topic: "orders", name: "kitchen", guarantee: "at-least-once", stats: client.SubscriptionStats{Delivered: 50, Redelivered: 2}}},
	}
	cur := snapshot{at: t0.Add(2 * time.Second),
		topics: []topicSample{{name: "orders", partitions: 2, messages: 300, head: 300}},
		subs: []subSample{
			{topic: "orders", name: "kitchen", guarantee: "at-least-once", stats: client.SubscriptionStats{
				Backlog: 40, InFlight: 7, Delivered: 250, Redelivered: 6, DeadLettered: 1, Consumers: 3,
				OldestUnackedAge: 90 * time.Second}},
			{topic: "orders", name: "board", guarantee: "none", stats: client.SubscriptionStats{Delivered: 10}},
		},
	}
	var b bytes.Buffer
	if err := render(&b, prev, cur); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{
		"orders  2           300       100.0", // 200 messages in 2s
		"orders/kitchen  at-least-once  40       7          1m30s           100.0      2.0",
		"orders/board    none           0        0          -               5.0        0.0", // new since prev: counted from 0
	} {
		if !strings.Contains(out, want) {
			t.Errorf("render is missing %q:\n%s", want, out)
		}
	}
	if strings.Index(out, "orders/board") > strings.Index(out, "orders/kitchen") {
		t.Errorf("subscriptions not sorted:\n%s", out)
	}
	if got := perSecond(500, 100, time.Second); got != 100 {
		t.Errorf("a counter that went back (restart) should count from 0: rate = %v", got)
	}
}

// TestTopOnce runs ferry top --once against a real broker.
func TestTopOnce(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the real binary")
	}
	p := startFerry(t, t.TempDir())
	mustCLI(t, p, "", "topic", "create", "orders")
	mustCLI(t, p, "", "sub", "create", "orders", "kitchen", "--guarantee", "at-least-once", "--start", "earliest")
	mustCLI(t, p, "a\nb\nc\n", "pub", "orders")
	out := mustCLI(t, p, "", "top", "--once", "--interval", "100ms")
	for _, want := range []string{"TOPIC", "orders", "SUBSCRIPTION", "orders/kitchen", "at-least-once"} {
		if !strings.Contains(out, want) {
			t.Errorf("ferry top --once is missing %q:\n%s", want, out)
		}
	}
}
