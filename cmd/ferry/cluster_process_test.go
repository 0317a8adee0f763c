package main

import (
	"context"
	"fmt"
	"maps"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	ferryv1 "github.com/ferrymq/ferry/proto/ferry/v1"

	"github.com/ferrymq/ferry/internal/ferrytest"
)

// testCluster is a cluster of real `ferry serve` processes on loopback.
// Each node keeps its data dir and its ports across restarts: the peers'
// addresses are fixed by --peers, and the gRPC port is fixed so clients
// given every node's address reconnect to a restarted node. Node logs go
// to files, kept (and named in the test log) if the test fails or
// FERRY_CLUSTER_KEEP_LOGS is set.
type testCluster struct {
	tb      testing.TB
	nodes   []*clusterNode
	logDir  string
	network *peerNetwork // nil: nodes dial each other directly
	setup   clusterSetup
}

// clusterSetup is how a testCluster runs its nodes.
type clusterSetup struct {
	network bool     // links between nodes through toxiproxy (peerNetwork)
	tags    string   // build tags of the ferry binary (buildFerryTags)
	env     []string // added to every node's environment
	// prepare, if not nil, is called on each node before it first starts
	// (to set its dir or args).
	prepare func(*clusterNode)
}

// clusterNode is one node of a testCluster.
type clusterNode struct {
	id       uint64
	dir      string
	peerAddr string // its node-to-node listen address
	grpcAddr string
	peers    string // its --peers: its own address, and how it reaches the others
	logPath  string
	args     []string         // more flags of its ferry serve
	conn     *grpc.ClientConn // to grpcAddr; reconnects by itself after a restart

	mu   sync.Mutex // guards proc
	proc *process
}

// newTestCluster makes an n-node cluster and starts it. With network, the
// nodes reach each other only through its proxies, which the test can cut.
func newTestCluster(tb testing.TB, n int, network bool) *testCluster {
	tb.Helper()
	return newTestClusterWith(tb, n, clusterSetup{network: network})
}

// newTestClusterWith starts a cluster of n nodes set up as setup says.
func newTestClusterWith(tb testing.TB, n int, setup clusterSetup) *testCluster {
	tb.Helper()
	logDir, err := os.MkdirTemp("", "ferry-cluster-")
	if err != nil {
		tb.Fatal(err)
	}
	c := &testCluster{tb: tb, logDir: logDir, setup: setup}
	tb.Cleanup(func() {
		if tb.Failed() || os.Getenv("FERRY_CLUSTER_KEEP_LOGS") != "" {
			tb.Logf("node logs kept in %s", logDir)
			return
		}
		os.RemoveAll(logDir)
	})
	addrs := freeAddrs(tb, 2*n)
	for i := range n {
		nd := &clusterNode{id: uint64(i + 1), dir: tb.TempDir(), peerAddr: addrs[2*i], grpcAddr: addrs[2*i+1],
			logPath: filepath.Join(logDir, fmt.Sprintf("node-%d.log", i+1))}
		conn, err := grpc.NewClient(nd.grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(16<<20)))
		if err != nil {
			tb.Fatal(err)
		}
		tb.Cleanup(func() { conn.Close() })
		nd.conn = conn
		c.nodes = append(c.nodes, nd)
	}
	if setup.network {
		c.network = newPeerNetwork(tb, c.nodes)
	}
	for _, nd := range c.nodes {
		var peers []string
		for _, o := range c.nodes {
			addr := o.peerAddr
			if c.network != nil && o != nd {
				addr = c.network.addr(nd.id, o.id)
			}
			peers = append(peers, fmt.Sprintf("%d=%s", o.id, addr))
		}
		nd.peers = strings.Join(peers, ",")
		if setup.prepare != nil {
			setup.prepare(nd)
		}
	}
	c.start(c.nodes...)
	return c
}

// freeAddrs returns n loopback addresses with ports free a moment ago,
// below Linux's default ephemeral range (32768 up): a node restarted on
// its port must not find it taken by some outgoing connection or by a
// listener on port 0 meanwhile.
func freeAddrs(tb testing.TB, n int) []string {
	tb.Helper()
	var addrs []string
	for tries := 0; len(addrs) < n; tries++ {
		if tries > 1000 {
			tb.Fatalf("no %d free ports found", n)
		}
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", 20000+rand.IntN(12000)))
		if err != nil {
			continue
		}
		defer l.Close()
		addrs = append(addrs, l.Addr().String())
	}
	return addrs
}

// start starts nodes at once (a node of a new cluster waits for the others
// before it serves) and waits until each serves.
func (c *testCluster) start(nodes ...*clusterNode) {
	c.tb.Helper()
	errs := make([]error, len(nodes))
	var wg sync.WaitGroup
	for i, nd := range nodes {
		wg.Go(func() { errs[i] = c.startNode(nd) })
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			c.tb.Fatal(err)
		}
	}
}

// startNode runs `ferry serve` for nd, its output appended to nd's log
// file, and waits until it logs that it serves.
func (c *testCluster) startNode(nd *clusterNode) error {
	logf, err := os.OpenFile(nd.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	fmt.Fprintf(logf, "=== start %s\n", time.Now().Format(time.RFC3339Nano))
	args := append([]string{"--http-addr", "127.0.0.1:0", "--shutdown-timeout", "10s",
		"--node-id", fmt.Sprint(nd.id), "--peers", nd.peers, "--peer-addr", nd.peerAddr}, nd.args...)
	fp, err := ferrytest.Start(c.tb, ferrytest.Serve{
		Bin: buildFerryTags(c.tb, c.setup.tags), Env: c.setup.env, Dir: nd.dir, GRPCAddr: nd.grpcAddr, Args: args,
		Log: func(line []byte) { logf.Write(append(line, '\n')) },
		OnExit: func(err error) {
			fmt.Fprintf(logf, "=== exit %s: %v\n", time.Now().Format(time.RFC3339Nano), err)
			logf.Close()
		},
	})
	if err != nil {
		return fmt.Errorf("node %d: %w (log %s)", nd.id, err, nd.logPath)
	}
	p := newProcess(fp)
	p.grpcAddr = nd.grpcAddr
	c.tb.Cleanup(func() { p.kill(c.tb) })
	nd.mu.Lock()
	nd.proc = p
	nd.mu.Unlock()
	return nil
}

// node returns the node with id.
func (c *testCluster) node(id uint64) *clusterNode { return c.nodes[id-1] }

// others returns every node but the given ones.
func (c *testCluster) others(not ...uint64) []*clusterNode {
	var out []*clusterNode
	for _, nd := range c.nodes {
		if !slices.Contains(not, nd.id) {
			out = append(out, nd)
		}
	}
	return out
}

// grpcAddrs is every node's gRPC address, for client.Dial.
func (c *testCluster) grpcAddrs() string {
	var addrs []string
	for _, nd := range c.nodes {
		addrs = append(addrs, nd.grpcAddr)
	}
	return strings.Join(addrs, ",")
}

func (nd *clusterNode) process() *process {
	nd.mu.Lock()
	defer nd.mu.Unlock()
	return nd.proc
}

func (nd *clusterNode) admin() ferryv1.AdminServiceClient {
	return ferryv1.NewAdminServiceClient(nd.conn)
}

func (nd *clusterNode) publisher() ferryv1.PublisherServiceClient {
	return ferryv1.NewPublisherServiceClient(nd.conn)
}

// restart starts nd again on its data dir, after a kill or a stop.
func (c *testCluster) restart(nd *clusterNode) {
	c.tb.Helper()
	if err := c.startNode(nd); err != nil {
		c.tb.Fatal(err)
	}
}

// exited reports whether nd's process has exited.
func (nd *clusterNode) exited() bool {
	select {
	case <-nd.process().exited:
		return true
	default:
		return false
	}
}

// ready reports whether nd's /readyz answers 200.
func (nd *clusterNode) ready() bool {
	p := nd.process()
	if p == nil || p.httpAddr == "" {
		return false
	}
	cl := http.Client{Timeout: time.Second}
	resp, err := cl.Get("http://" + p.httpAddr + "/readyz")
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// localStatus is nd's own view of its groups.
func (nd *clusterNode) localStatus(ctx context.Context) (*ferryv1.NodeStatus, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	resp, err := nd.admin().GetClusterStatus(ctx, &ferryv1.GetClusterStatusRequest{Local: true})
	if err != nil {
		return nil, err
	}
	for _, ns := range resp.GetNodes() {
		if ns.GetNodeId() == nd.id {
			return ns, nil
		}
	}
	return nil, fmt.Errorf("node %d's status does not name it", nd.id)
}

// leader returns the node that leads topic's partition part as the nodes
// in among see it — the newest term's leader — or 0 if none does.
func leaderOf(ctx context.Context, among []*clusterNode, topic string, part uint32) uint64 {
	var leader, term uint64
	for _, nd := range among {
		ns, err := nd.localStatus(ctx)
		if err != nil {
			continue
		}
		for _, g := range ns.GetGroups() {
			if g.GetTopic() == topic && g.GetPartition() == part && g.GetRole() == "leader" && g.GetTerm() > term {
				leader, term = nd.id, g.GetTerm()
			}
		}
	}
	return leader
}

// waitLeader waits until one of among leads topic's partition part.
func waitLeader(tb testing.TB, among []*clusterNode, topic string, part uint32, limit time.Duration) uint64 {
	tb.Helper()
	var id uint64
	waitFor(tb, limit, fmt.Sprintf("a leader of %s/%d", topic, part), func() bool {
		id = leaderOf(context.Background(), among, topic, part)
		return id != 0
	})
	return id
}

// waitFollowing waits until nd is ready, follows a leader in every one of
// its groups (metadata and partitions), and has applied what that leader
// had committed when asked. FERRY_CLUSTER_TRACE logs what it waited for.
func (c *testCluster) waitFollowing(nd *clusterNode, limit time.Duration) {
	c.tb.Helper()
	c.awaitFollowing(nd, limit, false)
}

// waitFollowingUnlessExit is waitFollowing, but gives up, reporting false,
// as soon as nd's process exits: for a node that may crash on purpose.
func (c *testCluster) waitFollowingUnlessExit(nd *clusterNode, limit time.Duration) bool {
	c.tb.Helper()
	return c.awaitFollowing(nd, limit, true)
}

func (c *testCluster) awaitFollowing(nd *clusterNode, limit time.Duration, unlessExit bool) bool {
	c.tb.Helper()
	start := time.Now()
	deadline := start.Add(limit)
	last, since := "", start
	for {
		if unlessExit && nd.exited() {
			return false
		}
		why := c.following(nd)
		if why != last {
			if last != "" && os.Getenv("FERRY_CLUSTER_TRACE") != "" {
				c.tb.Logf("node %d: %v: %s", nd.id, time.Since(since).Round(time.Millisecond), last)
			}
			last, since = why, time.Now()
		}
		if why == "" {
			return true
		}
		if time.Now().After(deadline) {
			c.tb.Fatalf("node %d not following within %v: %s", nd.id, limit, why)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// following says why nd does not follow yet, or "".
func (c *testCluster) following(nd *clusterNode) string {
	ctx := context.Background()
	if !nd.ready() {
		return "not ready"
	}
	// The leaders' commit indexes first, nd's applied ones after: caught
	// up is having applied what the leaders had committed a moment before.
	commits := map[uint64]uint64{} // group → its leader's commit index
	for _, o := range c.others(nd.id) {
		ns, err := o.localStatus(ctx)
		if err != nil {
			continue
		}
		for _, g := range ns.GetGroups() {
			if g.GetRole() == "leader" {
				commits[g.GetGroupId()] = g.GetCommitIndex()
			}
		}
	}
	mine, err := nd.localStatus(ctx)
	if err != nil {
		return err.Error()
	}
	if len(mine.GetGroups()) == 0 {
		return "no groups"
	}
	for _, g := range mine.GetGroups() {
		switch {
		case g.GetRole() != "follower" && g.GetRole() != "leader":
			return fmt.Sprintf("group %d: %s", g.GetGroupId(), g.GetRole())
		case g.GetLeader() == 0:
			return fmt.Sprintf("group %d: no leader", g.GetGroupId())
		case g.GetRole() == "follower" && g.GetAppliedIndex() < commits[g.GetGroupId()]:
			return fmt.Sprintf("group %d: applied %d of %d", g.GetGroupId(), g.GetAppliedIndex(), commits[g.GetGroupId()])
		}
	}
	return ""
}

// waitFor polls cond every 50ms until it holds, or fails tb after limit.
func waitFor(tb testing.TB, limit time.Duration, what string, cond func() bool) {
	tb.Helper()
	ferrytest.Eventually(tb, limit, 50*time.Millisecond, what, cond)
}

// readLog reads all of topic's partition part as nd has it, page by page
// until a page comes back empty: the result is nd's log at that last read
// (what a node applied does not change).
func readLog(ctx context.Context, nd *clusterNode, topic string, part uint32) ([]*ferryv1.Message, error) {
	var msgs []*ferryv1.Message
	for {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		resp, err := nd.admin().ReadMessages(cctx, &ferryv1.ReadMessagesRequest{Topic: topic, Partition: part,
			FromOffset: uint64(len(msgs)), MaxMessages: 1000})
		cancel()
		if err != nil {
			return nil, fmt.Errorf("node %d: read %s/%d from %d: %w", nd.id, topic, part, len(msgs), err)
		}
		if len(resp.GetMessages()) == 0 {
			return msgs, nil
		}
		for _, m := range resp.GetMessages() {
			if m.GetOffset() != uint64(len(msgs)) {
				return nil, fmt.Errorf("node %d: %s/%d: offset %d follows %d: not dense", nd.id, topic, part, m.GetOffset(), len(msgs)-1)
			}
			msgs = append(msgs, m)
		}
	}
}

// heads returns nd's head offset of each partition of topic.
func heads(ctx context.Context, nd *clusterNode, topic string) ([]uint64, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	resp, err := nd.admin().GetTopic(ctx, &ferryv1.GetTopicRequest{Name: topic})
	if err != nil {
		return nil, err
	}
	var hs []uint64
	for _, p := range resp.GetPartitions() {
		hs = append(hs, p.GetHeadOffset())
	}
	return hs, nil
}

// waitConverged waits until every node of among has the same head offsets
// for topic, twice in a row, then reads each node's log of every partition
// and checks they are the same: ids, payloads, keys, headers. It returns
// the logs, by partition.
func waitConverged(tb testing.TB, among []*clusterNode, topic string, limit time.Duration) [][]*ferryv1.Message {
	tb.Helper()
	ctx := context.Background()
	var last []uint64
	stable := 0
	waitFor(tb, limit, fmt.Sprintf("the same head offsets of %q on nodes %v", topic, nodeIDs(among)), func() bool {
		var first []uint64
		for i, nd := range among {
			hs, err := heads(ctx, nd, topic)
			if err != nil {
				stable = 0
				return false
			}
			if i == 0 {
				first = hs
			} else if !slices.Equal(first, hs) {
				stable = 0
				return false
			}
		}
		if slices.Equal(first, last) {
			stable++
		} else {
			stable, last = 0, first
		}
		return stable >= 2
	})
	var logs [][]*ferryv1.Message
	for part := range uint32(len(last)) {
		var ref []*ferryv1.Message
		for i, nd := range among {
			msgs, err := readLog(ctx, nd, topic, part)
			if err != nil {
				tb.Fatal(err)
			}
			if i == 0 {
				ref = msgs
				continue
			}
			if len(msgs) != len(ref) {
				tb.Fatalf("%s/%d: node %d has %d messages, node %d %d", topic, part, nd.id, len(msgs), among[0].id, len(ref))
			}
			for j, m := range msgs {
				if r := ref[j]; m.GetId() != r.GetId() || string(m.GetPayload()) != string(r.GetPayload()) ||
					string(m.GetKey()) != string(r.GetKey()) || !maps.Equal(m.GetHeaders(), r.GetHeaders()) {
					tb.Fatalf("%s/%d offset %d: node %d holds %q, node %d %q", topic, part, j, nd.id, m.GetId(), among[0].id, r.GetId())
				}
			}
		}
		logs = append(logs, ref)
	}
	return logs
}

func nodeIDs(nodes []*clusterNode) []uint64 {
	var ids []uint64
	for _, nd := range nodes {
		ids = append(ids, nd.id)
	}
	return ids
}
