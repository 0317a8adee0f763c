package main

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/ferrymq/ferry/client"
)

// ack is where an acknowledged publish was stored.
type ack struct {
	partition uint32
	offset    uint64
}

// publisher runs the producers and records their outcomes.
type publisher struct {
	c        *client.Client
	topic    string
	stopping chan struct{} // closed: finish the publish under way, start no other
	interval time.Duration // each producer starts a publish at most this often; 0: no pacing

	mu        sync.Mutex // guards the fields below
	acked     map[string]ack
	latencies []time.Duration // of the acknowledged publishes, first try to ack
	maxAt     time.Time       // when the slowest started
	failures  []string
}

// produce publishes one message at a time, each with a fresh id, until
// stopping is closed. The Producer resends a publish while the broker is
// unavailable (with the same id: a resend that was stored already is
// answered as a duplicate, at the original offset), so a Publish returns
// an error only when it is refused or its minute runs out.
func (p *publisher) produce(ctx context.Context, w int) {
	pr := p.c.NewProducer(p.topic, client.ProducerOptions{})
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_ = pr.Close(cctx)
		cancel()
	}()
	next := time.Now()
	for i := 0; ; i++ {
		var pace <-chan time.Time
		if d := time.Until(next); d > 0 {
			pace = time.After(d)
		} else {
			c := make(chan time.Time)
			close(c)
			pace = c
		}
		select {
		case <-p.stopping:
			return
		case <-ctx.Done():
			return
		case <-pace:
		}
		// Behind after a slow publish: go on from now, not in a burst.
		if now := time.Now(); next.Before(now.Add(-p.interval)) {
			next = now
		}
		next = next.Add(p.interval)
		id := fmt.Sprintf("%s-%d-%07d", p.topic, w, i)
		t0 := time.Now()
		pctx, cancel := context.WithTimeout(ctx, time.Minute)
		r, err := pr.Publish(pctx, &client.Message{ID: id, Payload: []byte(id)})
		cancel()
		p.record(id, r, err, t0, time.Since(t0))
	}
}

func (p *publisher) record(id string, r client.PublishResult, err error, start time.Time, took time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err != nil {
		p.failures = append(p.failures, fmt.Sprintf("%s after %v: %v", id, took.Round(time.Millisecond), err))
		return
	}
	p.acked[id] = ack{r.Partition, r.Offset}
	if len(p.latencies) == 0 || took > slices.Max(p.latencies) {
		p.maxAt = start
	}
	p.latencies = append(p.latencies, took)
}

func (p *publisher) count() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.acked)
}

// publishSummary is the producers' outcome.
type publishSummary struct {
	acked, failed int
	p50, p99, max time.Duration
	maxAt         time.Time
	failures      []string // the first few
}

func (p *publisher) summary() publishSummary {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := publishSummary{acked: len(p.acked), failed: len(p.failures), maxAt: p.maxAt}
	s.failures = p.failures[:min(len(p.failures), 5)]
	if len(p.failures) > 5 {
		s.failures = append(s.failures, fmt.Sprintf("and %d more", len(p.failures)-5))
	}
	if n := len(p.latencies); n > 0 {
		l := slices.Clone(p.latencies)
		slices.Sort(l)
		q := func(f float64) time.Duration { return l[min(n-1, int(f*float64(n)))].Round(time.Millisecond) }
		s.p50, s.p99, s.max = q(0.5), q(0.99), l[n-1].Round(time.Millisecond)
	}
	return s
}
