package broker

import (
	"context"
	rmetrics "runtime/metrics"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/semaphore"

	"github.com/ferrymq/ferry/internal/clock"
)

// Memory admission. The broker's memory is its Go runtime's (Badger
// allocates its memtables and the tables it builds on the Go heap too) plus
// the pages of Badger's files it maps, which the store hands back to the
// page cache (storage.Options.PageOutInterval). Publishes are what a client
// can make grow without bound, so they are what is held back:
//
//   - every publish holds its bytes from arrival until it is durable, out
//     of Options.MaxPublishBytesInFlight shared by all streams; at the cap
//     the next one waits (the stream is not read, gRPC flow control pushes
//     back on the client);
//   - with a memory limit, the memory in use — the live heap at the last GC
//     plus what the runtime holds outside the heap — is compared with the
//     limit: from memorySlowFraction of it each publish is delayed, from
//     memoryRefuseFraction it is refused with RESOURCE_EXHAUSTED and a
//     RetryInfo of memoryRetryDelay, before it is read into a queue.
const (
	memorySlowFraction   = 0.55
	memoryRefuseFraction = 0.70
	memoryMaxDelay       = 50 * time.Millisecond
	memoryRetryDelay     = 250 * time.Millisecond
	memorySampleEvery    = 10 * time.Millisecond
)

// memoryRefusal is a publish refused at the memory limit: an exhaustedError
// (RESOURCE_EXHAUSTED with a RetryInfo) that also ends a PublishStream, so
// that nothing after it is stored before the client's retry.
type memoryRefusal struct{ err error }

func (r *memoryRefusal) Error() string { return r.err.Error() }
func (r *memoryRefusal) Unwrap() error { return r.err }

// memoryBudget admits publishes (see above). Safe for concurrent use.
type memoryBudget struct {
	limit    int64 // bytes; 0: no limit, only the in-flight cap applies
	inflight *semaphore.Weighted
	capacity int64 // of inflight
	clk      clock.Clock
	sample   func() int64

	mu      sync.Mutex // guards used and sampled
	used    int64
	sampled time.Time

	delayed, refused prometheus.Counter
}

func newMemoryBudget(limit, inflightBytes int64, clk clock.Clock, reg prometheus.Registerer) *memoryBudget {
	b := &memoryBudget{limit: limit, inflight: semaphore.NewWeighted(inflightBytes), capacity: inflightBytes, clk: clk, sample: goMemoryInUse,
		delayed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ferry_memory_publishes_delayed_total", Help: "Publish requests delayed because the broker's memory in use neared its limit."}),
		refused: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ferry_memory_publishes_refused_total", Help: "Publish requests refused (RESOURCE_EXHAUSTED) because the broker's memory in use was at its limit."}),
	}
	reg.MustRegister(b.delayed, b.refused,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "ferry_memory_limit_bytes", Help: "The broker's memory limit (--memory-limit); 0 is none."},
			func() float64 { return float64(b.limit) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "ferry_memory_used_bytes", Help: "Memory in use as admission control counts it: the live Go heap at the last GC plus the runtime's memory outside the heap."},
			func() float64 { return float64(b.use()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "ferry_memory_publish_inflight_limit_bytes", Help: "Bytes of publishes the broker holds at once, from arrival until durable; more wait."},
			func() float64 { return float64(b.capacity) }),
	)
	return b
}

// admit waits until a publish of n bytes may be taken and returns the
// function that gives its bytes back once it is durable or failed. It
// fails with an exhaustedError when memory in use is at the limit, or with
// ctx's error.
func (b *memoryBudget) admit(ctx context.Context, n int64) (release func(), err error) {
	if b.limit > 0 {
		used := b.use()
		switch {
		case used >= int64(memoryRefuseFraction*float64(b.limit)):
			b.refused.Inc()
			return nil, &memoryRefusal{exhaustedf(memoryRetryDelay, "the broker is at its memory limit (%d MiB in use of %d MiB); retry in %v",
				used>>20, b.limit>>20, memoryRetryDelay)}
		case used >= int64(memorySlowFraction*float64(b.limit)):
			b.delayed.Inc()
			if !clock.Sleep(b.clk, b.delay(used), ctx.Done()) {
				return nil, ctx.Err()
			}
		}
	}
	n = min(max(n, 1), b.capacity)
	if err := b.inflight.Acquire(ctx, n); err != nil {
		return nil, err
	}
	var once sync.Once
	return func() { once.Do(func() { b.inflight.Release(n) }) }, nil
}

// delay grows from 0 at the slow threshold to memoryMaxDelay at the
// refusal threshold.
func (b *memoryBudget) delay(used int64) time.Duration {
	slow, refuse := memorySlowFraction*float64(b.limit), memoryRefuseFraction*float64(b.limit)
	f := (float64(used) - slow) / (refuse - slow)
	return time.Duration(min(max(f, 0.05), 1) * float64(memoryMaxDelay))
}

// use is the memory in use, sampled at most every memorySampleEvery.
func (b *memoryBudget) use() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	if now := b.clk.Now(); b.sampled.IsZero() || now.Sub(b.sampled) >= memorySampleEvery {
		b.used, b.sampled = b.sample(), now
	}
	return b.used
}

// goMemoryInUse is the live heap as of the last GC plus the memory the Go
// runtime holds outside the heap (stacks, GC metadata, buffers): what the
// process would keep if it collected now. Heap garbage is left out; the GC
// (GOMEMLIMIT) takes care of it.
func goMemoryInUse() int64 {
	s := []rmetrics.Sample{
		{Name: "/gc/heap/live:bytes"},
		{Name: "/memory/classes/total:bytes"},
		{Name: "/memory/classes/heap/released:bytes"},
		{Name: "/memory/classes/heap/free:bytes"},
		{Name: "/memory/classes/heap/objects:bytes"},
		{Name: "/memory/classes/heap/unused:bytes"},
	}
	rmetrics.Read(s)
	v := make([]int64, len(s))
	for i := range s {
		if s[i].Value.Kind() == rmetrics.KindUint64 {
			v[i] = int64(s[i].Value.Uint64())
		}
	}
	outside := v[1] - v[2] - v[3] - v[4] - v[5]
	return v[0] + max(outside, 0)
}
