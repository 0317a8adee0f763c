// Command consumer reads the topic "quickstart" through the at-least-once
// subscription "quickstart" (created from the earliest message if it is
// missing), prints each message and acks it. It exits once it has printed
// --count messages (0: no limit), or after --timeout, or on Ctrl-C.
//
//	go run ./examples/quickstart/consumer --server localhost:7420 --count 10
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"sync"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/ferrymq/ferry/client"
)

const (
	topic        = "quickstart"
	subscription = "quickstart"
)

func main() {
	server := flag.String("server", envOr("FERRY_SERVER", "localhost:7420"), "broker address (env FERRY_SERVER)")
	count := flag.Int("count", 10, "exit after this many messages; 0: no limit")
	timeout := flag.Duration("timeout", 30*time.Second, "exit after this long; 0: no limit")
	flag.Parse()
	if err := run(*server, *count, *timeout); err != nil {
		fmt.Fprintln(os.Stderr, "consumer:", err)
		os.Exit(1)
	}
}

// errEnough nacks a message that arrived after the last one wanted: it
// stays for the next consumer.
var errEnough = errors.New("enough messages")

func run(server string, count int, timeout time.Duration) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()

	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	c, err := client.Dial(dctx, server)
	if err != nil {
		return err
	}
	defer c.Close()

	// Create the subscription unless it exists.
	if _, err := c.GetSubscription(ctx, topic, subscription); client.StatusCode(err) == codes.NotFound {
		if _, err := c.CreateSubscription(ctx, topic, subscription, client.SubscriptionConfig{
			Guarantee: client.AtLeastOnce, Type: client.Shared, Start: client.Earliest()}); err != nil {
			return err
		}
	} else if err != nil {
		return err
	}

	sctx, done := context.WithCancel(ctx) // done: the last message is in
	defer done()
	if timeout > 0 {
		var cancelTimeout context.CancelFunc
		sctx, cancelTimeout = context.WithTimeout(sctx, timeout)
		defer cancelTimeout()
	}
	var (
		mu       sync.Mutex
		received int
	)
	// One handler at a time: messages print in offset order. Returning nil
	// acks; an error (or a panic) nacks, and the broker redelivers.
	err = c.Subscribe(sctx, topic, subscription, func(ctx context.Context, m *client.Message) error {
		mu.Lock()
		defer mu.Unlock()
		if count > 0 && received >= count {
			return errEnough
		}
		received++
		fmt.Printf("received id=%s partition=%d offset=%d attempt=%d payload=%q\n",
			m.ID, *m.Partition, m.Offset, m.Attempt, m.Payload)
		if received == count {
			done()
		}
		return nil
	}, client.WithConcurrency(1))
	if err != nil {
		return err
	}
	if count > 0 && received < count && ctx.Err() == nil {
		return fmt.Errorf("received %d of %d messages in %v", received, count, timeout)
	}
	return nil
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}
