package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	ferryv1 "github.com/ferrymq/ferry/proto/ferry/v1"
)

// BenchmarkIdleCluster measures what partitions at rest cost: a cluster
// of three `ferry serve` processes with N partitions (topics of 100
// partitions, one Raft group each, plus the metadata group) is left idle
// once every node runs every group with a leader; then each node's CPU
// (utime+stime of /proc/PID/stat) over idleWindow and its RSS are read,
// and a publish to one partition of each topic, through node 1, measures
// how long a quiesced partition takes to wake and take it. Then every
// partition takes a publish with an id, and once they are at rest again
// the CPU and RSS are measured again ("-used": each partition now has a
// dedup index, which retention expires on the leader every 10 s). It
// reports the busiest node's CPU in percent of one core, the largest RSS,
// and the slowest publish; and, last, how long a partition at rest takes
// from a SIGKILL of its leader to an acknowledged publish.
//
//	go test -run '^$' -bench IdleCluster -benchtime 1x -timeout 30m ./cmd/ferry
//
// FERRY_IDLE_PARTITIONS=10000 sets the number of partitions;
// FERRY_IDLE_PROFILE=dir saves node 1's CPU profile over the window, its heap
// and its goroutines there.
//
//	FERRY_IDLE_PARTITIONS=10000 go test -run '^$' -bench IdleCluster -benchtime 1x -timeout 30m ./cmd/ferry
func BenchmarkIdleCluster(b *testing.B) {
	sizes := []int{1000}
	if s := os.Getenv("FERRY_IDLE_PARTITIONS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 100 || n%100 != 0 {
			b.Fatalf("FERRY_IDLE_PARTITIONS=%q: want a multiple of 100", s)
		}
		sizes = []int{n}
	}
	for _, parts := range sizes {
		b.Run(fmt.Sprintf("partitions=%d", parts), func(b *testing.B) {
			for b.Loop() {
				benchIdleCluster(b, parts)
			}
		})
	}
}

// idleWindow is how long the CPU of an idle node is measured.
const idleWindow = 10 * time.Second

func benchIdleCluster(b *testing.B, parts int) {
	c := newTestClusterWith(b, 3, clusterSetup{prepare: func(nd *clusterNode) {
		nd.args = append(nd.args, "--fsync", "never", "--pprof") // setup speed only: nothing is written at rest
	}})
	start := time.Now()
	topics := parts / 100
	for i := range topics {
		createClusterTopic(b, c.node(uint64(i%3+1)), fmt.Sprintf("idle%d", i), 100)
	}
	created := time.Since(start)
	for _, nd := range c.nodes {
		waitFor(b, 10*time.Minute, fmt.Sprintf("node %d runs %d groups with leaders", nd.id, parts+1), func() bool {
			st, err := nd.localStatus(context.Background())
			if err != nil || len(st.GetGroups()) != parts+1 {
				return false
			}
			for _, g := range st.GetGroups() {
				if g.GetLeader() == 0 {
					return false
				}
			}
			return true
		})
	}
	b.Logf("%d partitions created in %v, every group led after %v", parts, created.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
	time.Sleep(3 * time.Second) // the groups settle (the last commits reach the followers) before the window

	cpu, rss := measureIdle(b, c, parts, "new")

	var slowest time.Duration
	pub := c.node(1).publisher()
	for i := range topics {
		part := uint32(i % 100)
		t := time.Now()
		publishOne(b, pub, fmt.Sprintf("idle%d", i), part)
		slowest = max(slowest, time.Since(t))
	}
	b.Logf("a publish to a partition at rest (one per topic) took at most %v", slowest)

	// Every partition takes a publish with an id, through every node; then
	// the partitions are at rest again, with a dedup index in memory.
	var wg sync.WaitGroup
	for w := range 8 {
		pub := c.node(uint64(w%3 + 1)).publisher()
		wg.Go(func() {
			for i := w; i < parts; i += 8 {
				publishOne(b, pub, fmt.Sprintf("idle%d", i/100), uint32(i%100))
			}
		})
	}
	wg.Wait()
	time.Sleep(3 * time.Second)
	cpuUsed, rssUsed := measureIdle(b, c, parts, "used")
	failover := idleFailover(b, c, "idle0", 50)

	b.ReportMetric(cpu, "cpu%/node")
	b.ReportMetric(rss, "MiB-rss/node")
	b.ReportMetric(cpuUsed, "cpu%/node-used")
	b.ReportMetric(rssUsed, "MiB-rss/node-used")
	b.ReportMetric(float64(slowest.Milliseconds()), "ms-wake-publish")
	b.ReportMetric(float64(failover.Milliseconds()), "ms-idle-failover")
}

// idleFailover SIGKILLs the leader of topic's partition part, at rest, and
// returns how long until a publish to it through another node is
// acknowledged: its quiesced followers must find the leader's node down
// (no beat for an election timeout) and elect.
func idleFailover(b *testing.B, c *testCluster, topic string, part uint32) time.Duration {
	ns, err := c.node(1).localStatus(context.Background())
	if err != nil {
		b.Fatal(err)
	}
	var leader uint64
	for _, g := range ns.GetGroups() {
		if g.GetTopic() == topic && g.GetPartition() == part {
			leader = g.GetLeader()
		}
	}
	if leader == 0 {
		b.Fatalf("%s/%d has no leader", topic, part)
	}
	via := c.others(leader)[0]
	pub := via.publisher()
	c.node(leader).process().kill(b)
	killed := time.Now()
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, err := pub.Publish(ctx, &ferryv1.PublishRequest{Topic: topic,
			Messages: []*ferryv1.PublishMessage{{Id: "after-kill", Payload: []byte("x"), Partition: &part}}})
		cancel()
		if err == nil {
			break
		}
		if time.Since(killed) > time.Minute {
			b.Fatalf("no publish to %s/%d acknowledged within a minute of killing its leader: %v", topic, part, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	took := time.Since(killed)
	b.Logf("SIGKILL of node %d, leader of %s/%d at rest: a publish through node %d acknowledged after %v", leader, topic, part, via.id, took.Round(time.Millisecond))
	return took
}

// measureIdle measures each node's CPU over idleWindow (node 1's profile
// saved meanwhile if FERRY_IDLE_PROFILE names a dir) and its RSS, logs
// them, and returns the largest of each.
func measureIdle(b *testing.B, c *testCluster, parts int, label string) (maxCPU, maxRSS float64) {
	before := make([]float64, len(c.nodes))
	for i, nd := range c.nodes {
		before[i] = cpuSeconds(b, nd.process().cmd.Process.Pid)
	}
	t0 := time.Now()
	if dir := os.Getenv("FERRY_IDLE_PROFILE"); dir != "" {
		addr := c.node(1).process().httpAddr
		saveProfile(b, addr, fmt.Sprintf("profile?seconds=%d", int(idleWindow.Seconds())), filepath.Join(dir, fmt.Sprintf("ferry-idle-%d-%s.pprof", parts, label)))
		saveProfile(b, addr, "heap?debug=1", filepath.Join(dir, fmt.Sprintf("ferry-idle-%d-%s.heap", parts, label)))
		saveProfile(b, addr, "goroutine?debug=1", filepath.Join(dir, fmt.Sprintf("ferry-idle-%d-%s.goroutines", parts, label)))
	} else {
		time.Sleep(idleWindow)
	}
	elapsed := time.Since(t0).Seconds()
	for i, nd := range c.nodes {
		pid := nd.process().cmd.Process.Pid
		cpu := 100 * (cpuSeconds(b, pid) - before[i]) / elapsed
		rss := procMemory(b, pid)["VmRSS"]
		b.Logf("%s: node %d idle with %d partitions: %.1f%% of a core, RSS %.0f MiB", label, nd.id, parts, cpu, rss)
		maxCPU, maxRSS = max(maxCPU, cpu), max(maxRSS, rss)
	}
	return maxCPU, maxRSS
}

// publishOne publishes one message with an id to topic's partition part.
func publishOne(tb testing.TB, pub ferryv1.PublisherServiceClient, topic string, part uint32) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := pub.Publish(ctx, &ferryv1.PublishRequest{Topic: topic,
		Messages: []*ferryv1.PublishMessage{{Id: "wake", Payload: []byte("x"), Partition: &part}}})
	if err != nil {
		tb.Errorf("publish to %s/%d: %v", topic, part, err)
	}
}

// cpuSeconds is a process's user and system CPU time so far, in seconds
// (/proc/PID/stat fields 14 and 15, in clock ticks of 1/100 s).
func cpuSeconds(tb testing.TB, pid int) float64 {
	tb.Helper()
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		tb.Fatal(err)
	}
	s := string(raw)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:]) // the command name may hold spaces
	utime, err1 := strconv.ParseFloat(f[11], 64)
	stime, err2 := strconv.ParseFloat(f[12], 64)
	if err1 != nil || err2 != nil {
		tb.Fatalf("parse /proc/%d/stat: %q", pid, s)
	}
	return (utime + stime) / 100
}

// saveProfile fetches /debug/pprof/<what> from the node serving HTTP at
// addr and writes it to path.
func saveProfile(tb testing.TB, addr, what, path string) {
	tb.Helper()
	resp, err := http.Get(fmt.Sprintf("http://%s/debug/pprof/%s", addr, what))
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	f, err := os.Create(path)
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	if _, err := io.Copy(f, resp.Body); err != nil {
		tb.Fatal(err)
	}
	tb.Logf("node 1's %s: %s", what, path)
}
