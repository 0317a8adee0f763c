package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	ferryv1 "github.com/ferrymq/ferry/proto/ferry/v1"
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
	t.Run("workload file, flags over it, HTML report", func(t *testing.T) {
		dir := t.TempDir()
		workload := filepath.Join(dir, "workload.yaml")
		if err := os.WriteFile(workload, []byte(`name: omb
topics: 1
partitionsPerTopic: 2
messageSize: 256
payloadFile: "payload/payload-1Kb.data"
subscriptionsPerTopic: 2
consumerPerSubscription: 1
producersPerTopic: 1
producerRate: 1000
consumerBacklogSizeGB: 0
testDurationMinutes: 15
keyDistributor: "KEY_ROUND_ROBIN"
`), 0o600); err != nil {
			t.Fatal(err)
		}
		report := filepath.Join(dir, "report.html")
		out, err := exec.Command(buildFerry(t), "bench", "--workload", workload, "--duration", "1500ms", "--warmup", "100ms",
			"--message-size", "100", "--report", report, "-o", "json").Output()
		if err != nil {
			t.Fatalf("ferry bench --workload: %v", err)
		}
		check(t, out, true)
		var res benchResult
		_ = json.Unmarshal(out, &res)
		if res.MessageSize != 100 || res.Partitions != 2 || res.TargetRate != 1000 || len(res.Series) == 0 {
			t.Fatalf("workload or flags not applied (flag --message-size 100 over the file's 256): %+v", res)
		}
		// Two subscriptions each read every message.
		if res.Consumed < res.Published*3/2 {
			t.Fatalf("consumed %d for %d published over 2 subscriptions", res.Consumed, res.Published)
		}
		html, err := os.ReadFile(report)
		if err != nil || !strings.Contains(string(html), "latency by percentile") {
			t.Fatalf("report: %v, %d bytes", err, len(html))
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

// TestBenchBrokerGone runs ferry bench against a ferry serve and SIGKILLs
// the broker mid-bench, once messages were published and consumed: bench
// must exit 1 within --broker-timeout and a margin, saying the broker went
// away, instead of waiting for answers that will not come.
func TestBenchBrokerGone(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the real binary")
	}
	p := startFerry(t, t.TempDir())
	admin := ferryv1.NewAdminServiceClient(p.dial(t))
	bench := exec.Command(buildFerry(t), "bench", "--server", p.grpcAddr, "--duration", "5m", "--warmup", "0s",
		"--consumers", "1", "--rate", "1000", "--message-size", "128", "--broker-timeout", "2s")
	var stderr bytes.Buffer
	bench.Stdout, bench.Stderr = &stderr, &stderr
	if err := bench.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	var exitErr error
	go func() {
		exitErr = bench.Wait()
		close(exited)
	}()
	t.Cleanup(func() {
		_ = bench.Process.Kill()
		<-exited
	})
	waitFor(t, 30*time.Second, "bench topic with messages consumed", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		topics, err := admin.ListTopics(ctx, &ferryv1.ListTopicsRequest{})
		if err != nil || len(topics.GetTopics()) == 0 {
			return false
		}
		subs, err := admin.ListSubscriptions(ctx, &ferryv1.ListSubscriptionsRequest{Topic: topics.GetTopics()[0].GetName()})
		return err == nil && len(subs.GetStats()) == 1 && subs.GetStats()[0].GetAcked() > 0
	})
	p.kill(t)
	killed := time.Now()
	const limit = 2*time.Second + 10*time.Second // --broker-timeout, and a margin for a busy machine
	select {
	case <-exited:
		took := time.Since(killed)
		t.Logf("bench exited %v after the broker was killed: %v\n%s", took.Round(time.Millisecond), exitErr, stderr.String())
		if _, isExit := exitErr.(*exec.ExitError); !isExit {
			t.Errorf("bench exited with %v, want exit status 1", exitErr)
		}
		if !strings.Contains(stderr.String(), "went away") {
			t.Errorf("bench did not say the broker went away:\n%s", stderr.String())
		}
	case <-time.After(limit):
		t.Fatalf("bench still running %v after its broker was killed:\n%s", limit, stderr.String())
	}
}

// TestWorkloadFiles: every workload file in workloads/ applies and makes a
// valid run.
func TestWorkloadFiles(t *testing.T) {
	files, err := filepath.Glob("../../workloads/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no workload files: %v", err)
	}
	for _, f := range files {
		cmd := newBenchCommand()
		o := benchOptions{duration: time.Second, size: 8, producers: 1, partitions: 1, topics: 1, subscriptions: 1,
			guarantee: "at-least-once", fsync: "always", output: "text", brokerTimeout: 5 * time.Second}
		if err := applyWorkload(&o, f, cmd.Flags()); err != nil {
			t.Errorf("%s: %v", f, err)
			continue
		}
		if err := o.validate(); err != nil {
			t.Errorf("%s makes an invalid run: %v", f, err)
		}
	}
}
