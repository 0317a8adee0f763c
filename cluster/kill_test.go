package cluster

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.etcd.io/raft/v3/raftpb"

	"github.com/ferrymq/ferry/internal/clock"
	"github.com/ferrymq/ferry/storage"

	"github.com/ferrymq/ferry/internal/ferrytest"
)

// The SIGKILL test's nodes snapshot every killSnapshotEntries entries,
// keeping killKeepEntries, so the killed node falls behind the leader's
// compacted log while it is down.
const (
	killSnapshotEntries = 100
	killKeepEntries     = 20
)

// TestLeaderKilled is the durability claim with a real process: node 1
// runs in a child process (this test binary again), leads group 1 and
// proposes from four goroutines, printing each entry whose Propose
// returned; the parent, running nodes 2 and 3, SIGKILLs it at a random
// moment. Nodes 2 and 3 must elect a leader within a few election
// timeouts and hold every acknowledged entry at its index. While node 1
// is down the new leader compacts its log past node 1's; restarted (from
// its own log, with an empty state machine), node 1 catches up from a
// snapshot and converges.
func TestLeaderKilled(t *testing.T) {
	if testing.Short() {
		t.Skip("runs and kills a child process")
	}
	seed := uint64(time.Now().UnixNano())
	if v := os.Getenv("FERRY_KILL_SEED"); v != "" {
		seed, _ = strconv.ParseUint(v, 10, 64)
	}
	rng := rand.New(rand.NewPCG(seed, 9))
	t.Logf("seed %d (FERRY_KILL_SEED replays the kill point)", seed)

	c := newTestCluster(t, 3, func(o *Options) {
		o.SnapshotEntries = killSnapshotEntries
		o.SnapshotKeepEntries = killKeepEntries
	})
	c.stop(1) // node 1 runs in the child
	c.addGroup(1)
	ch := startChild(t, c, true)
	// Hand the leadership to node 1. A transfer fails if node 1 is not
	// caught up within an election timeout (its links may still be
	// connecting): try again.
	eventually(t, waitLong, "node 1 leads", func() bool {
		l := c.group(2, 1).Leader()
		if l == 0 || l != c.group(3, 1).Leader() {
			return false
		}
		if l == 1 {
			return true
		}
		ctx, cancel := context.WithTimeout(context.Background(), waitLong)
		defer cancel()
		err := c.group(l, 1).TransferLeadership(ctx, 1)
		if err != nil && !errors.Is(err, ErrTransferFailed) && !errors.Is(err, ErrNotLeader) {
			t.Fatalf("hand the leadership to node 1: %v", err)
		}
		return false
	})

	killAt := 100 + rng.IntN(300)
	var acked []testEntry
	for len(acked) < killAt {
		line := ch.line(t)
		rest, ok := strings.CutPrefix(line, "acked ")
		if !ok {
			continue
		}
		idx, data, _ := strings.Cut(rest, " ")
		index, err := strconv.ParseUint(idx, 10, 64)
		if err != nil {
			t.Fatalf("child said %q", line)
		}
		acked = append(acked, testEntry{index: index, data: data})
	}
	ch.kill(t)
	killed := c.clk.Now()
	t.Logf("SIGKILL after %d acknowledged proposals, the last at index %d", len(acked), acked[len(acked)-1].index)

	leader := c.waitLeader(1, 2, 3)
	took := c.clk.Now().Sub(killed)
	t.Logf("node %d leads after %v of fake time (%d ticks)", leader, took, took/testTick)
	if limit := 5 * 10 * testTick; took > limit {
		t.Fatalf("a new leader took %v, more than %v", took, limit)
	}
	last := c.propose(1, "after-kill")
	for _, id := range []uint64{2, 3} {
		sm := c.nodes[id].sms[1]
		sm.waitApplied(t, last)
		_, applied := sm.snapshot()
		checkHas(t, id, applied, acked)
	}

	acked = append(acked, proposeN(c, 1, "while-down", 3*killSnapshotEntries)...)
	st := c.group(leader, 1).Status()
	t.Logf("leader %d: snapshot at %d, log %d to %d", leader, st.SnapshotIndex, st.FirstIndex, st.LastIndex)

	ch = startChild(t, c, false)
	last = c.propose(1, "after-restart")
	c.nodes[leader].sms[1].waitApplied(t, last)
	_, want := c.nodes[leader].sms[1].snapshot()
	checkHas(t, leader, want, acked)
	restored := false
	for {
		line := ch.line(t)
		if strings.HasPrefix(line, "restored ") {
			restored = true
		}
		var index, hash uint64
		var n int
		if _, err := fmt.Sscanf(line, "applied %d %d %d", &index, &n, &hash); err != nil || index < last {
			continue
		}
		if wantHash := entriesHash(want); n != len(want) || hash != wantHash {
			t.Fatalf("restarted node 1 applied %d entries up to %d, hash %x; the leader %d, hash %x", n, index, hash, len(want), wantHash)
		}
		break
	}
	if !restored {
		t.Fatal("node 1 caught up without a snapshot; the leader's log was compacted past it")
	}
	ch.kill(t)
}

// entriesHash is the FNV-1a hash of the entries' indexes and data.
func entriesHash(ents []testEntry) uint64 {
	h := fnv.New64a()
	for _, e := range ents {
		fmt.Fprintf(h, "%d %s\n", e.index, e.data)
	}
	return h.Sum64()
}

// child is node 1 running in a child process.
type child struct {
	cmd   *exec.Cmd
	lines chan string
}

// startChild starts node 1 over its data dir and points the links to
// node 1 at it. With lead, it proposes once it leads.
func startChild(t *testing.T, c *testCluster, lead bool) *child {
	t.Helper()
	var peers []string
	for _, id := range []uint64{2, 3} {
		peers = append(peers, fmt.Sprintf("%d=%s", id, c.links[[2]uint64{1, id}].addr()))
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestClusterChild$", "-test.v")
	cmd.Env = append(os.Environ(),
		"FERRY_CLUSTER_CHILD_DIR="+c.nodes[1].dir,
		"FERRY_CLUSTER_CHILD_PEERS="+strings.Join(peers, ","),
		fmt.Sprintf("FERRY_CLUSTER_CHILD_LEAD=%t", lead))
	cmd.Stderr = ferrytest.Writer{TB: t}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ch := &child{cmd: cmd, lines: make(chan string, 1024)}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			ch.lines <- sc.Text()
		}
		close(ch.lines)
	}()
	t.Cleanup(func() { ch.kill(t) })
	for {
		if addr, ok := strings.CutPrefix(ch.line(t), "addr "); ok {
			for _, id := range []uint64{2, 3} {
				c.links[[2]uint64{id, 1}].setTarget(addr)
			}
			return ch
		}
	}
}

// line returns the child's next line of output.
func (ch *child) line(t *testing.T) string {
	t.Helper()
	select {
	case l, ok := <-ch.lines:
		if !ok {
			t.Fatal("the child exited")
		}
		return l
	case <-time.After(waitLong):
		t.Fatalf("the child said nothing for %v", waitLong)
	}
	return ""
}

// kill SIGKILLs the child, if it runs.
func (ch *child) kill(t *testing.T) {
	if ch.cmd.ProcessState != nil {
		return
	}
	if err := ch.cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		t.Error(err)
	}
	_ = ch.cmd.Wait()
	for range ch.lines { // let the reader finish
	}
}

// TestClusterChild is TestLeaderKilled's child: node 1 of group 1. It
// prints "addr A" once it listens, "acked I D" for each proposal applied
// (with FERRY_CLUSTER_CHILD_LEAD=true, once it leads), "restored I" for
// each snapshot restored and "applied I N H" after each apply: the last
// index, the number of entries and entriesHash of them.
func TestClusterChild(t *testing.T) {
	dir := os.Getenv("FERRY_CLUSTER_CHILD_DIR")
	if dir == "" {
		t.Skip("the child process of TestLeaderKilled")
	}
	peers := make(map[uint64]string)
	for kv := range strings.SplitSeq(os.Getenv("FERRY_CLUSTER_CHILD_PEERS"), ",") {
		id, addr, _ := strings.Cut(kv, "=")
		n, err := strconv.ParseUint(id, 10, 64)
		if err != nil {
			t.Fatal(err)
		}
		peers[n] = addr
	}
	var outMu sync.Mutex
	say := func(format string, v ...any) {
		outMu.Lock()
		defer outMu.Unlock()
		fmt.Printf(format+"\n", v...)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})).With("child", 1)

	clk := clock.NewFake(t0)
	go func() {
		for range time.Tick(tickPace) {
			clk.Advance(testTick)
		}
	}()
	sopts := storage.DefaultOptions(dir) // fsync always
	sopts.Clock = clk
	sopts.Logger = log
	sopts.MemTableBytes = storage.MinMemTableBytes
	st, err := storage.Open(sopts)
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	opts := DefaultOptions(1, peers, st)
	opts.Listener = lis
	opts.Clock = clk
	opts.Logger = log
	opts.TickInterval = testTick
	opts.SnapshotEntries = killSnapshotEntries
	opts.SnapshotKeepEntries = killKeepEntries
	h, err := OpenHost(opts)
	if err != nil {
		t.Fatal(err)
	}
	say("addr %s", h.Addr())

	sm := newTestSM()
	sm.onApply = func([]testEntry) { // under sm.mu
		say("applied %d %d %d", sm.applied, len(sm.entries), entriesHash(sm.entries))
	}
	g, err := h.AddGroup(1, []uint64{1, 2, 3}, &reportingSM{testSM: sm, say: say})
	if err != nil {
		t.Fatal(err)
	}
	if os.Getenv("FERRY_CLUSTER_CHILD_LEAD") != "true" {
		select {} // follow until killed
	}
	for g.Leader() != 1 {
		time.Sleep(tickPace)
	}
	for w := range 4 {
		go func() {
			for i := 0; ; i++ {
				data := fmt.Sprintf("w%d-%d", w, i)
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				index, err := g.Propose(ctx, []byte(data))
				cancel()
				if err == nil {
					say("acked %d %s", index, data)
				} else {
					time.Sleep(tickPace)
				}
			}
		}()
	}
	select {} // until killed
}

// reportingSM says when it restores a snapshot.
type reportingSM struct {
	*testSM
	say func(format string, v ...any)
}

func (s *reportingSM) Restore(snap *raftpb.Snapshot) error {
	if err := s.testSM.Restore(snap); err != nil {
		return err
	}
	if i := snap.GetMetadata().GetIndex(); i > 1 {
		s.say("restored %d", i)
	}
	s.testSM.mu.Lock()
	defer s.testSM.mu.Unlock()
	s.say("applied %d %d %d", s.applied, len(s.entries), entriesHash(s.entries))
	return nil
}
