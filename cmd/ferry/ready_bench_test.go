package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"testing"
	"time"

	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	ferryv1 "github.com/ferrymq/ferry/proto/ferry/v1"
	"github.com/ferrymq/ferry/storage"
)

// BenchmarkServeReady measures how long `ferry serve` takes from exec until
// its health check answers SERVING, and until a publish with an id to every
// partition is acknowledged (which waits for each partition's dedup index
// rebuild), on an empty data dir and on one holding 1,000,000 messages with
// ids, all inside the dedup window, over 4 partitions.
//
//	go test -run '^$' -bench ServeReady -benchtime 5x ./cmd/ferry
func BenchmarkServeReady(b *testing.B) {
	for _, n := range []int{0, 1_000_000} {
		b.Run(fmt.Sprintf("messages=%d", n), func(b *testing.B) {
			buildFerry(b)
			dir := b.TempDir()
			populate(b, dir, n)
			var total, toPublish time.Duration
			for b.Loop() {
				if n == 0 {
					dir = b.TempDir() // really empty every time
				}
				start := time.Now()
				p := startFerry(b, dir)
				waitServing(b, p)
				total += time.Since(start)
				if n > 0 {
					publishEachPartition(b, p)
					toPublish += time.Since(start)
				}
				if _, err := p.stop(b, 10*time.Second); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(total.Milliseconds())/float64(b.N), "ms-to-ready")
			if n > 0 {
				b.ReportMetric(float64(toPublish.Milliseconds())/float64(b.N), "ms-to-publish")
			}
		})
	}
}

// populate writes n messages of 100 bytes into a topic "ready" in dir.
func populate(tb testing.TB, dir string, n int) {
	tb.Helper()
	opts := storage.DefaultOptions(dir)
	opts.Fsync = storage.FsyncNever
	opts.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	st, err := storage.Open(opts)
	if err != nil {
		tb.Fatal(err)
	}
	ctx := context.Background()
	if _, err := st.CreateTopic(ctx, "ready", storage.TopicConfig{Partitions: 4}); err != nil {
		tb.Fatal(err)
	}
	batch := make([]storage.Message, 1000)
	for i := range batch {
		batch[i].Payload = make([]byte, 100)
	}
	var pending []*storage.Pending
	for i := 0; i < n; i += len(batch) {
		for j := range batch {
			batch[j].ID = fmt.Sprintf("m-%d", i+j)
		}
		p, err := st.Enqueue(ctx, "ready", uint32(i/len(batch)%4), append([]storage.Message(nil), batch...))
		if err != nil {
			tb.Fatal(err)
		}
		pending = append(pending, p)
	}
	for _, p := range pending {
		if _, err := p.Wait(ctx); err != nil {
			tb.Fatal(err)
		}
	}
	if err := st.Close(ctx); err != nil {
		tb.Fatal(err)
	}
}

func waitServing(tb testing.TB, p *process) {
	tb.Helper()
	client := healthpb.NewHealthClient(p.dial(tb))
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		resp, err := client.Check(ctx, &healthpb.HealthCheckRequest{}, grpc.WaitForReady(true))
		cancel()
		if err == nil && resp.Status == healthpb.HealthCheckResponse_SERVING {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	tb.Fatal("not SERVING within 30s")
}

// publishEachPartition publishes one message with a fresh id to each of the
// topic "ready"'s 4 partitions and waits for the acks.
func publishEachPartition(tb testing.TB, p *process) {
	tb.Helper()
	client := ferryv1.NewPublisherServiceClient(p.dial(tb))
	for part := range uint32(4) {
		req := &ferryv1.PublishRequest{Topic: "ready", Messages: []*ferryv1.PublishMessage{
			{Id: fmt.Sprintf("fresh-%d-%d", part, time.Now().UnixNano()), Payload: []byte("x"), Partition: &part}}}
		resp, err := client.Publish(context.Background(), req)
		if err != nil {
			tb.Fatal(err)
		}
		if resp.Results[0].Duplicate {
			tb.Fatal("fresh id answered as a duplicate")
		}
	}
}
