package main

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	ferryv1 "github.com/ferrymq/ferry/proto/ferry/v1"
)

// TestClusterKillLeader SIGKILLs the leader of a partition of a three-node
// cluster under publish load. The majority must take publishes to that
// partition again within 5 s of the kill; afterwards every acknowledged
// message is on both survivors at its acknowledged offset (logs dense,
// identical, no id twice), the history of publishes and reads is
// linearizable, and the killed node, restarted on its data dir, converges
// to the same log.
func TestClusterKillLeader(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a cluster of real brokers")
	}
	const topic, parts = "orders", 3
	c := newTestCluster(t, 3, false)
	createClusterTopic(t, c.nodes[0], topic, parts)
	l := startPublishLoad(t, c, topic, parts, 6)
	l.waitAcks(t, 20, 15*time.Second)

	leader := waitLeader(t, c.nodes, topic, 0, 10*time.Second)
	victim := c.node(leader)
	killed := time.Now()
	victim.process().kill(t)
	t.Logf("SIGKILLed node %d, leader of %s/0, after %d acks", leader, topic, l.ackCount())

	var failover time.Duration
	waitFor(t, 20*time.Second, fmt.Sprintf("a publish to %s/0 acknowledged after the kill", topic), func() bool {
		at, ok := l.firstAckSince(0, killed)
		failover = at.Sub(killed)
		return ok
	})
	t.Logf("failover: %v from SIGKILL to the first acknowledged publish to %s/0 sent after it (new leader node %d)",
		failover.Round(time.Millisecond), topic, waitLeader(t, c.others(leader), topic, 0, 10*time.Second))
	if failover > 5*time.Second {
		t.Errorf("failover took %v, want under 5s", failover)
	}
	time.Sleep(time.Second) // more load on the new leaders
	l.stop(t)

	survivors := c.others(leader)
	logs := waitConverged(t, survivors, topic, 20*time.Second)
	l.verify(t, logs)
	l.finalReads(t, survivors)

	c.restart(victim)
	c.waitFollowing(victim, 30*time.Second)
	all := waitConverged(t, c.nodes, topic, 30*time.Second)
	for part := range logs {
		// Since the survivors converged only final reads' markers came in.
		if len(all[part]) < len(logs[part]) {
			t.Fatalf("%s/%d: %d messages after node %d came back, %d before", topic, part, len(all[part]), leader, len(logs[part]))
		}
		for off, m := range logs[part] {
			if got := all[part][off].GetId(); got != m.GetId() {
				t.Fatalf("%s/%d offset %d: %s after node %d came back, %s before", topic, part, off, got, leader, m.GetId())
			}
		}
	}
	l.verify(t, all)
	l.finalReads(t, c.nodes)
	l.hist.check(t, c.logDir)
}

// TestClusterNetworkPartition cuts the leader of a partition off from the
// other two nodes (both ways, node-to-node traffic only) under publish
// load. Publishes sent to the isolated node must fail with UNAVAILABLE
// within a few seconds, none acknowledged; the majority elects a new
// leader and acknowledges publishes to the partition. Once the network
// heals the three nodes converge on one log per partition holding every
// acknowledged message once at its offset, and the history is
// linearizable.
func TestClusterNetworkPartition(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a cluster of real brokers")
	}
	const (
		topic, parts = "orders", 3
		isolation    = 7 * time.Second
		// probeLimit is how long a publish to the isolated node may take to
		// fail: until the node's leadership lapses (check quorum: an
		// election timeout, 1 s to 2 s by default) or, for a partition it
		// follows, until it stops believing in its leader.
		probeLimit = 5 * time.Second
	)
	c := newTestCluster(t, 3, true)
	createClusterTopic(t, c.nodes[0], topic, parts)
	l := startPublishLoad(t, c, topic, parts, 6)
	l.waitAcks(t, 20, 15*time.Second)

	leader := waitLeader(t, c.nodes, topic, 0, 10*time.Second)
	isolated := c.node(leader)
	majority := c.others(leader)
	cut := time.Now()
	c.network.isolate(t, leader)
	t.Logf("isolated node %d, leader of %s/0, after %d acks", leader, topic, l.ackCount())

	// Publish to each partition through the isolated node, from the cut
	// until the network heals.
	type probe struct {
		part       uint32
		start, end time.Time
		err        error
	}
	var (
		probesMu sync.Mutex
		probes   []probe
		probing  sync.WaitGroup
	)
	healed := make(chan struct{})
	for part := range uint32(parts) {
		probing.Go(func() {
			for i := 0; ; i++ {
				start := time.Now()
				_, err := l.publishVia(isolated, fmt.Sprintf("probe-%d-%d", part, i), part, probeLimit+5*time.Second)
				probesMu.Lock()
				probes = append(probes, probe{part: part, start: start, end: time.Now(), err: err})
				probesMu.Unlock()
				select {
				case <-healed:
					return
				case <-time.After(100 * time.Millisecond):
				}
			}
		})
	}

	var failover time.Duration
	waitFor(t, 20*time.Second, fmt.Sprintf("a publish to %s/0 acknowledged by the majority after the cut", topic), func() bool {
		at, ok := l.firstAckSince(0, cut)
		failover = at.Sub(cut)
		return ok
	})
	newLeader := waitLeader(t, majority, topic, 0, 10*time.Second)
	t.Logf("majority failover: %v from the cut to the first acknowledged publish to %s/0 sent after it (new leader node %d)",
		failover.Round(time.Millisecond), topic, newLeader)
	time.Sleep(time.Until(cut.Add(isolation)))
	c.network.heal(t, leader)
	healAt := time.Now()
	close(healed)
	probing.Wait()
	slices.SortFunc(probes, func(a, b probe) int { return a.start.Compare(b.start) })
	t.Logf("healed after %v", healAt.Sub(cut).Round(time.Millisecond))

	if len(probes) == 0 {
		t.Fatal("no publish reached the isolated node")
	}
	var slowest time.Duration
	for i, p := range probes {
		took := p.end.Sub(p.start)
		if i < 6 || took > time.Second {
			t.Logf("probe %d to %s/%d on the isolated node, sent %v after the cut: %v after %v", i, topic, p.part,
				p.start.Sub(cut).Round(time.Millisecond), status.Code(p.err), took.Round(time.Millisecond))
		}
		isolatedThroughout := p.start.Add(probeLimit).Before(healAt)
		if isolatedThroughout {
			slowest = max(slowest, took)
		}
		switch {
		case isolatedThroughout && took > probeLimit:
			t.Errorf("probe %d to %s/%d: %v after %v, want refused within %v", i, topic, p.part, status.Code(p.err), took, probeLimit)
		case p.err == nil && p.end.Before(healAt):
			t.Errorf("probe %d: the isolated node acknowledged a publish to %s/%d", i, topic, p.part)
		case p.err == nil:
			// Sent shortly before the heal, answered after: the node rejoined.
		case status.Code(p.err) != codes.Unavailable:
			t.Errorf("probe %d to %s/%d: %v, want UNAVAILABLE", i, topic, p.part, p.err)
		}
	}
	t.Logf("%d publishes to the isolated node; the slowest refused after %v", len(probes), slowest.Round(time.Millisecond))

	time.Sleep(2 * time.Second) // load across the healed network
	l.stop(t)
	logs := waitConverged(t, c.nodes, topic, 30*time.Second)
	l.verify(t, logs)
	l.finalReads(t, c.nodes)
	l.hist.check(t, c.logDir)
}

// createClusterTopic creates topic through nd, trying again while the
// cluster elects its metadata leader. Its dedup window outlasts the test,
// so every retry of an id is answered as a duplicate.
func createClusterTopic(tb testing.TB, nd *clusterNode, topic string, parts uint32) {
	tb.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		_, err := nd.admin().CreateTopic(ctx, &ferryv1.CreateTopicRequest{Name: topic,
			Config: &ferryv1.TopicConfig{Partitions: parts, DedupWindow: durationpb.New(time.Hour)}})
		cancel()
		if err == nil {
			return
		}
		if status.Code(err) != codes.Unavailable || time.Now().After(deadline) {
			tb.Fatalf("create topic %q: %v", topic, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// publishLoad publishes to every partition of a cluster's topic from
// several producers: one message per unary Publish, with an id and an
// explicit partition, each producer starting on its own node. A publish
// not answered (an error, or no answer within 2 s) is sent again with the
// same id through the next node, until it is acknowledged: one operation
// of the history from its first attempt to its ack. A reader meanwhile
// reads whole partitions through each node in turn.
type publishLoad struct {
	c     *testCluster
	topic string
	parts uint32
	hist  *logHistory

	stopping chan struct{} // closed: finish the publish under way, start no other
	wg       sync.WaitGroup

	mu   sync.Mutex // guards acks and errs
	acks []clusterAck
	errs map[string]int // failed attempts by node and code
}

// clusterAck is a publish the cluster acknowledged.
type clusterAck struct {
	ack
	node         uint64    // the node that acknowledged it
	attemptStart time.Time // when the acknowledged attempt was sent
	acked        time.Time
}

// attemptTimeout bounds one attempt of a publish through one node.
const attemptTimeout = 2 * time.Second

func startPublishLoad(tb testing.TB, c *testCluster, topic string, parts uint32, producers int) *publishLoad {
	l := &publishLoad{c: c, topic: topic, parts: parts, hist: newLogHistory(), stopping: make(chan struct{}), errs: map[string]int{}}
	for w := range producers {
		l.wg.Go(func() { l.produce(tb, w) })
	}
	l.wg.Go(l.readLogs)
	return l
}

func (l *publishLoad) produce(tb testing.TB, w int) {
	rng := rand.New(rand.NewPCG(uint64(w), 1))
	cur := w % len(l.c.nodes)
	for i := 0; ; i++ {
		select {
		case <-l.stopping:
			return
		default:
		}
		id := fmt.Sprintf("w%d-%d", w, i)
		part := uint32(rng.IntN(int(l.parts)))
		payload := fmt.Appendf(nil, "%s|%016x", id, rng.Uint64())
		msg := &ferryv1.PublishMessage{Id: id, Payload: payload, Partition: &part}
		key := logKey{Topic: l.topic, Partition: part}
		call := l.hist.now()
		deadline := time.Now().Add(30 * time.Second)
		for attempt := 0; ; attempt++ {
			nd := l.c.nodes[cur]
			start := time.Now()
			r, err := l.send(nd, msg, attemptTimeout)
			if err == nil {
				if r.GetDuplicate() && attempt == 0 {
					tb.Errorf("fresh message %s answered as a duplicate of %d/%d", id, r.GetPartition(), r.GetOffset())
				}
				if r.GetPartition() != part {
					tb.Errorf("message %s for partition %d stored in %d", id, part, r.GetPartition())
				}
				l.hist.publish(key, id, call, true, r.GetOffset())
				l.record(clusterAck{ack: ack{msg: msg, partition: part, offset: r.GetOffset()}, node: nd.id, attemptStart: start, acked: time.Now()})
				break
			}
			if time.Now().After(deadline) {
				l.hist.publish(key, id, call, false, 0)
				break
			}
			cur = (cur + 1) % len(l.c.nodes)
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// send publishes msg through nd, once, within limit.
func (l *publishLoad) send(nd *clusterNode, msg *ferryv1.PublishMessage, limit time.Duration) (*ferryv1.PublishResult, error) {
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	resp, err := nd.publisher().Publish(ctx, &ferryv1.PublishRequest{Topic: l.topic, Messages: []*ferryv1.PublishMessage{msg}})
	if err == nil && len(resp.GetResults()) != 1 {
		err = fmt.Errorf("%d results for one message", len(resp.GetResults()))
	}
	if err != nil {
		l.mu.Lock()
		l.errs[fmt.Sprintf("node %d: %v", nd.id, status.Code(err))]++
		l.mu.Unlock()
		return nil, err
	}
	return resp.GetResults()[0], nil
}

// publishVia publishes one message with id to part through nd, once,
// recorded in the history (and as an ack, if it is one).
func (l *publishLoad) publishVia(nd *clusterNode, id string, part uint32, limit time.Duration) (*ferryv1.PublishResult, error) {
	msg := &ferryv1.PublishMessage{Id: id, Payload: []byte(id), Partition: &part}
	key := logKey{Topic: l.topic, Partition: part}
	call := l.hist.now()
	start := time.Now()
	r, err := l.send(nd, msg, limit)
	if err != nil {
		l.hist.publish(key, id, call, false, 0)
		return nil, err
	}
	l.hist.publish(key, id, call, true, r.GetOffset())
	l.record(clusterAck{ack: ack{msg: msg, partition: part, offset: r.GetOffset()}, node: nd.id, attemptStart: start, acked: time.Now()})
	return r, nil
}

// markerRead reads part's log through nd so that the read is
// linearizable: it publishes a marker through nd first, which nd
// acknowledges only once it applied it, so nd's log then holds everything
// committed before the marker. The read is recorded as running from the
// marker's call to its last page: somewhere in between the partition's
// committed log was exactly what it returns. A marker that fails leaves a
// publish of unknown outcome and no read.
func (l *publishLoad) markerRead(nd *clusterNode, part uint32, id string) error {
	call := l.hist.now()
	if _, err := l.publishVia(nd, id, part, attemptTimeout); err != nil {
		return err
	}
	return l.readSince(nd, part, call)
}

// plainRead reads part's log through nd with ReadMessages alone, which in
// a cluster is linearizable by itself: each page waits for a barrier
// through the partition's group, so it holds everything committed before
// the read began.
func (l *publishLoad) plainRead(nd *clusterNode, part uint32) error {
	return l.readSince(nd, part, l.hist.now())
}

// readSince reads part's log through nd and records it in the history as
// a read invoked at call.
func (l *publishLoad) readSince(nd *clusterNode, part uint32, call int64) error {
	msgs, err := readLog(context.Background(), nd, l.topic, part)
	if err != nil {
		return err
	}
	ids := make([]string, len(msgs))
	for i, m := range msgs {
		ids[i] = m.GetId()
	}
	l.hist.read(logKey{Topic: l.topic, Partition: part}, call, ids)
	return nil
}

// readLogs reads a partition's log every 200ms, through each node and
// of each partition in turn, until the load stops: marker reads and plain
// ones by turns.
func (l *publishLoad) readLogs() {
	n := len(l.c.nodes)
	for k := 0; ; k++ {
		select {
		case <-l.stopping:
			return
		case <-time.After(200 * time.Millisecond):
		}
		nd, part := l.c.nodes[k%n], uint32(k/n)%l.parts
		if k%2 == 0 {
			_ = l.markerRead(nd, part, fmt.Sprintf("read-%d", k))
		} else {
			_ = l.plainRead(nd, part)
		}
	}
}

// finalReads makes a marker read of every partition through each of
// nodes, once the load stopped: they must succeed.
func (l *publishLoad) finalReads(tb testing.TB, nodes []*clusterNode) {
	tb.Helper()
	for _, nd := range nodes {
		for part := range l.parts {
			var err error
			for try := range 5 {
				if err = l.markerRead(nd, part, fmt.Sprintf("final-%d-%d-%d-%d", nd.id, part, try, time.Now().UnixNano())); err == nil {
					break
				}
				time.Sleep(200 * time.Millisecond)
			}
			if err != nil {
				tb.Fatalf("final read of %s/%d through node %d: %v", l.topic, part, nd.id, err)
			}
		}
	}
}

func (l *publishLoad) record(a clusterAck) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.acks = append(l.acks, a)
}

func (l *publishLoad) ackCount() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.acks)
}

// waitAcks waits until every partition has n acknowledged publishes.
func (l *publishLoad) waitAcks(tb testing.TB, n int, limit time.Duration) {
	tb.Helper()
	waitFor(tb, limit, fmt.Sprintf("%d acks on every partition", n), func() bool {
		l.mu.Lock()
		defer l.mu.Unlock()
		count := make([]int, l.parts)
		for _, a := range l.acks {
			count[a.partition]++
		}
		return slices.Min(count) >= n
	})
}

// firstAckSince returns when the first publish to part sent after t was
// acknowledged.
func (l *publishLoad) firstAckSince(part uint32, t time.Time) (time.Time, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	var first time.Time
	for _, a := range l.acks {
		if a.partition == part && a.attemptStart.After(t) && (first.IsZero() || a.acked.Before(first)) {
			first = a.acked
		}
	}
	return first, !first.IsZero()
}

// stop ends the load: each producer finishes the publish under way.
func (l *publishLoad) stop(tb testing.TB) {
	tb.Helper()
	close(l.stopping)
	done := make(chan struct{})
	go func() { l.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(45 * time.Second):
		tb.Fatal("the load did not stop within 45s")
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	tb.Logf("load: %d acknowledged publishes; failed attempts: %v", len(l.acks), l.errs)
}

// locate returns where each id of logs (by partition) is, "part/offset",
// and fails tb for an id stored twice; what names the ids in the message.
func locate(tb testing.TB, logs [][]*ferryv1.Message, what string) map[string]string {
	tb.Helper()
	where := map[string]string{}
	for part, msgs := range logs {
		for off, m := range msgs {
			here := fmt.Sprintf("%d/%d", part, off)
			if prev, dup := where[m.GetId()]; dup {
				tb.Errorf("%s %s stored twice: at %s and %s", what, m.GetId(), prev, here)
			}
			where[m.GetId()] = here
		}
	}
	return where
}

// verify checks logs (by partition) against every acknowledged publish:
// each stored at its acknowledged offset with its payload; and no id twice
// in the topic.
func (l *publishLoad) verify(tb testing.TB, logs [][]*ferryv1.Message) {
	tb.Helper()
	locate(tb, logs, "id")
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, a := range l.acks {
		msgs := logs[a.partition]
		if a.offset >= uint64(len(msgs)) {
			tb.Fatalf("acknowledged %s at %d/%d (by node %d) is lost: the partition has %d messages",
				a.msg.Id, a.partition, a.offset, a.node, len(msgs))
		}
		m := msgs[a.offset]
		if m.GetId() != a.msg.Id || !bytes.Equal(m.GetPayload(), a.msg.Payload) {
			tb.Fatalf("%d/%d holds %s, acknowledged %s (by node %d)", a.partition, a.offset, m.GetId(), a.msg.Id, a.node)
		}
	}
}
