package broker

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
	"google.golang.org/protobuf/types/known/durationpb"

	ferryv1 "github.com/ferrymq/ferry/proto/ferry/v1"
)

// TestMetricsCountWhatHappened publishes, consumes with acks, nacks and
// dead-letters through a real broker and checks that the scraped counters
// say exactly that.
func TestMetricsCountWhatHappened(t *testing.T) {
	ts, clk := startFakeServer(t)
	ts.createTopic(t, "m", nil)
	ts.createTopic(t, "m.dead", nil)
	cfg := subConfig(atLeast, shared)
	cfg.MaxDeliveries, cfg.DeadLetterTopic = 2, "m.dead"
	cfg.BackoffMin = durationpb.New(time.Second)
	ts.createSub(t, "m", "s", cfg)

	ts.publishN(t, "m", "a", 20)
	ts.publishN(t, "m", "a", 2) // the same ids again: duplicates

	s := ts.attach(t, "m", "s", 100)
	first := s.take(t, 20)
	s.send(t, subAck(1, ids(first[:15]...)...))
	s.send(t, subNack(ids(first[15:]...)...))
	nacked := func(n uint64) {
		ts.waitStats(t, "m", "s", fmt.Sprintf("%d nacks taken", n), func(st *ferryv1.SubscriptionStats) bool { return st.GetNacked() == n })
	}
	nacked(5)
	clk.Advance(time.Second) // backoff over: the 5 come back, attempt 2
	again := s.take(t, 5)
	s.send(t, subNack(ids(again...)...))
	nacked(10)
	clk.Advance(2 * time.Second) // out of attempts: dead-lettered
	ts.waitStats(t, "m", "s", "every message acked or dead-lettered", func(st *ferryv1.SubscriptionStats) bool {
		return st.GetBacklog() == 0 && st.GetDeadLettered() == 5
	})

	got := scrape(t, ts)
	for _, w := range []struct {
		series string
		want   float64
	}{
		{`ferry_publish_messages_total{topic="m"}`, 20},
		{`ferry_publish_bytes_total{topic="m"}`, float64(20*len("payload a-0")) + 10}, // ids a-10..a-19 are one byte longer
		{`ferry_publish_duplicates_total{topic="m"}`, 2},
		{`ferry_publish_batches_total`, 2},
		{`ferry_subscription_delivered_messages_total{subscription="s",topic="m"}`, 25},
		{`ferry_subscription_redelivered_messages_total{subscription="s",topic="m"}`, 5},
		{`ferry_subscription_acked_messages_total{subscription="s",topic="m"}`, 15},
		{`ferry_subscription_nacked_messages_total{subscription="s",topic="m"}`, 10},
		{`ferry_subscription_dead_lettered_messages_total{subscription="s",topic="m"}`, 5},
		{`ferry_subscription_backlog_messages{subscription="s",topic="m"}`, 0},
		{`ferry_subscription_inflight_messages{subscription="s",topic="m"}`, 0},
		{`ferry_subscription_consumers{subscription="s",topic="m"}`, 1},
	} {
		if v, ok := got[w.series]; !ok || v != w.want {
			t.Errorf("%s = %v (scraped: %v), want %v", w.series, v, ok, w.want)
		}
	}
	for _, name := range []string{
		"ferry_publish_duration_seconds_count", "ferry_storage_fsync_duration_seconds_count",
		"ferry_storage_group_commit_requests_count",
		"go_goroutines", "process_resident_memory_bytes",
		`ferry_grpc_server_handled_total{grpc_code="OK",grpc_method="Publish",grpc_service="ferry.v1.PublisherService",grpc_type="unary"}`,
	} {
		if v, ok := got[name]; !ok || v <= 0 {
			t.Errorf("%s = %v (scraped: %v), want > 0", name, v, ok)
		}
	}
	// Badger refreshes its sizes once a minute: the series is there, its
	// value may still be 0.
	if _, ok := got[`ferry_storage_disk_bytes{kind="vlog"}`]; !ok {
		t.Error("ferry_storage_disk_bytes is not scraped")
	}
	queriedMetricsExist(t, got)
	s.close(t)
}

// queriedMetricsExist checks that every metric the Grafana dashboard and
// the Prometheus rules in deploy/ query is in the scrape.
func queriedMetricsExist(t *testing.T, scraped map[string]float64) {
	t.Helper()
	names := map[string]bool{}
	for series := range scraped {
		names[strings.SplitN(series, "{", 2)[0]] = true
	}
	var exprs []string
	b, err := os.ReadFile("../deploy/grafana/ferry-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Title   string
			Targets []struct{ Expr string }
		}
	}
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatalf("dashboard: %v", err)
	}
	for _, p := range dash.Panels {
		for _, tg := range p.Targets {
			exprs = append(exprs, tg.Expr)
		}
	}
	b, err = os.ReadFile("../deploy/prometheus/ferry-rules.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var rules struct {
		Groups []struct {
			Rules []struct {
				Alert, Expr string
			}
		}
	}
	if err := yaml.Unmarshal(b, &rules); err != nil {
		t.Fatalf("rules: %v", err)
	}
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			if r.Alert == "" || r.Expr == "" {
				t.Errorf("rule %+v has no alert name or no expr", r)
			}
			exprs = append(exprs, r.Expr)
		}
	}
	if len(exprs) < 10 {
		t.Fatalf("found only %d queries in deploy/", len(exprs))
	}
	metric := regexp.MustCompile(`\b(?:ferry|go|process)_[a-z0-9_]+\b`)
	for _, e := range exprs {
		for _, name := range metric.FindAllString(e, -1) {
			if !names[name] {
				t.Errorf("%s is queried (%s) but not scraped", name, e)
			}
		}
	}
}

// scrape reads the broker's /metrics over HTTP and returns each sample's
// value by series (name and sorted labels, as in the exposition format).
func scrape(tb testing.TB, ts *testServer) map[string]float64 {
	tb.Helper()
	resp, err := http.Get("http://" + ts.srv.HTTPAddr().String() + "/metrics")
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		tb.Fatal(err)
	}
	out := map[string]float64{}
	for _, line := range strings.Split(string(body), "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		var v float64
		if _, err := fmt.Sscan(line[i+1:], &v); err != nil {
			continue
		}
		out[line[:i]] = v
	}
	return out
}
