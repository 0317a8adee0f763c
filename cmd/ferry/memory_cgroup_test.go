package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferrymq/ferry/client"
	ferryv1 "github.com/ferrymq/ferry/proto/ferry/v1"
)

// TestMemoryLimitInCgroup runs `ferry serve` in a real 512 MiB memory
// cgroup with its defaults (the limit comes from the cgroup, GOMEMLIMIT
// from the limit, as in deploy/kubernetes), drives it with 4 producers
// publishing 1 KiB messages as fast as they can plus 2 consumers, for
// FERRY_MEMORY_TEST_SECONDS (default 120), and checks that the kernel
// killed nothing, the broker is still up, and every acked message is
// stored.
func TestMemoryLimitInCgroup(t *testing.T) {
	const limit = 512 << 20
	seconds := envInt(t, "FERRY_MEMORY_TEST_SECONDS", 120)
	cg := newMemCgroup(t, limit)
	p := startFerryUnder(t, cg.wrap(), t.TempDir(), "--http-addr", "127.0.0.1:0")
	if got := scrapeMetric(t, p.httpAddr, "ferry_memory_limit_bytes"); got != limit {
		t.Fatalf("ferry_memory_limit_bytes = %v, want the cgroup's %d", got, limit)
	}
	c, err := client.Dial(context.Background(), p.grpcAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()
	if _, err := c.CreateTopic(ctx, "mem", client.TopicConfig{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.CreateSubscription(ctx, "mem", "readers", client.SubscriptionConfig{Guarantee: client.AtLeastOnce, Type: client.Shared, Start: client.Earliest()}); err != nil {
		t.Fatal(err)
	}

	const producers = 4
	payload := make([]byte, 1024)
	acked := make([][]bool, producers)
	var failed atomic.Int64
	var lastErr atomic.Value
	stop := time.Now().Add(time.Duration(seconds) * time.Second)
	prods := make([]*client.Producer, producers)
	for i := range prods {
		prods[i] = c.NewProducer("mem", client.ProducerOptions{})
	}
	// If the broker dies (the OOM killer), stop at once: close the
	// producers, which fails what they hold and unblocks PublishAsync.
	dead, died := context.WithCancel(ctx)
	defer died()
	go func() {
		select {
		case <-p.exited:
			died()
			for _, pr := range prods {
				_ = pr.Close(dead) // ended already: stops at once
			}
		case <-dead.Done():
		}
	}()
	// Consumers read and ack everything while the producers run.
	cctx, stopConsumers := context.WithCancel(dead)
	var consumed atomic.Int64
	var cwg sync.WaitGroup
	for range 2 {
		cwg.Go(func() {
			err := c.Subscribe(cctx, "mem", "readers", func(context.Context, *client.Message) error {
				consumed.Add(1)
				return nil
			}, client.WithConcurrency(4))
			if err != nil && dead.Err() == nil {
				t.Errorf("subscribe: %v", err)
			}
		})
	}

	var pwg sync.WaitGroup
	for i, pr := range prods {
		pwg.Go(func() {
			futures := make(chan *client.PublishFuture, 1<<16)
			var fwg sync.WaitGroup
			fwg.Go(func() {
				for f := range futures {
					n, _ := strconv.Atoi(f.ID()[strings.IndexByte(f.ID(), '-')+1:])
					if _, err := f.Wait(dead); err != nil {
						failed.Add(1)
						lastErr.Store(err.Error())
						continue
					}
					for len(acked[i]) <= n {
						acked[i] = append(acked[i], false)
					}
					acked[i][n] = true
				}
			})
			for n := 0; time.Now().Before(stop) && dead.Err() == nil; n++ {
				futures <- pr.PublishAsync(&client.Message{ID: fmt.Sprintf("p%d-%d", i, n), Payload: payload})
			}
			cctx, cancel := context.WithTimeout(dead, 2*time.Minute)
			if err := pr.Close(cctx); err != nil && dead.Err() == nil {
				t.Errorf("producer %d close: %v", i, err)
			}
			cancel()
			close(futures)
			fwg.Wait()
		})
	}
	pwg.Wait()
	stopConsumers()
	cwg.Wait()

	select {
	case <-p.exited:
		t.Fatalf("ferry serve died under load: %v (OOM kills in the cgroup: %d)", p.exitErr(), cg.oomKills())
	default:
	}
	died()
	if n := cg.oomKills(); n > 0 {
		t.Fatalf("the kernel OOM-killed %d processes in the cgroup", n)
	}
	if n := failed.Load(); n > 0 {
		t.Errorf("%d publishes failed; the last: %v", n, lastErr.Load())
	}
	var want int
	stored := make(map[string]bool)
	for _, m := range readTopic(t, p, "mem") {
		stored[m.GetId()] = true
	}
	for i := range producers {
		for n, ok := range acked[i] {
			if !ok {
				continue
			}
			want++
			if id := fmt.Sprintf("p%d-%d", i, n); !stored[id] {
				t.Errorf("acked %s is not stored", id)
			}
		}
	}
	refused := scrapeMetric(t, p.httpAddr, "ferry_memory_publishes_refused_total")
	delayed := scrapeMetric(t, p.httpAddr, "ferry_memory_publishes_delayed_total")
	t.Logf("%ds: %d messages acked (%.0f/s), %d consumed, %d stored; %v publishes delayed, %v refused; cgroup peak %d MiB of %d MiB",
		seconds, want, float64(want)/float64(seconds), consumed.Load(), len(stored), delayed, refused, cg.peak()>>20, limit>>20)
	if want == 0 {
		t.Fatal("no publish was acked")
	}
}

// readTopic reads every message of a one-partition topic.
func readTopic(t *testing.T, p *process, topic string) []*ferryv1.Message {
	t.Helper()
	admin := ferryv1.NewAdminServiceClient(p.dial(t))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var all []*ferryv1.Message
	for from := uint64(0); ; {
		resp, err := admin.ReadMessages(ctx, &ferryv1.ReadMessagesRequest{Topic: topic, FromOffset: from, MaxMessages: 1000})
		if err != nil {
			t.Fatalf("read %s from %d: %v", topic, from, err)
		}
		for _, m := range resp.GetMessages() {
			all = append(all, &ferryv1.Message{Id: m.GetId()})
		}
		from = resp.GetNextOffset()
		if len(resp.GetMessages()) == 0 || from >= resp.GetHeadOffset() {
			return all
		}
	}
}

// scrapeMetric reads one unlabelled metric from the broker's /metrics.
func scrapeMetric(t *testing.T, httpAddr, name string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + httpAddr + "/metrics")
	if err != nil {
		t.Fatalf("scrape: %v", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("scrape: %v", err)
	}
	for _, line := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil {
				t.Fatalf("metric %s: %v", line, err)
			}
			return f
		}
	}
	t.Fatalf("no metric %s in /metrics", name)
	return 0
}
