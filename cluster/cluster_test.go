package cluster

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"go.etcd.io/raft/v3/raftpb"

	"github.com/ferrymq/ferry/internal/clock"
	"github.com/ferrymq/ferry/storage"
)

// The test harness: hosts on loopback gRPC, each over its own Badger store
// in a temp dir, every link between two nodes through a TCP proxy the test
// can cut, and one fake clock for all of them. The clock is the only fake:
// a driver goroutine advances it one tick per tickPace of real time, so an
// election timeout (10 to 20 ticks) takes 200 to 400ms on an idle machine,
// and never faster than the groups' loops take the ticks (drive).

// t0 is where the fake clocks start.
var t0 = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

const (
	testTick = 100 * time.Millisecond // Options.TickInterval, in fake time
	tickPace = 20 * time.Millisecond  // real time per fake tick
)

// testSM is an in-memory state machine that records what it applied.
type testSM struct {
	mu       sync.Mutex // guards the fields below
	applied  uint64
	entries  []testEntry
	restores []uint64      // indexes of the snapshots restored, the bootstrap's (1) left out
	changed  chan struct{} // closed and replaced on every change
	onApply  func(ents []testEntry)
}

type testEntry struct {
	index uint64
	data  string
}

func newTestSM() *testSM { return &testSM{changed: make(chan struct{})} }

func (s *testSM) Apply(ents []*raftpb.Entry) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	added := make([]testEntry, 0, len(ents))
	for _, e := range ents {
		if e.GetIndex() <= s.applied {
			return fmt.Errorf("entry %d applied after %d", e.GetIndex(), s.applied)
		}
		s.applied = e.GetIndex()
		added = append(added, testEntry{index: e.GetIndex(), data: string(e.GetData())})
	}
	s.entries = append(s.entries, added...)
	if s.onApply != nil {
		s.onApply(added)
	}
	s.signal()
	return nil
}

func (s *testSM) Applied() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.applied
}

// Snapshot encodes the entries: count u32, then index u64 | len u32 | data
// each.
func (s *testSM) Snapshot() ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	b := binary.BigEndian.AppendUint32(nil, uint32(len(s.entries)))
	for _, e := range s.entries {
		b = binary.BigEndian.AppendUint64(b, e.index)
		b = binary.BigEndian.AppendUint32(b, uint32(len(e.data)))
		b = append(b, e.data...)
	}
	return b, nil
}

func (s *testSM) Restore(snap *raftpb.Snapshot) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var ents []testEntry
	if b := snap.GetData(); len(b) > 0 {
		n := binary.BigEndian.Uint32(b)
		b = b[4:]
		for range n {
			idx, l := binary.BigEndian.Uint64(b), binary.BigEndian.Uint32(b[8:])
			ents = append(ents, testEntry{index: idx, data: string(b[12 : 12+l])})
			b = b[12+l:]
		}
	}
	s.entries = ents
	s.applied = snap.GetMetadata().GetIndex()
	if s.applied > 1 {
		s.restores = append(s.restores, s.applied)
	}
	s.signal()
	return nil
}

// signal wakes the waiters; the caller holds mu.
func (s *testSM) signal() {
	close(s.changed)
	s.changed = make(chan struct{})
}

// snapshot returns a copy of what was applied.
func (s *testSM) snapshot() (uint64, []testEntry) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.applied, slices.Clone(s.entries)
}

// waitApplied waits until the state machine applied index.
func (s *testSM) waitApplied(tb testing.TB, index uint64) {
	tb.Helper()
	deadline := time.After(waitLong)
	for {
		s.mu.Lock()
		applied, ch := s.applied, s.changed
		s.mu.Unlock()
		if applied >= index {
			return
		}
		select {
		case <-ch:
		case <-deadline:
			tb.Fatalf("applied %d after %v, want %d", applied, waitLong, index)
		}
	}
}

// proxy forwards TCP connections to a target until blocked: then it cuts
// the connections it carries and refuses new ones.
type proxy struct {
	lis     net.Listener
	mu      sync.Mutex // guards target, blocked and conns
	target  string
	blocked bool
	conns   map[net.Conn]struct{}
	wg      sync.WaitGroup
}

func newProxy(tb testing.TB) *proxy {
	tb.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	p := &proxy{lis: lis, conns: make(map[net.Conn]struct{})}
	p.wg.Go(p.accept)
	tb.Cleanup(p.close)
	return p
}

func (p *proxy) addr() string { return p.lis.Addr().String() }

func (p *proxy) accept() {
	for {
		c, err := p.lis.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		target, blocked := p.target, p.blocked
		p.mu.Unlock()
		if blocked || target == "" {
			c.Close()
			continue
		}
		p.wg.Go(func() { p.forward(c, target) })
	}
}

func (p *proxy) forward(c net.Conn, target string) {
	d, err := net.Dial("tcp", target)
	if err != nil {
		c.Close()
		return
	}
	p.mu.Lock()
	if p.blocked {
		p.mu.Unlock()
		c.Close()
		d.Close()
		return
	}
	p.conns[c], p.conns[d] = struct{}{}, struct{}{}
	p.mu.Unlock()
	done := make(chan struct{})
	go func() {
		_, _ = io.Copy(d, c)
		d.Close()
		c.Close()
		close(done)
	}()
	_, _ = io.Copy(c, d)
	c.Close()
	d.Close()
	<-done
	p.mu.Lock()
	delete(p.conns, c)
	delete(p.conns, d)
	p.mu.Unlock()
}

func (p *proxy) setTarget(addr string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.target = addr
}

// block cuts the link: open connections close, new ones are refused.
func (p *proxy) block() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.blocked = true
	for c := range p.conns {
		c.Close()
	}
}

func (p *proxy) unblock() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.blocked = false
}

func (p *proxy) close() {
	p.lis.Close()
	p.block()
	p.wg.Wait()
}

// testCluster is n nodes, ids 1 to n, every link through a proxy.
type testCluster struct {
	t     testing.TB
	clk   *clock.Fake
	ids   []uint64
	nodes map[uint64]*testNode
	links map[[2]uint64]*proxy // [from, to]
	cfg   clusterConfig
	stopc chan struct{}
	wg    sync.WaitGroup

	liveMu sync.Mutex       // guards live
	live   map[uint64]*Host // the running hosts, for drive
}

type testNode struct {
	id    uint64
	dir   string
	lis   net.Listener // a direct cluster's node's listener, until its host takes it
	addr  string       // and its address
	store *storage.Store
	host  *Host
	sms   map[uint64]*testSM // by group
}

// newTestCluster starts n nodes; tweak, if not nil, adjusts each node's
// options.
func newTestCluster(tb testing.TB, n int, tweak func(*Options)) *testCluster {
	tb.Helper()
	return startCluster(tb, n, clusterConfig{tweak: tweak, fsync: storage.FsyncNever})
}

// clusterConfig is how a test cluster differs from the tests' default.
type clusterConfig struct {
	tweak func(*Options) // adjusts each node's options, if not nil
	// fsync is the stores' policy. The tests use FsyncNever: what they
	// crash is processes, not machines, and it is fast.
	fsync storage.FsyncPolicy
	// realClock runs the nodes on the wall clock (benchmarks) instead of
	// the fake one.
	realClock bool
	// memTableBytes is the stores' memtable size; 0 is the smallest
	// allowed, which keeps tests light.
	memTableBytes int64
	// pace is the real time per fake tick; 0 is tickPace.
	pace time.Duration
	// direct connects the nodes to each other without the proxies
	// (benchmarks: a proxy copies every byte once more). Such a node
	// cannot be restarted.
	direct bool
}

func startCluster(tb testing.TB, n int, cfg clusterConfig) *testCluster {
	tb.Helper()
	c := &testCluster{
		t:     tb,
		clk:   clock.NewFake(t0),
		cfg:   cfg,
		nodes: make(map[uint64]*testNode),
		links: make(map[[2]uint64]*proxy),
		stopc: make(chan struct{}),
		live:  make(map[uint64]*Host),
	}
	for i := range n {
		c.ids = append(c.ids, uint64(i+1))
	}
	for _, from := range c.ids {
		for _, to := range c.ids {
			if from != to && !cfg.direct {
				c.links[[2]uint64{from, to}] = newProxy(tb)
			}
		}
	}
	for _, id := range c.ids {
		c.nodes[id] = &testNode{id: id, dir: tb.TempDir(), sms: make(map[uint64]*testSM)}
		if cfg.direct {
			lis, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				tb.Fatal(err)
			}
			c.nodes[id].lis, c.nodes[id].addr = lis, lis.Addr().String()
		}
	}
	for _, id := range c.ids {
		c.start(id)
	}
	if !cfg.realClock {
		c.wg.Go(c.drive)
	}
	tb.Cleanup(c.close)
	return c
}

// clock is the nodes' clock.
func (c *testCluster) clock() clock.Clock {
	if c.cfg.realClock {
		return clock.Real()
	}
	return c.clk
}

// drive advances the fake clock one tick per pace, and no faster than
// the groups take their ticks: after each tick it waits (up to
// maxTickLag paces) until every running group's loop has taken it. On a
// starved CPU fake time then slows with the loops instead of running
// elections and proposal timeouts the loops never had the time to
// prevent — the nodes see the same ticks they would on an idle machine.
func (c *testCluster) drive() {
	pace := c.cfg.pace
	if pace == 0 {
		pace = tickPace
	}
	tk := time.NewTicker(pace)
	defer tk.Stop()
	for {
		select {
		case <-tk.C:
			c.clk.Advance(testTick)
			c.waitTicksTaken(maxTickLag * pace)
		case <-c.stopc:
			return
		}
	}
}

// maxTickLag bounds, in paces, how long drive waits for the loops to take
// a tick: a loop a test blocks on purpose does not stop the clock.
const maxTickLag = 25

// waitTicksTaken waits until no running group has a tick it has not
// taken, or for at most d.
func (c *testCluster) waitTicksTaken(d time.Duration) {
	deadline := time.Now().Add(d)
	for c.ticksPending() && time.Now().Before(deadline) {
		select {
		case <-time.After(time.Millisecond):
		case <-c.stopc:
			return
		}
	}
}

// ticksPending reports whether a running group's loop has not taken its
// last tick yet.
func (c *testCluster) ticksPending() bool {
	c.liveMu.Lock()
	hosts := slices.Collect(maps.Values(c.live))
	c.liveMu.Unlock()
	for _, h := range hosts {
		for _, g := range h.Groups() {
			if len(g.tickc) > 0 {
				return true
			}
		}
	}
	return false
}

func (c *testCluster) close() {
	for _, id := range c.ids {
		c.stop(id)
	}
	close(c.stopc)
	c.wg.Wait()
}

func (c *testCluster) options(id uint64, lis net.Listener, st *storage.Store) Options {
	peers := make(map[uint64]string)
	for _, to := range c.ids {
		switch {
		case to == id:
		case c.cfg.direct:
			peers[to] = c.nodes[to].addr
		default:
			peers[to] = c.links[[2]uint64{id, to}].addr()
		}
	}
	opts := DefaultOptions(id, peers, st)
	opts.Listener = lis
	opts.Clock = c.clock()
	opts.Logger = testLogger(c.t).With("test_node", id)
	if !c.cfg.realClock {
		opts.TickInterval = testTick
	}
	if c.cfg.tweak != nil {
		c.cfg.tweak(&opts)
	}
	return opts
}

// start opens node id's store and host; the groups it ran are not added
// back (addGroup does that).
func (c *testCluster) start(id uint64) {
	c.t.Helper()
	n := c.nodes[id]
	sopts := storage.DefaultOptions(n.dir)
	sopts.Fsync = c.cfg.fsync
	sopts.Clock = c.clock()
	sopts.Logger = testLogger(c.t)
	sopts.MemTableBytes = storage.MinMemTableBytes
	if c.cfg.memTableBytes != 0 {
		sopts.MemTableBytes = c.cfg.memTableBytes
	}
	sopts.BlockCacheBytes = 4 << 20
	st, err := storage.Open(sopts)
	if err != nil {
		c.t.Fatalf("node %d: open store: %v", id, err)
	}
	lis := n.lis
	if lis == nil {
		if lis, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
			c.t.Fatal(err)
		}
	}
	n.lis = nil // the host closes it
	h, err := OpenHost(c.options(id, lis, st))
	if err != nil {
		c.t.Fatalf("node %d: OpenHost: %v", id, err)
	}
	n.store, n.host = st, h
	c.liveMu.Lock()
	c.live[id] = h
	c.liveMu.Unlock()
	for _, from := range c.ids {
		if p := c.links[[2]uint64{from, id}]; p != nil {
			p.setTarget(h.Addr().String())
		}
	}
}

// stop closes node id's host and store, as a clean shutdown does.
func (c *testCluster) stop(id uint64) {
	n := c.nodes[id]
	if n.host == nil {
		return
	}
	c.liveMu.Lock()
	delete(c.live, id)
	c.liveMu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	if err := n.host.Close(ctx); err != nil {
		c.t.Errorf("node %d: close host: %v", id, err)
	}
	if err := n.store.Close(ctx); err != nil {
		c.t.Errorf("node %d: close store: %v", id, err)
	}
	n.host, n.store = nil, nil
}

// restart starts node id again and adds back the groups it had, each with
// a new (empty) state machine: it catches up from its log and its peers.
func (c *testCluster) restart(id uint64) {
	c.t.Helper()
	c.start(id)
	n := c.nodes[id]
	groups := slices.Sorted(maps.Keys(n.sms))
	for _, g := range groups {
		n.sms[g] = newTestSM()
		if _, err := n.host.AddGroup(g, c.ids, n.sms[g]); err != nil {
			c.t.Fatalf("node %d: AddGroup(%d): %v", id, g, err)
		}
	}
}

// addGroup starts group on every running node, all of them voters.
func (c *testCluster) addGroup(group uint64) {
	c.t.Helper()
	for _, id := range c.ids {
		n := c.nodes[id]
		sm := newTestSM()
		n.sms[group] = sm
		if n.host == nil {
			continue
		}
		if _, err := n.host.AddGroup(group, c.ids, sm); err != nil {
			c.t.Fatalf("node %d: AddGroup(%d): %v", id, group, err)
		}
	}
}

func (c *testCluster) group(id, group uint64) *Group {
	c.t.Helper()
	g, ok := c.nodes[id].host.Group(group)
	if !ok {
		c.t.Fatalf("node %d runs no group %d", id, group)
	}
	return g
}

// running returns the ids of the nodes whose hosts run.
func (c *testCluster) running() []uint64 {
	var ids []uint64
	for _, id := range c.ids {
		if c.nodes[id].host != nil {
			ids = append(ids, id)
		}
	}
	return ids
}

// waitLeader waits until the nodes agree on a leader of group, one of
// them, which knows it leads; and returns it.
func (c *testCluster) waitLeader(group uint64, nodes ...uint64) uint64 {
	c.t.Helper()
	var leader uint64
	eventually(c.t, waitLong, fmt.Sprintf("nodes %v agree on a leader of group %d", nodes, group), func() bool {
		leader = c.group(nodes[0], group).Leader()
		if !slices.Contains(nodes, leader) {
			return false
		}
		for _, id := range nodes {
			if c.group(id, group).Leader() != leader {
				return false
			}
		}
		return c.group(leader, group).Status().State.String() == "StateLeader"
	})
	return leader
}

// isolate cuts every link to and from node id; heal restores them.
func (c *testCluster) isolate(id uint64) { c.setLinks(id, (*proxy).block) }
func (c *testCluster) heal(id uint64)    { c.setLinks(id, (*proxy).unblock) }

func (c *testCluster) setLinks(id uint64, f func(*proxy)) {
	for k, p := range c.links {
		if k[0] == id || k[1] == id {
			f(p)
		}
	}
}

// propose proposes data to group through the leader, following
// NotLeaderError, until it is applied or waitLong passes.
func (c *testCluster) propose(group uint64, data string) uint64 {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	at := c.running()[0]
	for {
		idx, err := c.group(at, group).Propose(ctx, []byte(data))
		var nle *NotLeaderError
		switch {
		case err == nil:
			return idx
		case errors.As(err, &nle) && nle.Leader != 0 && c.nodes[nle.Leader].host != nil:
			at = nle.Leader
			continue
		case ctx.Err() != nil:
			c.t.Fatalf("propose %q to group %d: %v", data, group, err)
		}
		time.Sleep(tickPace) // an election is under way
	}
}

// checkConverged waits until every running node applied up to the same
// index of group as the leader, and checks they applied the same entries.
func (c *testCluster) checkConverged(group uint64) []testEntry {
	c.t.Helper()
	nodes := c.running()
	leader := c.waitLeader(group, nodes...)
	// A fresh entry commits, with it, everything before it.
	last := c.propose(group, fmt.Sprintf("converge-%d", c.clk.Now().UnixNano()))
	var want []testEntry
	for _, id := range nodes {
		sm := c.nodes[id].sms[group]
		sm.waitApplied(c.t, last)
		_, got := sm.snapshot()
		if id == nodes[0] {
			want = got
			continue
		}
		if !slices.Equal(got, want) {
			c.t.Fatalf("group %d: node %d applied %d entries, node %d %d; first difference at %d",
				group, id, len(got), nodes[0], len(want), firstDiff(got, want))
		}
	}
	_ = leader
	return want
}

func firstDiff(a, b []testEntry) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}
