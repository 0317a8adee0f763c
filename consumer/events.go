package consumer

// The loop's inputs: typed events, run one at a time on the loop's
// goroutine (handle). Results of its own I/O and its timer come back as
// events; a caller's request is an event carrying a buffered channel (cap
// 1, so the loop never blocks on a caller that gave up) for its answer.

import (
	"context"
	"fmt"
	"time"

	"github.com/ferrymq/ferry/storage"
)

// event is an input of a loop: one of the types below.
type event interface{ isEvent() }

// From the loop's timer and its reads and writes.
type (
	tickEvent    struct{}
	fetchedEvent struct {
		f     fetch
		msgs  []storage.Message
		acked []bool
		err   error
	}
	rereadEvent struct {
		r    reread
		msgs []storage.Message
		err  error
	}
	writtenEvent struct {
		job *writeJob
		res [][]storage.AppendResult
		err error
	}
)

// From consumers and their streams.
type (
	attachEvent struct {
		c      *Consumer
		credit int
		done   chan error
	}
	creditEvent struct {
		consumer uint64
		credit   int
		done     chan error
	}
	takenEvent struct {
		consumer uint64
		n, bytes int
	}
	detachEvent struct{ c *Consumer }
)

// Calls: acks and the rest, and the engine's own.
type (
	// ackEvent's answer goes to done, or, for AckAsync, to async on the
	// loop.
	ackEvent struct {
		ids []DeliveryID
		idLookup
		done  chan reply
		async func(results []error, err error)
	}
	nackEvent struct {
		ids  []DeliveryID
		done chan []error
	}
	extendEvent struct {
		ids  []DeliveryID
		d    time.Duration
		done chan []error
	}
	commitEvent struct {
		ids     []DeliveryID
		appends []storage.AppendBatch
		idLookup
		done chan reply
	}
	seekEvent struct {
		offs []uint64
		done chan reply
	}
	infoEvent struct {
		heads []uint64
		done  chan Info
	}
	// stopEvent detaches every consumer; settled is closed once the
	// machine has stored what it holds.
	stopEvent struct{ settled chan struct{} }
)

func (tickEvent) isEvent()    {}
func (fetchedEvent) isEvent() {}
func (rereadEvent) isEvent()  {}
func (writtenEvent) isEvent() {}
func (attachEvent) isEvent()  {}
func (creditEvent) isEvent()  {}
func (takenEvent) isEvent()   {}
func (detachEvent) isEvent()  {}
func (ackEvent) isEvent()     {}
func (nackEvent) isEvent()    {}
func (extendEvent) isEvent()  {}
func (commitEvent) isEvent()  {}
func (seekEvent) isEvent()    {}
func (infoEvent) isEvent()    {}
func (stopEvent) isEvent()    {}

// idLookup is what an ack or commit carries once the loop has read the
// message ids of its deliveries not in memory (lookUp).
type idLookup struct {
	found map[DeliveryID]string
	read  bool
}

// withIDs is an event that waits for its message ids to be read (lookUp).
type withIDs interface {
	event
	withIDs(found map[DeliveryID]string) event
}

func (e ackEvent) withIDs(found map[DeliveryID]string) event {
	e.found, e.read = found, true
	return e
}

func (e commitEvent) withIDs(found map[DeliveryID]string) event {
	e.found, e.read = found, true
	return e
}

// needIDs reports whether ev must wait for lookUp first: it names
// deliveries whose message ids are not in memory and were not read yet.
func (l *loop) needIDs(ev withIDs, ids []DeliveryID, lk idLookup) bool {
	if lk.read {
		return false
	}
	missing := l.sub.unloaded(ids)
	if len(missing) == 0 {
		return false
	}
	l.lookUp(missing, ev)
	return true
}

// handle runs one event on the machine.
func (l *loop) handle(ev event, now time.Time) {
	s := l.sub
	switch ev := ev.(type) {
	case tickEvent:
		s.tick(now)
	case fetchedEvent:
		s.fetched(ev.f, ev.msgs, ev.acked, ev.err, now)
	case rereadEvent:
		s.reread(ev.r, ev.msgs, ev.err, now)
	case writtenEvent:
		s.written(ev.job, ev.res, ev.err, now)
	case attachEvent:
		err := s.attach(ev.c.id, ev.credit, now)
		if err == nil {
			l.consumers[ev.c.id] = ev.c
			s.watchClosing(ev.c.id, &ev.c.closing)
		}
		ev.done <- err
	case creditEvent:
		ev.done <- s.setCredit(ev.consumer, ev.credit, now)
	case takenEvent:
		s.taken(ev.consumer, ev.n, ev.bytes, now)
	case detachEvent:
		l.detached(ev.c, now)
	case ackEvent:
		if l.needIDs(ev, ev.ids, ev.idLookup) {
			return
		}
		s.noteIDs(ev.found)
		s.ack(l.expect(ev.done, ev.async), ev.ids, now)
	case nackEvent:
		ev.done <- s.nack(ev.ids, now)
	case extendEvent:
		ev.done <- s.extend(ev.ids, ev.d, now)
	case commitEvent:
		if l.needIDs(ev, ev.ids, ev.idLookup) {
			return
		}
		s.noteIDs(ev.found)
		s.commit(l.expect(ev.done, nil), ev.ids, ev.appends, now)
	case seekEvent:
		s.seek(l.expect(ev.done, nil), ev.offs, now)
	case infoEvent:
		ev.done <- Info{Topic: l.key.topic, Name: l.key.name, Options: s.opts, CreateTime: l.created, Stats: s.statsNow(ev.heads)}
	case stopEvent:
		for id, c := range l.consumers {
			delete(l.consumers, id)
			s.detach(id, now)
			c.detached(l.err())
		}
		l.settled = ev.settled
	default:
		panic(fmt.Sprintf("consumer: loop event %T", ev))
	}
}

// detached removes consumer c. A NONE subscription goes with its last one.
func (l *loop) detached(c *Consumer, now time.Time) {
	if l.consumers[c.id] == nil {
		return
	}
	delete(l.consumers, c.id)
	l.sub.detach(c.id, now)
	c.detached(fmt.Errorf("consumer closed: %w", ErrDetached))
	if l.ephemeral && len(l.consumers) == 0 {
		l.end(fmt.Errorf("none subscription %q ended with its last consumer: %w", l.key.name, ErrDetached))
	}
}

// callWaiter is who waits for the reply to a call: a channel, or an
// AckAsync's callback.
type callWaiter struct {
	done  chan reply
	async func(results []error, err error)
}

// expect names a new call whose reply goes to done or async. The machine
// answers every call it is handed, so the answer comes once.
func (l *loop) expect(done chan reply, async func([]error, error)) callID {
	if l.waiting == nil {
		l.waiting = make(map[callID]callWaiter)
	}
	l.lastCall++
	l.waiting[l.lastCall] = callWaiter{done: done, async: async}
	return l.lastCall
}

// resolve hands reply r to its caller.
func (l *loop) resolve(r reply) {
	w, ok := l.waiting[r.call]
	if !ok {
		return
	}
	delete(l.waiting, r.call)
	if w.async != nil {
		w.async(r.results, r.err)
		return
	}
	w.done <- r
}

// ask posts ev to l and waits for its answer on done (which ev carries),
// or for ctx to end or the loop to stop.
func ask[T any](ctx context.Context, l *loop, ev event, done chan T) (T, error) {
	var zero T
	if !l.post(ev) {
		return zero, l.err()
	}
	select {
	case v := <-done:
		return v, nil
	case <-ctx.Done():
		return zero, ctx.Err()
	case <-l.done:
		select {
		case v := <-done:
			return v, nil
		default:
			return zero, l.err()
		}
	}
}
