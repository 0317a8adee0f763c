// Command producer publishes --count messages to the topic "quickstart",
// creating it if it is missing, prints where each was stored and exits.
//
//	go run ./examples/quickstart/producer --server localhost:7420 --count 10
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/ferrymq/ferry/client"
)

const topic = "quickstart"

func main() {
	server := flag.String("server", envOr("FERRY_SERVER", "localhost:7420"), "broker address (env FERRY_SERVER)")
	count := flag.Int("count", 10, "how many messages to publish")
	flag.Parse()
	if err := run(*server, *count); err != nil {
		fmt.Fprintln(os.Stderr, "producer:", err)
		os.Exit(1)
	}
}

func run(server string, count int) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()

	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	c, err := client.Dial(dctx, server)
	if err != nil {
		return err
	}
	defer c.Close()

	// Create the topic unless it exists.
	if _, err := c.GetTopic(ctx, topic); client.StatusCode(err) == codes.NotFound {
		if _, err := c.CreateTopic(ctx, topic, client.TopicConfig{Partitions: 1}); err != nil {
			return err
		}
	} else if err != nil {
		return err
	}

	// PublishAsync batches and pipelines; each message gets a UUIDv7 id, so
	// if the producer has to resend after a broken stream, nothing is
	// stored twice.
	p := c.NewProducer(topic, client.ProducerOptions{})
	futures := make([]*client.PublishFuture, count)
	payloads := make([]string, count)
	for i := range count {
		payloads[i] = fmt.Sprintf("hello %d of %d", i+1, count)
		futures[i] = p.PublishAsync(&client.Message{Payload: []byte(payloads[i])})
	}
	if err := p.Flush(ctx); err != nil {
		return err
	}
	for i, f := range futures {
		res, err := f.Wait(ctx)
		if err != nil {
			return fmt.Errorf("publish %q: %w", payloads[i], err)
		}
		fmt.Printf("published id=%s partition=%d offset=%d duplicate=%t payload=%q\n",
			f.ID(), res.Partition, res.Offset, res.Duplicate, payloads[i])
	}
	return p.Close(ctx)
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}
