package main

import (
	"context"
	"encoding/binary"
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

// result is one measurement: one workload against one server config.
type result struct {
	Msgs     int64   `json:"msgs"`
	Seconds  float64 `json:"seconds"`
	Rate     float64 `json:"msgs_per_sec"`
	P50ms    float64 `json:"p50_ms,omitempty"`
	P99ms    float64 `json:"p99_ms,omitempty"`
	PeakRSS  int64   `json:"peak_rss_bytes,omitempty"`
	Errors   int64   `json:"errors,omitempty"`
	TimedOut bool    `json:"timed_out,omitempty"`
	Err      string  `json:"error,omitempty"`
}

func (r *result) finish(n int64, d time.Duration) {
	r.Msgs = n
	r.Seconds = d.Seconds()
	if d > 0 {
		r.Rate = float64(n) / d.Seconds()
	}
}

// latencies collects samples; percentiles are exact (sorted).
type latencies struct {
	mu sync.Mutex
	d  []time.Duration
}

func (l *latencies) add(d time.Duration) {
	l.mu.Lock()
	l.d = append(l.d, d)
	l.mu.Unlock()
}

func (l *latencies) into(r *result) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.d) == 0 {
		return
	}
	sort.Slice(l.d, func(i, j int) bool { return l.d[i] < l.d[j] })
	q := func(p float64) float64 {
		i := int(p * float64(len(l.d)-1))
		return float64(l.d[i]) / float64(time.Millisecond)
	}
	r.P50ms, r.P99ms = q(0.50), q(0.99)
}

// payload is size bytes of filler (not all zeros).
func payload(size int) []byte {
	b := make([]byte, size)
	for i := range b {
		b[i] = byte('a' + i%26)
	}
	return b
}

// stamped is a payload whose first 8 bytes carry t (unix nanos).
func stamped(size int, t time.Time) []byte {
	b := payload(max(size, 8))
	binary.BigEndian.PutUint64(b, uint64(t.UnixNano()))
	return b
}

func stampOf(b []byte) time.Time {
	if len(b) < 8 {
		return time.Time{}
	}
	return time.Unix(0, int64(binary.BigEndian.Uint64(b)))
}

// pacer yields the scheduled send times of a fixed rate; a late sender
// catches up at once, and latency is measured from the schedule (so a
// stalled server is not hidden by coordinated omission).
type pacer struct {
	start    time.Time
	interval time.Duration
	i        int64
}

func newPacer(rate int) *pacer {
	return &pacer{start: time.Now(), interval: time.Second / time.Duration(rate)}
}

func (p *pacer) next() time.Time {
	t := p.start.Add(time.Duration(p.i) * p.interval)
	p.i++
	if d := time.Until(t); d > 0 {
		time.Sleep(d)
	}
	return t
}

// syncPublishers runs producers goroutines for dur; each opens its own
// publisher, then publishes one message at a time, each waiting for its
// ack, and times it. A publisher stops at its first error (with RabbitMQ a
// failed publish closes the channel): the errors are counted, and the
// first reported.
func syncPublishers(ctx context.Context, producers int, dur time.Duration, open func() (publish func() error, closeFn func(), err error)) result {
	var lat latencies
	var acked, failed atomic.Int64
	var firstErr atomic.Value
	start := time.Now()
	deadline := start.Add(dur)
	var wg sync.WaitGroup
	for range producers {
		wg.Go(func() {
			publish, closeFn, err := open()
			if err != nil {
				failed.Add(1)
				firstErr.CompareAndSwap(nil, err.Error())
				return
			}
			defer closeFn()
			for time.Now().Before(deadline) && ctx.Err() == nil {
				s := time.Now()
				if err := publish(); err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
					return
				}
				lat.add(time.Since(s))
				acked.Add(1)
			}
		})
	}
	wg.Wait()
	var r result
	r.finish(acked.Load(), time.Since(start))
	r.Errors, r.Err = failed.Load(), errOf(&firstErr)
	lat.into(&r)
	return r
}

// confirm waits until one publish is confirmed, and says how it went.
type confirm func() error

// pipelined publishes message i = 0, 1, … while more(i) and ctx lasts,
// with at most window unconfirmed: send publishes message i and returns how
// to wait for its confirmation, which a second goroutine does, in order. An
// error from send ends the run; one from a confirm counts that message as
// failed. It returns the messages confirmed and failed, and the first error.
func pipelined(ctx context.Context, window int, more func(i int) bool, send func(i int) (confirm, error)) (acked, failed int64, firstErr string) {
	var a, f atomic.Int64
	var first atomic.Value
	fail := func(err error) {
		f.Add(1)
		first.CompareAndSwap(nil, err.Error())
	}
	confirms := make(chan confirm, window)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for c := range confirms {
			if err := c(); err != nil {
				fail(err)
			} else {
				a.Add(1)
			}
		}
	}()
	for i := 0; more(i) && ctx.Err() == nil; i++ {
		c, err := send(i)
		if err != nil {
			fail(err)
			break
		}
		confirms <- c
	}
	close(confirms)
	<-done
	return a.Load(), f.Load(), errOf(&first)
}
