package client_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/ferrymq/ferry/broker"
	"github.com/ferrymq/ferry/client"
	"github.com/ferrymq/ferry/storage"
)

// testBroker serves a broker on loopback with its data in dir.
type testBroker struct {
	srv  *broker.Server
	addr string
}

func startBroker(tb testing.TB, dir string) *testBroker {
	tb.Helper()
	opts := broker.DefaultOptions(dir)
	opts.GRPCAddr = "127.0.0.1:0"
	opts.HTTPAddr = ""
	opts.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	opts.Storage.MemTableBytes = storage.MinMemTableBytes
	srv, err := broker.Open(opts)
	if err != nil {
		tb.Fatal(err)
	}
	go func() { _ = srv.Serve() }()
	b := &testBroker{srv: srv, addr: srv.GRPCAddr().String()}
	tb.Cleanup(func() { b.stop(tb) })
	return b
}

func (b *testBroker) stop(tb testing.TB) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_ = b.srv.Shutdown(ctx)
}

func dial(tb testing.TB, addr string) *client.Client {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, addr, client.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { c.Close() })
	return c
}

func TestProduceConsumeSmoke(t *testing.T) {
	b := startBroker(t, t.TempDir())
	c := dial(t, b.addr)
	ctx := context.Background()
	if _, err := c.CreateTopic(ctx, "orders", client.TopicConfig{Partitions: 2}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.CreateSubscription(ctx, "orders", "kitchen", client.SubscriptionConfig{
		Guarantee: client.AtLeastOnce, Type: client.Shared, Start: client.Earliest()}); err != nil {
		t.Fatal(err)
	}
	p := c.NewProducer("orders", client.ProducerOptions{})
	const n = 1000
	futures := make([]*client.PublishFuture, n)
	for i := range n {
		futures[i] = p.PublishAsync(&client.Message{Key: []byte(fmt.Sprint(i % 7)), Payload: []byte(fmt.Sprint(i))})
	}
	if err := p.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	for i, f := range futures {
		if _, err := f.Wait(ctx); err != nil {
			t.Fatalf("publish %d: %v", i, err)
		}
	}
	if err := p.Close(ctx); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	seen := map[string]bool{}
	sctx, cancel := context.WithCancel(ctx)
	errc := make(chan error, 1)
	go func() {
		errc <- c.Subscribe(sctx, "orders", "kitchen", func(ctx context.Context, m *client.Message) error {
			mu.Lock()
			defer mu.Unlock()
			seen[string(m.Payload)] = true
			if len(seen) == n {
				cancel()
			}
			return nil
		}, client.WithConcurrency(4))
	}()
	select {
	case err := <-errc:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("received %d of %d", len(seen), n)
	}
	sub, err := c.GetSubscription(ctx, "orders", "kitchen")
	if err != nil {
		t.Fatal(err)
	}
	if sub.Stats.Backlog != 0 {
		t.Fatalf("backlog %d after acking everything", sub.Stats.Backlog)
	}
}
