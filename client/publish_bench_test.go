package client_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/ferrymq/ferry/broker"
	"github.com/ferrymq/ferry/client"
	ferryv1 "github.com/ferrymq/ferry/proto/ferry/v1"
	"github.com/ferrymq/ferry/storage"
)

// BenchmarkSDKPublish compares, in one run, the SDK's async publish with
// the raw gRPC stream it is built on. Both publish 1 KiB messages, each
// with an id, over real gRPC on loopback to a one-partition topic with
// fsync=always, each on a broker of its own:
//
//   - raw: one PublishStream, batches of 100 with up to 32 in flight (as
//     broker's BenchmarkPublish stream/batch=100);
//   - sdk: Producer.PublishAsync with default batching (the producer sets
//     UUIDv7 ids), then Flush.
//
// b.N counts messages; each side publishes b.N of them, in alternating
// rounds so that both see the same disk. It reports raw-msgs/s, sdk-msgs/s
// and sdk/raw, their ratio (the target is at least 0.9). ns/op and MB/s
// cover one raw and one SDK message together.
//
//	go test -run '^$' -bench SDKPublish -benchtime 200000x ./client
func BenchmarkSDKPublish(b *testing.B) {
	ctx := context.Background()
	payload := make([]byte, 1024)

	rawSrv := startPublishBenchBroker(b)
	conn, err := grpc.NewClient(rawSrv.GRPCAddr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	stream, err := ferryv1.NewPublisherServiceClient(conn).PublishStream(ctx)
	if err != nil {
		b.Fatal(err)
	}
	defer func() { _ = stream.CloseSend() }()
	var seq uint64
	raw := func(n int) int { // publishes n messages, rounded up to batches of 100
		requests := max(1, (n+99)/100)
		const window = 32
		slots := make(chan struct{}, window) // a slot per batch in flight
		errc := make(chan error, 1)
		go func() {
			for range requests {
				seq++
				req := &ferryv1.PublishStreamRequest{Sequence: seq, Topic: "bench", Messages: make([]*ferryv1.PublishMessage, 100)}
				for j := range req.Messages {
					req.Messages[j] = &ferryv1.PublishMessage{Id: fmt.Sprintf("s%d-%d", seq, j), Payload: payload}
				}
				slots <- struct{}{}
				if err := stream.Send(req); err != nil {
					errc <- err
					return
				}
			}
			errc <- nil
		}()
		for range requests {
			resp, err := stream.Recv()
			if err != nil {
				b.Fatal(err)
			}
			if resp.Error != nil {
				b.Fatal(resp.Error)
			}
			<-slots
		}
		if err := <-errc; err != nil {
			b.Fatal(err)
		}
		return requests * 100
	}

	sdkSrv := startPublishBenchBroker(b)
	c, err := client.Dial(ctx, sdkSrv.GRPCAddr().String(), client.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))))
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	p := c.NewProducer("bench", client.ProducerOptions{})
	defer func() { _ = p.Close(ctx) }()
	futures := make([]*client.PublishFuture, 0, b.N)
	sdk := func(n int) int {
		futures = futures[:0]
		for range n {
			futures = append(futures, p.PublishAsync(&client.Message{Payload: payload}))
		}
		if err := p.Flush(ctx); err != nil {
			b.Fatal(err)
		}
		for i, f := range futures {
			if _, err := f.Wait(ctx); err != nil {
				b.Fatalf("publish %d: %v", i, err)
			}
		}
		return n
	}

	rounds := min(4, max(1, b.N/10_000))
	var rawMsgs, sdkMsgs int
	var rawTime, sdkTime time.Duration
	b.SetBytes(2 * 1024)
	b.ResetTimer()
	for r := range rounds {
		n := b.N / rounds
		if r < b.N%rounds {
			n++
		}
		t := time.Now()
		rawMsgs += raw(n)
		rawTime += time.Since(t)
		t = time.Now()
		sdkMsgs += sdk(n)
		sdkTime += time.Since(t)
	}
	b.StopTimer()
	rawRate := float64(rawMsgs) / rawTime.Seconds()
	sdkRate := float64(sdkMsgs) / sdkTime.Seconds()
	b.ReportMetric(rawRate, "raw-msgs/s")
	b.ReportMetric(sdkRate, "sdk-msgs/s")
	b.ReportMetric(sdkRate/rawRate, "sdk/raw")
}

// startPublishBenchBroker serves a broker with fsync=always on a temp dir,
// with a one-partition topic "bench", as broker's benchmarks do.
func startPublishBenchBroker(b *testing.B) *broker.Server {
	b.Helper()
	opts := broker.DefaultOptions(b.TempDir())
	opts.GRPCAddr = "127.0.0.1:0"
	opts.HTTPAddr = ""
	opts.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	opts.Storage.Fsync = storage.FsyncAlways
	srv, err := broker.Open(opts)
	if err != nil {
		b.Fatal(err)
	}
	go func() { _ = srv.Serve() }()
	b.Cleanup(func() { _ = srv.Shutdown(context.Background()) })
	if _, err := srv.Store().CreateTopic(context.Background(), "bench", storage.TopicConfig{}); err != nil {
		b.Fatal(err)
	}
	return srv
}
