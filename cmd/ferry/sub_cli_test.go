package main

import (
	"fmt"
	"strings"
	"testing"
)

// TestSubCLI drives ferry sub and ferry consume against a real broker.
func TestSubCLI(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the real binary")
	}
	p := startFerry(t, t.TempDir())
	mustCLI(t, p, "", "topic", "create", "orders", "--partitions", "2")
	mustCLI(t, p, "", "topic", "create", "orders.dead")
	var lines []string
	for i := range 6 {
		lines = append(lines, fmt.Sprintf("order %d", i))
	}
	mustCLI(t, p, strings.Join(lines, "\n")+"\n", "pub", "orders")

	out := mustCLI(t, p, "", "sub", "create", "orders", "kitchen", "--guarantee", "effectively-once",
		"--type", "key-shared", "--start", "earliest", "--max-deliveries", "2", "--dead-letter-topic", "orders.dead", "-o", "json")
	sub := jsonLines(t, out)[0]
	if sub["guarantee"] != "effectively-once" || sub["type"] != "key-shared" || sub["start"] != "earliest" {
		t.Fatalf("sub create printed %v", sub)
	}
	// An identical create is a no-op; another config is refused.
	mustCLI(t, p, "", "sub", "create", "orders", "kitchen", "--guarantee", "effectively-once",
		"--type", "key-shared", "--start", "earliest", "--max-deliveries", "2", "--dead-letter-topic", "orders.dead")
	if _, errOut, ok := ferryCLI(t, p, "", "sub", "create", "orders", "kitchen", "--guarantee", "at-least-once"); ok || !strings.Contains(errOut, "AlreadyExists") {
		t.Fatalf("conflicting create: ok=%v stderr %q", ok, errOut)
	}
	mustCLI(t, p, "", "sub", "create", "orders", "texts", "--guarantee", "at-most-once", "--start", "earliest")

	t.Run("consume --max acks and confirms", func(t *testing.T) {
		out := mustCLI(t, p, "", "consume", "orders", "kitchen", "--max", "4", "-o", "json")
		ds := jsonLines(t, out)
		if len(ds) != 4 {
			t.Fatalf("consume --max 4 printed %d deliveries:\n%s", len(ds), out)
		}
		for _, d := range ds {
			if d["delivery_id"] == "" || d["attempt"] != float64(1) || !strings.HasPrefix(d["payload"].(string), "order ") {
				t.Fatalf("delivery %v", d)
			}
		}
		got := jsonLines(t, mustCLI(t, p, "", "sub", "get", "orders", "kitchen", "-o", "json"))[0]["stats"].(map[string]any)
		if got["backlog"] != float64(2) || got["acked"] != float64(4) || got["in_flight"] != float64(0) {
			t.Fatalf("after consuming 4 of 6 with acks: stats %v", got)
		}
	})
	t.Run("consume --timeout exits once idle", func(t *testing.T) {
		out := mustCLI(t, p, "", "consume", "orders", "kitchen", "--timeout", "500ms", "-o", "json")
		if n := len(jsonLines(t, out)); n != 2 {
			t.Fatalf("consume --timeout printed %d deliveries, want the 2 left:\n%s", n, out)
		}
		out = mustCLI(t, p, "", "consume", "orders", "kitchen", "--timeout", "300ms")
		if out != "" {
			t.Fatalf("nothing left, yet consume printed %q", out)
		}
	})
	t.Run("at-most-once never twice", func(t *testing.T) {
		first := jsonLines(t, mustCLI(t, p, "", "consume", "orders", "texts", "--max", "3", "-o", "json"))
		rest := jsonLines(t, mustCLI(t, p, "", "consume", "orders", "texts", "--timeout", "500ms", "-o", "json"))
		seen := map[string]bool{}
		for _, d := range append(first, rest...) {
			k := fmt.Sprint(d["partition"], "/", d["offset"])
			if seen[k] {
				t.Fatalf("delivered twice: %s", k)
			}
			seen[k] = true
		}
		if len(seen) != 6 {
			t.Fatalf("at-most-once without a crash delivered %d of 6", len(seen))
		}
	})
	t.Run("no-ack and nack leave messages for later", func(t *testing.T) {
		mustCLI(t, p, "", "sub", "create", "orders", "courier", "--guarantee", "at-least-once", "--start", "earliest", "--backoff-min", "100ms")
		if n := len(jsonLines(t, mustCLI(t, p, "", "consume", "orders", "courier", "--no-ack", "--timeout", "300ms", "-o", "json"))); n != 6 {
			t.Fatalf("--no-ack printed %d, want 6", n)
		}
		if n := len(jsonLines(t, mustCLI(t, p, "", "consume", "orders", "courier", "--nack", "--max", "6", "-o", "json"))); n != 6 {
			t.Fatalf("--nack printed %d, want 6 (redelivered after --no-ack)", n)
		}
		ds := jsonLines(t, mustCLI(t, p, "", "consume", "orders", "courier", "--max", "6", "-o", "json"))
		for _, d := range ds {
			if d["attempt"] != float64(3) {
				t.Fatalf("after no-ack and nack, attempt %v, want 3: %v", d["attempt"], d)
			}
		}
	})
	t.Run("seek and list", func(t *testing.T) {
		mustCLI(t, p, "", "sub", "seek", "orders", "courier", "--to", "earliest")
		if n := len(jsonLines(t, mustCLI(t, p, "", "consume", "orders", "courier", "--timeout", "300ms", "-o", "json"))); n != 6 {
			t.Fatalf("after seek to earliest consume printed %d, want 6", n)
		}
		if _, errOut, ok := ferryCLI(t, p, "", "sub", "seek", "orders", "courier", "--to", "offset:99"); ok || !strings.Contains(errOut, "OutOfRange") {
			t.Fatalf("seek out of range: ok=%v stderr %q", ok, errOut)
		}
		var names []string
		for _, s := range jsonLines(t, mustCLI(t, p, "", "sub", "list", "orders", "-o", "json")) {
			names = append(names, s["name"].(string))
		}
		if strings.Join(names, ",") != "courier,kitchen,texts" {
			t.Fatalf("sub list: %v", names)
		}
	})
	t.Run("bad input", func(t *testing.T) {
		for _, args := range [][]string{
			{"sub", "create", "orders", "x"},                               // no guarantee
			{"sub", "create", "orders", "x", "--guarantee", "twice"},       // bad guarantee
			{"sub", "create", "orders", "bad name", "--guarantee", "none"}, // bad name
			{"sub", "create", "nope", "x", "--guarantee", "at-least-once"}, // unknown topic
			{"sub", "create", "orders", "x", "--guarantee", "at-least-once", "--max-deliveries", "2", "--dead-letter-topic", "orders"},
			{"sub", "get", "orders", "nope"},
			{"consume", "orders", "nope", "--timeout", "100ms"},
			{"consume", "orders", "kitchen", "--credit", "0"},
			{"sub", "seek", "orders", "courier", "--to", "yesterday"},
			{"topic", "delete", "orders"}, // has subscriptions
		} {
			if _, errOut, ok := ferryCLI(t, p, "", args...); ok || errOut == "" {
				t.Errorf("ferry %s: ok=%v stderr %q; want a failure with a message", strings.Join(args, " "), ok, errOut)
			}
		}
	})
	mustCLI(t, p, "", "sub", "delete", "orders", "texts")
	mustCLI(t, p, "", "topic", "delete", "orders", "--force")
	if _, _, ok := ferryCLI(t, p, "", "sub", "get", "orders", "kitchen"); ok {
		t.Fatal("the force-deleted topic's subscription is still there")
	}
}
