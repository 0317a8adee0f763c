package verify

import (
	"context"
	"errors"
	"time"

	"github.com/ferrymq/ferry/client"
)

// errNack is what a handler returns to nack on purpose.
var errNack = errors.New("verify: nacked on purpose")

// handle records a delivery and settles it at random: mostly an ack, else
// a nack (10%) or a silence (2%) (the ack deadline passes, then the consumer acks
// anyway: under effectively-once that ack must be refused if the message
// was redelivered meanwhile). Once producers stop it only acks.
// Effectively-once acks wait for the broker's answer, which says whether
// the hold was still valid.
func (r *run) handle(ctx context.Context, sub string, spec SubSpec, name string, m *client.Message) error {
	d := r.delivered(sub, name, m)
	mark := func(k Kind) {
		r.h.Add(Event{Kind: k, Topic: d.Topic, Sub: sub, Consumer: name, ID: d.ID, Partition: d.Partition, Offset: d.Offset, Attempt: d.Attempt})
	}
	if spec.Guarantee == None {
		return nil
	}
	roll := r.roll()
	switch {
	case r.draining.Load():
	case roll < 0.1:
		mark(Nack)
		return errNack
	case roll < 0.12 && spec.Guarantee != AtMostOnce && spec.Type != KeyShared:
		mark(Silence)
		select {
		case <-time.After(r.o.AckTimeout + r.between(100*time.Millisecond, time.Second)):
		case <-ctx.Done():
		}
	}
	if spec.Guarantee != EffectivelyOnce {
		mark(Ack)
		return nil
	}
	r.ackSync(ctx, d, m)
	return nil
}

// ackSync acks m and records the broker's answer, retrying while the
// broker is unreachable: a confirmed ack is one the broker must honour.
func (r *run) ackSync(ctx context.Context, d Event, m *client.Message) {
	e := Event{Kind: AckConfirmed, Topic: d.Topic, Sub: d.Sub, Consumer: d.Consumer, ID: d.ID, Key: d.Key,
		Partition: d.Partition, Offset: d.Offset, Attempt: d.Attempt, Call: time.Now()}
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if err := m.AckSync(actx); err != nil {
		e.Kind, e.Err = AckRefused, err.Error()
	}
	e.Time = time.Now()
	r.h.Add(e)
}
