package storage

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the store's Prometheus metrics. Build them with NewMetrics on
// a registry the caller owns and pass them in Options.Metrics; a nil
// *Metrics records nothing.
type Metrics struct {
	fsyncSeconds     prometheus.Histogram
	groupCommit      prometheus.Histogram
	retentionDeleted *prometheus.CounterVec
	gcRuns           prometheus.Counter
}

// NewMetrics registers the store's metrics on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		fsyncSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "ferry_storage_fsync_duration_seconds",
			Help:    "Time of one durable commit under --fsync=always: Badger writes it and syncs its value log, then its memtable log (commits waiting meanwhile are gathered into one write).",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16), // 100µs to 3.3s
		}),
		groupCommit: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "ferry_storage_group_commit_requests",
			Help:    "Write requests (publish batches, cursor writes) answered together once durable.",
			Buckets: prometheus.ExponentialBuckets(1, 2, 12), // 1 to 2048
		}),
		retentionDeleted: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ferry_storage_retention_deleted_messages_total",
			Help: "Messages removed by retention (max age, bytes or messages).",
		}, []string{"topic"}),
		gcRuns: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ferry_storage_vlog_gc_runs_total",
			Help: "Value-log files rewritten by garbage collection.",
		}),
	}
	reg.MustRegister(m.fsyncSeconds, m.groupCommit, m.retentionDeleted, m.gcRuns)
	return m
}

func (m *Metrics) observeFsync(seconds float64) {
	if m == nil {
		return
	}
	m.fsyncSeconds.Observe(seconds)
}

func (m *Metrics) observeGroup(requests int) {
	if m == nil {
		return
	}
	m.groupCommit.Observe(float64(requests))
}

func (m *Metrics) retained(topic string, deleted int) {
	if m == nil || deleted == 0 {
		return
	}
	m.retentionDeleted.WithLabelValues(topic).Add(float64(deleted))
}

func (m *Metrics) gcRan() {
	if m != nil {
		m.gcRuns.Inc()
	}
}

// DiskBytes returns the size of the store's files: the LSM tree (which
// holds messages up to 1 MiB inline) and the value log.
func (s *Store) DiskBytes() (lsm, vlog int64) { return s.db.Size() }
