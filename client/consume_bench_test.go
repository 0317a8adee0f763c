package client_test

import (
	"context"
	"fmt"
	"os"
	"runtime/pprof"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferrymq/ferry/client"
)

// BenchmarkSDKConsume measures Subscribe end to end, as the comparison with
// JetStream runs it (bench/compare, consume-ack and consume-acksync): b.N
// messages of 1 KiB are published first, then one Subscribe with 16
// handlers and a credit of 500 reads them all, acking each: by returning nil
// (stream acks, at-least-once) or with AckSync (a durable ack confirmation
// per message, effectively-once). The broker is restarted between the two,
// so that the backlog is read from disk. It runs in-process over real gRPC
// on loopback with fsync=always, so a CPU profile shows both sides.
//
//	go test -run '^$' -bench SDKConsume -benchtime 100000x ./client
//
// FERRY_CONSUME_CPUPROFILE=FILE writes a CPU profile of the consume phase
// alone (-cpuprofile would include the publishes that fill the backlog).
func BenchmarkSDKConsume(b *testing.B) {
	for _, bc := range []struct {
		name    string
		g       client.Guarantee
		ackSync bool
	}{
		{"at-least-once", client.AtLeastOnce, false},
		{"effectively-once/ack", client.EffectivelyOnce, false},
		{"effectively-once/acksync", client.EffectivelyOnce, true},
	} {
		b.Run(bc.name, func(b *testing.B) {
			ctx := context.Background()
			dir := b.TempDir()
			srv := openBroker(b, dir, "127.0.0.1:0")
			c := quietDial(b, srv.addr)
			mustCreate(b, c, "bench", client.TopicConfig{Partitions: 1}, "sub",
				client.SubscriptionConfig{Guarantee: bc.g, Type: client.Shared, Start: client.Earliest()})
			p := c.NewProducer("bench", client.ProducerOptions{})
			payload := make([]byte, 1024)
			for i := range b.N {
				p.PublishAsync(&client.Message{ID: fmt.Sprint(i), Payload: payload})
			}
			if err := p.Flush(ctx); err != nil {
				b.Fatal(err)
			}
			p.Close(ctx)
			// Restart the broker: the backlog is read from disk, not from
			// the memtable it was just written to.
			c.Close()
			srv.stop(b)
			srv = openBroker(b, dir, "127.0.0.1:0")
			c = quietDial(b, srv.addr)

			cctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
			defer cancel()
			var got, failed atomic.Int64
			b.SetBytes(1024)
			if path := os.Getenv("FERRY_CONSUME_CPUPROFILE"); path != "" {
				f, err := os.Create(path)
				if err != nil {
					b.Fatal(err)
				}
				if err := pprof.StartCPUProfile(f); err != nil {
					b.Fatal(err)
				}
				defer func() { pprof.StopCPUProfile(); f.Close() }()
			}
			b.ResetTimer()
			start := time.Now()
			err := c.Subscribe(cctx, "bench", "sub", func(hctx context.Context, m *client.Message) error {
				if bc.ackSync {
					if err := m.AckSync(hctx); err != nil {
						failed.Add(1)
					}
				}
				if got.Add(1) == int64(b.N) {
					cancel()
				}
				return nil
			}, client.WithConcurrency(16), client.WithCredit(500))
			el := time.Since(start)
			b.StopTimer()
			if err != nil {
				b.Fatal(err)
			}
			if got.Load() < int64(b.N) || failed.Load() > 0 {
				b.Fatalf("consumed %d of %d, %d acks failed", got.Load(), b.N, failed.Load())
			}
			b.ReportMetric(float64(b.N)/el.Seconds(), "msgs/s")
		})
	}
}
