package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	ferryv1 "github.com/ferrymq/ferry/proto/ferry/v1"
	"github.com/ferrymq/ferry/storage"
)

// TestServeManyPartitionsInCgroup starts `ferry serve` on a data dir of
// 100 topics of 1,000 partitions (100,000 partitions) inside a memory cgroup
// of 512 MiB, and checks that it is serving within 10 s, is not OOM-killed,
// and takes a publish to the last partition of every topic. It needs root
// and cgroup v1's memory controller; elsewhere it skips, unless
// FERRY_REQUIRE_CGROUP=1 makes that a failure.
func TestServeManyPartitionsInCgroup(t *testing.T) {
	const topics, parts = 100, 1000
	const limit = 512 << 20
	cg := memoryCgroup(t, limit)
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
		cg.read(t, "memory.max_usage_in_bytes")>>20, limit>>20)
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
	if kills := cg.oomKills(t); kills != 0 {
		t.Fatalf("%d OOM kills in the cgroup", kills)
	}
	select {
	case <-p.exited:
		t.Fatalf("ferry serve exited: %v", p.exitErr)
	default:
	}
	t.Logf("after a publish to each topic: cgroup peak %d MiB", cg.read(t, "memory.max_usage_in_bytes")>>20)
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

// cgroup is a cgroup v1 memory cgroup made for one test.
type cgroup struct{ dir string }

// memoryCgroup makes a memory cgroup limited to limit bytes, removed when
// the test ends (after the processes started in it, which are cleaned up
// first). It skips the test where there is none to make, unless
// FERRY_REQUIRE_CGROUP=1.
func memoryCgroup(tb testing.TB, limit int64) *cgroup {
	tb.Helper()
	root := "/sys/fs/cgroup/memory"
	miss := func(why string, err error) {
		if os.Getenv("FERRY_REQUIRE_CGROUP") == "1" {
			tb.Fatalf("%s: %v (FERRY_REQUIRE_CGROUP=1)", why, err)
		}
		tb.Skipf("no cgroup v1 memory controller to use (%s: %v); FERRY_REQUIRE_CGROUP=1 makes this a failure", why, err)
	}
	if _, err := os.Stat(filepath.Join(root, "memory.limit_in_bytes")); err != nil {
		miss("cgroup v1 memory controller", err)
	}
	cg := &cgroup{dir: filepath.Join(root, fmt.Sprintf("ferry-test-%d-%d", os.Getpid(), time.Now().UnixNano()))}
	if err := os.Mkdir(cg.dir, 0o755); err != nil {
		miss("make a cgroup", err)
	}
	tb.Cleanup(func() {
		// The processes in it are killed by cleanups registered later,
		// which run first; the kernel may take a moment to let go.
		deadline := time.Now().Add(10 * time.Second)
		for err := os.Remove(cg.dir); err != nil; err = os.Remove(cg.dir) {
			if time.Now().After(deadline) {
				tb.Errorf("remove cgroup %s: %v", cg.dir, err)
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
	})
	for _, f := range []string{"memory.limit_in_bytes", "memory.memsw.limit_in_bytes"} {
		if err := os.WriteFile(filepath.Join(cg.dir, f), []byte(strconv.FormatInt(limit, 10)), 0o644); err != nil && f == "memory.limit_in_bytes" {
			tb.Fatalf("set %s: %v", f, err)
		}
	}
	return cg
}

// wrap is a command line that moves itself into the cgroup, then execs its
// arguments: everything the process allocates is charged to the cgroup.
func (cg *cgroup) wrap() []string {
	return []string{"sh", "-c", `echo $$ > "$0/cgroup.procs" && exec "$@"`, cg.dir}
}

// read returns a number from one of the cgroup's files.
func (cg *cgroup) read(tb testing.TB, file string) int64 {
	tb.Helper()
	b, err := os.ReadFile(filepath.Join(cg.dir, file))
	if err != nil {
		tb.Fatal(err)
	}
	n, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		tb.Fatalf("%s: %v", file, err)
	}
	return n
}

// oomKills returns the oom_kill count of memory.oom_control.
func (cg *cgroup) oomKills(tb testing.TB) int64 {
	tb.Helper()
	b, err := os.ReadFile(filepath.Join(cg.dir, "memory.oom_control"))
	if err != nil {
		tb.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "oom_kill "); ok {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				tb.Fatalf("memory.oom_control: %q: %v", line, err)
			}
			return n
		}
	}
	tb.Fatalf("memory.oom_control has no oom_kill line:\n%s", b)
	return 0
}
