package verify

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/ferrymq/ferry/client"
)

// InputHeader names, on a pipeline output, the id of its input.
const InputHeader = "verify-input"

// keys are the keys producers give half their messages.
const keys = 8

// workload publishes for the run's duration while consumers, the pipeline
// and the nemesis run; then it stops the nemesis and producers and lets
// consumers drain.
func (r *run) workload(ctx context.Context) error {
	cctx, stopConsumers := context.WithCancel(ctx)
	defer stopConsumers()
	var consumers sync.WaitGroup
	for _, s := range runSubs {
		n := 2
		switch s.spec.Type {
		case "exclusive":
			n = 1
		case KeyShared:
			n = 4 // one handler each (see session)
		}
		for i := range n {
			consumers.Go(func() { r.consume(cctx, r.o.Prefix+s.name, s.spec, i) })
		}
	}
	nctx, stopNemesis := context.WithCancel(ctx)
	var nemesis sync.WaitGroup
	nemesis.Go(func() { r.disrupt(nctx) })
	r.publish(ctx)
	stopNemesis()
	nemesis.Wait()
	r.draining.Store(true)
	if ctx.Err() == nil {
		start := time.Now()
		r.setup.Undrained = r.drain(ctx)
		r.setup.Drained = r.setup.Undrained == ""
		r.o.Log.Info("verify: producers stopped; consumers drained", "drained", r.setup.Drained, "took", time.Since(start).Round(time.Millisecond))
	}
	stopConsumers()
	consumers.Wait()
	if ctx.Err() != nil {
		return fmt.Errorf("verify: interrupted: %w", ctx.Err())
	}
	return nil
}

// publish runs the producers for the run's duration.
func (r *run) publish(ctx context.Context) {
	pctx, cancel := context.WithTimeout(ctx, r.o.Duration)
	defer cancel()
	var producers sync.WaitGroup
	for i := range r.o.Producers {
		producers.Go(func() { r.produce(pctx, i) })
	}
	producers.Wait()
}

// produce publishes Rate messages a second, each with its own id, half of
// them keyed, until ctx ends; it waits for the answers of what it sent.
func (r *run) produce(ctx context.Context, i int) {
	p := r.c.NewProducer(r.setup.Topic, client.ProducerOptions{})
	var answers sync.WaitGroup
	tick := time.NewTicker(time.Second / time.Duration(r.o.Rate))
	defer tick.Stop()
	for n := 0; ; n++ {
		select {
		case <-ctx.Done():
		case <-tick.C:
			m := &client.Message{ID: fmt.Sprintf("%sp%d-%d", r.o.Prefix, i, n), Payload: fmt.Appendf(nil, "message %d of producer %d", n, i)}
			if r.roll() < 0.5 {
				m.Key = fmt.Appendf(nil, "k%d", n%keys)
			}
			call := time.Now()
			f := p.PublishAsync(m)
			answers.Go(func() { r.answered(f, m, call) })
			continue
		}
		break
	}
	answers.Wait()
	cctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = p.Close(cctx)
}

// answered records a publish once its future is answered; one not
// answered in time is of unknown outcome.
func (r *run) answered(f *client.PublishFuture, m *client.Message, call time.Time) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res, err := f.Wait(ctx)
	e := Event{Kind: Publish, Call: call, Topic: r.setup.Topic, ID: m.ID, Key: string(m.Key)}
	if err != nil {
		e.Err = err.Error()
	} else {
		e.Acked, e.Partition, e.Offset = true, res.Partition, res.Offset
	}
	r.h.Add(e)
}

// drain waits until every durable subscription has nothing left to
// deliver (no backlog, nothing in flight) or the drain timeout passes. It
// returns what was left, "" when it drained.
func (r *run) drain(ctx context.Context) string {
	ctx, cancel := context.WithTimeout(ctx, r.o.DrainTimeout)
	defer cancel()
	lastLog := time.Now()
	for {
		left := r.undrained(ctx)
		if left == "" {
			return ""
		}
		if time.Since(lastLog) > 5*time.Second {
			r.o.Log.Info("verify: draining", "left", left)
			lastLog = time.Now()
		}
		select {
		case <-ctx.Done():
			r.o.Log.Warn("verify: consumers did not drain in time", "drain_timeout", r.o.DrainTimeout, "left", left)
			return left
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// undrained says what a durable subscription still has to deliver; ""
// when none has anything.
func (r *run) undrained(ctx context.Context) string {
	for _, name := range sortedKeys(r.setup.Subs) {
		if g := r.setup.Subs[name].Guarantee; g != AtLeastOnce && g != EffectivelyOnce {
			continue
		}
		s, err := r.c.GetSubscription(ctx, r.setup.Topic, name)
		switch {
		case err != nil:
			return fmt.Sprintf("%s: %v", name, err)
		case s.Stats.Backlog > 0 || s.Stats.InFlight > 0:
			return fmt.Sprintf("%s: backlog %d, in flight %d, consumers %d", name, s.Stats.Backlog, s.Stats.InFlight, s.Stats.Consumers)
		}
	}
	return ""
}

// consume runs one consumer of sub until ctx ends: sessions of a few
// seconds each, each ended by a deliberate disconnect. A session the
// broker refuses (an exclusive subscription still held by the last
// session, a node that does not know the subscription yet) is recorded
// and tried again: what it missed shows in the checks.
func (r *run) consume(ctx context.Context, sub string, spec SubSpec, i int) {
	for session := 0; ctx.Err() == nil; session++ {
		name := fmt.Sprintf("%s/c%d.%d", strings.TrimPrefix(sub, r.o.Prefix), i, session)
		sctx, cancel := context.WithTimeout(ctx, r.between(2*time.Second, 6*time.Second))
		err := r.session(sctx, sub, spec, name)
		cancel()
		e := Event{Kind: Disconnect, Topic: r.setup.Topic, Sub: sub, Consumer: name}
		if err != nil {
			e.Err = err.Error()
			if spec.Type != "exclusive" {
				r.o.Log.Warn("verify: consumer refused; trying again", "consumer", name, "err", err)
			}
		}
		r.h.Add(e)
		if err != nil {
			select {
			case <-ctx.Done():
			case <-time.After(200 * time.Millisecond):
			}
		}
	}
}

// session is one Subscribe (or Process, for the pipeline) call.
// Sixteen handlers a consumer: a silenced one holds its handler past the
// ack deadline, and a Commit to another topic's partitions is slow in a
// cluster.
func (r *run) session(ctx context.Context, sub string, spec SubSpec, name string) error {
	opts := []client.SubscribeOption{client.WithConcurrency(16), client.WithMaxExtension(time.Millisecond),
		client.WithDrainTimeout(2 * r.o.AckTimeout), client.WithReconnectBackoff(50*time.Millisecond, time.Second)}
	if spec.Type == KeyShared {
		// One handler: deliveries are recorded in the order received.
		opts = append(opts, client.WithConcurrency(1))
	}
	if spec.Guarantee == None {
		opts = append(opts, client.WithCreateNone())
	}
	if sub == r.setup.Pipeline {
		return r.c.Process(ctx, r.setup.Topic, sub, func(ctx context.Context, m *client.Message) ([]*client.Message, error) {
			return r.transform(sub, name, m)
		}, opts...)
	}
	return r.c.Subscribe(ctx, r.setup.Topic, sub, func(ctx context.Context, m *client.Message) error {
		return r.handle(ctx, sub, spec, name, m)
	}, opts...)
}

// delivered records the delivery of m to consumer name.
func (r *run) delivered(sub, name string, m *client.Message) Event {
	e := Event{Kind: Deliver, Topic: r.setup.Topic, Sub: sub, Consumer: name, ID: m.ID, Key: string(m.Key),
		Offset: m.Offset, Attempt: m.Attempt}
	if m.Partition != nil {
		e.Partition = *m.Partition
	}
	e.Time = time.Now()
	r.h.Add(e)
	return e
}

// transform is the pipeline's step: one output per input, naming it; one
// input in ten fails (a nack, so nothing is committed) while producing.
func (r *run) transform(sub, name string, m *client.Message) ([]*client.Message, error) {
	r.delivered(sub, name, m)
	if !r.draining.Load() && r.roll() < 0.1 {
		r.h.Add(Event{Kind: Nack, Topic: r.setup.Topic, Sub: sub, Consumer: name, ID: m.ID, Offset: m.Offset, Partition: *m.Partition,
			Attempt: m.Attempt})
		return nil, errors.New("verify: pipeline step fails on purpose")
	}
	out := &client.Message{Topic: r.setup.OutputTopic, Key: m.Key, Payload: m.Payload,
		Headers: map[string]string{InputHeader: m.ID}}
	return []*client.Message{out}, nil
}
