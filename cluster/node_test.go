package cluster

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ferrymq/ferry/internal/clock"
	"github.com/ferrymq/ferry/storage"
)

// These tests run Nodes as a broker does, without the broker: three in
// one process over real Transports on loopback, real stores, the fake
// clock driven one tick per tickPace.

type nodeCluster struct {
	t      testing.TB
	clk    *clock.Fake
	nodes  map[uint64]*Node
	stores map[uint64]*storage.Store
	rels   map[uint64]*testReleaser
}

// testReleaser records what a Node tells its Releaser.
type testReleaser struct {
	mu       sync.Mutex // guards the fields below
	stopped  []string
	released []release
}

type release struct {
	topic string
	match func(string) bool
	err   error
}

func (r *testReleaser) StopTopic(topic string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.stopped = append(r.stopped, topic)
}

func (r *testReleaser) Release(topic string, match func(string) bool, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.released = append(r.released, release{topic, match, err})
}

func (r *testReleaser) snapshot() ([]string, []release) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.stopped), slices.Clone(r.released)
}

// startNodes starts n Nodes, ids 1..n, stopped at cleanup.
func startNodes(tb testing.TB, n int) *nodeCluster {
	tb.Helper()
	c := &nodeCluster{t: tb, clk: clock.NewFake(t0), nodes: map[uint64]*Node{},
		stores: map[uint64]*storage.Store{}, rels: map[uint64]*testReleaser{}}
	peers := map[uint64]string{}
	lis := map[uint64]net.Listener{}
	for id := uint64(1); id <= uint64(n); id++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			tb.Fatal(err)
		}
		peers[id], lis[id] = l.Addr().String(), l
	}
	dirs := map[uint64]string{}
	for id := range peers {
		dirs[id] = tb.TempDir() // removed after the cleanup below
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() { driveClock(c.clk, stop) })
	tb.Cleanup(func() {
		c.close()
		close(stop)
		wg.Wait()
	})
	for id := uint64(1); id <= uint64(n); id++ {
		c.start(id, dirs[id], peers, lis[id])
	}
	return c
}

// driveClock advances clk one tick per tickPace until stop closes.
func driveClock(clk *clock.Fake, stop <-chan struct{}) {
	tk := time.NewTicker(tickPace)
	defer tk.Stop()
	for {
		select {
		case <-tk.C:
			clk.Advance(testTick)
		case <-stop:
			return
		}
	}
}

func (c *nodeCluster) start(id uint64, dir string, peers map[uint64]string, lis net.Listener) {
	c.t.Helper()
	sopts := storage.DefaultOptions(dir)
	sopts.Fsync = storage.FsyncNever
	sopts.Replicated = true
	sopts.Clock = c.clk
	sopts.Logger = testLogger(c.t)
	sopts.MemTableBytes = storage.MinMemTableBytes
	sopts.BlockCacheBytes = 4 << 20
	st, err := storage.Open(sopts)
	if err != nil {
		c.t.Fatal(err)
	}
	opts := DefaultOptions(id, peers, st)
	opts.Listener = lis
	opts.Clock = c.clk
	opts.Logger = testLogger(c.t).With("test_node", id)
	opts.TickInterval = testTick
	// An election timeout of 1 to 2 s of real time, not the package's
	// 200 ms: these tests move leaders on purpose only, and a starved CPU
	// (the race detector, a loaded machine) must not start elections.
	// New groups elect their preferred leader at once all the same.
	opts.ElectionTicks = 50
	n, err := NewNode(opts)
	if err != nil {
		c.t.Fatal(err)
	}
	c.rels[id] = &testReleaser{}
	if err := n.Start(c.rels[id]); err != nil {
		c.t.Fatalf("node %d: Start: %v", id, err)
	}
	c.nodes[id], c.stores[id] = n, st
}

func (c *nodeCluster) close() {
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	for id, n := range c.nodes {
		if err := n.Close(ctx); err != nil {
			c.t.Errorf("node %d: Close: %v", id, err)
		}
		if err := n.Close(ctx); err != nil { // idempotent
			c.t.Errorf("node %d: Close again: %v", id, err)
		}
	}
	for id, st := range c.stores {
		if err := st.Close(ctx); err != nil {
			c.t.Errorf("node %d: close store: %v", id, err)
		}
	}
}

// owner waits until every node names the same owner of sub, and returns it.
func (c *nodeCluster) owner(topic, sub string) uint64 {
	c.t.Helper()
	var owner uint64
	eventually(c.t, waitLong, "every node names the same owner of "+sub, func() bool {
		owner = 0
		for _, n := range c.nodes {
			o, err := n.Owner(topic, sub)
			if err != nil || (owner != 0 && o != owner) {
				return false
			}
			owner = o
		}
		return true
	})
	return owner
}

// retryUnknown calls f until it does not fail with an outcome unknown
// (an election under load), and fails the test on any other error. A
// retried append carries the same id: a duplicate if the first landed.
func retryUnknown(tb testing.TB, f func() error) {
	tb.Helper()
	var err error
	for deadline := time.Now().Add(waitLong); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if err = f(); !outcomeUnknown(err) && !errors.Is(err, storage.ErrNotReplicated) {
			break
		}
	}
	if err != nil {
		tb.Fatal(err)
	}
}

// TestNodeMetadataAndBarriers: a topic created through one node is on
// every node with its partitions' groups; a subscription created through
// one node is in another's store as soon as SyncMeta returns there, and a
// message appended through one node is read on another as soon as
// SyncPartition returns there; updates and a delete go through any node,
// and a delete stops the topic's delivery and groups everywhere.
func TestNodeMetadataAndBarriers(t *testing.T) {
	c := startNodes(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	topic, err := c.nodes[1].CreateTopic(ctx, "orders", storage.TopicConfig{Partitions: 3})
	if err != nil {
		t.Fatal(err)
	}
	for id, n := range c.nodes {
		if err := n.SyncMeta(ctx); err != nil {
			t.Fatalf("node %d: SyncMeta: %v", id, err)
		}
		if got, err := c.stores[id].Topic("orders"); err != nil || got.ID() != topic.ID() {
			t.Fatalf("node %d after SyncMeta: %v, id %d; want id %d", id, err, got.ID(), topic.ID())
		}
		eventually(t, waitLong, fmt.Sprintf("node %d runs the partitions' groups", id), func() bool {
			for p := range uint32(3) {
				if _, err := n.PartitionGroup("orders", p); err != nil {
					return false
				}
			}
			return true
		})
	}

	// Read-your-writes across nodes, each read right after the barrier.
	for i := range 12 {
		via, at := uint64(i%3+1), uint64((i+1)%3+1)
		name := fmt.Sprintf("sub-%d", i)
		if _, err := c.nodes[via].CreateSubscription(ctx, "orders", name, []byte("cfg"), make([][]byte, 3)); err != nil {
			t.Fatal(err)
		}
		if err := c.nodes[at].SyncMeta(ctx); err != nil {
			t.Fatal(err)
		}
		if _, err := c.stores[at].Subscription("orders", name); err != nil {
			t.Fatalf("%s created through node %d; node %d after SyncMeta: %v", name, via, at, err)
		}
	}
	// A message appended through a partition's leader is applied there
	// first; each follower reads it right after its barrier.
	for i := range 12 {
		part := uint32(i % 3)
		g, err := c.nodes[1].PartitionGroup("orders", part)
		if err != nil {
			t.Fatal(err)
		}
		via := max(g.Leader(), 1)
		id := fmt.Sprintf("m%d", i)
		var res []storage.AppendResult
		retryUnknown(t, func() (err error) {
			res, err = c.stores[via].Append(ctx, "orders", part, []storage.Message{{ID: id, Payload: []byte("x")}})
			return err
		})
		for at := range c.nodes {
			if at == via {
				continue
			}
			retryUnknown(t, func() error { return c.nodes[at].SyncPartition(ctx, "orders", part) })
			msgs, err := c.stores[at].Read(ctx, "orders", part, res[0].Offset, 1, 1<<20)
			if err != nil || len(msgs) != 1 || msgs[0].ID != id {
				t.Fatalf("message %s appended through node %d at %d/%d; node %d after SyncPartition reads %v, %v", id, via, part, res[0].Offset, at, msgs, err)
			}
		}
	}
	if err := c.nodes[2].SyncPartition(ctx, "orders", 3); !errors.Is(err, storage.ErrPartitionNotFound) {
		t.Fatalf("SyncPartition of partition 3 of 3: %v, want ErrPartitionNotFound", err)
	}

	if _, err := c.nodes[3].UpdateTopic(ctx, "orders", func(cfg *storage.TopicConfig) { cfg.RetentionMaxMessages = 7 }); err != nil {
		t.Fatal(err)
	}
	if err := c.nodes[1].SyncMeta(ctx); err != nil {
		t.Fatal(err)
	}
	if got, _ := c.stores[1].Topic("orders"); got.Config.RetentionMaxMessages != 7 {
		t.Fatalf("retention after an update through node 3: %d on node 1, want 7", got.Config.RetentionMaxMessages)
	}
	if err := c.nodes[3].DeleteSubscription(ctx, "orders", "sub-0"); err != nil {
		t.Fatal(err)
	}

	if err := c.nodes[2].DeleteTopic(ctx, "orders"); err != nil {
		t.Fatal(err)
	}
	for id, n := range c.nodes {
		eventually(t, waitLong, fmt.Sprintf("node %d stops the deleted topic's delivery and groups", id), func() bool {
			stopped, _ := c.rels[id].snapshot()
			st := n.LocalStatus()
			return slices.Contains(stopped, "orders") && len(st.Groups) == 1 && st.Groups[0].Group == MetadataGroup
		})
	}
}

// TestNodeOwnership: a subscription's owner is the leader of its owner
// partition on every node; Own works there only, at the term it leads in.
// When that leadership moves, the old owner releases the subscriptions of
// that partition (and no other), a new owner's epoch is higher, and a
// fence at the old epoch is refused.
func TestNodeOwnership(t *testing.T) {
	c := startNodes(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	if _, err := c.nodes[1].CreateTopic(ctx, "orders", storage.TopicConfig{Partitions: 2}); err != nil {
		t.Fatal(err)
	}
	sub, err := c.nodes[2].CreateSubscription(ctx, "orders", "kitchen", []byte("cfg"), make([][]byte, 2))
	if err != nil {
		t.Fatal(err)
	}
	part := OwnerPartition("kitchen", 2)
	other := "bar"
	for i := 0; OwnerPartition(other, 2) == part; i++ {
		other = fmt.Sprintf("bar-%d", i)
	}
	for _, n := range c.nodes {
		if err := n.SyncMeta(ctx); err != nil {
			t.Fatal(err)
		}
	}
	owner := c.owner("orders", "kitchen")
	next := owner%3 + 1
	if _, _, err := c.nodes[next].Own(ctx, "orders", "kitchen", sub.ID); !errors.Is(err, ErrNotOwner) {
		t.Fatalf("Own on node %d, not the owner: %v, want ErrNotOwner", next, err)
	}
	g, err := c.nodes[owner].PartitionGroup("orders", part)
	if err != nil {
		t.Fatal(err)
	}
	epoch, cursors, err := c.nodes[owner].Own(ctx, "orders", "kitchen", sub.ID)
	if err != nil || epoch != g.Status().Term || len(cursors) != 2 {
		t.Fatalf("Own on the owner: epoch %d, %d cursors, %v; want epoch %d (the term), 2 cursors", epoch, len(cursors), err, g.Status().Term)
	}

	if err := g.TransferLeadership(ctx, next); err != nil {
		t.Fatal(err)
	}
	var r release
	eventually(t, waitLong, "the old owner releases the owner partition's subscriptions", func() bool {
		_, rels := c.rels[owner].snapshot()
		i := slices.IndexFunc(rels, func(r release) bool { return r.match("kitchen") })
		if i >= 0 {
			r = rels[i]
		}
		return i >= 0
	})
	if r.topic != "orders" || r.match(other) || !errors.Is(r.err, ErrNotOwner) {
		t.Fatalf("release of %q: %s matches %v, %v; want orders, false, ErrNotOwner", r.topic, other, r.match(other), r.err)
	}
	if got := c.owner("orders", "kitchen"); got != next {
		t.Fatalf("owner after the transfer: %d, want %d", got, next)
	}
	epoch2, _, err := c.nodes[next].Own(ctx, "orders", "kitchen", sub.ID)
	if err != nil || epoch2 <= epoch {
		t.Fatalf("the new owner's Own: epoch %d, %v; want above %d", epoch2, err, epoch)
	}
	if _, _, err := c.nodes[owner].Own(ctx, "orders", "kitchen", sub.ID); !errors.Is(err, ErrNotOwner) {
		t.Fatalf("Own on the old owner: %v, want ErrNotOwner", err)
	}
	if err := c.stores[owner].Fence(ctx, "orders", sub.ID, epoch); !errors.Is(err, storage.ErrFenced) {
		t.Fatalf("a fence at the old epoch: %v, want ErrFenced", err)
	}
}

// TestNodeStatus: LocalStatus lists the metadata group first, then the
// partitions' groups with their topic and partition; the node is ready
// once each knows a leader, and the collector reports each group.
func TestNodeStatus(t *testing.T) {
	c := startNodes(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	if _, err := c.nodes[1].CreateTopic(ctx, "orders", storage.TopicConfig{Partitions: 2}); err != nil {
		t.Fatal(err)
	}
	n := c.nodes[1]
	eventually(t, waitLong, "node 1 is ready", n.Ready)
	st := n.LocalStatus()
	if st.ID != 1 || len(st.Groups) != 3 || st.Groups[0].Group != MetadataGroup || st.Groups[0].Topic != "" {
		t.Fatalf("status %+v: want node 1, the metadata group first, 3 groups", st)
	}
	for i, g := range st.Groups[1:] {
		if g.Topic != "orders" || g.Partition != uint32(i) || g.Leader == 0 {
			t.Fatalf("group %d: topic %q partition %d leader %d; want orders %d with a leader", g.Group, g.Topic, g.Partition, g.Leader, i)
		}
	}
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(NewCollector(n))
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	series := map[string]int{}
	for _, mf := range mfs {
		series[mf.GetName()] = len(mf.GetMetric())
	}
	for _, name := range []string{"ferry_raft_leader", "ferry_raft_term", "ferry_raft_commit_index", "ferry_raft_applied_index", "ferry_raft_group_up"} {
		if series[name] != 3 {
			t.Fatalf("%s: %d series, want 3 (one per group)", name, series[name])
		}
	}
	if series["ferry_raft_appends_refused"] != 1 {
		t.Fatalf("ferry_raft_appends_refused: %d series, want 1", series["ferry_raft_appends_refused"])
	}

	bad := n.opts
	bad.Peers = map[uint64]string{2: "127.0.0.1:1", 3: "127.0.0.1:2"}
	if _, err := NewNode(bad); !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("NewNode with no address for itself: %v, want ErrInvalidConfig", err)
	}
}
