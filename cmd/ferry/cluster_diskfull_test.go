package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	ferryv1 "github.com/ferrymq/ferry/proto/ferry/v1"
)

// TestClusterNodeDiskFull runs a three-node cluster whose nodes keep their
// data on 1 GiB tmpfs mounts with a 256 MiB reserve, and fills the node
// that leads partition 0 of a two-partition topic to 96 MiB free, below
// half its reserve. It must hand partition 0 to another node, and the
// cluster must go on acknowledging publishes to both partitions through
// the other two — 96 MiB of them, which with their raft log entries the
// full node has no room for. The full node stays up, takes none of them
// (its logs do not grow) and says in /readyz and /metrics that it refuses
// raft appends. Once the filler is removed it catches up and holds every
// acknowledged message at its offset, as the others do. Without the
// refusal it takes the appends until its disk is full and dies of SIGBUS.
// It takes ~25 s: the data goes through the cluster twice (publishes, then
// the catch-up).
func TestClusterNodeDiskFull(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a cluster of real brokers")
	}
	mounts := map[uint64]string{}
	c := newTestClusterWith(t, 3, clusterSetup{prepare: func(nd *clusterNode) {
		mounts[nd.id] = mountTmpfs(t, 1<<30)
		nd.dir = filepath.Join(mounts[nd.id], "data")
		nd.args = []string{"--disk-reserve", diskReserve}
	}})
	const topic, parts = "orders", 2
	createClusterTopic(t, c.nodes[0], topic, parts)
	victim := c.node(waitLeader(t, c.nodes, topic, 0, 10*time.Second))
	live := c.others(victim.id)
	t.Logf("filling node %d, leader of %s/0 (leader of %s/1: node %d)", victim.id, topic, topic, waitLeader(t, c.nodes, topic, 1, 10*time.Second))

	type place struct {
		part uint32
		off  uint64
	}
	acks := map[string]place{}
	rng := rand.New(rand.NewPCG(5, 5))
	publishN := func(prefix string, batches, size int) {
		for b := range batches {
			part := uint32(b % parts)
			msgs := make([]*ferryv1.PublishMessage, 8)
			for i := range msgs {
				payload := make([]byte, size)
				for j := range payload {
					payload[j] = byte(rng.Uint32())
				}
				msgs[i] = &ferryv1.PublishMessage{Id: fmt.Sprintf("%s-%04d-%d", prefix, b, i), Payload: payload, Partition: &part}
			}
			for i, off := range publishThrough(t, live, topic, msgs) {
				acks[msgs[i].GetId()] = place{part, off}
			}
		}
	}
	publishN("before", 6, 1<<10)
	waitConverged(t, c.nodes, topic, 20*time.Second)

	mnt := mounts[victim.id]
	filler := fillDisk(t, mnt)
	shrinkToFree(t, filler, mnt, 96<<20) // below half the 256 MiB reserve
	t.Logf("node %d filled: %s", victim.id, diskUse(t, mnt))
	waitFor(t, 10*time.Second, "/readyz saying raft appends are refused", func() bool {
		return strings.Contains(readyzBody(t, victim), "raft appends refused")
	})
	handedTo := waitLeader(t, live, topic, 0, 10*time.Second)
	t.Logf("node %d handed %s/0 to node %d", victim.id, topic, handedTo)
	start := time.Now()
	publishN("during", 192, 64<<10) // 96 MiB
	t.Logf("%d messages (96 MiB) acknowledged through nodes %v in %v with node %d full; %s",
		192*8, nodeIDs(live), time.Since(start).Round(time.Millisecond), victim.id, diskUse(t, mnt))

	select {
	case <-victim.process().exited:
		t.Fatalf("node %d died on its full disk: %v (log %s)", victim.id, victim.process().exitErr(), victim.logPath)
	default:
	}
	hs, err := heads(context.Background(), victim, topic)
	if err != nil {
		t.Fatal(err)
	}
	for part, h := range hs {
		if h > 24 {
			t.Errorf("node %d's log of %s/%d grew to %d messages on a disk below half its reserve (24 before)", victim.id, topic, part, h)
		}
	}
	metrics := metricsBody(t, victim)
	if !strings.Contains(metrics, "ferry_raft_appends_refused 1") || strings.Contains(metrics, "ferry_raft_refused_appends_total 0\n") {
		t.Errorf("node %d's /metrics does not say it refuses appends:\n%s", victim.id, grepLines(metrics, "ferry_raft_"))
	}

	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	logs := waitConverged(t, c.nodes, topic, 60*time.Second)
	t.Logf("node %d caught up %v after its filler was removed", victim.id, time.Since(start).Round(time.Millisecond))
	if n := len(logs[0]) + len(logs[1]); n != len(acks) {
		t.Errorf("the partitions hold %d messages, want the %d acknowledged", n, len(acks))
	}
	for id, at := range acks {
		if log := logs[at.part]; at.off >= uint64(len(log)) || log[at.off].GetId() != id {
			t.Errorf("acknowledged %s at %s/%d offset %d is not there", id, topic, at.part, at.off)
		}
	}
	if strings.Contains(readyzBody(t, victim), "raft appends refused") {
		t.Errorf("node %d still says it refuses appends after space came back", victim.id)
	}
}

// publishThrough publishes msgs (with ids, to one partition) through the
// nodes in turn until one acknowledges them, and returns their offsets.
func publishThrough(t *testing.T, nodes []*clusterNode, topic string, msgs []*ferryv1.PublishMessage) []uint64 {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for i := 0; ; i++ {
		nd := nodes[i%len(nodes)]
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		resp, err := nd.publisher().Publish(ctx, &ferryv1.PublishRequest{Topic: topic, Messages: msgs})
		cancel()
		if err == nil {
			offs := make([]uint64, len(msgs))
			for j, r := range resp.GetResults() {
				offs[j] = r.GetOffset()
			}
			return offs
		}
		if c := status.Code(err); c != codes.Unavailable && c != codes.DeadlineExceeded || time.Now().After(deadline) {
			t.Fatalf("publish %s… through node %d: %v", msgs[0].GetId(), nd.id, err)
		}
	}
}

func readyzBody(t *testing.T, nd *clusterNode) string {
	t.Helper()
	_, body := httpGetBody(t, "http://"+nd.process().httpAddr+"/readyz")
	return body
}

func metricsBody(t *testing.T, nd *clusterNode) string {
	t.Helper()
	_, body := httpGetBody(t, "http://"+nd.process().httpAddr+"/metrics")
	return body
}

// grepLines returns the lines of s that contain sub.
func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
