package consumer

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ferrymq/ferry/internal/clock"
	"github.com/ferrymq/ferry/storage"
)

// fetchRetry is how long a loop waits before fetching again after a read
// failed (other than for retention).
const fetchRetry = time.Second

// loop is the thin goroutine around one subscription's state machine: it
// runs events one at a time, then does what the machine asked — reads and
// writes in their own goroutines, whose results come back as events,
// deliveries into consumers' queues, replies to callers — and arms one
// timer for the next deadline.
type loop struct {
	e         *Engine
	key       subKey
	sub       *machine // owned by the run goroutine
	seal      *IDSeal  // the wire form of its delivery ids
	consumers map[uint64]*Consumer
	created   time.Time
	ephemeral bool // NONE: not stored, gone with its last consumer

	events chan event
	ctx    context.Context // ends when the loop stops
	cancel context.CancelFunc
	done   chan struct{} // closed when run has returned
	io     sync.WaitGroup

	stopMu  sync.Mutex // guards stopErr
	stopErr error

	// waiting are the callers of the machine's calls awaiting its reply,
	// by call id (run goroutine only).
	waiting  map[callID]callWaiter
	lastCall callID

	timer   clock.Timer
	timerAt time.Time
	dropped uint64 // sub.stats.Dropped already added to the engine's count
	// settled is closed once a stopping subscription has stored what it
	// holds; set by stop.
	settled chan struct{}
}

func (l *loop) run() {
	defer close(l.done)
	for {
		select {
		case ev := <-l.events:
			if l.ctx.Err() != nil {
				continue // stopped (fenced off, say): nothing more runs, nothing more goes out
			}
			now := l.e.opts.Clock.Now()
			l.handle(ev, now)
			l.flush(now)
			if d := l.sub.stats.Dropped; d != l.dropped {
				l.e.dropped.Add(d - l.dropped)
				l.dropped = d
			}
			if l.settled != nil && l.sub.settled() {
				close(l.settled)
				l.settled = nil
			}
		case <-l.ctx.Done():
			if l.timer != nil {
				l.timer.Stop()
			}
			err := l.err()
			for _, c := range l.consumers {
				c.detached(err)
			}
			return
		}
	}
}

// stopGrace bounds how long a stopping loop waits for its last writes.
const stopGrace = 5 * time.Second

// stop ends the loop: it detaches the consumers with err, lets the
// subscription store what it holds (acks taken while a write was in
// flight, at most stopGrace), then stops and waits for its reads and
// writes.
func (l *loop) stop(err error) {
	l.stopMu.Lock()
	if l.stopErr == nil {
		l.stopErr = err
	}
	l.stopMu.Unlock()
	settled := make(chan struct{})
	if l.post(stopEvent{settled: settled}) {
		grace := make(chan struct{})
		t := l.e.opts.Clock.AfterFunc(stopGrace, func() { close(grace) })
		select {
		case <-settled:
		case <-l.done: // it ended from within meanwhile (end)
		case <-grace:
			l.e.log.Warn("subscription stopped before its last writes landed", "topic", l.key.topic, "subscription", l.key.name)
		}
		t.Stop()
	}
	l.cancel()
	<-l.done
	l.io.Wait()
}

func (l *loop) err() error {
	l.stopMu.Lock()
	defer l.stopMu.Unlock()
	if l.stopErr == nil {
		return ErrDetached
	}
	return l.stopErr
}

// post queues ev for the loop. It reports false if the loop has stopped.
func (l *loop) post(ev event) bool {
	select {
	case l.events <- ev:
		return true
	case <-l.done:
		return false
	}
}

// flush does what the subscription asked for, until it asks for nothing
// more.
func (l *loop) flush(now time.Time) {
	for {
		out := l.sub.out
		l.sub.out = output{}
		if len(out.sends)+len(out.rereads)+len(out.fetches)+len(out.writes)+len(out.replies) == 0 {
			break
		}
		for _, d := range out.sends {
			if c := l.consumers[d.Consumer]; c == nil || !c.push(d) {
				// Its stream ended after the delivery was made (while
				// its write was on its way): no one saw it.
				l.sub.unsent(d, now)
			}
		}
		for _, r := range out.rereads {
			l.startReread(r)
		}
		for _, f := range out.fetches {
			l.startFetch(f)
		}
		for _, job := range out.writes {
			l.startWrite(job)
		}
		for _, r := range out.replies {
			l.resolve(r)
		}
	}
	l.armTimer()
}

// armTimer sets the timer for the subscription's next deadline.
func (l *loop) armTimer() {
	at, ok := l.sub.nextDeadline()
	if !ok {
		if l.timer != nil {
			l.timer.Stop()
			l.timer = nil
		}
		return
	}
	if l.timer != nil && at.Equal(l.timerAt) {
		return
	}
	if l.timer != nil {
		l.timer.Stop()
	}
	l.timerAt = at
	l.timer = l.e.opts.Clock.AfterFunc(max(at.Sub(l.e.opts.Clock.Now()), 0), func() {
		l.post(tickEvent{})
	})
}

func (l *loop) startFetch(f fetch) {
	l.io.Add(1)
	go func() {
		defer l.io.Done()
		msgs, acked, err := l.read(f)
		if l.backOff(f.part, err) {
			l.post(fetchedEvent{f: f, msgs: msgs, acked: acked, err: err})
		}
	}()
}

// startReread reads messages again for redeliveries.
func (l *loop) startReread(r reread) {
	l.io.Add(1)
	go func() {
		defer l.io.Done()
		msgs, err := readAgain(l.ctx, l.e.opts.Log, l.key.topic, r)
		if l.backOff(r.part, err) {
			l.post(rereadEvent{r: r, msgs: msgs, err: err})
		}
	}()
}

// backOff waits fetchRetry after a read failed for a reason other than
// retention, so a failing read is not retried in a tight loop. It reports
// false if the loop stopped meanwhile.
func (l *loop) backOff(part uint32, err error) bool {
	var oor *storage.OffsetOutOfRangeError
	if err == nil || errors.As(err, &oor) {
		return true
	}
	if l.ctx.Err() != nil {
		return false
	}
	if gone(err) {
		l.end(fmt.Errorf("subscription %q: %w: %w", l.key.name, ErrDetached, err))
		return false
	}
	l.e.log.Warn("subscription read failed; retrying", "topic", l.key.topic, "subscription", l.key.name, "partition", part, "err", err)
	return clock.Sleep(l.e.opts.Clock, fetchRetry, l.ctx.Done())
}

// read does fetch f, waiting for the head to pass f.from.
func (l *loop) read(f fetch) ([]storage.Message, []bool, error) {
	f, err := atHead(l.e.opts.Log, l.key.topic, f)
	if err != nil {
		return nil, nil, err
	}
	return readFetch(l.ctx, l.e.opts.Log, l.key.topic, l.sub.sid, f, true)
}

// startWrite submits a write here, in the order the subscription issued
// it, and waits for it elsewhere. It is not cancelled when the loop stops:
// a subscription is deleted only once its writes have landed.
func (l *loop) startWrite(job *writeJob) {
	wp, err := l.e.opts.Log.Submit(context.WithoutCancel(l.ctx), job.w)
	if gone(err) {
		l.end(fmt.Errorf("subscription %q: %w: %w", l.key.name, ErrDetached, err))
	}
	l.checkFenced(err)
	if err != nil {
		l.writeFailed(err)
		l.sub.written(job, nil, err, l.e.opts.Clock.Now())
		return
	}
	l.io.Add(1)
	go func() {
		defer l.io.Done()
		res, err := wp.Wait(context.Background())
		if err != nil {
			l.writeFailed(err)
		}
		l.checkFenced(err)
		l.post(writtenEvent{job: job, res: res, err: err})
	}()
}

// checkFenced stops the loop at once if err says a newer owner of the
// subscription fenced this one off (storage.ErrFenced): what it holds is
// stale, its writes are refused, and it must deliver nothing more. Its
// consumers are detached with ErrDetached (UNAVAILABLE: reconnect, to the
// new owner) and the deliveries queued for them are dropped.
func (l *loop) checkFenced(err error) {
	if !errors.Is(err, storage.ErrFenced) {
		return
	}
	if l.ctx.Err() == nil {
		l.e.log.Warn("subscription fenced off by a newer owner; releasing it", "topic", l.key.topic, "subscription", l.key.name, "err", err)
	}
	l.end(fmt.Errorf("subscription %q moved to a newer owner: %w: %w", l.key.name, ErrDetached, err))
}

// writeFailed logs a failed write, unless the store refused it for disk
// space: the store logs that once, not per write (the write is retried).
func (l *loop) writeFailed(err error) {
	var full *storage.DiskFullError
	if errors.As(err, &full) {
		return
	}
	l.e.log.Error("subscription write failed", "topic", l.key.topic, "subscription", l.key.name, "err", err)
}

// lookUp reads the message ids of deliveries the machine no longer holds
// in memory (EFFECTIVELY_ONCE, after a restart: unloaded), in another
// goroutine, and posts ev — the ack or commit that named them — again with
// them, so it reaches the acked-id horizon. An ack of deliveries in memory
// (the common case) takes the loop once; one of unloaded ones twice.
func (l *loop) lookUp(missing []DeliveryID, ev withIDs) {
	l.io.Add(1)
	go func() {
		defer l.io.Done()
		l.post(ev.withIDs(readIDs(l.ctx, l.e.opts.Log, l.key.topic, missing)))
	}()
}

func (l *loop) ack(ctx context.Context, ids []DeliveryID) ([]error, error) {
	done := make(chan reply, 1)
	r, err := ask(ctx, l, ackEvent{ids: ids, done: done}, done)
	if err != nil {
		return nil, err
	}
	return r.results, r.err
}

func (l *loop) nack(ctx context.Context, ids []DeliveryID) ([]error, error) {
	done := make(chan []error, 1)
	return ask(ctx, l, nackEvent{ids: ids, done: done}, done)
}

func (l *loop) extend(ctx context.Context, ids []DeliveryID, d time.Duration) ([]error, error) {
	done := make(chan []error, 1)
	return ask(ctx, l, extendEvent{ids: ids, d: d, done: done}, done)
}

// detach removes consumer c. A NONE subscription goes with its last one.
func (l *loop) detach(c *Consumer) {
	l.post(detachEvent{c: c})
}

// end stops the loop from within, for good: it leaves the engine, so the
// next use of the subscription starts afresh, and its consumers are
// detached with err. Safe from any goroutine.
func (l *loop) end(err error) {
	l.e.mu.Lock()
	if l.e.loops[l.key] == l {
		delete(l.e.loops, l.key)
	}
	l.e.mu.Unlock()
	l.stopMu.Lock()
	if l.stopErr == nil {
		l.stopErr = err
	}
	l.stopMu.Unlock()
	l.cancel()
}

// gone reports whether err means the subscription or its topic no longer
// exists (or the store is closing), so the loop has nothing left to do.
func gone(err error) bool {
	return errors.Is(err, storage.ErrTopicNotFound) || errors.Is(err, storage.ErrSubscriptionNotFound) ||
		errors.Is(err, storage.ErrPartitionNotFound) || errors.Is(err, storage.ErrClosed)
}

// Consumer is one consumer attached to a subscription. Its stream takes
// deliveries with Take when Ready says there are some (or Receive, which
// waits); Ack, Nack and Extend act on them; Close detaches it. Methods are
// safe for concurrent use.
//
// Its queue holds what the subscription handed it and its stream has not
// taken; the subscription hands it nothing more while the queue holds
// EngineOptions.QueueBytes, so a stream that does not read costs at most
// that much queue (see hasRoom).
type Consumer struct {
	id uint64
	l  *loop

	mu     sync.Mutex // guards queue and err, and orders closing with push
	queue  []Delivery
	err    error         // why it was detached; nil while attached
	signal chan struct{} // cap 1: queue or err changed
	// closing is set by Close, under mu, before the detach is posted to
	// the loop (which runs it when it comes to it): from then on the
	// subscription picks the consumer no more (hasRoom) and push queues
	// nothing more, so no delivery waits in a queue no stream will take.
	closing atomic.Bool
}

// ID is the consumer's id, unique in the engine's life.
func (c *Consumer) ID() uint64 { return c.id }

// push queues d for the stream. It reports false, queuing nothing, once
// the consumer is closing.
func (c *Consumer) push(d Delivery) bool {
	c.mu.Lock()
	if c.closing.Load() {
		c.mu.Unlock()
		return false
	}
	c.queue = append(c.queue, d)
	c.mu.Unlock()
	c.wake()
	return true
}

// detached ends the consumer with err. If err is storage.ErrFenced, what
// its queue holds is dropped: a fenced owner delivers nothing more.
func (c *Consumer) detached(err error) {
	c.mu.Lock()
	if c.err == nil {
		c.err = err
	}
	if errors.Is(err, storage.ErrFenced) {
		c.queue = nil
	}
	c.mu.Unlock()
	c.wake()
}

func (c *Consumer) wake() {
	select {
	case c.signal <- struct{}{}:
	default:
	}
}

// Ready is signalled when deliveries were queued or the consumer was
// detached since the last Take that left nothing: call Take then.
func (c *Consumer) Ready() <-chan struct{} { return c.signal }

// Take returns queued deliveries in order, without waiting: as many as fit
// in maxBytes (as deliverySize counts them; at least one). The caller owns
// them. Once the consumer is detached and nothing is left it returns the
// reason, wrapping ErrDetached. What Take returns leaves the consumer's
// queue, making room for more (the loop is told).
func (c *Consumer) Take(maxBytes int) ([]Delivery, error) {
	c.mu.Lock()
	n, bytes := 0, 0
	for n < len(c.queue) {
		sz := deliverySize(&c.queue[n])
		if n > 0 && bytes+sz > maxBytes {
			break
		}
		n++
		bytes += sz
	}
	ds := c.queue[:n:n]
	c.queue = c.queue[n:]
	if len(c.queue) == 0 {
		c.queue = nil // lets go of the taken deliveries' array
	}
	more, err := len(c.queue) > 0, c.err
	c.mu.Unlock()
	if more {
		c.wake()
	}
	if n == 0 {
		return nil, err
	}
	c.l.post(takenEvent{consumer: c.id, n: n, bytes: bytes})
	return ds, nil
}

// Receive waits for deliveries and returns every one queued, in order. It
// returns the reason once the consumer is detached (wrapping ErrDetached)
// and nothing is left, or ctx's error.
func (c *Consumer) Receive(ctx context.Context) ([]Delivery, error) {
	for {
		ds, err := c.Take(math.MaxInt)
		if len(ds) > 0 || err != nil {
			return ds, err
		}
		select {
		case <-c.signal:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// SetCredit changes how many unacked deliveries the consumer may hold.
func (c *Consumer) SetCredit(ctx context.Context, credit int) error {
	done := make(chan error, 1)
	serr, err := ask(ctx, c.l, creditEvent{consumer: c.id, credit: credit, done: done}, done)
	if err != nil {
		return err
	}
	return serr
}

// Ack acks deliveries, as Engine.Ack.
func (c *Consumer) Ack(ctx context.Context, ids []DeliveryID) ([]error, error) {
	return c.l.ack(ctx, ids)
}

// AckAsync acks deliveries as Ack does, without waiting for the outcome:
// done runs once with it, on the subscription's loop, so it must not
// block. done may not run at all if the subscription stops first (the
// consumer is then detached), or with ctx's error if ctx has ended.
// AckAsync itself waits only for the loop's queue to take the acks, so a
// caller that bounds its acks awaiting done bounds them all.
func (c *Consumer) AckAsync(ctx context.Context, ids []DeliveryID, done func(results []error, err error)) {
	l := c.l
	if err := ctx.Err(); err != nil {
		done(nil, err)
		return
	}
	if !l.post(ackEvent{ids: ids, async: done}) {
		done(nil, l.err())
	}
}

// Nack makes deliveries due again after their backoff, as Engine.Nack.
func (c *Consumer) Nack(ctx context.Context, ids []DeliveryID) ([]error, error) {
	return c.l.nack(ctx, ids)
}

// Extend moves deliveries' deadlines to now+d, as Engine.Extend.
func (c *Consumer) Extend(ctx context.Context, ids []DeliveryID, d time.Duration) ([]error, error) {
	return c.l.extend(ctx, ids, d)
}

// Close detaches the consumer: at once it gets no more deliveries (its
// stream has ended); what it held is redelivered as its subscription's
// guarantee says once the loop runs the detach.
func (c *Consumer) Close() {
	c.mu.Lock()
	c.closing.Store(true)
	c.mu.Unlock()
	c.l.detach(c)
}

// Seal is the delivery id seal of the consumer's subscription (see
// Engine.Seal).
func (c *Consumer) Seal() *IDSeal { return c.l.seal }

// Guarantee is the guarantee of the consumer's subscription.
func (c *Consumer) Guarantee() Guarantee { return c.l.sub.opts.Guarantee }
