package client_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/ferrymq/ferry/client"
	ferryv1 "github.com/ferrymq/ferry/proto/ferry/v1"
)

// subscribe runs c.Subscribe in the background until the test ends and
// returns the channel its result arrives on. The caller cancels ctx.
func subscribe(t *testing.T, ctx context.Context, c *client.Client, topic, sub string, h client.Handler, opts ...client.SubscribeOption) <-chan error {
	t.Helper()
	errc := make(chan error, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		errc <- c.Subscribe(ctx, topic, sub, h, opts...)
	}()
	t.Cleanup(func() { <-done })
	return errc
}

// stopSubscribe cancels a Subscribe and checks it drains and returns nil.
func stopSubscribe(t *testing.T, cancel context.CancelFunc, errc <-chan error) {
	t.Helper()
	cancel()
	select {
	case err := <-errc:
		if err != nil {
			t.Fatalf("Subscribe returned %v after its ctx ended, want nil", err)
		}
	case <-time.After(waitLimit):
		t.Fatalf("Subscribe did not return within %v of its ctx ending", waitLimit)
	}
}

// publishAll publishes msgs and waits until every one is stored.
func publishAll(t *testing.T, c *client.Client, topic string, msgs ...*client.Message) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	p := c.NewProducer(topic, client.ProducerOptions{})
	var fs []*client.PublishFuture
	for _, m := range msgs {
		fs = append(fs, p.PublishAsync(m))
	}
	ids := make([]string, len(fs))
	for i, f := range fs {
		if _, err := f.Wait(ctx); err != nil {
			t.Fatalf("publish %d: %v", i, err)
		}
		ids[i] = f.ID()
	}
	if err := p.Close(ctx); err != nil {
		t.Fatal(err)
	}
	return ids
}

// waitStats waits until the subscription's stats satisfy cond.
func waitStats(t *testing.T, c *client.Client, topic, sub, what string, cond func(client.SubscriptionStats) bool) client.SubscriptionStats {
	t.Helper()
	var st client.SubscriptionStats
	waitFor(t, waitLimit, what, func() bool {
		var ok bool
		st, ok = subStats(c, topic, sub)
		return ok && cond(st)
	})
	return st
}

// delivery is what a handler saw.
type delivery struct {
	id      string
	attempt uint32
	at      time.Time
}

func (d delivery) String() string {
	return fmt.Sprintf("%s attempt %d at %s", d.id, d.attempt, d.at.Format("15:04:05.000"))
}

func TestSubscribeHandlerErrorRedeliversWithBackoff(t *testing.T) {
	b := startBroker(t, t.TempDir())
	c := quietDial(t, b.addr)
	const topic, sub = "work", "retry"
	const backoffMin = 100 * time.Millisecond
	mustCreate(t, c, topic, client.TopicConfig{}, sub, client.SubscriptionConfig{Guarantee: client.AtLeastOnce,
		Type: client.Shared, Start: client.Earliest(), AckTimeout: 10 * time.Second, BackoffMin: backoffMin, BackoffMax: time.Second})
	ids := publishAll(t, c, topic, &client.Message{Payload: []byte("flaky")})

	var (
		mu   sync.Mutex
		seen []delivery
	)
	handled := make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	errc := subscribe(t, ctx, c, topic, sub, func(_ context.Context, m *client.Message) error {
		mu.Lock()
		defer mu.Unlock()
		seen = append(seen, delivery{m.ID, m.Attempt, time.Now()})
		if m.Attempt < 3 {
			return fmt.Errorf("attempt %d fails", m.Attempt)
		}
		close(handled)
		return nil
	}, client.WithConcurrency(2))
	select {
	case <-handled:
	case err := <-errc:
		t.Fatalf("Subscribe returned early: %v", err)
	case <-time.After(waitLimit):
		t.Fatalf("not handled within %v; deliveries %v", waitLimit, seen)
	}
	st := waitStats(t, c, topic, sub, "the ack", func(s client.SubscriptionStats) bool { return s.Acked == 1 })
	stopSubscribe(t, cancel, errc)

	mu.Lock()
	defer mu.Unlock()
	if len(seen) != 3 {
		t.Fatalf("%d deliveries, want 3 (two failures, one success): %v", len(seen), seen)
	}
	for i, d := range seen {
		if d.id != ids[0] || d.attempt != uint32(i+1) {
			t.Fatalf("delivery %d: id %s attempt %d, want %s attempt %d", i, d.id, d.attempt, ids[0], i+1)
		}
	}
	// The nth nack waits backoffMin doubled n-1 times (10% slack for
	// timer granularity).
	for i, want := range []time.Duration{backoffMin, 2 * backoffMin} {
		if gap := seen[i+1].at.Sub(seen[i].at); gap < want*9/10 {
			t.Errorf("attempt %d came %v after attempt %d: backoff %v not kept", i+2, gap, i+1, want)
		}
	}
	if st.Nacked != 2 || st.Redelivered != 2 || st.Backlog != 0 {
		t.Errorf("stats %+v: want 2 nacks, 2 redeliveries, no backlog", st)
	}
}

func TestSubscribeHandlerPanicIsRecoveredAndNacked(t *testing.T) {
	b := startBroker(t, t.TempDir())
	c := quietDial(t, b.addr)
	const topic, sub = "work", "panicky"
	mustCreate(t, c, topic, client.TopicConfig{}, sub, client.SubscriptionConfig{Guarantee: client.AtLeastOnce,
		Type: client.Shared, Start: client.Earliest(), BackoffMin: 50 * time.Millisecond, BackoffMax: 100 * time.Millisecond})
	publishAll(t, c, topic, &client.Message{Payload: []byte("boom")})

	var mu sync.Mutex
	handled := map[string][]uint32{} // payload → attempts seen
	got := make(chan string, 10)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	errc := subscribe(t, ctx, c, topic, sub, func(_ context.Context, m *client.Message) error {
		mu.Lock()
		handled[string(m.Payload)] = append(handled[string(m.Payload)], m.Attempt)
		mu.Unlock()
		if string(m.Payload) == "boom" && m.Attempt == 1 {
			panic("handler bug")
		}
		got <- string(m.Payload)
		return nil
	}, client.WithConcurrency(1))
	want := func(payload string) {
		t.Helper()
		select {
		case p := <-got:
			if p != payload {
				t.Fatalf("handled %q, want %q", p, payload)
			}
		case err := <-errc:
			t.Fatalf("Subscribe returned %v after a handler panic", err)
		case <-time.After(waitLimit):
			t.Fatalf("%q not handled within %v", payload, waitLimit)
		}
	}
	want("boom") // its second attempt, after the panic nacked the first
	// The same Subscribe goes on taking new messages.
	publishAll(t, c, topic, &client.Message{Payload: []byte("after")})
	want("after")
	st := waitStats(t, c, topic, sub, "both acks", func(s client.SubscriptionStats) bool { return s.Acked == 2 })
	stopSubscribe(t, cancel, errc)
	mu.Lock()
	defer mu.Unlock()
	if a := handled["boom"]; len(a) != 2 || a[0] != 1 || a[1] != 2 {
		t.Errorf("boom handled at attempts %v, want [1 2]", a)
	}
	if st.Nacked != 1 {
		t.Errorf("stats %+v: want the panic's delivery nacked once", st)
	}
}

// TestSubscribeSlowHandlerDeadlineExtended runs a handler three times as
// long as the ack timeout: the SDK must keep extending its deadline, so the
// message is not redelivered (to the idle second handler) while it runs.
func TestSubscribeSlowHandlerDeadlineExtended(t *testing.T) {
	for _, g := range []client.Guarantee{client.AtLeastOnce, client.EffectivelyOnce} {
		t.Run(g.String(), func(t *testing.T) {
			t.Parallel()
			b := startBroker(t, t.TempDir())
			c := quietDial(t, b.addr)
			const topic, sub = "work", "slow"
			const ackTimeout, work = time.Second, 3 * time.Second
			mustCreate(t, c, topic, client.TopicConfig{}, sub, client.SubscriptionConfig{Guarantee: g,
				Type: client.Shared, Start: client.Earliest(), AckTimeout: ackTimeout, BackoffMin: 100 * time.Millisecond})
			publishAll(t, c, topic, &client.Message{Payload: []byte("slow")})

			var mu sync.Mutex
			var seen []delivery
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			errc := subscribe(t, ctx, c, topic, sub, func(ctx context.Context, m *client.Message) error {
				mu.Lock()
				seen = append(seen, delivery{m.ID, m.Attempt, time.Now()})
				mu.Unlock()
				if m.Attempt > 1 {
					return nil // the redelivery the test is about; ack it to end
				}
				select { // the slow work
				case <-time.After(work):
				case <-ctx.Done():
				}
				return nil
			}, client.WithConcurrency(2))
			st := waitStats(t, c, topic, sub, "the ack", func(s client.SubscriptionStats) bool { return s.Acked == 1 })
			stopSubscribe(t, cancel, errc)
			mu.Lock()
			defer mu.Unlock()
			if len(seen) != 1 || seen[0].attempt != 1 {
				t.Fatalf("deliveries %v: want only attempt 1 while its handler ran %v (ack timeout %v)", seen, work, ackTimeout)
			}
			if st.Redelivered != 0 || st.Delivered != 1 {
				t.Fatalf("stats %+v: want 1 delivery and no redelivery", st)
			}
		})
	}
}

// TestSubscribeReconnectsAcrossBrokerRestarts SIGKILLs the broker while
// handlers run, then stops it with SIGTERM (which ends subscribe streams
// with UNAVAILABLE), each time restarting it on the same address: the same
// Subscribe call must reconnect by itself and handle every message.
func TestSubscribeReconnectsAcrossBrokerRestarts(t *testing.T) {
	const n = 600
	const topic, sub = "jobs", "workers"
	dir, addr := t.TempDir(), freeAddr(t)
	proc := startFerry(t, dir, addr)
	c := quietDial(t, addr)
	mustCreate(t, c, topic, client.TopicConfig{Partitions: 2}, sub, client.SubscriptionConfig{Guarantee: client.AtLeastOnce,
		Type: client.Shared, Start: client.Earliest(), AckTimeout: 2 * time.Second, BackoffMin: 100 * time.Millisecond})
	msgs := make([]*client.Message, n)
	for i := range msgs {
		msgs[i] = &client.Message{Key: []byte(strconv.Itoa(i % 10)), Payload: []byte(strconv.Itoa(i))}
	}
	ids := publishAll(t, c, topic, msgs...)

	var (
		mu        sync.Mutex
		handled   = map[string]int{}
		restarts  = make(chan string, 2) // how the handler stopped the broker
		cur       atomic.Pointer[ferryProc]
		byCycle   [3]int // distinct messages first handled in each cycle
		cycle     atomic.Int32
		restarted = make(chan struct{}) // closed after the first restart
		// closed when the last cycle begins. Until then a handler of a
		// message after the second stop does not return, so nothing is
		// acked and the stopping broker can deliver no more than the
		// credit: the rest must come from the restarted one, however the
		// shutdown is scheduled.
		lastCycle = make(chan struct{})
	)
	cur.Store(proc)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	errc := subscribe(t, ctx, c, topic, sub, func(hctx context.Context, m *client.Message) error {
		mu.Lock()
		first := handled[m.ID] == 0
		handled[m.ID]++
		if first {
			byCycle[cycle.Load()]++
		}
		k := len(handled)
		mu.Unlock()
		switch {
		case first && k == n/4:
			cur.Load().kill()
			restarts <- "SIGKILL"
		case first && k == n/2:
			select {
			case <-restarted:
			case <-time.After(waitLimit):
				return errors.New("the broker was not restarted")
			}
			p := cur.Load()
			_ = p.cmd.Process.Signal(syscall.SIGTERM)
			<-p.Exited()
			restarts <- "SIGTERM"
		}
		if k > n/2 {
			select {
			case <-lastCycle:
			case <-hctx.Done():
				return hctx.Err()
			}
		}
		return nil
	}, client.WithConcurrency(4), client.WithReconnectBackoff(20*time.Millisecond, 500*time.Millisecond))
	for i := range 2 {
		select {
		case how := <-restarts:
			t.Logf("broker stopped with %s after %d messages", how, []int{n / 4, n / 2}[i])
		case err := <-errc:
			t.Fatalf("Subscribe returned %v", err)
		case <-time.After(waitLimit):
			t.Fatalf("cycle %d: the handlers did not get to stop the broker", i)
		}
		// The next cycle begins at the stop: the client may reconnect to
		// the new broker and handle messages before startFerry returns.
		next := cycle.Add(1)
		cur.Store(startFerry(t, dir, addr))
		switch next {
		case 1:
			close(restarted)
		case 2:
			close(lastCycle)
		}
	}
	waitFor(t, waitLimit, "every message handled", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(handled) == n
	})
	select {
	case err := <-errc:
		t.Fatalf("Subscribe returned %v", err)
	default:
	}
	waitStats(t, c, topic, sub, "an empty backlog", func(s client.SubscriptionStats) bool { return s.Backlog == 0 && s.InFlight == 0 })
	stopSubscribe(t, cancel, errc)
	mu.Lock()
	defer mu.Unlock()
	for _, id := range ids {
		if handled[id] == 0 {
			t.Fatalf("message %s never handled", id)
		}
	}
	if byCycle[2] == 0 {
		t.Fatalf("no message first handled after the last restart (%v): the test did not stop the broker mid-stream", byCycle)
	}
	t.Logf("first handled per broker run: %v", byCycle)
}

// TestAckSyncEffectivelyOnce checks AckSync's answers under
// EFFECTIVELY_ONCE: nil for an ack the broker confirmed, FAILED_PRECONDITION
// for a delivery superseded by a redelivery — after its deadline passed
// unextended, or after it was nacked elsewhere.
func TestAckSyncEffectivelyOnce(t *testing.T) {
	b := startBroker(t, t.TempDir())
	c := quietDial(t, b.addr)
	raw := ferryv1.NewSubscriberServiceClient(rawConn(t, b.addr))
	cfg := client.SubscriptionConfig{Guarantee: client.EffectivelyOnce, Type: client.Shared, Start: client.Earliest(),
		AckTimeout: time.Second, BackoffMin: 100 * time.Millisecond}

	t.Run("confirmed", func(t *testing.T) {
		const topic, sub = "ok", "eo"
		mustCreate(t, c, topic, client.TopicConfig{}, sub, cfg)
		publishAll(t, c, topic, &client.Message{Payload: []byte("a")})
		results := make(chan error, 2)
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		errc := subscribe(t, ctx, c, topic, sub, func(ctx context.Context, m *client.Message) error {
			results <- m.AckSync(ctx)
			results <- m.AckSync(ctx) // settled already
			return nil
		})
		if err := <-results; err != nil {
			t.Fatalf("AckSync: %v, want nil", err)
		}
		if err := <-results; err == nil {
			t.Fatal("a second AckSync of one delivery returned nil")
		}
		st := waitStats(t, c, topic, sub, "the ack", func(s client.SubscriptionStats) bool { return s.Acked == 1 })
		stopSubscribe(t, cancel, errc)
		if st.Backlog != 0 || st.Delivered != 1 {
			t.Fatalf("stats %+v: want one delivery, acked", st)
		}
	})

	stale := func(t *testing.T, topic string, supersede func(t *testing.T, m *client.Message), opts ...client.SubscribeOption) {
		const sub = "eo"
		mustCreate(t, c, topic, client.TopicConfig{}, sub, cfg)
		publishAll(t, c, topic, &client.Message{Payload: []byte("a")})
		second := make(chan struct{})
		results := make(chan [2]any, 2) // attempt, AckSync error
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		errc := subscribe(t, ctx, c, topic, sub, func(ctx context.Context, m *client.Message) error {
			switch m.Attempt {
			case 1:
				supersede(t, m)
				select {
				case <-second:
				case <-time.After(waitLimit):
				}
			case 2:
				close(second)
			}
			results <- [2]any{m.Attempt, m.AckSync(ctx)}
			return nil
		}, append(opts, client.WithConcurrency(2))...)
		for range 2 {
			var r [2]any
			select {
			case r = <-results:
			case <-time.After(waitLimit):
				t.Fatal("no AckSync answer: the message was not redelivered")
			}
			err, _ := r[1].(error)
			switch r[0].(uint32) {
			case 1:
				if client.StatusCode(err) != codes.FailedPrecondition {
					t.Errorf("AckSync of the superseded attempt 1: %v, want FAILED_PRECONDITION", err)
				}
			case 2:
				if err != nil {
					t.Errorf("AckSync of attempt 2: %v, want nil", err)
				}
			default:
				t.Errorf("unexpected attempt %v", r[0])
			}
		}
		st := waitStats(t, c, topic, sub, "the ack", func(s client.SubscriptionStats) bool { return s.Acked == 1 })
		stopSubscribe(t, cancel, errc)
		if st.Backlog != 0 {
			t.Fatalf("stats %+v: want no backlog", st)
		}
	}
	t.Run("stale after its deadline", func(t *testing.T) {
		// No extension: attempt 1 times out and attempt 2 goes out.
		stale(t, "timeout", func(*testing.T, *client.Message) {}, client.WithMaxExtension(time.Nanosecond))
	})
	t.Run("stale after a nack elsewhere", func(t *testing.T) {
		stale(t, "nacked", func(t *testing.T, m *client.Message) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			resp, err := raw.Nack(ctx, &ferryv1.NackRequest{Topic: "nacked", Subscription: "eo", DeliveryIds: []string{m.DeliveryID}})
			if err != nil || len(resp.GetResults()) != 1 || codes.Code(resp.GetResults()[0].GetCode()) != codes.OK {
				t.Errorf("nack elsewhere: %v %v", resp, err)
			}
		})
	})
}

// TestSubscribeStartsWhileBrokerDown starts Subscribe while the broker is
// restarting: reaching the broker is retried like a broken stream, not
// returned, and once the broker is back the messages are handled. A
// Subscribe whose ctx ends before it could start returns nil.
func TestSubscribeStartsWhileBrokerDown(t *testing.T) {
	dir, addr := t.TempDir(), freeAddr(t)
	b := openBroker(t, dir, addr)
	c := quietDial(t, addr)
	const topic, sub = "work", "late"
	mustCreate(t, c, topic, client.TopicConfig{}, sub, client.SubscriptionConfig{Guarantee: client.AtLeastOnce,
		Type: client.Shared, Start: client.Earliest()})
	publishAll(t, c, topic, &client.Message{Payload: []byte("waiting")})
	b.stop(t)

	got := make(chan string, 1)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	errc := subscribe(t, ctx, c, topic, sub, func(_ context.Context, m *client.Message) error {
		got <- string(m.Payload)
		return nil
	}, client.WithReconnectBackoff(20*time.Millisecond, 200*time.Millisecond))
	// Give Subscribe time to find the broker down before it comes back.
	select {
	case err := <-errc:
		t.Fatalf("Subscribe with the broker down returned %v; want it to wait for the broker", err)
	case <-time.After(300 * time.Millisecond):
	}
	openBroker(t, dir, addr)
	select {
	case p := <-got:
		if p != "waiting" {
			t.Fatalf("handled %q", p)
		}
	case err := <-errc:
		t.Fatalf("Subscribe returned %v", err)
	case <-time.After(waitLimit):
		t.Fatalf("nothing handled within %v of the broker coming back", waitLimit)
	}
	stopSubscribe(t, cancel, errc)

	// Cancelled before it ever reached the broker: nil, like any other end.
	b2 := openBroker(t, t.TempDir(), freeAddr(t))
	c2 := quietDial(t, b2.addr)
	b2.stop(t)
	ctx2, cancel2 := context.WithCancel(context.Background())
	errc2 := subscribe(t, ctx2, c2, topic, sub, func(context.Context, *client.Message) error { return nil })
	stopSubscribe(t, cancel2, errc2)
}
