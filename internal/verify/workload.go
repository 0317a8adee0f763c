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
	errs := make(chan error, 64)
	for _, s := range runSubs {
		n := 2
		if s.spec.Type == "exclusive" {
			n = 1
		}
		for i := range n {
			consumers.Go(func() { r.consume(cctx, r.o.Prefix+s.name, s.spec, i, errs) })
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
		r.setup.Drained = r.drain(ctx)
	}
	stopConsumers()
	consumers.Wait()
	close(errs)
	if ctx.Err() != nil {
		return fmt.Errorf("verify: interrupted: %w", ctx.Err())
	}
	return <-errs
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
// reports whether it drained.
func (r *run) drain(ctx context.Context) bool {
	ctx, cancel := context.WithTimeout(ctx, r.o.DrainTimeout)
	defer cancel()
	for {
		if r.drained(ctx) {
			return true
		}
		select {
		case <-ctx.Done():
			r.o.Log.Warn("verify: consumers did not drain in time; loss is not judged", "drain_timeout", r.o.DrainTimeout)
			return false
		case <-time.After(250 * time.Millisecond):
		}
	}
}

func (r *run) drained(ctx context.Context) bool {
	for name, spec := range r.setup.Subs {
		if spec.Guarantee != AtLeastOnce && spec.Guarantee != EffectivelyOnce {
			continue
		}
		s, err := r.c.GetSubscription(ctx, r.setup.Topic, name)
		if err != nil || s.Stats.Backlog > 0 || s.Stats.InFlight > 0 {
			return false
		}
	}
	return true
}

// consume runs one consumer of sub until ctx ends: sessions of a few
// seconds each, each ended by a deliberate disconnect.
func (r *run) consume(ctx context.Context, sub string, spec SubSpec, i int, errs chan<- error) {
	for session := 0; ctx.Err() == nil; session++ {
		name := fmt.Sprintf("%s/c%d.%d", strings.TrimPrefix(sub, r.o.Prefix), i, session)
		sctx, cancel := context.WithTimeout(ctx, r.between(2*time.Second, 6*time.Second))
		err := r.session(sctx, sub, spec, name)
		cancel()
		if err != nil && !r.refusedExclusive(spec, err) {
			select {
			case errs <- fmt.Errorf("verify: consumer %s: %w", name, err):
			default:
			}
			return
		}
		r.h.Add(Event{Kind: Disconnect, Topic: r.setup.Topic, Sub: sub, Consumer: name})
	}
}

// refusedExclusive: an exclusive subscription refuses a consumer while its
// last one is still attached on the broker; the next session tries again.
func (r *run) refusedExclusive(spec SubSpec, err error) bool {
	if spec.Type != "exclusive" {
		return false
	}
	time.Sleep(200 * time.Millisecond)
	return true
}

// session is one Subscribe (or Process, for the pipeline) call.
func (r *run) session(ctx context.Context, sub string, spec SubSpec, name string) error {
	opts := []client.SubscribeOption{client.WithConcurrency(4), client.WithMaxExtension(time.Millisecond),
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
		r.h.Add(Event{Kind: Nack, Topic: r.setup.Topic, Sub: sub, Consumer: name, ID: m.ID, Offset: m.Offset, Partition: *m.Partition})
		return nil, errors.New("verify: pipeline step fails on purpose")
	}
	out := &client.Message{Topic: r.setup.OutputTopic, Key: m.Key, Payload: m.Payload,
		Headers: map[string]string{InputHeader: m.ID}}
	return []*client.Message{out}, nil
}
