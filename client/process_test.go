package client_test

import (
	"context"
	"math/rand/v2"
	"os"
	"sort"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferrymq/ferry/client"
)

// TestProcessEffectivelyOnceAcrossCrashes runs an effectively-once
// in→out pipeline with Process while the broker is SIGKILLed and the
// Process call is cancelled and started again, each at seeded random
// points of its progress. "out" has the shortest dedup window the broker
// accepts (storage.TopicConfig.Validate: anything above 0), so topic dedup
// cannot hide a double commit: once the subscription is drained, "out"
// must hold exactly one message per input — counted in the log itself —
// with one distinct id per input.
//
// FERRY_CLIENT_SEED replays a seed.
func TestProcessEffectivelyOnceAcrossCrashes(t *testing.T) {
	const (
		n                   = 400
		in, out, sub        = "in", "out", "pipe"
		partitions          = 2
		kills, restarts     = 3, 3
		concurrency         = 4
		drainTimeout        = 2 * time.Second
		ackTimeout          = time.Second
		processReturnsLimit = drainTimeout + 10*time.Second
	)
	seed := uint64(20261124)
	if s := os.Getenv("FERRY_CLIENT_SEED"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("FERRY_CLIENT_SEED: %v", err)
		}
		seed = v
	}
	t.Logf("seed %d (FERRY_CLIENT_SEED=%d replays)", seed, seed)
	rng := rand.New(rand.NewPCG(seed, 1))

	dir, addr := t.TempDir(), freeAddr(t)
	proc := startFerry(t, dir, addr)
	c := quietDial(t, addr, client.WithCallTimeout(3*time.Second))
	mustCreate(t, c, in, client.TopicConfig{Partitions: partitions}, sub, client.SubscriptionConfig{
		Guarantee: client.EffectivelyOnce, Type: client.Shared, Start: client.Earliest(),
		AckTimeout: ackTimeout, BackoffMin: 100 * time.Millisecond})
	mustCreate(t, c, out, client.TopicConfig{Partitions: partitions, DedupWindow: time.Nanosecond}, "", client.SubscriptionConfig{})
	msgs := make([]*client.Message, n)
	for i := range msgs {
		msgs[i] = &client.Message{Key: []byte(strconv.Itoa(i % 13)), Payload: []byte(strconv.Itoa(i))}
	}
	publishAll(t, c, in, msgs...)

	// The events, at seeded points of progress (handler calls).
	type event struct {
		at   int64
		kill bool // else cancel and restart the Process call
	}
	var events []event
	for i := range kills + restarts {
		events = append(events, event{at: 1 + rng.Int64N(n-n/10), kill: i < kills})
	}
	sort.Slice(events, func(i, j int) bool { return events[i].at < events[j].at })

	var calls atomic.Int64
	fn := func(_ context.Context, m *client.Message) ([]*client.Message, error) {
		calls.Add(1)
		return []*client.Message{{Topic: out, Key: m.Key, Payload: append([]byte("out:"), m.Payload...)}}, nil
	}
	type run struct {
		cancel context.CancelFunc
		done   chan struct{} // closed once Process returned err
		err    error
	}
	start := func() *run {
		ctx, cancel := context.WithCancel(context.Background())
		r := &run{cancel: cancel, done: make(chan struct{})}
		go func() {
			defer close(r.done)
			r.err = c.Process(ctx, in, sub, fn, client.WithConcurrency(concurrency), client.WithDrainTimeout(drainTimeout),
				client.WithReconnectBackoff(20*time.Millisecond, 500*time.Millisecond))
		}()
		return r
	}
	stop := func(r *run) {
		t.Helper()
		r.cancel()
		select {
		case <-r.done:
			if r.err != nil {
				t.Fatalf("Process returned %v after its ctx ended, want nil", r.err)
			}
		case <-time.After(processReturnsLimit):
			t.Fatalf("Process did not return within %v of its ctx ending", processReturnsLimit)
		}
	}
	// running fails the test if the current Process call returned.
	running := func(r *run) {
		t.Helper()
		select {
		case <-r.done:
			t.Fatalf("Process returned %v", r.err)
		default:
		}
	}
	cur := start()
	defer func() {
		cur.cancel()
		<-cur.done
	}()
	for _, e := range events {
		waitFor(t, waitLimit, "progress to "+strconv.FormatInt(e.at, 10), func() bool {
			running(cur)
			return calls.Load() >= e.at
		})
		if e.kill {
			proc.kill()
			t.Logf("broker SIGKILLed after %d handler calls", calls.Load())
			proc = startFerry(t, dir, addr)
		} else {
			stop(cur)
			t.Logf("Process restarted after %d handler calls", calls.Load())
			cur = start()
		}
	}

	waitFor(t, 3*waitLimit/2, "the subscription to drain", func() bool {
		running(cur)
		st, ok := subStats(c, in, sub)
		return ok && st.Backlog == 0 && st.InFlight == 0
	})
	stop(cur)

	byPayload := map[string][]string{} // output payload → ids stored
	ids := map[string]bool{}
	stored := readAll(t, rawConn(t, addr), out, partitions)
	for _, m := range stored {
		byPayload[string(m.GetPayload())] = append(byPayload[string(m.GetPayload())], m.GetId())
		ids[m.GetId()] = true
	}
	for i := range n {
		switch got := byPayload["out:"+strconv.Itoa(i)]; len(got) {
		case 0:
			t.Errorf("input %d has no output", i)
		case 1:
		default:
			t.Errorf("input %d has %d outputs, ids %v: written more than once", i, len(got), got)
		}
	}
	if len(stored) != n || len(ids) != n {
		t.Errorf("out holds %d messages with %d distinct ids, want %d of each", len(stored), len(ids), n)
	}
	t.Logf("%d handler calls for %d inputs", calls.Load(), n)
}
