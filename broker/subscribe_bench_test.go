package broker

import (
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	ferryv1 "github.com/ferrymq/ferry/proto/ferry/v1"
	"github.com/ferrymq/ferry/storage"
)

// BenchmarkConsume consumes a backlog of 1 KiB messages (200,000 unless
// FERRY_BENCH_BACKLOG says otherwise) from a one-partition topic over real
// gRPC with fsync=always, per guarantee, with 1 and 4 consumers of credit
// 1,000 that ack every batch as it arrives. Each iteration creates a new
// subscription at earliest and ends when every message was received (and,
// for effectively-once, every ack confirmed). It reports msgs/s.
//
//	go test -run '^$' -bench Consume -benchtime 1x ./broker
func BenchmarkConsume(b *testing.B) {
	backlog := envInt("FERRY_BENCH_BACKLOG", 200000)
	srv, conn := openConsumeBench(b)
	fillBacklog(b, srv.Store(), "bench", backlog)
	for _, g := range []ferryv1.DeliveryGuarantee{
		ferryv1.DeliveryGuarantee_DELIVERY_GUARANTEE_AT_MOST_ONCE,
		ferryv1.DeliveryGuarantee_DELIVERY_GUARANTEE_AT_LEAST_ONCE,
		ferryv1.DeliveryGuarantee_DELIVERY_GUARANTEE_EFFECTIVELY_ONCE,
	} {
		for _, consumers := range []int{1, 4} {
			b.Run(fmt.Sprintf("%s/consumers=%d", guaranteeName(g), consumers), func(b *testing.B) {
				var elapsed time.Duration
				i := 0
				for b.Loop() {
					i++
					sub := fmt.Sprintf("%s-%d-%d", guaranteeName(g), consumers, i)
					createBenchSub(b, conn, "bench", sub, g, ferryv1.PositionKind_POSITION_KIND_EARLIEST)
					start := time.Now()
					consumeAll(b, conn, "bench", sub, consumers, backlog, g == ferryv1.DeliveryGuarantee_DELIVERY_GUARANTEE_EFFECTIVELY_ONCE)
					elapsed += time.Since(start)
				}
				b.ReportMetric(float64(backlog*i)/elapsed.Seconds(), "msgs/s")
			})
		}
	}
}

// BenchmarkEndToEnd publishes 1 KiB messages at a fixed rate (1,000 and
// 5,000 msgs/s, for FERRY_BENCH_SECONDS, default 3) over a PublishStream, one
// batch per millisecond, to a topic whose subscription has one tailing
// consumer that acks as it goes, with fsync=always. It reports the p50 and
// p99 of publish send → delivery received.
//
//	go test -run '^$' -bench EndToEnd -benchtime 1x ./broker
func BenchmarkEndToEnd(b *testing.B) {
	seconds := envInt("FERRY_BENCH_SECONDS", 3)
	for _, g := range []ferryv1.DeliveryGuarantee{
		ferryv1.DeliveryGuarantee_DELIVERY_GUARANTEE_AT_LEAST_ONCE,
		ferryv1.DeliveryGuarantee_DELIVERY_GUARANTEE_EFFECTIVELY_ONCE,
	} {
		for _, rate := range []int{1000, 5000} {
			b.Run(fmt.Sprintf("%s/rate=%d", guaranteeName(g), rate), func(b *testing.B) {
				for b.Loop() {
					lats := endToEnd(b, g, rate, time.Duration(seconds)*time.Second)
					slices.Sort(lats)
					pct := func(p float64) float64 {
						return float64(lats[min(len(lats)-1, int(float64(len(lats))*p))].Microseconds()) / 1000
					}
					b.ReportMetric(pct(0.50), "p50-ms")
					b.ReportMetric(pct(0.99), "p99-ms")
					b.ReportMetric(float64(len(lats)), "msgs")
				}
			})
		}
	}
}

func endToEnd(b *testing.B, g ferryv1.DeliveryGuarantee, rate int, d time.Duration) []time.Duration {
	_, conn := openConsumeBench(b)
	createBenchSub(b, conn, "bench", "tail", g, ferryv1.PositionKind_POSITION_KIND_LATEST)
	total := rate * int(d/time.Second)
	lats := make([]time.Duration, 0, total)
	var mu sync.Mutex
	done := make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stream, err := ferryv1.NewSubscriberServiceClient(conn).Subscribe(ctx)
	if err != nil {
		b.Fatal(err)
	}
	if err := stream.Send(initFrame("bench", "tail", 1000)); err != nil {
		b.Fatal(err)
	}
	go func() {
		defer close(done)
		seq := uint64(0)
		for got := 0; got < total; {
			resp, err := stream.Recv()
			if err != nil {
				b.Error(err)
				return
			}
			ds := resp.GetDeliveries().GetDeliveries()
			now := time.Now()
			mu.Lock()
			for _, dl := range ds {
				sent := int64(binary.BigEndian.Uint64(dl.GetMessage().GetPayload()))
				lats = append(lats, now.Sub(time.Unix(0, sent)))
			}
			mu.Unlock()
			got += len(ds)
			if len(ds) > 0 {
				seq++
				if err := stream.Send(ackFrame(seq, ds)); err != nil {
					b.Error(err)
					return
				}
			}
		}
	}()
	waitConsumers(b, conn, "bench", "tail", 1)
	pub, err := ferryv1.NewPublisherServiceClient(conn).PublishStream(ctx)
	if err != nil {
		b.Fatal(err)
	}
	go func() {
		for {
			if _, err := pub.Recv(); err != nil {
				return
			}
		}
	}()
	perTick := rate / 1000
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	payload := make([]byte, 1024)
	for seq := 0; seq*perTick < total; seq++ {
		<-tick.C
		req := &ferryv1.PublishStreamRequest{Sequence: uint64(seq), Topic: "bench"}
		for j := range perTick {
			p := slices.Clone(payload)
			binary.BigEndian.PutUint64(p, uint64(time.Now().UnixNano()))
			req.Messages = append(req.Messages, &ferryv1.PublishMessage{Id: fmt.Sprintf("e%d-%d", seq, j), Payload: p})
		}
		if err := pub.Send(req); err != nil {
			b.Fatal(err)
		}
	}
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		b.Fatal("consumer did not get every message in 30s")
	}
	mu.Lock()
	defer mu.Unlock()
	return lats
}

// openConsumeBench runs a broker with fsync=always on a temp dir with a
// one-partition topic "bench", and returns a client connection.
func openConsumeBench(b *testing.B) (*Server, *grpc.ClientConn) {
	b.Helper()
	srv := startBenchBroker(b)
	conn, err := grpc.NewClient(srv.GRPCAddr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { conn.Close() })
	return srv, conn
}

func fillBacklog(b *testing.B, st *storage.Store, topic string, n int) {
	b.Helper()
	payload := make([]byte, 1024)
	for i := 0; i < n; i += 1000 {
		msgs := make([]storage.Message, min(1000, n-i))
		for j := range msgs {
			msgs[j] = storage.Message{ID: fmt.Sprintf("m%d", i+j), Payload: payload}
		}
		if _, err := st.Append(context.Background(), topic, 0, msgs); err != nil {
			b.Fatal(err)
		}
	}
}

func createBenchSub(b *testing.B, conn *grpc.ClientConn, topic, name string, g ferryv1.DeliveryGuarantee, start ferryv1.PositionKind) {
	b.Helper()
	_, err := ferryv1.NewAdminServiceClient(conn).CreateSubscription(context.Background(), &ferryv1.CreateSubscriptionRequest{
		Topic: topic, Name: name, Config: &ferryv1.SubscriptionConfig{
			Guarantee: g, Type: ferryv1.SubscriptionType_SUBSCRIPTION_TYPE_SHARED,
			Start: &ferryv1.Position{Kind: start},
		}})
	if err != nil {
		b.Fatal(err)
	}
}

// consumeAll attaches consumers with credit 1,000 that ack each batch, and
// returns once n deliveries were received (and, if confirm, every ack
// frame was confirmed).
func consumeAll(b *testing.B, conn *grpc.ClientConn, topic, sub string, consumers, n int, confirm bool) {
	b.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var got, confirmed, sentAcks atomic.Int64
	all := make(chan struct{})
	var once sync.Once
	check := func() {
		if got.Load() >= int64(n) && (!confirm || confirmed.Load() == sentAcks.Load()) {
			once.Do(func() { close(all) })
		}
	}
	for range consumers {
		stream, err := ferryv1.NewSubscriberServiceClient(conn).Subscribe(ctx)
		if err != nil {
			b.Fatal(err)
		}
		if err := stream.Send(initFrame(topic, sub, 1000)); err != nil {
			b.Fatal(err)
		}
		go func() {
			seq := uint64(0)
			for {
				resp, err := stream.Recv()
				if err != nil {
					return
				}
				if resp.GetAckConfirmation() != nil {
					confirmed.Add(1)
					check()
					continue
				}
				ds := resp.GetDeliveries().GetDeliveries()
				seq++
				sentAcks.Add(1)
				if err := stream.Send(ackFrame(seq, ds)); err != nil {
					return
				}
				got.Add(int64(len(ds)))
				check()
			}
		}()
	}
	select {
	case <-all:
	case <-time.After(5 * time.Minute):
		b.Fatalf("consumed %d of %d in 5 minutes", got.Load(), n)
	}
}

func initFrame(topic, sub string, credit int32) *ferryv1.SubscribeRequest {
	return &ferryv1.SubscribeRequest{Frame: &ferryv1.SubscribeRequest_Init{Init: &ferryv1.SubscribeInit{Topic: topic, Subscription: sub, Credit: credit}}}
}

func ackFrame(seq uint64, ds []*ferryv1.Delivery) *ferryv1.SubscribeRequest {
	ids := make([]string, len(ds))
	for i, d := range ds {
		ids[i] = d.GetDeliveryId()
	}
	return &ferryv1.SubscribeRequest{Frame: &ferryv1.SubscribeRequest_Ack{Ack: &ferryv1.SubscribeAck{Sequence: seq, DeliveryIds: ids}}}
}

func guaranteeName(g ferryv1.DeliveryGuarantee) string {
	switch g {
	case ferryv1.DeliveryGuarantee_DELIVERY_GUARANTEE_AT_MOST_ONCE:
		return "at-most-once"
	case ferryv1.DeliveryGuarantee_DELIVERY_GUARANTEE_AT_LEAST_ONCE:
		return "at-least-once"
	case ferryv1.DeliveryGuarantee_DELIVERY_GUARANTEE_EFFECTIVELY_ONCE:
		return "effectively-once"
	}
	return g.String()
}

func envInt(name string, def int) int {
	n, err := strconv.Atoi(os.Getenv(name))
	if err != nil || n < 1 {
		return def
	}
	return n
}

// waitConsumers waits until a subscription has n consumers attached.
func waitConsumers(b *testing.B, conn *grpc.ClientConn, topic, sub string, n uint32) {
	b.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := ferryv1.NewAdminServiceClient(conn).GetSubscription(context.Background(), &ferryv1.GetSubscriptionRequest{Topic: topic, Name: sub})
		if err != nil {
			b.Fatal(err)
		}
		if resp.GetStats().GetConsumers() >= n {
			return
		}
		time.Sleep(time.Millisecond)
	}
	b.Fatalf("subscription %s: %d consumers not attached in 10s", sub, n)
}
