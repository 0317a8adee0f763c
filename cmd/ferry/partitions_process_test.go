package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"testing"
	"time"

	ferryv1 "github.com/ferrymq/ferry/proto/ferry/v1"
	"github.com/ferrymq/ferry/storage"
)

// TestServeManyPartitionsInCgroup starts `ferry serve` on a data dir of
// 100 topics of 1,000 partitions (100,000 partitions) inside a memory cgroup
// of 512 MiB, and checks that it is serving within 10 s, is not OOM-killed,
// and takes a publish to the last partition of every topic. It needs root
// and a cgroup memory controller; elsewhere it skips, unless
// FERRY_REQUIRE_CGROUP=1 makes that a failure.
func TestServeManyPartitionsInCgroup(t *testing.T) {
	const topics, parts = 100, 1000
	const limit = 512 << 20
	cg := newMemCgroup(t, limit)
	buildFerry(t) // before the clock starts
	dir := t.TempDir()
	made := time.Now()
	makePartitions(t, dir, topics, parts)
	t.Logf("made %d partitions in %v", topics*parts, time.Since(made).Round(time.Millisecond))

	start := time.Now()
	p := startFerryUnder(t, cg.wrap(), dir)
	waitServing(t, p)
	took := time.Since(start)
	t.Logf("serving %d partitions after %v; cgroup peak %d MiB of %d", topics*parts, took.Round(time.Millisecond),
		cg.peak()>>20, limit>>20)
	if took > 10*time.Second {
		t.Errorf("serving after %v, want within 10s", took)
	}

	pub := ferryv1.NewPublisherServiceClient(p.dial(t))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	last := uint32(parts - 1)
	for i := range topics {
		resp, err := pub.Publish(ctx, &ferryv1.PublishRequest{Topic: fmt.Sprintf("t%d", i),
			Messages: []*ferryv1.PublishMessage{{Id: "m", Payload: []byte("x"), Partition: &last}}})
		if err != nil {
			t.Fatalf("publish to t%d/%d: %v", i, last, err)
		}
		if r := resp.GetResults()[0]; r.GetOffset() != 0 || r.GetDuplicate() {
			t.Fatalf("publish to t%d/%d: %v, want offset 0, not a duplicate", i, last, r)
		}
	}
	if kills := cg.oomKills(); kills != 0 {
		t.Fatalf("%d OOM kills in the cgroup", kills)
	}
	select {
	case <-p.exited:
		t.Fatalf("ferry serve exited: %v", p.exitErr())
	default:
	}
	t.Logf("after a publish to each topic: cgroup peak %d MiB", cg.peak()>>20)
}

// makePartitions creates topics t0… of parts partitions each in dir.
func makePartitions(tb testing.TB, dir string, topics, parts int) {
	tb.Helper()
	opts := storage.DefaultOptions(dir)
	opts.Fsync = storage.FsyncNever
	opts.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	st, err := storage.Open(opts)
	if err != nil {
		tb.Fatal(err)
	}
	ctx := context.Background()
	for i := range topics {
		if _, err := st.CreateTopic(ctx, fmt.Sprintf("t%d", i), storage.TopicConfig{Partitions: uint32(parts)}); err != nil {
			tb.Fatal(err)
		}
	}
	if err := st.Close(ctx); err != nil {
		tb.Fatal(err)
	}
}
