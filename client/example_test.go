package client_test

import (
	"context"
	"fmt"
	"io"
	"log"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/ferrymq/ferry/broker"
	"github.com/ferrymq/ferry/client"
	"github.com/ferrymq/ferry/storage"
)

// exampleBroker serves a broker on a free loopback port with its data in a
// temp dir, and returns its address and a func that stops it and removes
// the data. The examples use it where a real program would dial its
// broker (see `ferry serve`).
func exampleBroker() (addr string, stop func()) {
	dir, err := os.MkdirTemp("", "ferry-example-")
	if err != nil {
		log.Fatal(err)
	}
	opts := broker.DefaultOptions(dir)
	opts.GRPCAddr = "127.0.0.1:0"
	opts.HTTPAddr = ""
	opts.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	opts.Storage.MemTableBytes = storage.MinMemTableBytes
	srv, err := broker.Open(opts)
	if err != nil {
		log.Fatal(err)
	}
	go func() { _ = srv.Serve() }()
	return srv.GRPCAddr().String(), func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
		_ = os.RemoveAll(dir)
	}
}

// Dial, create a topic and publish one message and its retry: the retry
// carries the same id, so it is not stored twice.
func ExampleDial() {
	addr, stop := exampleBroker()
	defer stop()
	ctx := context.Background()

	c, err := client.Dial(ctx, addr, client.WithCallTimeout(10*time.Second))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	if _, err := c.CreateTopic(ctx, "orders", client.TopicConfig{Partitions: 1}); err != nil {
		log.Fatal(err)
	}
	p := c.NewProducer("orders", client.ProducerOptions{})
	defer p.Close(ctx)
	for range 2 {
		res, err := p.Publish(ctx, &client.Message{ID: "order-42", Payload: []byte("margherita")})
		if err != nil {
			log.Fatal(err)
		}
		fmt.Printf("partition=%d offset=%d duplicate=%t\n", res.Partition, res.Offset, res.Duplicate)
	}
	// Output:
	// partition=0 offset=0 duplicate=false
	// partition=0 offset=0 duplicate=true
}

// PublishAsync queues messages and returns at once; the producer batches
// and pipelines them. Flush sends what is queued and waits for the
// answers; each future then says where its message was stored.
func ExampleProducer_PublishAsync() {
	addr, stop := exampleBroker()
	defer stop()
	ctx := context.Background()
	c, err := client.Dial(ctx, addr)
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	if _, err := c.CreateTopic(ctx, "orders", client.TopicConfig{Partitions: 1}); err != nil {
		log.Fatal(err)
	}

	p := c.NewProducer("orders", client.ProducerOptions{Linger: 5 * time.Millisecond})
	var futures []*client.PublishFuture
	for i := range 1000 {
		futures = append(futures, p.PublishAsync(&client.Message{
			ID:      fmt.Sprintf("order-%d", i), // empty: the producer sets a UUIDv7
			Key:     []byte(fmt.Sprintf("table-%d", i%7)),
			Payload: []byte("margherita"),
		}))
	}
	if err := p.Flush(ctx); err != nil {
		log.Fatal(err)
	}
	for _, f := range futures {
		if _, err := f.Wait(ctx); err != nil {
			log.Fatalf("publish %s: %v", f.ID(), err)
		}
	}
	last, _ := futures[len(futures)-1].Wait(ctx)
	fmt.Printf("published %d messages; %s is at offset %d\n", len(futures), futures[len(futures)-1].ID(), last.Offset)
	if err := p.Close(ctx); err != nil {
		log.Fatal(err)
	}
	// Output:
	// published 1000 messages; order-999 is at offset 999
}

// Subscribe runs a handler on each message until its ctx ends: a nil error
// acks the message, an error nacks it for redelivery.
func ExampleClient_Subscribe() {
	addr, stop := exampleBroker()
	defer stop()
	ctx := context.Background()
	c, err := client.Dial(ctx, addr)
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	if _, err := c.CreateTopic(ctx, "orders", client.TopicConfig{Partitions: 3}); err != nil {
		log.Fatal(err)
	}
	if _, err := c.CreateSubscription(ctx, "orders", "kitchen", client.SubscriptionConfig{
		Guarantee: client.AtLeastOnce, Type: client.Shared, Start: client.Earliest()}); err != nil {
		log.Fatal(err)
	}
	p := c.NewProducer("orders", client.ProducerOptions{})
	for _, pizza := range []string{"margherita", "marinara", "diavola"} {
		if _, err := p.Publish(ctx, &client.Message{Key: []byte(pizza), Payload: []byte(pizza)}); err != nil {
			log.Fatal(err)
		}
	}
	if err := p.Close(ctx); err != nil {
		log.Fatal(err)
	}

	var (
		mu     sync.Mutex
		cooked []string
	)
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	err = c.Subscribe(sctx, "orders", "kitchen", func(ctx context.Context, m *client.Message) error {
		mu.Lock()
		defer mu.Unlock()
		cooked = append(cooked, string(m.Payload))
		if len(cooked) == 3 {
			cancel() // Subscribe drains: this ack is sent before it returns
		}
		return nil
	}, client.WithConcurrency(4))
	if err != nil {
		log.Fatal(err)
	}
	slices.Sort(cooked) // three partitions: no order across them
	fmt.Println(strings.Join(cooked, " "))

	sub, err := c.GetSubscription(ctx, "orders", "kitchen")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("backlog=%d acked=%d\n", sub.Stats.Backlog, sub.Stats.Acked)
	// Output:
	// diavola margherita marinara
	// backlog=0 acked=3
}

// Process runs an effectively-once consume→transform→produce pipeline:
// for each order it returns a receipt, and the SDK acks the order and
// publishes the receipt in one atomic Commit, so each order gets exactly
// one receipt whatever crashes.
func ExampleClient_Process() {
	addr, stop := exampleBroker()
	defer stop()
	ctx := context.Background()
	c, err := client.Dial(ctx, addr)
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	for _, topic := range []string{"orders", "receipts"} {
		if _, err := c.CreateTopic(ctx, topic, client.TopicConfig{}); err != nil {
			log.Fatal(err)
		}
	}
	if _, err := c.CreateSubscription(ctx, "orders", "billing", client.SubscriptionConfig{
		Guarantee: client.EffectivelyOnce, Type: client.Shared, Start: client.Earliest()}); err != nil {
		log.Fatal(err)
	}
	if _, err := c.CreateSubscription(ctx, "receipts", "printer", client.SubscriptionConfig{
		Guarantee: client.AtLeastOnce, Type: client.Shared, Start: client.Earliest()}); err != nil {
		log.Fatal(err)
	}
	p := c.NewProducer("orders", client.ProducerOptions{})
	for _, pizza := range []string{"margherita", "marinara", "diavola"} {
		if _, err := p.Publish(ctx, &client.Message{Payload: []byte(pizza)}); err != nil {
			log.Fatal(err)
		}
	}
	if err := p.Close(ctx); err != nil {
		log.Fatal(err)
	}

	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	billed := make(chan error, 1)
	go func() {
		billed <- c.Process(pctx, "orders", "billing", func(ctx context.Context, in *client.Message) ([]*client.Message, error) {
			receipt := "receipt: " + strings.ToUpper(string(in.Payload))
			return []*client.Message{{Topic: "receipts", Payload: []byte(receipt)}}, nil
		})
	}()

	// Read the receipts back, then stop both.
	var (
		mu       sync.Mutex
		receipts []string
	)
	err = c.Subscribe(pctx, "receipts", "printer", func(ctx context.Context, m *client.Message) error {
		mu.Lock()
		defer mu.Unlock()
		receipts = append(receipts, string(m.Payload))
		if len(receipts) == 3 {
			cancel()
		}
		return nil
	})
	if err != nil {
		log.Fatal(err)
	}
	if err := <-billed; err != nil {
		log.Fatal(err)
	}
	slices.Sort(receipts)
	for _, r := range receipts {
		fmt.Println(r)
	}
	// Output:
	// receipt: DIAVOLA
	// receipt: MARGHERITA
	// receipt: MARINARA
}

// CreateSubscription picks the subscription's delivery guarantee, how its
// messages spread over consumers and where it starts; GetSubscription
// reads it back with its stats.
func ExampleClient_CreateSubscription() {
	addr, stop := exampleBroker()
	defer stop()
	ctx := context.Background()
	c, err := client.Dial(ctx, addr)
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	if _, err := c.CreateTopic(ctx, "orders", client.TopicConfig{Partitions: 3}); err != nil {
		log.Fatal(err)
	}
	if _, err := c.CreateTopic(ctx, "orders.dead", client.TopicConfig{}); err != nil {
		log.Fatal(err)
	}
	p := c.NewProducer("orders", client.ProducerOptions{})
	for i := range 5 {
		p.PublishAsync(&client.Message{Key: []byte(fmt.Sprint(i)), Payload: []byte("margherita")})
	}
	if err := p.Close(ctx); err != nil { // sends and waits for what is queued
		log.Fatal(err)
	}

	_, err = c.CreateSubscription(ctx, "orders", "kitchen", client.SubscriptionConfig{
		Guarantee:       client.EffectivelyOnce,
		Type:            client.KeyShared,
		Start:           client.Earliest(),
		AckTimeout:      10 * time.Second,
		MaxDeliveries:   5,
		DeadLetterTopic: "orders.dead",
	})
	if err != nil {
		log.Fatal(err)
	}
	sub, err := c.GetSubscription(ctx, "orders", "kitchen")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(sub.Config.Guarantee, sub.Config.Type)
	fmt.Printf("ack timeout %v, max deliveries %d, dead letters to %s\n",
		sub.Config.AckTimeout, sub.Config.MaxDeliveries, sub.Config.DeadLetterTopic)
	fmt.Printf("backlog %d\n", sub.Stats.Backlog)
	// Output:
	// effectively-once key-shared
	// ack timeout 10s, max deliveries 5, dead letters to orders.dead
	// backlog 5
}
