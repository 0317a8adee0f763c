package main

import (
	"encoding/json"
	"os/exec"
	"strings"
	"testing"
)

// TestBenchCLI runs ferry bench in-process (no --server) and against a
// running broker, and checks what it reports adds up.
func TestBenchCLI(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the real binary")
	}
	check := func(t *testing.T, out []byte, consumers bool) {
		t.Helper()
		var res benchResult
		if err := json.Unmarshal(out, &res); err != nil {
			t.Fatalf("bench -o json printed %q: %v", out, err)
		}
		if res.Published == 0 || res.PublishedPerSec <= 0 || res.PublishErrors != 0 || res.PublishLatencyMs.P50 <= 0 ||
			res.PublishLatencyMs.Max < res.PublishLatencyMs.P99 {
			t.Fatalf("publish results do not add up: %+v", res)
		}
		if consumers && (res.Consumed == 0 || res.EndToEndMs.P50 <= 0) {
			t.Fatalf("consume results do not add up: %+v", res)
		}
	}
	t.Run("in-process", func(t *testing.T) {
		out, err := exec.Command(buildFerry(t), "bench", "--duration", "500ms", "--warmup", "200ms",
			"--consumers", "1", "--rate", "2000", "--message-size", "128", "-o", "json").Output()
		if err != nil {
			t.Fatalf("ferry bench: %v", err)
		}
		check(t, out, true)
	})
	t.Run("against a server", func(t *testing.T) {
		p := startFerry(t, t.TempDir())
		out, err := exec.Command(buildFerry(t), "bench", "--server", p.grpcAddr, "--duration", "500ms", "--warmup", "100ms",
			"--producers", "2", "--partitions", "2", "--keys", "10", "-o", "json").Output()
		if err != nil {
			t.Fatalf("ferry bench: %v", err)
		}
		check(t, out, false)
		if topics := mustCLI(t, p, "", "topic", "list"); strings.Contains(topics, "bench-") {
			t.Fatalf("bench left its topics behind:\n%s", topics)
		}
	})
	t.Run("bad flags", func(t *testing.T) {
		for _, args := range [][]string{
			{"bench", "--message-size", "4"},
			{"bench", "--guarantee", "twice"},
			{"bench", "--duration", "0s"},
			{"bench", "--fsync", "sometimes"},
		} {
			if err := exec.Command(buildFerry(t), args...).Run(); err == nil {
				t.Errorf("ferry %s succeeded", strings.Join(args, " "))
			}
		}
	})
}
