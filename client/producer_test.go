package client_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ferrymq/ferry/client"
)

// TestProducerRetriesAcrossBrokerRestarts publishes with PublishAsync
// while the broker is SIGKILLed and, later, stopped with SIGTERM, each time
// restarted on the same address so the producer's connection comes back by
// itself. Every future must resolve OK; the topic must then hold every id
// exactly once (a retry resent with a new id, or a resend the broker did
// not recognise, stores it twice), and an EXCLUSIVE at-least-once
// subscription from earliest must see each key's messages first in publish
// order (a retry that reorders batches breaks it).
func TestProducerRetriesAcrossBrokerRestarts(t *testing.T) {
	const (
		n          = 3000
		keys       = 16
		partitions = 4
		topic, sub = "orders", "audit"
	)
	dir, brokerAddr := t.TempDir(), freeAddr(t)
	proc := startFerry(t, dir, brokerAddr)
	// The client goes through a proxy that can cut its connection while the
	// broker stays up.
	px := startProxy(t, brokerAddr)
	logs := &logRecorder{}
	c := quietDial(t, px.addr(), client.WithLogger(slog.New(logs)))
	mustCreate(t, c, topic, client.TopicConfig{Partitions: partitions}, sub, client.SubscriptionConfig{
		Guarantee: client.AtLeastOnce, Type: client.Exclusive, Start: client.Earliest()})

	p := c.NewProducer(topic, client.ProducerOptions{BatchMessages: 50})
	futures := make([]*client.PublishFuture, n)
	stopped := make(chan string)          // the publisher stopped the broker
	restarted := make(chan *ferryProc, 1) // the test restarted it
	published := make(chan struct{})      // all n PublishAsync calls returned
	go func() {
		defer close(published)
		cur := proc
		for i := range n {
			switch i {
			case n / 4: // mid-stream: batches sent and not answered
				cur.kill()
				stopped <- "SIGKILL"
			case n / 2: // a graceful stop: UNAVAILABLE answers
				cur = <-restarted
				_ = cur.cmd.Process.Signal(syscall.SIGTERM)
				<-cur.Exited()
				stopped <- "SIGTERM"
			case 3 * n / 4: // the connection breaks, the broker stays up
				cur = <-restarted
				px.cut()
			}
			futures[i] = p.PublishAsync(&client.Message{Key: []byte("key-" + strconv.Itoa(i%keys)), Payload: []byte(strconv.Itoa(i))})
		}
	}()
	for cycle := range 2 {
		select {
		case how := <-stopped:
			t.Logf("broker stopped with %s", how)
		case <-time.After(waitLimit):
			t.Fatalf("cycle %d: the publisher did not get to stop the broker", cycle)
		}
		restarted <- startFerry(t, dir, brokerAddr)
	}
	select {
	case <-published:
	case <-time.After(waitLimit):
		t.Fatal("PublishAsync did not return for every message once the broker was back")
	}

	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	ids := make(map[string]int, n) // id → publish index
	duplicates := 0
	for i, f := range futures {
		r, err := f.Wait(ctx)
		if err != nil {
			t.Fatalf("publish %d (id %s): %v", i, f.ID(), err)
		}
		if r.Duplicate {
			duplicates++
		}
		if _, ok := ids[f.ID()]; ok {
			t.Fatalf("id %s given to two messages", f.ID())
		}
		ids[f.ID()] = i
	}
	if err := p.Close(ctx); err != nil {
		t.Fatal(err)
	}
	reopened, resent := logs.sum("ferry producer: publish stream reopened", "resent_batches")
	t.Logf("stream reopened %d times, %d batches resent; %d futures answered duplicate=true (resent after the broker had stored them)",
		reopened, resent, duplicates)
	if resent == 0 {
		t.Fatal("no batch was resent: the broker was not stopped mid-stream")
	}

	// Stored exactly once each: the log itself, not a deduplicating view.
	stored := map[string]int{}
	at := map[int]string{}         // publish index → where it is stored, for a failure's message
	order := map[uint32][]string{} // per partition, the publish indexes in offset order
	for _, m := range readAll(t, rawConn(t, brokerAddr), topic, partitions) {
		stored[m.GetId()]++
		at[ids[m.GetId()]] = fmt.Sprintf("partition %d offset %d", m.GetPartition(), m.GetOffset())
		order[m.GetPartition()] = append(order[m.GetPartition()], strconv.Itoa(ids[m.GetId()]))
		if i, ok := ids[m.GetId()]; !ok {
			t.Errorf("stored id %s was never published", m.GetId())
		} else if string(m.GetPayload()) != strconv.Itoa(i) {
			t.Errorf("id %s stored with payload %q, published with %d", m.GetId(), m.GetPayload(), i)
		}
	}
	for id, i := range ids {
		switch k := stored[id]; {
		case k == 0:
			t.Errorf("message %d (id %s) lost: acknowledged but not stored", i, id)
		case k > 1:
			t.Errorf("message %d (id %s) stored %d times", i, id, k)
		}
	}
	if t.Failed() {
		t.FailNow()
	}

	// Consumed once each, every key in publish order.
	var (
		mu      sync.Mutex
		seen    = map[string]bool{}
		lastIdx = map[string]int{}
	)
	sctx, stop := context.WithCancel(ctx)
	defer stop()
	err := c.Subscribe(sctx, topic, sub, func(_ context.Context, m *client.Message) error {
		mu.Lock()
		defer mu.Unlock()
		if seen[m.ID] {
			return nil // a redelivery: allowed, and not a first delivery
		}
		seen[m.ID] = true
		i, err := strconv.Atoi(string(m.Payload))
		if err != nil {
			t.Errorf("payload %q", m.Payload)
			return nil
		}
		if last, ok := lastIdx[string(m.Key)]; ok && i < last {
			// Stored out of order (a resend overtook), or delivered so?
			t.Errorf("key %s: message %d (stored at %s, attempt %d) delivered first after message %d (stored at %s); partition %d holds, by publish index: %s",
				m.Key, i, at[i], m.Attempt, last, at[last], *m.Partition, strings.Join(order[*m.Partition][:min(60, len(order[*m.Partition]))], " "))
		}
		lastIdx[string(m.Key)] = i
		if len(seen) == n {
			stop()
		}
		return nil
	}, client.WithConcurrency(1))
	if err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(seen) != n {
		t.Fatalf("consumed %d of %d messages before the deadline", len(seen), n)
	}
}

// bpMessage is message i of the backpressure test: 200 bytes as the
// producer counts them (id + key + payload + 16).
func bpMessage(i int) *client.Message {
	id := fmt.Sprintf("bp-%06d", i)
	return &client.Message{ID: id, Key: []byte("k"), Payload: make([]byte, 200-16-1-len(id))}
}

const bpSize = 200

// TestProducerBackpressure runs a producer far faster than the broker —
// first while the broker fsyncs every batch, then while it is down — and
// checks after every PublishAsync that the bytes of unresolved futures
// never exceed MaxInflightBytes plus one message (the one being released):
// PublishAsync blocks at the cap instead of buffering without bound. Once
// the broker is back every future resolves OK.
func TestProducerBackpressure(t *testing.T) {
	const (
		capBytes = 8 << 10
		up, down = 1500, 400 // messages published with the broker up, then down
		topic    = "bp"
	)
	dir, addr := t.TempDir(), freeAddr(t)
	b := openBroker(t, dir, addr)
	c := quietDial(t, addr)
	mustCreate(t, c, topic, client.TopicConfig{}, "", client.SubscriptionConfig{})
	// The queue (BatchMessages long) holds more than the cap, so the cap,
	// not a full queue, is what blocks.
	p := c.NewProducer(topic, client.ProducerOptions{MaxInflightBytes: capBytes, BatchMessages: 1000})
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()

	futures := make([]*client.PublishFuture, 0, up+down)
	var published atomic.Int64
	lo, maxSeen := 0, 0
	// publish publishes messages [from, to) and checks the cap after each.
	publish := func(from, to int) error {
		for i := from; i < to; i++ {
			futures = append(futures, p.PublishAsync(bpMessage(i)))
			published.Add(1)
			for lo < len(futures) && isDone(futures[lo]) {
				lo++
			}
			unresolved := 0
			for _, f := range futures[lo:] {
				if !isDone(f) {
					unresolved += bpSize
				}
			}
			maxSeen = max(maxSeen, unresolved)
			if unresolved > capBytes+bpSize {
				return fmt.Errorf("after PublishAsync %d: %d bytes unresolved, cap %d", i, unresolved, capBytes)
			}
		}
		return nil
	}

	if err := publish(0, up); err != nil {
		t.Fatal(err)
	}
	if err := p.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("broker up: at most %d bytes unresolved (cap %d)", maxSeen, capBytes)

	b.stop(t)
	done := make(chan error, 1)
	go func() { done <- publish(up, up+down) }()
	// The producer fills up to the cap and then blocks: nothing resolves
	// while the broker is down, so getting further would break the cap,
	// which publish reports.
	waitFor(t, waitLimit, "the producer to reach its cap", func() bool {
		return published.Load() >= up+capBytes/bpSize-1
	})
	select {
	case err := <-done:
		t.Fatalf("all %d messages published with the broker down (%v): PublishAsync did not block", down, err)
	default:
	}
	openBroker(t, dir, addr)
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-ctx.Done():
		t.Fatalf("PublishAsync still blocked %v after the broker came back (%d published)", waitLimit, published.Load())
	}
	for i, f := range futures {
		if _, err := f.Wait(ctx); err != nil {
			t.Fatalf("publish %d: %v", i, err)
		}
	}
	if err := p.Close(ctx); err != nil {
		t.Fatal(err)
	}
	tp, err := c.GetTopic(ctx, topic)
	if err != nil {
		t.Fatal(err)
	}
	if got := tp.Partitions[0].Messages; got != up+down {
		t.Fatalf("topic holds %d messages, want %d", got, up+down)
	}
}

func isDone(f *client.PublishFuture) bool {
	select {
	case <-f.Done():
		return true
	default:
		return false
	}
}

// TestProducerFlushAndClose checks that Flush and Close send what is
// queued without waiting for the linger and wait for the answers; that
// Close, once its ctx ends, fails what could not be sent with ErrClosed;
// and that publishing after Close fails with ErrClosed.
func TestProducerFlushAndClose(t *testing.T) {
	const topic = "fc"
	lingering := client.ProducerOptions{Linger: time.Hour, BatchMessages: 1000}

	t.Run("flush waits for everything before it", func(t *testing.T) {
		b := startBroker(t, t.TempDir())
		c := quietDial(t, b.addr)
		mustCreate(t, c, topic, client.TopicConfig{Partitions: 3}, "", client.SubscriptionConfig{})
		p := c.NewProducer(topic, lingering)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		for round := range 3 {
			var fs []*client.PublishFuture
			for i := range 250 {
				fs = append(fs, p.PublishAsync(&client.Message{Key: []byte(strconv.Itoa(i % 5)), Payload: []byte("x")}))
			}
			if err := p.Flush(ctx); err != nil {
				t.Fatalf("round %d: Flush: %v", round, err)
			}
			for i, f := range fs {
				if !isDone(f) {
					t.Fatalf("round %d: message %d unanswered when Flush returned", round, i)
				}
				if _, err := f.Wait(ctx); err != nil {
					t.Fatalf("round %d: message %d: %v", round, i, err)
				}
			}
		}
		if err := p.Flush(ctx); err != nil { // nothing queued
			t.Fatal(err)
		}
		if err := p.Close(ctx); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("close sends what is queued", func(t *testing.T) {
		b := startBroker(t, t.TempDir())
		c := quietDial(t, b.addr)
		mustCreate(t, c, topic, client.TopicConfig{}, "", client.SubscriptionConfig{})
		p := c.NewProducer(topic, lingering)
		var fs []*client.PublishFuture
		for range 300 {
			fs = append(fs, p.PublishAsync(&client.Message{Payload: []byte("x")}))
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := p.Close(ctx); err != nil {
			t.Fatalf("Close: %v", err)
		}
		for i, f := range fs {
			if !isDone(f) {
				t.Fatalf("message %d unanswered when Close returned", i)
			}
			if _, err := f.Wait(ctx); err != nil {
				t.Fatalf("message %d: %v", i, err)
			}
		}
		assertClosed(t, p)
		if err := p.Close(ctx); err != nil { // again: a no-op
			t.Fatalf("second Close: %v", err)
		}
	})

	t.Run("close with the broker down fails the rest when its ctx ends", func(t *testing.T) {
		dir, addr := t.TempDir(), freeAddr(t)
		b := openBroker(t, dir, addr)
		c := quietDial(t, addr)
		mustCreate(t, c, topic, client.TopicConfig{}, "", client.SubscriptionConfig{})
		p := c.NewProducer(topic, client.ProducerOptions{})
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if _, err := p.Publish(ctx, &client.Message{Payload: []byte("first")}); err != nil {
			t.Fatal(err)
		}
		b.stop(t)
		var fs []*client.PublishFuture
		for range 50 {
			fs = append(fs, p.PublishAsync(&client.Message{Payload: []byte("x")}))
		}
		fctx, fcancel := context.WithTimeout(ctx, 200*time.Millisecond)
		defer fcancel()
		if err := p.Flush(fctx); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Flush with the broker down: %v, want %v", err, context.DeadlineExceeded)
		}
		assertCloseFails(t, p, fs)
		assertClosed(t, p)
	})

	t.Run("close with a publisher blocked on a full queue", func(t *testing.T) {
		dir, addr := t.TempDir(), freeAddr(t)
		b := openBroker(t, dir, addr)
		c := quietDial(t, addr)
		mustCreate(t, c, topic, client.TopicConfig{}, "", client.SubscriptionConfig{})
		p := c.NewProducer(topic, client.ProducerOptions{BatchMessages: 5})
		b.stop(t)
		var (
			mu sync.Mutex
			fs []*client.PublishFuture
		)
		published := make(chan struct{})
		go func() { // far more than the queue holds: it blocks
			defer close(published)
			for range 200 {
				f := p.PublishAsync(&client.Message{Payload: []byte("x")})
				mu.Lock()
				fs = append(fs, f)
				mu.Unlock()
			}
		}()
		waitFor(t, waitLimit, "the queue to fill", func() bool {
			mu.Lock()
			defer mu.Unlock()
			return len(fs) >= 5
		})
		mu.Lock()
		some := append([]*client.PublishFuture(nil), fs...)
		mu.Unlock()
		assertCloseFails(t, p, some)
		select {
		case <-published:
		case <-time.After(5 * time.Second):
			t.Fatal("PublishAsync still blocked 5s after Close returned")
		}
		mu.Lock()
		defer mu.Unlock()
		for i, f := range fs {
			if _, err := f.Wait(context.Background()); !errors.Is(err, client.ErrClosed) {
				t.Fatalf("message %d: %v, want ErrClosed", i, err)
			}
		}
	})
}

// assertCloseFails closes p with a short ctx while nothing can be sent, and
// checks that Close returns once the ctx ends and fails fs with ErrClosed.
func assertCloseFails(t *testing.T, p *client.Producer, fs []*client.PublishFuture) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	closed := make(chan error, 1)
	go func() { closed <- p.Close(ctx) }()
	select {
	case err := <-closed:
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Close with the broker down: %v, want %v", err, context.DeadlineExceeded)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not return within 10s of its 300ms ctx ending")
	}
	for i, f := range fs {
		if !isDone(f) {
			t.Fatalf("message %d unanswered when Close returned", i)
		}
		if _, err := f.Wait(context.Background()); !errors.Is(err, client.ErrClosed) {
			t.Fatalf("message %d after Close: %v, want ErrClosed", i, err)
		}
	}
}

// assertClosed checks that a closed producer refuses to publish.
func assertClosed(t *testing.T, p *client.Producer) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := p.PublishAsync(&client.Message{Payload: []byte("late")}).Wait(ctx); !errors.Is(err, client.ErrClosed) {
		t.Fatalf("PublishAsync after Close: %v, want ErrClosed", err)
	}
	if _, err := p.Publish(ctx, &client.Message{Payload: []byte("late")}); !errors.Is(err, client.ErrClosed) {
		t.Fatalf("Publish after Close: %v, want ErrClosed", err)
	}
}
