package broker

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ferrymq/ferry/consumer"
	"github.com/ferrymq/ferry/storage"
)

// TestScrapeLinear checks that a scrape of /metrics costs time linear in
// topics + subscriptions: the least CPU time of several scrapes at 4,000
// topics (one subscription each) may be at most 12 times that at 500 (8
// times as many: linear is at most 8; the quadratic scrape this replaced
// took 25 to 30 times). CPU time, the least of several, and a ratio
// between two sizes on one broker, so a busy machine does not decide. It
// also checks the series past MaxSubscriptionSeries are summed into _other.
func TestScrapeLinear(t *testing.T) {
	const small, large = 500, 4000
	ts := startServer(t, func(o *Options) { o.Storage.Fsync = storage.FsyncNever })
	fillTopics(t, ts.srv, 0, small)
	costSmall := fastestScrape(t, ts.srv)
	fillTopics(t, ts.srv, small, large)
	costLarge := fastestScrape(t, ts.srv)
	ratio := float64(costLarge) / float64(costSmall)
	t.Logf("fastest scrape: %v at %d topics, %v at %d: ratio %.1f", costSmall, small, costLarge, large, ratio)
	if ratio > 12 {
		t.Errorf("a scrape at %d topics takes %.1f times one at %d (%v against %v): not linear", large, ratio, small, costLarge, costSmall)
	}

	// t-999 sorts after the first MaxSubscriptionSeries topics: its
	// backlog is summed into _other.
	ts.publishN(t, "t-999", "x", 3)
	got := scrape(t, ts)
	series := 0
	for k := range got {
		if strings.HasPrefix(k, "ferry_subscription_consumers{") {
			series++
		}
	}
	if series != MaxSubscriptionSeries+1 {
		t.Errorf("%d series of ferry_subscription_consumers, want %d and _other", series, MaxSubscriptionSeries)
	}
	if v := got[`ferry_subscription_backlog_messages{subscription="_other",topic="_other"}`]; v != 3 {
		t.Errorf("_other backlog %v, want 3 (t-999's)", v)
	}
}

// fastestScrape returns the least CPU time (user and system, of the whole
// process: other processes on a busy machine do not count) that one of
// several gathers of srv's subscription metrics took (the Go and process
// collectors' constant cost left out).
func fastestScrape(tb testing.TB, srv *Server) time.Duration {
	tb.Helper()
	reg := prometheus.NewRegistry()
	reg.MustRegister(newSubscriptionCollector(srv.store, srv.engine, srv.opts.Clock))
	fastest := time.Duration(1<<63 - 1)
	for range 10 {
		start := cpuTime(tb)
		if _, err := reg.Gather(); err != nil {
			tb.Fatal(err)
		}
		fastest = min(fastest, cpuTime(tb)-start)
	}
	return fastest
}

// cpuTime returns the CPU time the process has used so far.
func cpuTime(tb testing.TB) time.Duration {
	tb.Helper()
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		tb.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkScrape scrapes /metrics over HTTP from a broker with n
// one-partition topics, each with one at-least-once subscription, for each
// n in FERRY_BENCH_SCRAPE (comma-separated, default "1000,4000"). The
// first scrape (which starts every subscription's loop) is timed apart and
// reported as first-s; ns/op is a scrape after that. A scrape must stay
// linear in topics + subscriptions: the bound is 1 s at 20,000.
//
//	go test -run '^$' -bench Scrape -benchtime 5x ./broker
//	FERRY_BENCH_SCRAPE=20000 go test -run '^$' -bench Scrape -benchtime 5x -cpuprofile cpu.out ./broker
func BenchmarkScrape(b *testing.B) {
	sizes := os.Getenv("FERRY_BENCH_SCRAPE")
	if sizes == "" {
		sizes = "1000,4000"
	}
	for _, s := range strings.Split(sizes, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 {
			b.Fatalf("FERRY_BENCH_SCRAPE: %q is not a positive count", s)
		}
		b.Run(fmt.Sprintf("topics=%d/subs=%d", n, n), func(b *testing.B) {
			ts := startServer(b, func(o *Options) { o.Storage.Fsync = storage.FsyncNever })
			fillTopics(b, ts.srv, 0, n)
			start := time.Now()
			scrapeBytes(b, ts)
			first := time.Since(start)
			var size int
			for b.Loop() {
				size = scrapeBytes(b, ts)
			}
			b.ReportMetric(first.Seconds(), "first-s")
			b.ReportMetric(float64(size), "bytes/scrape")
		})
	}
}

// fillTopics creates one-partition topics t-from… up to t-(to-1), with one
// at-least-once subscription s each, directly on the broker's store and
// engine.
func fillTopics(tb testing.TB, srv *Server, from, to int) {
	tb.Helper()
	ctx := context.Background()
	for i := from; i < to; i++ {
		topic := fmt.Sprintf("t-%d", i)
		if _, err := srv.Store().CreateTopic(ctx, topic, storage.TopicConfig{Partitions: 1}); err != nil {
			tb.Fatal(err)
		}
		if _, err := srv.engine.CreateSubscription(ctx, topic, "s", consumer.DefaultOptions(consumer.AtLeastOnce)); err != nil {
			tb.Fatal(err)
		}
	}
}

// scrapeBytes gets /metrics and returns the body's length.
func scrapeBytes(tb testing.TB, ts *testServer) int {
	tb.Helper()
	resp, err := http.Get("http://" + ts.srv.HTTPAddr().String() + "/metrics")
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	n, err := io.Copy(io.Discard, resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		tb.Fatalf("scrape: status %d, %v", resp.StatusCode, err)
	}
	return int(n)
}
