package main

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/ferrymq/ferry/client"
)

const ferryTopic = "bench"

type ferryTarget struct {
	c *client.Client
}

func dialFerry(ctx context.Context, addr string) (*ferryTarget, error) {
	c, err := client.Dial(ctx, addr)
	if err != nil {
		return nil, err
	}
	if _, err := c.CreateTopic(ctx, ferryTopic, client.TopicConfig{Partitions: 1}); err != nil {
		c.Close()
		return nil, fmt.Errorf("create topic: %w", err)
	}
	return &ferryTarget{c: c}, nil
}

func (f *ferryTarget) close() { f.c.Close() }

func (f *ferryTarget) producer(size, window int) *client.Producer {
	return f.c.NewProducer(ferryTopic, client.ProducerOptions{MaxInflightBytes: int64(window * (size + 64))})
}

// publish sends m on p and returns how to wait for its answer.
func publish(ctx context.Context, p *client.Producer, m *client.Message) confirm {
	fu := p.PublishAsync(m)
	return func() error {
		_, err := fu.Wait(ctx)
		return err
	}
}

func errOf(v *atomic.Value) string {
	if s, ok := v.Load().(string); ok {
		return s
	}
	return ""
}

func (f *ferryTarget) pubAsync(ctx context.Context, size, window int, dur time.Duration, withID bool) result {
	p := f.producer(size, window)
	defer p.Close(context.Background())
	pl := payload(size)
	start := time.Now()
	deadline := start.Add(dur)
	acked, failed, msg := pipelined(ctx, window, func(int) bool { return time.Now().Before(deadline) }, func(i int) (confirm, error) {
		m := &client.Message{Payload: pl}
		if withID {
			m.ID = fmt.Sprintf("bench-%d", i)
		}
		return publish(ctx, p, m), nil
	})
	var r result
	r.finish(acked, time.Since(start))
	r.Errors, r.Err = failed, msg
	return r
}

func (f *ferryTarget) pubSync(ctx context.Context, size, producers int, dur time.Duration) result {
	pl := payload(size)
	return syncPublishers(ctx, producers, dur, func() (func() error, func(), error) {
		p := f.producer(size, 64)
		publish := func() error {
			_, err := p.Publish(ctx, &client.Message{Payload: pl})
			return err
		}
		return publish, func() { p.Close(context.Background()) }, nil
	})
}

func (f *ferryTarget) prefill(ctx context.Context, n, size, window int) error {
	p := f.producer(size, window)
	defer p.Close(context.Background())
	pl := payload(size)
	_, failed, msg := pipelined(ctx, window, func(i int) bool { return i < n }, func(int) (confirm, error) {
		return publish(ctx, p, &client.Message{Payload: pl}), nil
	})
	if failed > 0 {
		return fmt.Errorf("prefill: %d failed: %s", failed, msg)
	}
	return nil
}

// consume reads n prefilled messages with acks: at-least-once with stream
// acks, or effectively-once with stream acks the broker confirms once
// durable (done when it counts all n durably acked) or with AckSync in
// every handler.
func (f *ferryTarget) consume(ctx context.Context, n int, ack ackMode, conc int, timeout time.Duration) result {
	g, sub := client.EffectivelyOnce, "eo"
	if ack == ackPlain {
		g, sub = client.AtLeastOnce, "alo"
	}
	var r result
	if _, err := f.c.CreateSubscription(ctx, ferryTopic, sub, client.SubscriptionConfig{
		Guarantee: g, Type: client.Shared, Start: client.Earliest()}); err != nil {
		r.Err = "create subscription: " + err.Error()
		return r
	}
	cctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var got, failed atomic.Int64
	var firstErr atomic.Value
	var end atomic.Int64
	start := time.Now()
	finished := func() {
		end.CompareAndSwap(0, int64(time.Since(start)))
		cancel()
	}
	if ack == ackConfirmed {
		go func() {
			for cctx.Err() == nil {
				s, err := f.c.GetSubscription(cctx, ferryTopic, sub)
				if err == nil && s.Stats.Acked >= uint64(n) {
					finished()
					return
				}
				time.Sleep(5 * time.Millisecond)
			}
		}()
	}
	err := f.c.Subscribe(cctx, ferryTopic, sub, func(hctx context.Context, m *client.Message) error {
		if ack == ackSyncEach {
			if err := m.AckSync(hctx); err != nil {
				failed.Add(1)
				firstErr.CompareAndSwap(nil, err.Error())
				return nil
			}
		}
		if got.Add(1) == int64(n) && ack != ackConfirmed {
			finished()
		}
		return nil
	}, client.WithConcurrency(conc), client.WithCredit(500), client.WithDrainTimeout(5*time.Second))
	el := time.Duration(end.Load())
	if el == 0 {
		el = time.Since(start)
		r.TimedOut = true
	}
	r.finish(min(got.Load(), int64(n)), el)
	r.Errors, r.Err = failed.Load(), errOf(&firstErr)
	if err != nil && r.Err == "" {
		r.Err = err.Error()
	}
	return r
}

// e2e publishes at a fixed rate for dur and measures publish→receive on a
// tailing at-least-once subscription.
func (f *ferryTarget) e2e(ctx context.Context, rate, size int, dur time.Duration) result {
	var r result
	if _, err := f.c.CreateSubscription(ctx, ferryTopic, "tail", client.SubscriptionConfig{
		Guarantee: client.AtLeastOnce, Type: client.Shared, Start: client.Latest()}); err != nil {
		r.Err = "create subscription: " + err.Error()
		return r
	}
	var lat latencies
	var got atomic.Int64
	sctx, cancel := context.WithCancel(ctx)
	subDone := make(chan error, 1)
	go func() {
		subDone <- f.c.Subscribe(sctx, ferryTopic, "tail", func(_ context.Context, m *client.Message) error {
			lat.add(time.Since(stampOf(m.Payload)))
			got.Add(1)
			return nil
		}, client.WithConcurrency(4), client.WithCredit(500), client.WithDrainTimeout(2*time.Second))
	}()
	time.Sleep(300 * time.Millisecond) // let the consumer attach
	p := f.producer(size, 4096)
	pc := newPacer(rate)
	acked, failed, msg := pipelined(ctx, 4096, func(int) bool { return time.Since(pc.start) < dur }, func(int) (confirm, error) {
		return publish(ctx, p, &client.Message{Payload: stamped(size, pc.next())}), nil
	})
	p.Close(context.Background())
	wait := time.Now().Add(10 * time.Second)
	for got.Load() < acked && time.Now().Before(wait) {
		time.Sleep(10 * time.Millisecond)
	}
	r.TimedOut = got.Load() < acked
	cancel()
	<-subDone
	r.finish(got.Load(), dur)
	r.Errors, r.Err = failed, msg
	lat.into(&r)
	return r
}
