package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// memCgroup is a memory cgroup a test made (v1, or v2 where v1 is absent).
type memCgroup struct {
	dir string
	v2  bool
}

// newMemCgroup makes a memory cgroup limited to limit bytes, removed at the
// end of the test. Without cgroups (or the right to make one) the test is
// skipped, or fails when FERRY_REQUIRE_CGROUP=1.
func newMemCgroup(t *testing.T, limit int64) *memCgroup {
	t.Helper()
	unavailable := func(why string, args ...any) {
		t.Helper()
		msg := fmt.Sprintf(why, args...)
		if os.Getenv("FERRY_REQUIRE_CGROUP") == "1" {
			t.Fatalf("FERRY_REQUIRE_CGROUP=1 and %s", msg)
		}
		t.Skipf("%s (FERRY_REQUIRE_CGROUP=1 makes this a failure)", msg)
	}
	name := fmt.Sprintf("ferry-test-%d-%d", os.Getpid(), time.Now().UnixNano()%1e6)
	cg := &memCgroup{}
	limitFile := "memory.limit_in_bytes"
	switch {
	case fileExists("/sys/fs/cgroup/memory/memory.limit_in_bytes"):
		cg.dir = filepath.Join("/sys/fs/cgroup/memory", name)
	case strings.Contains(readString("/sys/fs/cgroup/cgroup.subtree_control"), "memory"):
		cg.dir, cg.v2, limitFile = filepath.Join("/sys/fs/cgroup", name), true, "memory.max"
	default:
		unavailable("no cgroup memory controller (v1 /sys/fs/cgroup/memory or v2 with memory in cgroup.subtree_control)")
	}
	if err := os.Mkdir(cg.dir, 0o755); err != nil {
		unavailable("cannot make a cgroup: %v", err)
	}
	t.Cleanup(func() {
		// The processes are gone by now (startFerry's cleanup ran
		// first); the kernel may take a moment to let the cgroup go.
		deadline := time.Now().Add(10 * time.Second)
		for {
			err := os.Remove(cg.dir)
			if err == nil || errors.Is(err, os.ErrNotExist) {
				return
			}
			if time.Now().After(deadline) {
				t.Errorf("remove cgroup %s: %v", cg.dir, err)
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
	})
	if err := os.WriteFile(filepath.Join(cg.dir, limitFile), []byte(strconv.FormatInt(limit, 10)), 0o644); err != nil {
		t.Fatalf("set the cgroup's limit: %v", err)
	}
	if cg.v2 {
		_ = os.WriteFile(filepath.Join(cg.dir, "memory.swap.max"), []byte("0"), 0o644)
	}
	return cg
}

// wrap is a command line that moves itself into the cgroup, then execs its
// arguments: everything the process allocates is charged to the cgroup
// from its first instruction.
func (cg *memCgroup) wrap() []string {
	return []string{"sh", "-c", `echo $$ > "$0/cgroup.procs" && exec "$@"`, cg.dir}
}

// oomKills is how many processes the kernel killed in the cgroup for
// want of memory.
func (cg *memCgroup) oomKills() int64 {
	file := "memory.oom_control"
	if cg.v2 {
		file = "memory.events"
	}
	for _, line := range strings.Split(readString(filepath.Join(cg.dir, file)), "\n") {
		if f := strings.Fields(line); len(f) == 2 && f[0] == "oom_kill" {
			n, _ := strconv.ParseInt(f[1], 10, 64)
			return n
		}
	}
	return 0
}

// peak is the cgroup's peak memory use, in bytes, where the kernel says.
func (cg *memCgroup) peak() int64 {
	file := "memory.max_usage_in_bytes"
	if cg.v2 {
		file = "memory.peak"
	}
	n, _ := strconv.ParseInt(strings.TrimSpace(readString(filepath.Join(cg.dir, file))), 10, 64)
	return n
}

func fileExists(path string) bool { _, err := os.Stat(path); return err == nil }

func readString(path string) string {
	b, _ := os.ReadFile(path)
	return string(b)
}
