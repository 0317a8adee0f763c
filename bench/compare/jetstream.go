package main

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

const (
	jsStream  = "BENCH"
	jsSubject = "bench"
)

type jsTarget struct {
	nc *nats.Conn
	js jetstream.JetStream
}

func dialJetStream(ctx context.Context, addr string, window int) (*jsTarget, error) {
	nc, err := nats.Connect("nats://"+addr, nats.MaxReconnects(-1))
	if err != nil {
		return nil, err
	}
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(window), jetstream.WithPublishAsyncTimeout(time.Minute))
	if err != nil {
		nc.Close()
		return nil, err
	}
	// JetStream may need a moment after the port opens.
	var serr error
	for range 50 {
		_, serr = js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
			Name: jsStream, Subjects: []string{jsSubject}, Storage: jetstream.FileStorage, Replicas: 1})
		if serr == nil {
			return &jsTarget{nc: nc, js: js}, nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	nc.Close()
	return nil, fmt.Errorf("create stream: %w", serr)
}

func (t *jsTarget) close() { t.nc.Close() }

// publishAsync publishes data (with id as Nats-Msg-Id unless empty) and
// returns how to wait for its PubAck. A publish refused at once is a
// confirm that fails: the run goes on.
func (t *jsTarget) publishAsync(data []byte, id string) (confirm, error) {
	opts := []jetstream.PublishOpt{jetstream.WithStallWait(time.Minute)}
	if id != "" {
		opts = append(opts, jetstream.WithMsgID(id))
	}
	f, err := t.js.PublishAsync(jsSubject, data, opts...)
	if err != nil {
		return func() error { return err }, nil
	}
	return func() error {
		select {
		case <-f.Ok():
			return nil
		case err := <-f.Err():
			return err
		}
	}, nil
}

func (t *jsTarget) pubAsync(ctx context.Context, size, window int, dur time.Duration, withID bool) result {
	pl := payload(size)
	start := time.Now()
	deadline := start.Add(dur)
	acked, failed, msg := pipelined(ctx, window, func(int) bool { return time.Now().Before(deadline) }, func(i int) (confirm, error) {
		id := ""
		if withID {
			id = "bench-" + strconv.Itoa(i)
		}
		return t.publishAsync(pl, id)
	})
	var r result
	r.finish(acked, time.Since(start))
	r.Errors, r.Err = failed, msg
	return r
}

func (t *jsTarget) pubSync(ctx context.Context, size, producers int, dur time.Duration) result {
	pl := payload(size)
	return syncPublishers(ctx, producers, dur, func() (func() error, func(), error) {
		publish := func() error {
			_, err := t.js.Publish(ctx, jsSubject, pl)
			return err
		}
		return publish, func() {}, nil
	})
}

func (t *jsTarget) prefill(ctx context.Context, n, size, window int) error {
	pl := payload(size)
	_, failed, msg := pipelined(ctx, window, func(i int) bool { return i < n }, func(int) (confirm, error) {
		return t.publishAsync(pl, "")
	})
	if failed > 0 {
		return fmt.Errorf("prefill: %d failed: %s", failed, msg)
	}
	return nil
}

// consume reads n prefilled messages with a durable pull consumer
// (AckExplicit): Ack per message, or DoubleAck (AckSync) per message from
// conc workers.
func (t *jsTarget) consume(ctx context.Context, n int, ack ackMode, conc int, timeout time.Duration) result {
	doubleAck := ack != ackPlain
	var r result
	name := "alo"
	if doubleAck {
		name = "eo"
	}
	cons, err := t.js.CreateOrUpdateConsumer(ctx, jsStream, jetstream.ConsumerConfig{
		Durable: name, AckPolicy: jetstream.AckExplicitPolicy, DeliverPolicy: jetstream.DeliverAllPolicy,
		AckWait: 30 * time.Second})
	if err != nil {
		r.Err = "create consumer: " + err.Error()
		return r
	}
	cctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var got, failed atomic.Int64
	var firstErr atomic.Value
	var end atomic.Int64
	start := time.Now()
	count := func() {
		if got.Add(1) == int64(n) {
			end.Store(int64(time.Since(start)))
			cancel()
		}
	}
	work := make(chan jetstream.Msg, 1000)
	var wg sync.WaitGroup
	if doubleAck {
		for range conc {
			wg.Go(func() {
				for m := range work {
					if err := m.DoubleAck(cctx); err != nil {
						failed.Add(1)
						firstErr.CompareAndSwap(nil, err.Error())
						continue
					}
					count()
				}
			})
		}
	}
	cc, err := cons.Consume(func(m jetstream.Msg) {
		if doubleAck {
			select {
			case work <- m:
			case <-cctx.Done():
			}
			return
		}
		if err := m.Ack(); err != nil {
			failed.Add(1)
			firstErr.CompareAndSwap(nil, err.Error())
			return
		}
		count()
	}, jetstream.PullMaxMessages(500))
	if err != nil {
		r.Err = "consume: " + err.Error()
		return r
	}
	<-cctx.Done()
	cc.Stop()
	<-cc.Closed()
	close(work)
	wg.Wait()
	el := time.Duration(end.Load())
	if el == 0 {
		el = time.Since(start)
		r.TimedOut = true
	}
	r.finish(min(got.Load(), int64(n)), el)
	r.Errors, r.Err = failed.Load(), errOf(&firstErr)
	return r
}

func (t *jsTarget) e2e(ctx context.Context, rate, size int, dur time.Duration) result {
	var r result
	cons, err := t.js.CreateOrUpdateConsumer(ctx, jsStream, jetstream.ConsumerConfig{
		Durable: "tail", AckPolicy: jetstream.AckExplicitPolicy, DeliverPolicy: jetstream.DeliverNewPolicy})
	if err != nil {
		r.Err = "create consumer: " + err.Error()
		return r
	}
	var lat latencies
	var got atomic.Int64
	cc, err := cons.Consume(func(m jetstream.Msg) {
		lat.add(time.Since(stampOf(m.Data())))
		got.Add(1)
		_ = m.Ack()
	}, jetstream.PullMaxMessages(500))
	if err != nil {
		r.Err = "consume: " + err.Error()
		return r
	}
	time.Sleep(300 * time.Millisecond)
	pc := newPacer(rate)
	acked, failed, msg := pipelined(ctx, 4096, func(int) bool { return time.Since(pc.start) < dur }, func(int) (confirm, error) {
		return t.publishAsync(stamped(size, pc.next()), "")
	})
	wait := time.Now().Add(10 * time.Second)
	for got.Load() < acked && time.Now().Before(wait) {
		time.Sleep(10 * time.Millisecond)
	}
	r.TimedOut = got.Load() < acked
	cc.Stop()
	r.finish(got.Load(), dur)
	r.Errors, r.Err = failed, msg
	lat.into(&r)
	return r
}
