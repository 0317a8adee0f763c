package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"

	"github.com/ferrymq/ferry/internal/clock"
	ferryv1 "github.com/ferrymq/ferry/proto/ferry/v1"
	"github.com/ferrymq/ferry/storage"
)

// BenchmarkSubscriptionMemory measures the broker's resident memory with
// 100 at-least-once subscriptions, each with a backlog of 1,000,000
// messages of 1 KiB (one topic, read by all of them from earliest), each
// with a consumer attached at credit 1,000 that has consumed and acked
// 5,000 messages and holds a full window. It reports the broker's RSS and
// peak RSS (VmRSS, VmHWM) in MiB. FERRY_BENCH_BACKLOG and FERRY_BENCH_SUBS
// change the sizes.
//
//	go test -run '^$' -bench SubscriptionMemory -benchtime 1x ./cmd/ferry
func BenchmarkSubscriptionMemory(b *testing.B) {
	backlog, subs := envInt(b, "FERRY_BENCH_BACKLOG", 1_000_000), envInt(b, "FERRY_BENCH_SUBS", 100)
	buildFerry(b)
	dir := b.TempDir()
	fillTopic(b, dir, "mem", backlog, 1024)
	// FERRY_BENCH_PPROF=HOST:PORT serves the broker's HTTP there and saves
	// its heap profile before it stops, to ferry-heap.pprof in the temp dir.
	var extra []string
	pprofAddr := os.Getenv("FERRY_BENCH_PPROF")
	if pprofAddr != "" {
		extra = []string{"--http-addr", pprofAddr, "--pprof"}
	}
	for b.Loop() {
		p := startFerry(b, dir, extra...)
		conn := p.dial(b)
		admin := ferryv1.NewAdminServiceClient(conn)
		ctx, cancel := context.WithCancel(context.Background())
		var wg sync.WaitGroup
		for i := range subs {
			name := fmt.Sprintf("s%d", i)
			_, err := admin.CreateSubscription(ctx, &ferryv1.CreateSubscriptionRequest{Topic: "mem", Name: name, Config: &ferryv1.SubscriptionConfig{
				Guarantee: ferryv1.DeliveryGuarantee_DELIVERY_GUARANTEE_AT_LEAST_ONCE,
				Type:      ferryv1.SubscriptionType_SUBSCRIPTION_TYPE_SHARED,
				Start:     &ferryv1.Position{Kind: ferryv1.PositionKind_POSITION_KIND_EARLIEST},
			}})
			if err != nil {
				b.Fatal(err)
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				holdWindow(b, ctx, ferryv1.NewSubscriberServiceClient(conn), "mem", name, 5000)
			}()
		}
		wg.Wait() // every consumer has acked 5,000 and holds 1,000
		m := procMemory(b, p.cmd.Process.Pid)
		b.ReportMetric(m["VmRSS"], "rss-MiB")
		b.ReportMetric(m["VmHWM"], "peak-rss-MiB")
		b.ReportMetric(m["RssAnon"], "anon-MiB")
		b.ReportMetric(m["RssFile"], "file-MiB")
		if pprofAddr != "" {
			saveHeapProfile(b, pprofAddr)
		}
		cancel()
		if _, err := p.stop(b, time.Minute); err != nil {
			b.Fatal(err)
		}
	}
}

// holdWindow attaches to a subscription with credit 1,000, acks the first
// acked deliveries, and returns once it holds a full window unacked; the
// stream stays open until ctx ends.
func holdWindow(b *testing.B, ctx context.Context, c ferryv1.SubscriberServiceClient, topic, sub string, acked int) {
	stream, err := c.Subscribe(ctx)
	if err != nil {
		b.Error(err)
		return
	}
	init := &ferryv1.SubscribeInit{Topic: topic, Subscription: sub, Credit: 1000}
	if err := stream.Send(&ferryv1.SubscribeRequest{Frame: &ferryv1.SubscribeRequest_Init{Init: init}}); err != nil {
		b.Error(err)
		return
	}
	got, seq := 0, uint64(0)
	for got < acked+1000 {
		resp, err := stream.Recv()
		if err != nil {
			b.Error(err)
			return
		}
		ds := resp.GetDeliveries().GetDeliveries()
		var ids []string
		for _, d := range ds {
			if got < acked {
				ids = append(ids, d.GetDeliveryId())
			}
			got++
		}
		if len(ids) > 0 {
			seq++
			ack := &ferryv1.SubscribeAck{Sequence: seq, DeliveryIds: ids}
			if err := stream.Send(&ferryv1.SubscribeRequest{Frame: &ferryv1.SubscribeRequest_Ack{Ack: ack}}); err != nil {
				b.Error(err)
				return
			}
		}
	}
	go func() {
		for {
			if _, err := stream.Recv(); err != nil {
				return
			}
		}
	}()
}

// fillTopic writes n messages of size bytes into a new one-partition topic
// in dir, without fsync, published an hour ago (outside the dedup window,
// as a backlog that built up over time is), and has Badger compact them, as
// it would have by the time such a backlog exists.
func fillTopic(tb testing.TB, dir, topic string, n, size int) {
	tb.Helper()
	opts := storage.DefaultOptions(dir)
	opts.Fsync = storage.FsyncNever
	opts.Clock = clock.NewFake(time.Now().Add(-time.Hour))
	opts.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	st, err := storage.Open(opts)
	if err != nil {
		tb.Fatal(err)
	}
	ctx := context.Background()
	if _, err := st.CreateTopic(ctx, topic, storage.TopicConfig{}); err != nil {
		tb.Fatal(err)
	}
	payload := make([]byte, size)
	var pending []*storage.Pending
	for i := 0; i < n; i += 1000 {
		batch := make([]storage.Message, min(1000, n-i))
		for j := range batch {
			batch[j] = storage.Message{ID: fmt.Sprintf("m-%d", i+j), Payload: payload}
		}
		p, err := st.Enqueue(ctx, topic, 0, batch)
		if err != nil {
			tb.Fatal(err)
		}
		pending = append(pending, p)
		if len(pending) == 64 {
			for _, p := range pending {
				if _, err := p.Wait(ctx); err != nil {
					tb.Fatal(err)
				}
			}
			pending = pending[:0]
		}
	}
	for _, p := range pending {
		if _, err := p.Wait(ctx); err != nil {
			tb.Fatal(err)
		}
	}
	if err := st.Close(ctx); err != nil {
		tb.Fatal(err)
	}
	db, err := badger.Open(badger.DefaultOptions(dir).WithLogger(nil).WithValueThreshold(1 << 20))
	if err != nil {
		tb.Fatal(err)
	}
	if err := db.Flatten(2); err != nil {
		tb.Fatal(err)
	}
	if err := db.Close(); err != nil {
		tb.Fatal(err)
	}
}

// procMemory reads a process's memory lines from /proc (VmRSS, VmHWM,
// RssAnon, RssFile, ...), in MiB. RssFile is mmapped files (Badger's
// tables and value log), which the kernel can drop under pressure.
func procMemory(tb testing.TB, pid int) map[string]float64 {
	tb.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		tb.Fatal(err)
	}
	m := map[string]float64{}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) == 3 && f[2] == "kB" {
			kb, _ := strconv.ParseFloat(f[1], 64)
			m[strings.TrimSuffix(f[0], ":")] = kb / 1024
		}
	}
	return m
}

func saveHeapProfile(b *testing.B, addr string) {
	resp, err := http.Get("http://" + addr + "/debug/pprof/heap")
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	path := filepath.Join(os.TempDir(), "ferry-heap.pprof")
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	if _, err := io.Copy(f, resp.Body); err != nil {
		b.Fatal(err)
	}
	b.Logf("heap profile: %s", path)
}
