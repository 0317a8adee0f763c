package broker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ferrymq/ferry/cluster"
	ferryv1 "github.com/ferrymq/ferry/proto/ferry/v1"

	"github.com/ferrymq/ferry/internal/ferrytest"
)

// These tests run three brokers in one process as a cluster on loopback:
// real stores, real Raft groups, real gRPC between them. The process-level
// tests (SIGKILL, rolling restarts) are in cmd/ferry.

// startTestCluster starts n brokers as one cluster, ticking every 20ms,
// and returns them by node id (1..n); modify adjusts each one's options.
func startTestCluster(t testing.TB, n int, modify ...func(*Options)) map[uint64]*testServer {
	t.Helper()
	peers := make(map[uint64]string, n)
	lis := make(map[uint64]net.Listener, n)
	for id := uint64(1); id <= uint64(n); id++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		peers[id], lis[id] = l.Addr().String(), l
	}
	// Each host is handed its open listener: closing it for the host to
	// bind the port again would let another process take it meanwhile.
	servers := make(map[uint64]*testServer, n)
	for id := uint64(1); id <= uint64(n); id++ {
		servers[id] = startServer(t, append([]func(*Options){func(o *Options) {
			o.Cluster = &ClusterOptions{NodeID: id, Addr: peers[id], Peers: peers, Tune: func(co *cluster.Options) {
				co.TickInterval = 20 * time.Millisecond
				co.Listener = lis[id]
			}}
		}}, modify...)...)
	}
	return servers
}

// defaultTick runs a test cluster at the production tick (an election
// timeout of 1 to 2 s) instead of the tests' 20 ms.
func defaultTick(o *Options) {
	tune := o.Cluster.Tune
	o.Cluster.Tune = func(co *cluster.Options) {
		tune(co)
		co.TickInterval = cluster.DefaultOptions(0, nil, nil).TickInterval
	}
}

// TestClusterPublishSubscribe: a topic created on one node is on every
// node; a publish to any node is stored at the same offsets on every
// node; a consumer attached through any node gets every message once, from
// the subscription's owner, and its acks land there.
func TestClusterPublishSubscribe(t *testing.T) {
	c := startTestCluster(t, 3)
	ctx := testContext(t)
	c[1].createTopic(t, "orders", &ferryv1.TopicConfig{Partitions: 3})

	const perNode = 30
	for id, ts := range c {
		for i := range perNode {
			ts.publish(t, "orders", &ferryv1.PublishMessage{Id: fmt.Sprintf("n%d-%d", id, i), Key: []byte(fmt.Sprint(i)), Payload: []byte("x")})
		}
	}
	// Every node holds the same messages at the same offsets.
	want := logOf(t, c[1], "orders", 3)
	eventuallyB(t, "every node holds every message", func() bool {
		want = logOf(t, c[1], "orders", 3)
		return len(want) == 3*perNode
	})
	for id := range c {
		eventuallyB(t, fmt.Sprintf("node %d holds the same log", id), func() bool {
			got := logOf(t, c[id], "orders", 3)
			return fmt.Sprint(got) == fmt.Sprint(want)
		})
	}

	c[2].createSub(t, "orders", "billing", subConfig(atLeast, shared))
	// Attach through every node in turn: only the owner serves, the
	// others forward.
	got := map[string]int{}
	for id := uint64(1); id <= 3 && len(got) < 3*perNode; id++ {
		sub := ferryv1.NewSubscriberServiceClient(c[id].conn)
		sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		stream, err := sub.Subscribe(sctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := stream.Send(&ferryv1.SubscribeRequest{Frame: &ferryv1.SubscribeRequest_Init{Init: &ferryv1.SubscribeInit{Topic: "orders", Subscription: "billing", Credit: 10}}}); err != nil {
			t.Fatal(err)
		}
		for n := 0; n < perNode && len(got) < 3*perNode; {
			resp, err := stream.Recv()
			if err != nil {
				t.Fatalf("node %d: Recv: %v", id, err)
			}
			var ids []string
			for _, d := range resp.GetDeliveries().GetDeliveries() {
				got[d.GetMessage().GetId()]++
				ids = append(ids, d.GetDeliveryId())
				n++
			}
			if len(ids) > 0 {
				if err := stream.Send(&ferryv1.SubscribeRequest{Frame: &ferryv1.SubscribeRequest_Ack{Ack: &ferryv1.SubscribeAck{DeliveryIds: ids}}}); err != nil {
					t.Fatal(err)
				}
			}
		}
		_ = stream.CloseSend()
		for {
			if _, err := stream.Recv(); err != nil {
				if !errors.Is(err, io.EOF) && status.Code(err) != codes.Canceled {
					t.Logf("node %d: stream ended: %v", id, err)
				}
				break
			}
		}
		cancel()
	}
	if len(got) != 3*perNode {
		t.Fatalf("consumed %d distinct messages, want %d", len(got), 3*perNode)
	}
}

// logOf reads every partition of topic on ts: "part/offset/id".
func logOf(t testing.TB, ts *testServer, topic string, parts uint32) []string {
	t.Helper()
	var out []string
	for p := range parts {
		for from := uint64(0); ; {
			r := ts.read(t, topic, p, from, 1000)
			if len(r.GetMessages()) == 0 {
				break
			}
			for _, m := range r.GetMessages() {
				out = append(out, fmt.Sprintf("%d/%d/%s", p, m.GetOffset(), m.GetId()))
				from = m.GetOffset() + 1
			}
		}
	}
	return out
}

func eventuallyB(t testing.TB, what string, cond func() bool) {
	t.Helper()
	ferrytest.Eventually(t, 20*time.Second, 20*time.Millisecond, what, cond)
}

// TestClusterStatusAndMetrics: GetClusterStatus through any node shows the
// three nodes and, for the metadata group and each partition, one leader
// every node agrees on; /metrics reports the groups and /readyz is ready;
// a replication factor other than the cluster's size is refused, and so is
// GetClusterStatus on a single node.
func TestClusterStatusAndMetrics(t *testing.T) {
	c := startTestCluster(t, 3)
	ctx := testContext(t)
	c[1].createTopic(t, "orders", &ferryv1.TopicConfig{Partitions: 2})
	_, err := c[2].admin.CreateTopic(ctx, &ferryv1.CreateTopicRequest{Name: "bad", Config: &ferryv1.TopicConfig{ReplicationFactor: 2}})
	wantStatus(t, err, codes.InvalidArgument, "replication factor 2", "3")
	if resp, err := c[3].admin.GetTopic(ctx, &ferryv1.GetTopicRequest{Name: "orders"}); err != nil || resp.GetTopic().GetConfig().GetReplicationFactor() != 3 {
		t.Fatalf("GetTopic: %v, replication factor %d, want 3", err, resp.GetTopic().GetConfig().GetReplicationFactor())
	}

	eventuallyB(t, "every node agrees on a leader of every group", func() bool {
		resp, err := c[2].admin.GetClusterStatus(ctx, &ferryv1.GetClusterStatusRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.GetNodes()) != 3 {
			t.Fatalf("%d nodes reported, want 3", len(resp.GetNodes()))
		}
		leaders := map[uint64]map[uint64]bool{} // group -> leaders seen
		for _, n := range resp.GetNodes() {
			if n.GetError() != "" || len(n.GetGroups()) != 3 {
				return false
			}
			for _, g := range n.GetGroups() {
				if leaders[g.GetGroupId()] == nil {
					leaders[g.GetGroupId()] = map[uint64]bool{}
				}
				leaders[g.GetGroupId()][g.GetLeader()] = true
			}
		}
		for _, ls := range leaders {
			if len(ls) != 1 || ls[0] {
				return false
			}
		}
		return len(leaders) == 3
	})
	if code, body := httpGet(t, "http://"+c[1].srv.HTTPAddr().String()+"/readyz"); code != 200 {
		t.Fatalf("/readyz: %d %s", code, body)
	}
	_, body := httpGet(t, "http://"+c[1].srv.HTTPAddr().String()+"/metrics")
	for _, want := range []string{`ferry_raft_leader{group="9223372036854775808",partition="",topic=""}`, `ferry_raft_applied_index{group="4294967296",partition="0",topic="orders"}`,
		"ferry_raft_groups_quiesced ", "ferry_raft_peers_live ", "ferry_raft_group_wakes_total "} {
		if !strings.Contains(body, want) {
			t.Fatalf("/metrics lacks %s", want)
		}
	}

	single := startServer(t)
	_, err = single.admin.GetClusterStatus(ctx, &ferryv1.GetClusterStatusRequest{})
	wantStatus(t, err, codes.FailedPrecondition, "single node")
}

// TestClusterOwnerMoves: an effectively-once subscription is served by the
// leader of the partition its name hashes to. When that leadership moves,
// the consumer's stream (attached through another node) ends with
// UNAVAILABLE; reattached, it gets the rest from the new owner, and none
// of the deliveries whose acks were confirmed comes again: the new owner
// loaded the cursors the old one wrote.
func TestClusterOwnerMoves(t *testing.T) {
	c := startTestCluster(t, 3)
	ctx := testContext(t)
	c[1].createTopic(t, "orders", &ferryv1.TopicConfig{Partitions: 2})
	for i := range 40 {
		c[2].publish(t, "orders", &ferryv1.PublishMessage{Id: fmt.Sprintf("m%d", i), Payload: []byte("x")})
	}
	c[3].createSub(t, "orders", "kitchen", subConfig(effOnce, shared))
	owner := partitionLeader(t, c[1], "orders", cluster.OwnerPartition("kitchen", 2))
	via := owner%3 + 1 // attach through a node that forwards

	attach := func() ferryv1.SubscriberService_SubscribeClient {
		stream, err := ferryv1.NewSubscriberServiceClient(c[via].conn).Subscribe(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := stream.Send(&ferryv1.SubscribeRequest{Frame: &ferryv1.SubscribeRequest_Init{Init: &ferryv1.SubscribeInit{Topic: "orders", Subscription: "kitchen", Credit: 5}}}); err != nil {
			t.Fatal(err)
		}
		return stream
	}
	seen := map[string]bool{}
	// consume takes n deliveries, acks each and waits for the
	// confirmations.
	consume := func(stream ferryv1.SubscriberService_SubscribeClient, n int) {
		pending := 0
		for got := 0; got < n || pending > 0; {
			resp, err := stream.Recv()
			if err != nil {
				t.Fatalf("Recv after %d of %d: %v", got, n, err)
			}
			if conf := resp.GetAckConfirmation(); conf != nil {
				for _, r := range conf.GetResults() {
					if r.GetCode() != 0 {
						t.Fatalf("ack refused: %v", r)
					}
				}
				pending--
				continue
			}
			for _, d := range resp.GetDeliveries().GetDeliveries() {
				id := d.GetMessage().GetId()
				if seen[id] {
					t.Fatalf("%s delivered again after its ack was confirmed", id)
				}
				seen[id] = true
				got++
				pending++
				if err := stream.Send(&ferryv1.SubscribeRequest{Frame: &ferryv1.SubscribeRequest_Ack{Ack: &ferryv1.SubscribeAck{
					Sequence: uint64(len(seen)), DeliveryIds: []string{d.GetDeliveryId()}}}}); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	stream := attach()
	consume(stream, 15)

	// The owner hands its leadership to another node.
	part := cluster.OwnerPartition("kitchen", 2)
	g, err := c[owner].srv.node.PartitionGroup("orders", part)
	if err != nil {
		t.Fatal(err)
	}
	next := via
	if err := g.TransferLeadership(ctx, next); err != nil {
		t.Fatalf("transfer leadership of partition %d from %d to %d: %v", part, owner, next, err)
	}
	for {
		_, err := stream.Recv()
		if err == nil {
			continue
		}
		if status.Code(err) != codes.Unavailable {
			t.Fatalf("the stream ended with %v, want UNAVAILABLE", err)
		}
		break
	}
	eventuallyB(t, "every node sees the new owner", func() bool {
		for id := range c {
			if l := partitionLeader(t, c[id], "orders", part); l != next {
				return false
			}
		}
		return true
	})
	consume(attach(), 40-len(seen))
	if len(seen) != 40 {
		t.Fatalf("consumed %d distinct messages, want 40", len(seen))
	}
}

// TestClusterCommitNeedsIDs: in a cluster a Commit is written partition by
// partition, outputs first (docs/cluster.md), so every output must carry an
// id for a retry to be recognised; one without is refused with
// FAILED_PRECONDITION and nothing is written. With ids, it is written.
func TestClusterCommitNeedsIDs(t *testing.T) {
	c := startTestCluster(t, 3)
	ctx := testContext(t)
	c[1].createTopic(t, "in", &ferryv1.TopicConfig{Partitions: 1})
	c[1].createTopic(t, "out", &ferryv1.TopicConfig{Partitions: 2})
	c[1].createSub(t, "in", "proc", subConfig(effOnce, shared))
	sub := ferryv1.NewSubscriberServiceClient(c[2].conn)
	msgs := func(withIDs bool) []*ferryv1.PublishMessage {
		var ms []*ferryv1.PublishMessage
		for i := range 4 {
			m := &ferryv1.PublishMessage{Key: []byte(fmt.Sprint(i)), Payload: []byte("out")}
			if withIDs {
				m.Id = fmt.Sprintf("out-%d", i)
			}
			ms = append(ms, m)
		}
		return ms
	}
	_, err := sub.Commit(ctx, &ferryv1.CommitRequest{Topic: "in", Subscription: "proc",
		Publishes: []*ferryv1.CommitPublish{{Topic: "out", Messages: msgs(false)}}})
	wantStatus(t, err, codes.FailedPrecondition, "id")
	if got := logOf(t, c[3], "out", 2); len(got) != 0 {
		t.Fatalf("a refused commit wrote %v", got)
	}
	if err := retryUnavailable(ctx, func(ctx context.Context) error {
		_, err := sub.Commit(ctx, &ferryv1.CommitRequest{Topic: "in", Subscription: "proc",
			Publishes: []*ferryv1.CommitPublish{{Topic: "out", Messages: msgs(true)}}})
		return err
	}); err != nil {
		t.Fatalf("commit with ids: %v", err)
	}
	if got := logOf(t, c[3], "out", 2); len(got) != 4 {
		t.Fatalf("the commit wrote %v, want 4 messages", got)
	}
}

// TestClusterLargeConcurrentBatches: many large batches at once are
// gathered into Raft entries that stay under the entry limit, so none is
// refused as too large; each batch alone is within the request limits.
// Every batch is stored once.
func TestClusterLargeConcurrentBatches(t *testing.T) {
	// The default tick (an election timeout of 1 to 2 s): tens of MiB at
	// once keep the groups' loops busy longer than the tests' short
	// election timeout, under the race detector above all.
	c := startTestCluster(t, 3, defaultTick)
	ctx := testContext(t)
	c[1].createTopic(t, "big", &ferryv1.TopicConfig{Partitions: 1, MaxMessageBytes: 1 << 20})
	leader := c[partitionLeader(t, c[1], "big", 0)]
	payload := make([]byte, 900<<10)
	var wg sync.WaitGroup
	errs := make(chan error, 6)
	for w := range 6 {
		wg.Go(func() {
			var ms []*ferryv1.PublishMessage
			for i := range 4 {
				ms = append(ms, &ferryv1.PublishMessage{Id: fmt.Sprintf("w%d-%d", w, i), Payload: payload})
			}
			// UNAVAILABLE (an election under this load, with the tests'
			// short ticks) is retried with the same ids, as the SDK does;
			// anything else fails the test.
			for {
				_, err := leader.pub.Publish(ctx, &ferryv1.PublishRequest{Topic: "big", Messages: ms})
				if status.Code(err) == codes.Unavailable {
					continue
				}
				if err != nil {
					errs <- err
				}
				return
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("publish: %v", err)
	}
	if got := logOf(t, leader, "big", 1); len(got) != 6*4 {
		t.Errorf("%d messages stored, want %d", len(got), 6*4)
	}
}
