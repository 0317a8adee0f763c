package broker

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	ferryv1 "github.com/ferrymq/ferry/proto/ferry/v1"
	"github.com/ferrymq/ferry/storage"
)

// BenchmarkPublish publishes 1 KiB messages (each with an id, as the SDK
// sends them) over real gRPC on loopback to a one-partition topic with
// fsync=always: unary from 1, 16 and 64 concurrent publishers, and one
// pipelined stream of batches of 100 with up to 32 batches in flight. It
// reports msgs/s and the p50 and p99 latency of a call (for the stream, of
// a batch from send to answer).
//
//	go test -run '^$' -bench Publish -benchtime 5s ./broker
func BenchmarkPublish(b *testing.B) {
	for _, publishers := range []int{1, 16, 64} {
		b.Run(fmt.Sprintf("unary/publishers=%d", publishers), func(b *testing.B) {
			clients, syncs := openBenchServer(b, min(publishers, benchConns()))
			payload := make([]byte, 1024)
			var (
				mu   sync.Mutex
				lats []time.Duration
				wg   sync.WaitGroup
			)
			b.SetBytes(1024)
			b.ResetTimer()
			start := time.Now()
			for w := range publishers {
				n := b.N / publishers
				if w < b.N%publishers {
					n++
				}
				wg.Add(1)
				go func() {
					defer wg.Done()
					mine := make([]time.Duration, 0, n)
					for i := range n {
						req := &ferryv1.PublishRequest{Topic: "bench", Messages: []*ferryv1.PublishMessage{
							{Id: fmt.Sprintf("w%d-%d", w, i), Payload: payload}}}
						t := time.Now()
						if _, err := clients[w%len(clients)].Publish(context.Background(), req); err != nil {
							b.Error(err)
							return
						}
						mine = append(mine, time.Since(t))
					}
					mu.Lock()
					lats = append(lats, mine...)
					mu.Unlock()
				}()
			}
			wg.Wait()
			reportPublish(b, b.N, time.Since(start), lats)
			b.ReportMetric(float64(syncs())/float64(b.N), "fsyncs/op")
		})
	}
	b.Run("stream/batch=100", func(b *testing.B) {
		clients, _ := openBenchServer(b, 1)
		benchPublishStream(b, clients[0], "bench")
	})
}

// benchPublishStream publishes b.N 1 KiB messages with ids to topic over
// one stream, in batches of 100 with up to 32 batches in flight, and
// reports msgs/s and the p50 and p99 latency of a batch.
func benchPublishStream(b *testing.B, client ferryv1.PublisherServiceClient, topic string) {
	b.Helper()
	payload := make([]byte, 1024)
	stream, err := client.PublishStream(context.Background())
	if err != nil {
		b.Fatal(err)
	}
	requests := max(1, b.N/100)
	const window = 32
	sent := make(chan time.Time, window) // a slot per batch in flight
	b.SetBytes(1024)                     // b.N counts messages
	b.ResetTimer()
	start := time.Now()
	go func() {
		for seq := range requests {
			req := &ferryv1.PublishStreamRequest{Sequence: uint64(seq), Topic: topic, Messages: make([]*ferryv1.PublishMessage, 100)}
			for j := range req.Messages {
				req.Messages[j] = &ferryv1.PublishMessage{Id: fmt.Sprintf("s%d-%d", seq, j), Payload: payload}
			}
			sent <- time.Now()
			if err := stream.Send(req); err != nil {
				b.Error(err)
				return
			}
		}
		_ = stream.CloseSend()
	}()
	lats := make([]time.Duration, 0, requests)
	for range requests {
		resp, err := stream.Recv()
		if err != nil {
			b.Fatal(err)
		}
		if resp.Error != nil {
			b.Fatal(resp.Error)
		}
		lats = append(lats, time.Since(<-sent))
	}
	reportPublish(b, requests*100, time.Since(start), lats)
}

func reportPublish(b *testing.B, msgs int, elapsed time.Duration, lats []time.Duration) {
	b.Helper()
	b.ReportMetric(float64(msgs)/elapsed.Seconds(), "msgs/s")
	if len(lats) == 0 {
		return
	}
	slices.Sort(lats)
	pct := func(p float64) float64 {
		return float64(lats[min(len(lats)-1, int(float64(len(lats))*p))].Microseconds()) / 1000
	}
	b.ReportMetric(pct(0.50), "p50-ms")
	b.ReportMetric(pct(0.99), "p99-ms")
}

// benchConns is how many client connections the unary publishers share:
// FERRY_BENCH_CONNS, default 1.
func benchConns() int {
	n, err := strconv.Atoi(os.Getenv("FERRY_BENCH_CONNS"))
	if err != nil || n < 1 {
		return 1
	}
	return n
}

// openBenchServer runs a broker with fsync=always on a temp dir, with a
// one-partition topic "bench", and returns clients on conns connections and
// a function counting fsyncs since.
func openBenchServer(b *testing.B, conns int) ([]ferryv1.PublisherServiceClient, func() uint64) {
	b.Helper()
	srv := startBenchBroker(b)
	var clients []ferryv1.PublisherServiceClient
	for range conns {
		conn, err := grpc.NewClient(srv.GRPCAddr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { conn.Close() })
		clients = append(clients, ferryv1.NewPublisherServiceClient(conn))
	}
	start := srv.Store().Syncs()
	return clients, func() uint64 { return srv.Store().Syncs() - start }
}

// startBenchBroker serves a broker with fsync=always on a temp dir, with a
// one-partition topic "bench".
func startBenchBroker(b *testing.B) *Server {
	b.Helper()
	opts := DefaultOptions(b.TempDir())
	opts.GRPCAddr = "127.0.0.1:0"
	opts.HTTPAddr = ""
	opts.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	opts.Storage.Fsync = storage.FsyncAlways
	srv, err := Open(opts)
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
