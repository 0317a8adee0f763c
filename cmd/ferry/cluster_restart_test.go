package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/ferrymq/ferry/client"
)

// TestClusterRollingRestart restarts the three nodes of a cluster one at a
// time with SIGTERM (each hands its leaderships off before it stops, and
// must exit 0) while a producer publishes to "in" and an effectively-once
// pipeline (client.Process) turns each input into one output on "out",
// with an id derived from the input's. Each node must be back — ready,
// following every group and caught up — before the next one stops, and the
// pipeline must keep going after each restart. At the end every
// acknowledged input is in "in" at its offset, no id twice, and "out" holds
// exactly one output per input of "in", counted both by id and by content.
func TestClusterRollingRestart(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a cluster of real brokers")
	}
	c := newTestCluster(t, 3, false)
	runPipeline(t, c, func(progress func(what string)) {
		for _, nd := range c.nodes {
			start := time.Now()
			took, err := nd.process().stop(t, 30*time.Second)
			if err != nil {
				t.Fatalf("node %d: SIGTERM: %v after %v", nd.id, err, took)
			}
			c.restart(nd)
			c.waitFollowing(nd, 30*time.Second)
			t.Logf("node %d: exited 0 %v after SIGTERM, back and following %v after it", nd.id,
				took.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
			progress(fmt.Sprintf("after node %d restarted", nd.id))
		}
	})
}

// TestClusterCommitCrashBetweenParts crashes the node making a cluster
// Commit between its parts: in a cluster a Commit's outputs and its
// input's ack are entries of different Raft groups, stored one after the
// other (storage's writeOrdered), so a crash can fall between them. The
// broker is built with the ferry_failpoints tag and kills itself (SIGKILL)
// at every 50th Commit right after its outputs are stored, before the ack;
// the test restarts it, three times, then disarms the failpoint. The
// pipeline must still end with exactly one output per input: the input,
// not acked, is delivered again, and its outputs, published again with
// the same ids, are deduplicated.
func TestClusterCommitCrashBetweenParts(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a cluster of real brokers")
	}
	// Armed only once the pipeline runs: a crash before that, with no one
	// to restart the node, could leave the pipeline no progress to show.
	armed := filepath.Join(t.TempDir(), "armed")
	c := newTestClusterWith(t, 3, clusterSetup{tags: "ferry_failpoints", env: []string{
		"FERRY_FAILPOINT=ordered-write-between-parts", "FERRY_FAILPOINT_EVERY=50", "FERRY_FAILPOINT_WHILE=" + armed}})
	runPipeline(t, c, func(progress func(what string)) {
		if err := os.WriteFile(armed, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		const want = 3
		crashes := 0
		deadline := time.Now().Add(90 * time.Second)
		for crashes < want && time.Now().Before(deadline) {
			crashes += c.restartExited(t)
			time.Sleep(20 * time.Millisecond)
		}
		if err := os.Remove(armed); err != nil {
			t.Fatal(err)
		}
		time.Sleep(100 * time.Millisecond) // a crash under way when disarmed
		crashes += c.restartExited(t)
		if crashes < want {
			t.Fatalf("%d crashes at the failpoint within 90s, want %d", crashes, want)
		}
		progress(fmt.Sprintf("after %d crashes between a Commit's parts", crashes))
	})
}

// restartExited restarts every node of c whose process has exited and
// waits until each follows its groups again; it says how many restarts it
// made. The failpoint stays armed meanwhile, so a node may crash again, or
// another one may, while it waits: then it restarts those too and waits
// again, until every node is back at once.
func (c *testCluster) restartExited(t *testing.T) int {
	t.Helper()
	n := 0
	deadline := time.Now().Add(60 * time.Second)
	for {
		var back []*clusterNode
		for _, nd := range c.nodes {
			if nd.exited() {
				c.restart(nd)
				back = append(back, nd)
				n++
			}
		}
		if len(back) == 0 {
			return n
		}
		for _, nd := range back {
			start := time.Now()
			if !c.waitFollowingUnlessExit(nd, time.Until(deadline)) {
				t.Logf("node %d exited again before it followed", nd.id)
				break
			}
			t.Logf("node %d exited; back and following after %v", nd.id, time.Since(start).Round(time.Millisecond))
		}
	}
}

// runPipeline runs a producer publishing to "in" and an effectively-once
// pipeline (client.Process) turning each input into one output on "out"
// over c, calls disrupt once the pipeline runs (progress waits for 100
// more inputs handled), then drains and checks: every acknowledged input
// is in "in" at its offset, no id twice, and "out" holds exactly one
// output per input of "in", counted both by id and by content.
func runPipeline(t *testing.T, c *testCluster, disrupt func(progress func(what string))) {
	t.Helper()
	const (
		in, out, sub = "in", "out", "pipe"
		parts        = 3
	)
	began := time.Now()
	createClusterTopic(t, c.nodes[0], in, parts)
	createClusterTopic(t, c.nodes[0], out, parts)
	clientLog, err := os.Create(filepath.Join(c.logDir, "client.log"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { clientLog.Close() })
	ctx := context.Background()
	cl, err := client.Dial(ctx, c.grpcAddrs(), client.WithCallTimeout(5*time.Second),
		client.WithLogger(slog.New(slog.NewTextHandler(clientLog, nil))))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	for {
		_, err := cl.CreateSubscription(ctx, in, sub, client.SubscriptionConfig{
			Guarantee: client.EffectivelyOnce, Type: client.Shared, Start: client.Earliest(),
			AckTimeout: 5 * time.Second, BackoffMin: 100 * time.Millisecond})
		if err == nil {
			break
		}
		if client.StatusCode(err) != codes.Unavailable {
			t.Fatalf("create subscription: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}

	// The producer: two goroutines, each publishing one input at a time and
	// publishing it again (same id) until it is acknowledged, then pausing a
	// little, so the backlog stays short.
	producer := cl.NewProducer(in, client.ProducerOptions{})
	var (
		acksMu sync.Mutex
		acks   = map[string]client.PublishResult{}
	)
	stopProducing := make(chan struct{})
	var producing sync.WaitGroup
	// However the test ends (disrupt may call t.Fatal), the producers stop
	// before it does: none may report to a finished test.
	stopOnce := sync.OnceFunc(func() { close(stopProducing); producing.Wait() })
	defer stopOnce()
	for w := range 2 {
		producing.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stopProducing:
					return
				default:
				}
				m := &client.Message{ID: fmt.Sprintf("in-%d-%d", w, i), Payload: fmt.Appendf(nil, "input %d of producer %d", i, w)}
				deadline := time.Now().Add(30 * time.Second)
				for {
					pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
					r, err := producer.Publish(pctx, m)
					cancel()
					if err == nil {
						acksMu.Lock()
						acks[m.ID] = r
						acksMu.Unlock()
						break
					}
					if time.Now().After(deadline) {
						t.Errorf("publish %s: not acknowledged within 30s: %v", m.ID, err)
						return
					}
				}
				time.Sleep(10 * time.Millisecond) // about as fast as the pipeline goes
			}
		})
	}

	// The pipeline.
	var handled atomic.Int64
	pctx, stopProcessing := context.WithCancel(ctx)
	processed := make(chan error, 1)
	go func() {
		processed <- cl.Process(pctx, in, sub, func(_ context.Context, m *client.Message) ([]*client.Message, error) {
			handled.Add(1)
			fmt.Fprintf(clientLog, "handled %s %s attempt=%d partition=%d offset=%d\n", time.Now().Format("15:04:05.000"), m.ID, m.Attempt, *m.Partition, m.Offset)
			return []*client.Message{{Topic: out, ID: "out/" + m.ID, Payload: []byte("out:" + m.ID)}}, nil
		}, client.WithConcurrency(4), client.WithReconnectBackoff(50*time.Millisecond, time.Second))
	}()
	progress := func(what string) {
		t.Helper()
		from := handled.Load()
		waitFor(t, 20*time.Second, "progress of the pipeline "+what, func() bool { return handled.Load() >= from+100 })
	}
	progress("before the restarts")
	t.Logf("pipeline running after %v", time.Since(began).Round(time.Millisecond))

	disrupt(progress)

	stopOnce()
	if err := producer.Close(ctx); err != nil {
		t.Errorf("close producer: %v", err)
	}
	// Drained: as many outputs as inputs, for a second.
	total := func(topic string) uint64 {
		hs, err := heads(ctx, c.nodes[0], topic)
		if err != nil {
			return 0
		}
		var n uint64
		for _, h := range hs {
			n += h
		}
		return n
	}
	t.Logf("producer stopped after %v; draining", time.Since(began).Round(time.Millisecond))
	drained := time.Now().Add(30 * time.Second)
	lastLog := time.Now()
	for same := 0; same < 20 && time.Now().Before(drained); time.Sleep(50 * time.Millisecond) {
		i, o := total(in), total(out)
		if i > 0 && o >= i {
			same++
		} else {
			same = 0
		}
		if time.Since(lastLog) > 5*time.Second {
			st, err := cl.GetSubscription(ctx, in, sub)
			t.Logf("draining: %d inputs, %d outputs, %d handler calls; subscription stats %+v %v", i, o, handled.Load(), st.Stats, err)
			lastLog = time.Now()
		}
	}
	t.Logf("drained after %v", time.Since(began).Round(time.Millisecond))
	// One Process call, one stream: the subscription's owner must count one
	// consumer. A consumer left over from a forwarded stream that ended
	// while the owner loaded its cursors takes deliveries that nobody
	// handles until the ack timeout.
	if st, err := cl.GetSubscription(ctx, in, sub); err != nil {
		t.Errorf("subscription stats: %v", err)
	} else if st.Stats.Consumers != 1 {
		t.Errorf("the subscription has %d consumers, want 1 (Process's): %+v", st.Stats.Consumers, st.Stats)
	}
	stopProcessing()
	select {
	case err := <-processed:
		if err != nil {
			t.Errorf("Process: %v", err)
		}
	case <-time.After(45 * time.Second):
		t.Error("Process did not return within 45s of its cancel")
	}

	t.Logf("Process returned after %v", time.Since(began).Round(time.Millisecond))
	inLogs := waitConverged(t, c.nodes, in, 20*time.Second)
	outLogs := waitConverged(t, c.nodes, out, 20*time.Second)
	inputs := locate(t, inLogs, "input") // id → where
	for id, r := range acks {
		msgs := inLogs[r.Partition]
		if r.Offset >= uint64(len(msgs)) || msgs[r.Offset].GetId() != id {
			t.Errorf("acknowledged input %s at %d/%d is not there", id, r.Partition, r.Offset)
		}
	}
	byID, byContent := map[string]int{}, map[string]int{}
	var outputs int
	for _, msgs := range outLogs {
		for _, m := range msgs {
			outputs++
			byID[m.GetId()]++
			byContent[string(m.GetPayload())]++
		}
	}
	var missing, doubled []string
	for id := range inputs {
		switch n, m := byID["out/"+id], byContent["out:"+id]; {
		case n == 0 || m == 0:
			missing = append(missing, fmt.Sprintf("%s (by id %d, by content %d)", id, n, m))
		case n > 1 || m > 1:
			doubled = append(doubled, fmt.Sprintf("%s (by id %d, by content %d)", id, n, m))
		}
	}
	if len(missing) > 0 {
		t.Errorf("%d of %d inputs have no output: %v", len(missing), len(inputs), firstN(missing, 10))
	}
	if len(doubled) > 0 {
		t.Errorf("%d of %d inputs have more than one output: %v", len(doubled), len(inputs), firstN(doubled, 10))
	}
	if outputs != len(inputs) {
		t.Errorf("%d outputs for %d inputs", outputs, len(inputs))
	}
	t.Logf("%d inputs (%d acknowledged), %d outputs, %d handler calls", len(inputs), len(acks), outputs, handled.Load())
}

func firstN(s []string, n int) []string { return s[:min(n, len(s))] }
