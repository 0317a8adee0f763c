package main

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ferrymq/ferry/client"
	"github.com/ferrymq/ferry/cluster"
	ferryv1 "github.com/ferrymq/ferry/proto/ferry/v1"
)

// TestClusterStalledOwnerIsFenced stalls the node that owns an
// effectively-once subscription (SIGSTOP, for longer than an election
// timeout) while three raw gRPC consumers commit each input's output with
// the input's ack (Commit), then continues it (SIGCONT). Each consumer
// commits a delivery a little after it arrives, so when the owner stops it
// holds Commits the consumers sent it; they wait for its answer (a long
// call timeout), as the history checker did. Meanwhile the
// consumers reconnect through the other nodes, the partition's new leader
// takes the subscription over and redelivers what was outstanding once its
// deadline passes, and the redeliveries are committed. The owner is
// continued only once an input whose Commit waits at the stalled node has
// a later attempt delivered. Then the whole history must hold: an input's
// Commit confirmed for one attempt only (never committed twice), no
// delivery of an attempt later than a confirmed one (never delivered
// after a confirmed Commit), no attempt delivered twice and no attempt
// delivered before the previous one's deadline (never outstanding at two
// consumers), one output per input, and every acknowledged input in the
// log — the same on every node.
func TestClusterStalledOwnerIsFenced(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a cluster of real brokers")
	}
	const (
		in, out, sub = "in", "out", "pipe"
		parts        = 3
		ackTimeout   = 2 * time.Second
	)
	c := newTestCluster(t, 3, false)
	createClusterTopic(t, c.nodes[0], in, parts)
	createClusterTopic(t, c.nodes[0], out, parts)
	ctx := context.Background()
	clientLog, err := os.Create(filepath.Join(c.logDir, "client.log"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { clientLog.Close() })
	cl, err := client.Dial(ctx, c.grpcAddrs(), client.WithCallTimeout(5*time.Second),
		client.WithLogger(slog.New(slog.NewTextHandler(clientLog, nil))))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	waitFor(t, 30*time.Second, "the subscription created", func() bool {
		_, err := cl.CreateSubscription(ctx, in, sub, client.SubscriptionConfig{
			Guarantee: client.EffectivelyOnce, Type: client.Shared, Start: client.Earliest(), AckTimeout: ackTimeout})
		if err != nil && client.StatusCode(err) != codes.Unavailable {
			t.Fatalf("create subscription: %v", err)
		}
		return err == nil
	})

	prod := startStallProducer(t, cl, in)
	h := &stallHistory{delivered: map[string][]seenDelivery{}, commits: map[commitKey]*commitOutcome{}, inflight: map[commitKey]int{}}
	wctx, stopWorkers := context.WithCancel(ctx)
	var workers sync.WaitGroup
	ws := make([]*stallWorker, len(c.nodes))
	for i, nd := range c.nodes {
		ws[i] = &stallWorker{n: i, target: nd, topic: in, sub: sub, out: out, h: h}
		workers.Go(func() { ws[i].run(wctx) })
	}
	t.Cleanup(func() { stopWorkers(); workers.Wait() })
	progress := func(what string, n int) {
		t.Helper()
		from := h.confirmed()
		waitFor(t, 30*time.Second, what, func() bool { return h.confirmed() >= from+n })
	}
	progress("commits before the stall", 150)

	part := cluster.OwnerPartition(sub, parts)
	owner := c.node(waitLeader(t, c.nodes, in, part, 10*time.Second))
	owner.process().freeze(t)
	frozeAt := time.Now()
	next := c.node(waitLeader(t, c.others(owner.id), in, part, 20*time.Second))
	t.Logf("node %d owns %s/%s (partition %d) and is stopped; node %d leads after %v", owner.id, in, sub, part,
		next.id, time.Since(frozeAt).Round(time.Millisecond))
	for _, w := range ws {
		w.moveOff(owner, next)
	}
	waitFor(t, 30*time.Second, "an input whose Commit waits at the stopped node redelivered", h.staleWaiting)
	// Stopped past the election timeout (1s, randomized up to 2s) in any
	// case, as the zombie leader was: 3s at least.
	time.Sleep(time.Until(frozeAt.Add(3 * time.Second)))
	stale := h.waiting()
	if err := owner.process().cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	t.Logf("node %d continued after %v, %d Commits waiting for it", owner.id, time.Since(frozeAt).Round(time.Millisecond), len(stale))
	waitFor(t, 40*time.Second, "an answer to every Commit sent to the stopped node", func() bool { return h.answered(stale) })
	progress("commits after the stall", 100)

	prod.stop(t)
	waitFor(t, 40*time.Second, "every input committed", func() bool { return h.committedAll(prod.ids()) })
	stopWorkers()
	workers.Wait()

	h.check(t, ackTimeout)
	checkOnePerInput(t, c, in, out, prod.acked())
	t.Logf("%d inputs, %d deliveries, %d Commits confirmed", len(prod.acked()), h.deliveries(), h.confirmed())
}

type seenDelivery struct {
	attempt uint32
	at      time.Time
	worker  int
}

type commitKey struct {
	id      string
	attempt uint32
}

type commitOutcome struct {
	ok    bool
	at    time.Time    // when it was confirmed
	codes []codes.Code // every call's answer, in order
}

// stallHistory is what the consumers saw: deliveries by input, Commit
// answers by input and attempt, and the Commit calls awaiting an answer.
type stallHistory struct {
	mu        sync.Mutex
	delivered map[string][]seenDelivery
	commits   map[commitKey]*commitOutcome
	inflight  map[commitKey]int
	ok        int
}

func (h *stallHistory) deliver(id string, d seenDelivery) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.delivered[id] = append(h.delivered[id], d)
}

func (h *stallHistory) sent(k commitKey) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.inflight[k]++
}

func (h *stallHistory) answered1(k commitKey, err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.inflight[k]--; h.inflight[k] == 0 {
		delete(h.inflight, k)
	}
	o := h.commits[k]
	if o == nil {
		o = &commitOutcome{}
		h.commits[k] = o
	}
	o.codes = append(o.codes, status.Code(err))
	if err == nil && !o.ok {
		o.ok, o.at = true, time.Now()
		h.ok++
	}
}

func (h *stallHistory) confirmed() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.ok
}

func (h *stallHistory) deliveries() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for _, ds := range h.delivered {
		n += len(ds)
	}
	return n
}

// staleWaiting reports whether a Commit awaits an answer for an input that
// has a later attempt delivered since.
func (h *stallHistory) staleWaiting() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	for k := range h.inflight {
		for _, d := range h.delivered[k.id] {
			if d.attempt > k.attempt {
				return true
			}
		}
	}
	return false
}

// waiting returns the Commits awaiting an answer.
func (h *stallHistory) waiting() []commitKey {
	h.mu.Lock()
	defer h.mu.Unlock()
	var ks []commitKey
	for k := range h.inflight {
		ks = append(ks, k)
	}
	return ks
}

// answered reports whether none of ks awaits an answer any more.
func (h *stallHistory) answered(ks []commitKey) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, k := range ks {
		if h.inflight[k] > 0 {
			return false
		}
	}
	return true
}

// committedAll reports whether every id has a confirmed Commit.
func (h *stallHistory) committedAll(ids []string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	done := map[string]bool{}
	for k, o := range h.commits {
		if o.ok {
			done[k.id] = true
		}
	}
	for _, id := range ids {
		if !done[id] {
			return false
		}
	}
	return true
}

// check checks the history's promises (see TestClusterStalledOwnerIsFenced).
func (h *stallHistory) check(t *testing.T, ackTimeout time.Duration) {
	t.Helper()
	h.mu.Lock()
	defer h.mu.Unlock()
	var bad []string
	okAttempt := map[string]uint32{}
	for k, o := range h.commits {
		if !o.ok {
			continue
		}
		if a, dup := okAttempt[k.id]; dup {
			bad = append(bad, fmt.Sprintf("%s: Commits of attempts %d and %d both confirmed: committed twice", k.id, a, k.attempt))
		}
		okAttempt[k.id] = k.attempt
	}
	// A slack for a delivery's time in flight: the deadline runs from
	// when it went out, the record from when it came in.
	const slack = 500 * time.Millisecond
	for id, ds := range h.delivered {
		seen := map[uint32]bool{}
		for i, d := range ds {
			if a, ok := okAttempt[id]; ok && d.attempt > a {
				bad = append(bad, fmt.Sprintf("%s: attempt %d delivered (worker %d) though attempt %d's Commit was confirmed", id, d.attempt, d.worker, a))
			}
			if seen[d.attempt] {
				bad = append(bad, fmt.Sprintf("%s: attempt %d delivered twice: outstanding at two consumers", id, d.attempt))
			}
			seen[d.attempt] = true
			if i > 0 && d.attempt > ds[i-1].attempt && d.at.Sub(ds[i-1].at) < ackTimeout-slack {
				bad = append(bad, fmt.Sprintf("%s: attempt %d delivered %v after attempt %d, before its deadline: outstanding at two consumers",
					id, d.attempt, d.at.Sub(ds[i-1].at).Round(time.Millisecond), ds[i-1].attempt))
			}
		}
	}
	slices.Sort(bad)
	for _, b := range firstN(bad, 20) {
		t.Error(b)
	}
	if len(bad) > 0 {
		t.Errorf("%d violations", len(bad))
	}
}

// stallWorker is one raw consumer: a Subscribe stream through one node,
// each delivery committed (with its output) a little after it arrives.
type stallWorker struct {
	n               int
	topic, sub, out string
	h               *stallHistory
	mu              sync.Mutex // guards target and cancel
	target          *clusterNode
	cancel          context.CancelFunc // the current stream's
	commits         sync.WaitGroup
}

// node is the node the worker goes through now.
func (w *stallWorker) node() *clusterNode {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.target
}

// moveOff ends the worker's stream, as a client that gave up on a stalled
// node does, and makes it go through to rather than off.
func (w *stallWorker) moveOff(off, to *clusterNode) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.target == off {
		w.target = to
	}
	if w.cancel != nil {
		w.cancel()
	}
}

func (w *stallWorker) run(ctx context.Context) {
	defer w.commits.Wait()
	for ctx.Err() == nil {
		nd := w.node()
		sctx, cancel := context.WithCancel(ctx)
		w.mu.Lock()
		w.cancel = cancel
		w.mu.Unlock()
		w.stream(ctx, sctx, nd)
		cancel()
		select {
		case <-ctx.Done():
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// stream runs one Subscribe stream through nd until it ends.
func (w *stallWorker) stream(ctx, sctx context.Context, nd *clusterNode) {
	stream, err := ferryv1.NewSubscriberServiceClient(nd.conn).Subscribe(sctx)
	if err != nil {
		return
	}
	init := &ferryv1.SubscribeInit{Topic: w.topic, Subscription: w.sub, Credit: 8}
	if err := stream.Send(&ferryv1.SubscribeRequest{Frame: &ferryv1.SubscribeRequest_Init{Init: init}}); err != nil {
		return
	}
	for {
		resp, err := stream.Recv()
		if err != nil {
			return
		}
		for _, d := range resp.GetDeliveries().GetDeliveries() {
			id := d.GetMessage().GetId()
			w.h.deliver(id, seenDelivery{attempt: d.GetAttempt(), at: time.Now(), worker: w.n})
			w.commits.Go(func() { w.commit(ctx, nd, d) })
		}
	}
}

// commit commits d's input with its output through nd, after a pause (the
// work), and again through the worker's current node while the answer is
// UNAVAILABLE, as the SDK does. A call waits up to 30s for its answer.
func (w *stallWorker) commit(ctx context.Context, nd *clusterNode, d *ferryv1.Delivery) {
	select {
	case <-ctx.Done():
		return
	case <-time.After(200 * time.Millisecond):
	}
	id := d.GetMessage().GetId()
	k := commitKey{id: id, attempt: d.GetAttempt()}
	req := &ferryv1.CommitRequest{Topic: w.topic, Subscription: w.sub, DeliveryIds: []string{d.GetDeliveryId()},
		Publishes: []*ferryv1.CommitPublish{{Topic: w.out, Messages: []*ferryv1.PublishMessage{{Id: "out/" + id, Payload: []byte("out:" + id)}}}}}
	for deadline := time.Now().Add(90 * time.Second); time.Now().Before(deadline); nd = w.node() {
		w.h.sent(k)
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		_, err := ferryv1.NewSubscriberServiceClient(nd.conn).Commit(cctx, req)
		cancel()
		w.h.answered1(k, err)
		if status.Code(err) != codes.Unavailable && status.Code(err) != codes.DeadlineExceeded {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// stallProducer publishes inputs one at a time, each until acknowledged.
type stallProducer struct {
	mu   sync.Mutex
	acks map[string]client.PublishResult
	quit chan struct{}
	done chan struct{}
}

func startStallProducer(t *testing.T, cl *client.Client, topic string) *stallProducer {
	p := &stallProducer{acks: map[string]client.PublishResult{}, quit: make(chan struct{}), done: make(chan struct{})}
	pr := cl.NewProducer(topic, client.ProducerOptions{})
	go func() {
		defer close(p.done)
		defer pr.Close(context.Background())
		for i := 0; ; i++ {
			m := &client.Message{ID: fmt.Sprintf("in-%d", i), Payload: fmt.Appendf(nil, "input %d", i)}
			for deadline := time.Now().Add(30 * time.Second); ; {
				select {
				case <-p.quit:
					return
				default:
				}
				pctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				r, err := pr.Publish(pctx, m)
				cancel()
				if err == nil {
					p.mu.Lock()
					p.acks[m.ID] = r
					p.mu.Unlock()
					break
				}
				if time.Now().After(deadline) {
					t.Errorf("publish %s: not acknowledged within 30s: %v", m.ID, err)
					return
				}
			}
			time.Sleep(5 * time.Millisecond)
		}
	}()
	return p
}

func (p *stallProducer) stop(t *testing.T) {
	close(p.quit)
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
		t.Fatal("the producer did not stop within 30s")
	}
}

func (p *stallProducer) acked() map[string]client.PublishResult {
	p.mu.Lock()
	defer p.mu.Unlock()
	return maps.Clone(p.acks)
}

func (p *stallProducer) ids() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	ids := make([]string, 0, len(p.acks))
	for id := range p.acks {
		ids = append(ids, id)
	}
	return ids
}

// checkOnePerInput checks, on logs the same on every node, that every
// acknowledged input is in topic in at its offset and that out holds
// exactly one output per input of in, by id and by content.
func checkOnePerInput(t *testing.T, c *testCluster, in, out string, acks map[string]client.PublishResult) {
	t.Helper()
	inLogs := waitConverged(t, c.nodes, in, 30*time.Second)
	outLogs := waitConverged(t, c.nodes, out, 30*time.Second)
	for id, r := range acks {
		msgs := inLogs[r.Partition]
		if r.Offset >= uint64(len(msgs)) || msgs[r.Offset].GetId() != id {
			t.Errorf("acknowledged input %s at %d/%d is not there", id, r.Partition, r.Offset)
		}
	}
	inputs := locate(t, inLogs, "input")
	byID, byContent := map[string]int{}, map[string]int{}
	outputs := 0
	for _, msgs := range outLogs {
		for _, m := range msgs {
			outputs++
			byID[m.GetId()]++
			byContent[string(m.GetPayload())]++
		}
	}
	for id := range inputs {
		if n, m := byID["out/"+id], byContent["out:"+id]; n != 1 || m != 1 {
			t.Errorf("input %s has %d outputs by id, %d by content; want 1", id, n, m)
		}
	}
	if outputs != len(inputs) {
		t.Errorf("%d outputs for %d inputs", outputs, len(inputs))
	}
}
