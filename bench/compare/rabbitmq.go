package main

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// rabbitQueue is a quorum queue: RabbitMQ's replicated, durable queue type,
// which fsyncs its Raft log before it confirms a publish (with one node, a
// quorum of one). Classic queues are not what RabbitMQ recommends for data
// that must survive.
const rabbitQueue = "bench"

type rabbitTarget struct {
	conn *amqp.Connection
}

func dialRabbit(ctx context.Context, addr string) (*rabbitTarget, error) {
	var conn *amqp.Connection
	var err error
	// The AMQP listener opens late in the boot, but the first connection may
	// still race the last boot steps.
	for range 50 {
		if conn, err = amqp.Dial("amqp://guest:guest@" + addr + "/"); err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		return nil, err
	}
	ch, err := conn.Channel()
	if err != nil {
		conn.Close()
		return nil, err
	}
	defer ch.Close()
	if _, err := ch.QueueDeclare(rabbitQueue, true, false, false, false, amqp.Table{"x-queue-type": "quorum"}); err != nil {
		conn.Close()
		return nil, fmt.Errorf("declare queue: %w", err)
	}
	return &rabbitTarget{conn: conn}, nil
}

func (t *rabbitTarget) close() { t.conn.Close() }

// confirmChannel is a channel in publisher-confirm mode.
func (t *rabbitTarget) confirmChannel() (*amqp.Channel, error) {
	ch, err := t.conn.Channel()
	if err != nil {
		return nil, err
	}
	if err := ch.Confirm(false); err != nil {
		ch.Close()
		return nil, err
	}
	return ch, nil
}

func persistent(body []byte) amqp.Publishing {
	return amqp.Publishing{DeliveryMode: amqp.Persistent, ContentType: "application/octet-stream", Body: body}
}

// publishWindow publishes on a confirm channel of its own with at most
// window publishes unconfirmed, until more returns false; body(i) is the
// i-th message's body. A failed publish ends the run (it closes the
// channel); a nack counts as a failed message.
func (t *rabbitTarget) publishWindow(ctx context.Context, window int, more func(i int) bool, body func(i int) []byte) (acked, failed int64, errMsg string) {
	ch, err := t.confirmChannel()
	if err != nil {
		return 0, 0, err.Error()
	}
	defer ch.Close()
	return pipelined(ctx, window, more, func(i int) (confirm, error) {
		dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, "", rabbitQueue, false, false, persistent(body(i)))
		if err != nil {
			return nil, err
		}
		return func() error {
			ok, err := dc.WaitContext(ctx)
			if err == nil && !ok {
				err = errors.New("publish nacked")
			}
			return err
		}, nil
	})
}

func (t *rabbitTarget) pubAsync(ctx context.Context, size, window int, dur time.Duration, withID bool) result {
	var r result
	if withID {
		r.Err = "RabbitMQ has no publish deduplication"
		return r
	}
	pl := payload(size)
	start := time.Now()
	deadline := start.Add(dur)
	acked, failed, msg := t.publishWindow(ctx, window, func(int) bool { return time.Now().Before(deadline) }, func(int) []byte { return pl })
	r.finish(acked, time.Since(start))
	r.Errors, r.Err = failed, msg
	return r
}

func (t *rabbitTarget) pubSync(ctx context.Context, size, producers int, dur time.Duration) result {
	pl := payload(size)
	return syncPublishers(ctx, producers, dur, func() (func() error, func(), error) {
		ch, err := t.confirmChannel()
		if err != nil {
			return nil, nil, err
		}
		publish := func() error {
			dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, "", rabbitQueue, false, false, persistent(pl))
			if err != nil {
				return err
			}
			ok, err := dc.WaitContext(ctx)
			if err == nil && !ok {
				err = errors.New("publish nacked")
			}
			return err
		}
		return publish, func() { ch.Close() }, nil
	})
}

func (t *rabbitTarget) prefill(ctx context.Context, n, size, window int) error {
	pl := payload(size)
	acked, failed, msg := t.publishWindow(ctx, window, func(i int) bool { return i < n }, func(int) []byte { return pl })
	if failed > 0 || acked < int64(n) {
		return fmt.Errorf("prefill: %d of %d confirmed: %s", acked, n, msg)
	}
	return nil
}

// consumer opens a channel consuming the queue with manual acks and a
// prefetch of 500 (ferry's credit in the same workloads), until ctx ends.
func (t *rabbitTarget) consumer(ctx context.Context) (*amqp.Channel, <-chan amqp.Delivery, error) {
	ch, err := t.conn.Channel()
	if err != nil {
		return nil, nil, err
	}
	if err := ch.Qos(500, 0, false); err != nil {
		ch.Close()
		return nil, nil, err
	}
	deliveries, err := ch.ConsumeWithContext(ctx, rabbitQueue, "", false, false, false, false, nil)
	if err != nil {
		ch.Close()
		return nil, nil, err
	}
	return ch, deliveries, nil
}

// consume reads n prefilled messages with manual acks, one ack per
// message.
// RabbitMQ has no durable ack confirmation, so the effectively-once
// variant is not run.
func (t *rabbitTarget) consume(ctx context.Context, n int, ack ackMode, _ int, timeout time.Duration) result {
	var r result
	if ack != ackPlain {
		r.Err = "RabbitMQ has no durable ack confirmation"
		return r
	}
	cctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	start := time.Now()
	ch, deliveries, err := t.consumer(cctx)
	if err != nil {
		r.Err = err.Error()
		return r
	}
	defer ch.Close()
	var got int64
	var failed int64
	var firstErr string
loop:
	for got < int64(n) {
		select {
		case d, ok := <-deliveries:
			if !ok {
				break loop
			}
			if err := d.Ack(false); err != nil {
				failed++
				if firstErr == "" {
					firstErr = err.Error()
				}
				continue
			}
			got++
		case <-cctx.Done():
			r.TimedOut = true
			break loop
		}
	}
	r.finish(got, time.Since(start))
	r.Errors, r.Err = failed, firstErr
	return r
}

// e2e publishes at a fixed rate with confirms and measures publish→receive
// on a consumer with manual acks.
func (t *rabbitTarget) e2e(ctx context.Context, rate, size int, dur time.Duration) result {
	var r result
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ch, deliveries, err := t.consumer(sctx)
	if err != nil {
		r.Err = err.Error()
		return r
	}
	defer ch.Close()
	var lat latencies
	var got atomic.Int64
	subDone := make(chan struct{})
	go func() {
		defer close(subDone)
		for d := range deliveries {
			lat.add(time.Since(stampOf(d.Body)))
			_ = d.Ack(false)
			got.Add(1)
		}
	}()
	pc := newPacer(rate)
	acked, failed, msg := t.publishWindow(ctx, 4096,
		func(int) bool { return time.Since(pc.start) < dur },
		func(int) []byte { return stamped(size, pc.next()) })
	wait := time.Now().Add(10 * time.Second)
	for got.Load() < acked && time.Now().Before(wait) {
		time.Sleep(10 * time.Millisecond)
	}
	r.TimedOut = got.Load() < acked
	cancel()
	ch.Close()
	<-subDone
	r.finish(got.Load(), dur)
	r.Errors, r.Err = failed, msg
	lat.into(&r)
	return r
}
