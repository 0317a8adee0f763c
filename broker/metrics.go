package broker

import (
	"context"
	"time"

	grpcprom "github.com/grpc-ecosystem/go-grpc-middleware/providers/prometheus"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/ferrymq/ferry/consumer"
	"github.com/ferrymq/ferry/internal/clock"
	"github.com/ferrymq/ferry/storage"
)

// MaxSubscriptionSeries caps how many subscriptions get their own
// per-subscription series (labels topic and subscription); the rest are
// summed into topic="_other", subscription="_other", so a broker with
// many subscriptions cannot overwhelm Prometheus.
const MaxSubscriptionSeries = 500

// metrics are the broker's own metrics, on the registry the broker owns.
type metrics struct {
	publishMessages   *prometheus.CounterVec
	publishBytes      *prometheus.CounterVec
	publishDuplicates *prometheus.CounterVec
	publishBatches    prometheus.Counter
	publishSeconds    prometheus.Histogram
	ackConfirmations  prometheus.Counter
	grpc              *grpcprom.ServerMetrics
}

// newMetrics registers the broker's metrics, the store's, the gRPC
// server's, the subscriptions' (read from the engine at each scrape), and
// the Go runtime and process collectors on reg.
func newMetrics(reg *prometheus.Registry) *metrics {
	m := &metrics{
		publishMessages: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ferry_publish_messages_total", Help: "Messages published and stored (duplicates not counted).",
		}, []string{"topic"}),
		publishBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ferry_publish_bytes_total", Help: "Payload bytes of messages published and stored.",
		}, []string{"topic"}),
		publishDuplicates: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ferry_publish_duplicates_total", Help: "Messages not stored because their id was published within the dedup window.",
		}, []string{"topic"}),
		publishBatches: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ferry_publish_batches_total", Help: "Publish requests answered successfully (unary or stream).",
		}),
		publishSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "ferry_publish_duration_seconds", Help: "Time from a publish request's arrival to its answer (durable).",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16),
		}),
		ackConfirmations: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ferry_subscribe_ack_confirmations_total", Help: "Effectively-once ack confirmations sent to consumers.",
		}),
		grpc: grpcprom.NewServerMetrics(
			grpcprom.WithServerCounterOptions(grpcprom.WithNamespace("ferry")),
			grpcprom.WithServerHandlingTimeHistogram(grpcprom.WithHistogramNamespace("ferry")),
		),
	}
	reg.MustRegister(m.publishMessages, m.publishBytes, m.publishDuplicates, m.publishBatches, m.publishSeconds,
		m.ackConfirmations, m.grpc,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// published counts the stored and duplicate messages of one partition's
// share of a publish.
func (m *metrics) published(topic string, msgs []storage.Message, results []storage.AppendResult) {
	stored, bytes, dups := 0, 0, 0
	for i, r := range results {
		if r.Duplicate {
			dups++
			continue
		}
		stored++
		bytes += len(msgs[i].Payload)
	}
	m.publishMessages.WithLabelValues(topic).Add(float64(stored))
	m.publishBytes.WithLabelValues(topic).Add(float64(bytes))
	if dups > 0 {
		m.publishDuplicates.WithLabelValues(topic).Add(float64(dups))
	}
}

// answered counts one publish request answered successfully.
func (m *metrics) answered(took time.Duration) {
	m.publishBatches.Inc()
	m.publishSeconds.Observe(took.Seconds())
}

// storeCollector reports the store's size on disk, its filesystem's free
// and total space, its disk reserve and what it refuses at each scrape.
type storeCollector struct {
	st                   *storage.Store
	dir                  string
	used, free, capacity *prometheus.Desc
	reserve, low, ro     *prometheus.Desc
}

func newStoreCollector(st *storage.Store, dir string) *storeCollector {
	return &storeCollector{st: st, dir: dir,
		used: prometheus.NewDesc("ferry_storage_disk_bytes",
			"Bytes of the store's files: the LSM tree (messages up to 1 MiB inline) and the value log.", []string{"kind"}, nil),
		free: prometheus.NewDesc("ferry_storage_disk_free_bytes",
			"Bytes free for the broker on the data directory's filesystem.", nil, nil),
		capacity: prometheus.NewDesc("ferry_storage_disk_capacity_bytes",
			"Size of the data directory's filesystem.", nil, nil),
		reserve: prometheus.NewDesc("ferry_storage_disk_reserve_bytes",
			"Free space the broker keeps (--disk-reserve): below it publishes are refused, below half of it every write but deletes.", nil, nil),
		low: prometheus.NewDesc("ferry_storage_publishing_refused",
			"1 while publishes, Commit's outputs and dead letters are refused for disk space.", nil, nil),
		ro: prometheus.NewDesc("ferry_storage_read_only",
			"1 while the store refuses every write but deletes (free space below half the reserve), or every write (a disk error, or an open on a full disk).", nil, nil),
	}
}

func (c *storeCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.used
	ch <- c.free
	ch <- c.capacity
	ch <- c.reserve
	ch <- c.low
	ch <- c.ro
}

func (c *storeCollector) Collect(ch chan<- prometheus.Metric) {
	lsm, vlog := c.st.DiskBytes()
	ch <- prometheus.MustNewConstMetric(c.used, prometheus.GaugeValue, float64(lsm), "lsm")
	ch <- prometheus.MustNewConstMetric(c.used, prometheus.GaugeValue, float64(vlog), "vlog")
	if free, capacity, err := storage.DiskSpace(c.dir); err == nil {
		ch <- prometheus.MustNewConstMetric(c.free, prometheus.GaugeValue, float64(free))
		ch <- prometheus.MustNewConstMetric(c.capacity, prometheus.GaugeValue, float64(capacity))
	}
	d := c.st.Disk()
	ch <- prometheus.MustNewConstMetric(c.reserve, prometheus.GaugeValue, float64(d.Reserve))
	ch <- prometheus.MustNewConstMetric(c.low, prometheus.GaugeValue, boolGauge(d.Low))
	ch <- prometheus.MustNewConstMetric(c.ro, prometheus.GaugeValue, boolGauge(d.ReadOnly))
}

func boolGauge(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// subscriptionCollector reports every subscription's stats at each scrape,
// read from the engine: gauges for backlog, in flight, consumers and
// oldest unacked age, and the engine's counters since the broker started.
type subscriptionCollector struct {
	st     *storage.Store
	engine *consumer.Engine
	clk    clock.Clock
	descs  map[string]*prometheus.Desc
}

// subscriptionSeries are the per-subscription metrics: name, help, and
// whether it is a counter.
var subscriptionSeries = []struct {
	name, help string
	counter    bool
	value      func(st consumer.Stats, now time.Time) float64
}{
	{"ferry_subscription_backlog_messages", "Messages not yet acked.", false,
		func(st consumer.Stats, _ time.Time) float64 { return float64(st.Backlog) }},
	{"ferry_subscription_inflight_messages", "Deliveries outstanding at consumers.", false,
		func(st consumer.Stats, _ time.Time) float64 { return float64(st.Inflight) }},
	{"ferry_subscription_consumers", "Consumers attached.", false,
		func(st consumer.Stats, _ time.Time) float64 { return float64(st.Consumers) }},
	{"ferry_subscription_oldest_unacked_age_seconds", "Age of the oldest unacked message held in memory; 0 if none.", false,
		func(st consumer.Stats, now time.Time) float64 {
			if st.OldestUnacked.IsZero() {
				return 0
			}
			return max(now.Sub(st.OldestUnacked).Seconds(), 0)
		}},
	{"ferry_subscription_delivered_messages_total", "Deliveries made, redeliveries included.", true,
		func(st consumer.Stats, _ time.Time) float64 { return float64(st.Delivered) }},
	{"ferry_subscription_redelivered_messages_total", "Deliveries after the first of a message.", true,
		func(st consumer.Stats, _ time.Time) float64 { return float64(st.Redelivered) }},
	{"ferry_subscription_acked_messages_total", "Messages acked.", true,
		func(st consumer.Stats, _ time.Time) float64 { return float64(st.Acked) }},
	{"ferry_subscription_nacked_messages_total", "Nacks taken.", true,
		func(st consumer.Stats, _ time.Time) float64 { return float64(st.Nacked) }},
	{"ferry_subscription_dead_lettered_messages_total", "Messages sent to the dead-letter topic.", true,
		func(st consumer.Stats, _ time.Time) float64 { return float64(st.DeadLettered) }},
	{"ferry_subscription_stale_acks_total", "Acks, nacks and commits refused as stale or unknown.", true,
		func(st consumer.Stats, _ time.Time) float64 { return float64(st.StaleAcks) }},
	{"ferry_subscription_skipped_messages_total", "Effectively-once: messages skipped because their id was acked before.", true,
		func(st consumer.Stats, _ time.Time) float64 { return float64(st.Skipped) }},
}

// oldestSeries is the index of the oldest unacked age in
// subscriptionSeries.
const oldestSeries = 3

func newSubscriptionCollector(st *storage.Store, e *consumer.Engine, clk clock.Clock) *subscriptionCollector {
	c := &subscriptionCollector{st: st, engine: e, clk: clk, descs: make(map[string]*prometheus.Desc)}
	for _, s := range subscriptionSeries {
		c.descs[s.name] = prometheus.NewDesc(s.name, s.help, []string{"topic", "subscription"}, nil)
	}
	return c
}

func (c *subscriptionCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range c.descs {
		ch <- d
	}
}

func (c *subscriptionCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	now := c.clk.Now()
	type key struct{ topic, sub string }
	values := map[key][]float64{}
	var order []key
	topics := c.st.Topics()
	names := make([]string, len(topics))
	for i, t := range topics {
		names[i] = t.Name
	}
	// One pass over every subscription: a scrape is linear in topics +
	// subscriptions.
	err := c.engine.EachSubscription(ctx, names, func(info consumer.Info) {
		k := key{info.Topic, info.Name}
		if len(order) >= MaxSubscriptionSeries {
			k = key{"_other", "_other"}
		}
		v, ok := values[k]
		if !ok {
			v = make([]float64, len(subscriptionSeries))
			values[k] = v
			order = append(order, k)
		}
		for i, s := range subscriptionSeries {
			if s.counter || i != oldestSeries {
				v[i] += s.value(info.Stats, now)
			} else {
				v[i] = max(v[i], s.value(info.Stats, now)) // an age does not add up
			}
		}
	})
	if err != nil {
		// The broker is closing or the scrape timed out: no series rather
		// than partial sums, which would look like counter resets.
		return
	}
	for _, k := range order {
		for i, s := range subscriptionSeries {
			vt := prometheus.GaugeValue
			if s.counter {
				vt = prometheus.CounterValue
			}
			ch <- prometheus.MustNewConstMetric(c.descs[s.name], vt, values[k][i], k.topic, k.sub)
		}
	}
}
