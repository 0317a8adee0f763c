package consumer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ferrymq/ferry/internal/clock"
	"github.com/ferrymq/ferry/storage"
)

// harness drives one subscription's core (machine) synchronously over
// a real store, the way the Engine's loop does, without goroutines: after
// every event it drains the core's output until nothing is left — reads
// with store.Read (a read that finds nothing stays pending until the next
// publish), writes with store.Write fed back through written, replies resolved
// — and records every delivery. Time is a fake clock; advance ticks the
// core at each deadline on the way, as the loop's timer would.
//
// The harness also checks the guarantees as deliveries go out (see
// onSend): flow control for every guarantee, never twice for
// AT_MOST_ONCE, and for EFFECTIVELY_ONCE never twice at once and never
// after a confirmed ack. A violation fails the test.
type harness struct {
	tb    testing.TB
	dir   string
	clk   *clock.Fake
	st    *storage.Store
	topic string
	name  string
	sub   *machine
	opts  Options

	pending []fetch         // reads that found nothing yet
	hold    bool            // writes are held, not done (a crash loses them)
	held    []*writeJob     // held writes, in issue order
	failing int             // fail this many writes from now on
	losing  int             // store this many writes, but answer them failed
	fired   time.Time       // deadline the last tick ran for
	notes   []string        // lines to report for the current command
	sent    []Delivery      // deliveries since takeSent
	writes  []storage.Write // every write the core issued, in order
	// acksWaiting report acks whose reply has not come yet; each says
	// whether it has reported.
	acksWaiting []func() bool
	// waiting are the calls (ack, commit, seek) awaiting the core's reply,
	// by call id, as the loop keeps them.
	waiting  map[callID]func(reply)
	lastCall callID

	credit map[uint64]int // attached consumers' credit
	// stuck consumers' streams take nothing: their deliveries stay queued
	// (counted against their queue) until unstick.
	stuck map[uint64][]Delivery
	model *model
}

// model is what the harness knows from outside the core: the deliveries
// made and what became of them.
type model struct {
	// outstanding[consumer][offset] is the deadline of a delivery the
	// consumer holds: not acked, nacked or timed out.
	outstanding map[uint64]map[pOff]time.Time
	// until[offset] is when an EFFECTIVELY_ONCE delivery stops being
	// outstanding (its consumer may have left: it still counts).
	until map[pOff]time.Time
	// delivered: AT_MOST_ONCE offsets sent (since the last seek).
	delivered map[pOff]bool
	// confirmed: EFFECTIVELY_ONCE offsets whose ack was confirmed durable.
	confirmed map[pOff]bool
	// acked: offsets an ack or commit of which was taken (result nil).
	acked map[pOff]bool
	// sends counts deliveries per offset.
	sends map[pOff]int
	// keys: KEY_SHARED message keys by offset; firstSent: per partition
	// and key, the highest offset delivered a first time.
	keys      map[pOff]string
	firstSent map[string]uint64
}

type pOff struct {
	part uint32
	off  uint64
}

func (p pOff) String() string { return fmt.Sprintf("%d.%d", p.part, p.off) }

func newModel() *model {
	return &model{outstanding: map[uint64]map[pOff]time.Time{}, until: map[pOff]time.Time{},
		delivered: map[pOff]bool{}, confirmed: map[pOff]bool{}, acked: map[pOff]bool{}, sends: map[pOff]int{},
		keys: map[pOff]string{}, firstSent: map[string]uint64{}}
}

// newHarness opens a store in a temp dir on a fake clock at t0.
func newHarness(tb testing.TB) *harness {
	tb.Helper()
	h := &harness{tb: tb, dir: tb.TempDir(), clk: clock.NewFake(t0), credit: map[uint64]int{}, model: newModel()}
	h.open()
	tb.Cleanup(func() {
		if h.st != nil {
			_ = h.st.Close(context.Background())
		}
	})
	return h
}

func (h *harness) open() {
	h.tb.Helper()
	opts := storage.DefaultOptions(h.dir)
	opts.Clock = h.clk
	opts.MemTableBytes = storage.MinMemTableBytes
	opts.Logger = slog.New(slog.DiscardHandler)
	st, err := storage.Open(opts)
	if err != nil {
		h.tb.Fatal(err)
	}
	h.st = st
}

func (h *harness) now() time.Time { return h.clk.Now() }

// engine is an Engine over the store for its admin helpers
// (CreateSubscription, resolve); it starts no loop for a durable
// subscription.
func (h *harness) engine() *Engine {
	return New(EngineOptions{Log: h.st, Clock: h.clk, Logger: slog.New(slog.DiscardHandler), Route: testRoute(h.st)})
}

func (h *harness) createTopic(name string, cfg storage.TopicConfig) {
	h.tb.Helper()
	if _, err := h.st.CreateTopic(context.Background(), name, cfg); err != nil {
		h.tb.Fatal(err)
	}
}

// createSub creates the subscription and builds its core. A NONE
// subscription is not stored: it is built as createEphemeral does.
func (h *harness) createSub(topic, name string, o Options) error {
	h.topic, h.name, h.opts = topic, name, o
	if o.Guarantee == None {
		if err := o.Validate(); err != nil {
			return err
		}
		parts, err := h.st.Partitions(topic)
		if err != nil {
			return err
		}
		heads := make([]uint64, len(parts))
		states := make([]*cursorRecord, len(parts))
		for i, p := range parts {
			heads[i] = p.Head
			states[i] = newCursorRecord(p.Head)
		}
		h.sub = newMachine(topic, name, 0, o, states, heads, testRoute(h.st))
		return nil
	}
	if _, err := h.engine().CreateSubscription(context.Background(), topic, name, o); err != nil {
		return err
	}
	h.load()
	return nil
}

// load builds the core from the store, as Engine.loopFor does.
func (h *harness) load() {
	h.tb.Helper()
	sub, err := h.st.Subscription(h.topic, h.name)
	if err != nil {
		h.tb.Fatal(err)
	}
	o, _, err := decodeConfig(sub.Config)
	if err != nil {
		h.tb.Fatal(err)
	}
	raw, err := h.st.Cursors(h.topic, sub.ID)
	if err != nil {
		h.tb.Fatal(err)
	}
	states := make([]*cursorRecord, len(raw))
	for i, b := range raw {
		if states[i], err = decodeCursorRecord(b); err != nil {
			h.tb.Fatalf("partition %d: %v", i, err)
		}
	}
	t, err := h.st.Topic(h.topic)
	if err != nil {
		h.tb.Fatal(err)
	}
	horizon := o.DedupHorizon
	if horizon == 0 {
		horizon = t.Config.RetentionMaxAge
	}
	h.opts = o
	h.sub = newMachine(h.topic, h.name, sub.ID, o, states, nil, testRoute(h.st))
	h.sub.horizon = horizon
}

// restart drops the core with everything in flight (held writes, pending
// reads, consumers) and rebuilds it from the store, as after a crash. With
// reopen the store is closed and opened again too. A NONE subscription is
// gone.
func (h *harness) restart(reopen bool) {
	h.tb.Helper()
	if n := len(h.acksWaiting); n > 0 {
		h.notes = append(h.notes, fmt.Sprintf("%d unconfirmed acks lost", n))
	}
	if n := len(h.held); n > 0 {
		h.notes = append(h.notes, fmt.Sprintf("%d held writes lost", n))
	}
	h.acksWaiting, h.waiting = nil, nil
	h.sub, h.pending, h.held, h.hold, h.failing, h.losing = nil, nil, nil, false, 0, 0
	h.fired = time.Time{}
	h.credit = map[uint64]int{}
	h.model.outstanding = map[uint64]map[pOff]time.Time{}
	if reopen {
		if err := h.st.Close(context.Background()); err != nil {
			h.tb.Fatal(err)
		}
		h.open()
	}
	if h.opts.Guarantee != None {
		h.load()
	}
}

// drain does what the core asked until it asks nothing more.
func (h *harness) drain() {
	h.tb.Helper()
	if h.sub == nil {
		return
	}
	for round := 0; ; round++ {
		if round > 100000 {
			h.tb.Fatal("harness: the subscription never settles")
		}
		out := h.sub.out
		h.sub.out = output{}
		progress := false
		// Replies first: an ack's reply and the deliveries its freed
		// credit allowed come out of the same write.
		for _, r := range out.replies {
			h.resolve(r)
		}
		for _, d := range out.sends {
			h.onSend(d)
		}
		h.take(out.sends)
		for _, r := range out.rereads {
			msgs, err := readAgain(context.Background(), h.st, h.topic, r)
			h.sub.reread(r, msgs, err, h.now())
			progress = true
		}
		for _, f := range out.fetches {
			f, err := atHead(h.st, h.topic, f) // the head when it is issued, as loop.read
			if err != nil {
				h.tb.Fatal(err)
			}
			h.pending = append(h.pending, f)
		}
		pend := h.pending
		h.pending = nil
		for _, f := range pend {
			msgs, acked, err := h.read(f)
			if err == nil && len(msgs) == 0 {
				h.pending = append(h.pending, f) // waits for the next publish
				continue
			}
			h.sub.fetched(f, msgs, acked, err, h.now())
			progress = true
		}
		for _, job := range out.writes {
			progress = true
			h.writes = append(h.writes, job.w)
			switch {
			case h.hold:
				h.held = append(h.held, job)
			case h.failing > 0:
				h.failing--
				h.sub.written(job, nil, errInjected, h.now())
			case h.losing > 0:
				// Stored, and answered as a lost leadership is: the
				// outcome unknown to the writer.
				h.losing--
				if _, err := h.st.Write(context.Background(), job.w); err != nil {
					h.tb.Fatal(err)
				}
				h.sub.written(job, nil, errInjected, h.now())
			default:
				res, err := h.st.Write(context.Background(), job.w)
				h.sub.written(job, res, err, h.now())
			}
		}
		if !progress && len(out.replies) == 0 && len(out.sends) == 0 {
			return
		}
	}
}

var errInjected = errors.New("injected write failure")

// expect names a new call whose reply goes to fn, as loop.expect.
func (h *harness) expect(fn func(reply)) callID {
	if h.waiting == nil {
		h.waiting = map[callID]func(reply){}
	}
	h.lastCall++
	h.waiting[h.lastCall] = fn
	return h.lastCall
}

// resolve hands reply r to its caller, as loop.resolve; a reply to no
// waiting call fails the test.
func (h *harness) resolve(r reply) {
	fn := h.waiting[r.call]
	if fn == nil {
		h.tb.Fatalf("harness: a reply to call %d, which waits for none", r.call)
	}
	delete(h.waiting, r.call)
	fn(r)
}

// take plays the consumers' streams: each takes what was sent to it at
// once, as a reading stream does, unless it is stuck.
func (h *harness) take(sends []Delivery) {
	type count struct{ n, bytes int }
	taken := map[uint64]*count{}
	var order []uint64
	for i := range sends {
		d := &sends[i]
		if q, ok := h.stuck[d.Consumer]; ok {
			h.stuck[d.Consumer] = append(q, *d)
			continue
		}
		c := taken[d.Consumer]
		if c == nil {
			c = &count{}
			taken[d.Consumer] = c
			order = append(order, d.Consumer)
		}
		c.n++
		c.bytes += deliverySize(d)
	}
	for _, id := range order {
		h.sub.taken(id, taken[id].n, taken[id].bytes, h.now())
	}
}

// stick makes consumer id's stream stop taking deliveries.
func (h *harness) stick(id uint64) {
	if h.stuck == nil {
		h.stuck = map[uint64][]Delivery{}
	}
	h.stuck[id] = nil
}

// unstick makes consumer id's stream take what waited and go on taking;
// it returns what waited.
func (h *harness) unstick(id uint64) []Delivery {
	q := h.stuck[id]
	delete(h.stuck, id)
	h.take(q)
	h.drain()
	return q
}

// read is loop.read without the wait: nothing at the head is nothing.
// Any error but retention's fails the test.
func (h *harness) read(f fetch) ([]storage.Message, []bool, error) {
	h.tb.Helper()
	msgs, acked, err := readFetch(context.Background(), h.st, h.topic, h.sub.sid, f, false)
	var oor *storage.OffsetOutOfRangeError
	if err != nil && !errors.As(err, &oor) {
		h.tb.Fatalf("read partition %d from %d: %v", f.part, f.from, err)
	}
	return msgs, acked, err
}

// settle drains, then runs a tick for a deadline already due, once per
// deadline, as the loop's timer would.
func (h *harness) settle() {
	h.tb.Helper()
	for h.sub != nil {
		h.drain()
		at, ok := h.sub.nextDeadline()
		if !ok || at.After(h.now()) || at.Equal(h.fired) {
			return
		}
		h.fired = at
		h.sub.tick(h.now())
	}
}

// advance moves the clock by d, ticking the core at every deadline on the
// way.
func (h *harness) advance(d time.Duration) {
	h.tb.Helper()
	end := h.now().Add(d)
	for {
		h.settle()
		if h.sub == nil {
			break
		}
		at, ok := h.sub.nextDeadline()
		if !ok || at.After(end) || !at.After(h.now()) {
			break
		}
		h.clk.Advance(at.Sub(h.now()))
		h.expire()
		h.fired = at
		h.sub.tick(h.now())
	}
	if end.After(h.now()) {
		h.clk.Advance(end.Sub(h.now()))
	}
	h.expire()
	h.settle()
}

// expire drops from the model the deliveries whose deadline has passed.
func (h *harness) expire() {
	now := h.now()
	for _, held := range h.model.outstanding {
		for k, dl := range held {
			if !dl.After(now) {
				delete(held, k)
			}
		}
	}
}

// publish appends messages and lets waiting reads see them.
func (h *harness) publish(topic string, part uint32, msgs []storage.Message) []storage.AppendResult {
	h.tb.Helper()
	res, err := h.st.Append(context.Background(), topic, part, msgs)
	if err != nil {
		h.tb.Fatal(err)
	}
	h.settle()
	return res
}

// releaseWrites does the held writes, in order, and stops holding.
func (h *harness) releaseWrites() {
	h.tb.Helper()
	held := h.held
	h.held, h.hold = nil, false
	for _, job := range held {
		res, err := h.st.Write(context.Background(), job.w)
		h.sub.written(job, res, err, h.now())
	}
	h.settle()
}

func (h *harness) attach(c uint64, credit int) error {
	h.tb.Helper()
	err := h.sub.attach(c, credit, h.now())
	if err == nil {
		h.credit[c] = credit
		h.model.outstanding[c] = map[pOff]time.Time{}
	}
	h.settle()
	return err
}

func (h *harness) detach(c uint64) {
	h.tb.Helper()
	h.sub.detach(c, h.now())
	delete(h.credit, c)
	held := h.model.outstanding[c]
	delete(h.model.outstanding, c)
	if h.opts.Guarantee == AtLeastOnce {
		for k := range held {
			delete(h.model.until, k)
		}
	}
	h.settle()
}

func (h *harness) setCredit(c uint64, n int) error {
	h.tb.Helper()
	err := h.sub.setCredit(c, n, h.now())
	if err == nil {
		h.credit[c] = n
	}
	h.settle()
	return err
}

// ackResult is what an ack returned, once its reply ran.
type ackResult struct {
	done    bool
	results []error
	err     error
}

func (h *harness) ack(ids []DeliveryID) *ackResult {
	h.tb.Helper()
	r := &ackResult{}
	h.loadIDs(ids)
	call := h.expect(func(rp reply) {
		r.done, r.results, r.err = true, rp.results, rp.err
		for i, id := range ids {
			if rp.results[i] != nil {
				continue
			}
			k := pOff{id.Partition, id.Offset}
			h.done(k)
			h.model.acked[k] = true
			if rp.err == nil && h.opts.Guarantee == EffectivelyOnce {
				h.model.confirmed[k] = true
			}
		}
	})
	h.sub.ack(call, ids, h.now())
	h.settle()
	return r
}

// loadIDs does what loop.loadIDs does: reads the message ids of
// deliveries not in memory and hands them to the subscription.
func (h *harness) loadIDs(ids []DeliveryID) {
	h.tb.Helper()
	h.sub.noteIDs(readIDs(context.Background(), h.st, h.topic, h.sub.unloaded(ids)))
}

// done drops an offset from the model's outstanding deliveries.
func (h *harness) done(k pOff) {
	for _, held := range h.model.outstanding {
		delete(held, k)
	}
	delete(h.model.until, k)
}

func (h *harness) nack(ids []DeliveryID) []error {
	h.tb.Helper()
	res := h.sub.nack(ids, h.now())
	for i, id := range ids {
		if res[i] == nil {
			h.done(pOff{id.Partition, id.Offset})
		}
	}
	h.settle()
	return res
}

func (h *harness) extend(ids []DeliveryID, d time.Duration) []error {
	h.tb.Helper()
	res := h.sub.extend(ids, d, h.now())
	for i, id := range ids {
		if res[i] != nil {
			continue
		}
		k := pOff{id.Partition, id.Offset}
		for _, held := range h.model.outstanding {
			if _, ok := held[k]; ok {
				held[k] = h.now().Add(d)
			}
		}
		if _, ok := h.model.until[k]; ok {
			h.model.until[k] = h.now().Add(d)
		}
	}
	h.settle()
	return res
}

// commitResult is what a commit returned, once its reply ran.
type commitResult struct {
	done bool
	res  [][]storage.AppendResult
	err  error
}

func (h *harness) commit(ids []DeliveryID, appends []storage.AppendBatch) *commitResult {
	h.tb.Helper()
	// A commit whose every id checks takes the deliveries out at once; its
	// write decides whether they are acked.
	valid := true
	for _, id := range ids {
		if _, err := h.sub.check(id, h.opts.Guarantee == AtLeastOnce); err != nil {
			valid = false
		}
	}
	r := &commitResult{}
	h.loadIDs(ids)
	call := h.expect(func(rp reply) {
		r.done, r.res, r.err = true, rp.res, rp.err
		if rp.err != nil {
			return
		}
		for _, id := range ids {
			k := pOff{id.Partition, id.Offset}
			h.model.acked[k] = true
			if h.opts.Guarantee == EffectivelyOnce {
				h.model.confirmed[k] = true
			}
		}
	})
	h.sub.commit(call, ids, appends, h.now())
	if valid {
		for _, id := range ids {
			h.done(pOff{id.Partition, id.Offset})
		}
	}
	h.settle()
	return r
}

func (h *harness) seek(pos StartPosition) error {
	h.tb.Helper()
	offs, err := h.engine().resolve(h.topic, pos)
	if err != nil {
		return err
	}
	var serr error
	h.sub.seek(h.expect(func(r reply) { serr = r.err }), offs, h.now())
	for c := range h.model.outstanding {
		h.model.outstanding[c] = map[pOff]time.Time{}
	}
	h.model.until = map[pOff]time.Time{}
	h.model.delivered = map[pOff]bool{}
	h.model.confirmed = map[pOff]bool{}
	h.settle()
	return serr
}

func (h *harness) stats() Stats {
	h.tb.Helper()
	parts, err := h.st.Partitions(h.topic)
	if err != nil {
		h.tb.Fatal(err)
	}
	heads := make([]uint64, len(parts))
	for i, p := range parts {
		heads[i] = p.Head
	}
	return h.sub.statsNow(heads)
}

// onSend records a delivery and checks it against the guarantees.
func (h *harness) onSend(d Delivery) {
	h.tb.Helper()
	h.sent = append(h.sent, d)
	k := pOff{d.ID.Partition, d.ID.Offset}
	h.model.sends[k]++
	now := h.now()
	g := h.opts.Guarantee
	if g == None {
		return
	}
	held, attached := h.model.outstanding[d.Consumer]
	if !attached {
		h.tb.Errorf("delivery %s to consumer %d, which is not attached", d.ID, d.Consumer)
		return
	}
	for _, other := range h.model.outstanding {
		delete(other, k) // a new attempt supersedes the old
	}
	h.checkKeyShared(d, k, now)
	held[k] = now.Add(h.opts.AckTimeout)
	if n := len(held); n > h.credit[d.Consumer] {
		h.tb.Logf("outstanding at c%d: %v\n%s", d.Consumer, held, h.dump())
		h.tb.Errorf("flow control: delivery %s makes %d outstanding at consumer %d, credit %d", d.ID, n, d.Consumer, h.credit[d.Consumer])
	}
	if limit := int(h.opts.MaxDeliveries); limit > 0 && h.model.sends[k] > limit {
		h.tb.Errorf("offset %s delivered %d times (%s), max_deliveries %d", k, h.model.sends[k], d.ID, limit)
	}
	switch g {
	case AtMostOnce:
		if h.model.delivered[k] {
			h.tb.Errorf("at-most-once: offset %s delivered twice (%s)", k, d.ID)
		}
		h.model.delivered[k] = true
	case EffectivelyOnce:
		if h.model.confirmed[k] {
			h.tb.Errorf("effectively-once: offset %s delivered again (%s) after its ack was confirmed", k, d.ID)
		}
		if until, ok := h.model.until[k]; ok && until.After(now) {
			h.tb.Errorf("effectively-once: offset %s delivered (%s) while outstanding until %v", k, d.ID, until.Sub(t0))
		}
		h.model.until[k] = now.Add(h.opts.AckTimeout)
	}
}

// checkKeyShared checks a KEY_SHARED delivery d of offset k: no other
// consumer holds a delivery of its key (one outstanding whose deadline has
// not passed), and a key's first deliveries in a partition go out in
// offset order.
func (h *harness) checkKeyShared(d Delivery, k pOff, now time.Time) {
	if h.opts.Type != KeyShared || len(d.Message.Key) == 0 {
		return
	}
	key := string(d.Message.Key)
	h.model.keys[k] = key
	for c, held := range h.model.outstanding {
		for o, deadline := range held {
			if c != d.Consumer && h.model.keys[o] == key && deadline.After(now) {
				h.tb.Errorf("key-shared: key %q delivered to consumer %d (%s) while consumer %d holds %s", key, d.Consumer, d.ID, c, o)
			}
		}
	}
	if h.model.sends[k] > 1 {
		return
	}
	pk := fmt.Sprint(k.part, "/", key)
	if last, ok := h.model.firstSent[pk]; ok && last > k.off {
		h.tb.Errorf("key-shared: key %q offset %s delivered a first time after offset %d", key, k, last)
	}
	h.model.firstSent[pk] = max(h.model.firstSent[pk], k.off)
}

// takeSent returns the deliveries since the last call.
func (h *harness) takeSent() []Delivery {
	s := h.sent
	h.sent = nil
	return s
}

// outstandingOf returns the deliveries consumer c holds by the model,
// newest attempt per offset, in offset order.
func (h *harness) outstandingOf(c uint64, all []Delivery) []DeliveryID {
	held := h.model.outstanding[c]
	latest := map[pOff]DeliveryID{}
	for _, d := range all {
		k := pOff{d.ID.Partition, d.ID.Offset}
		if _, ok := held[k]; ok && d.Consumer == c {
			latest[k] = d.ID
		}
	}
	ids := make([]DeliveryID, 0, len(latest))
	for _, id := range latest {
		ids = append(ids, id)
	}
	slices.SortFunc(ids, func(a, b DeliveryID) int {
		if a.Partition != b.Partition {
			return int(a.Partition) - int(b.Partition)
		}
		switch {
		case a.Offset < b.Offset:
			return -1
		case a.Offset > b.Offset:
			return 1
		}
		return 0
	})
	return ids
}

// errName names the sentinel err wraps, for scenario output.
func errName(err error) string {
	if err == nil {
		return "ok"
	}
	for _, s := range []struct {
		err  error
		name string
	}{
		{ErrStaleAttempt, "ErrStaleAttempt"},
		{ErrAlreadyAcked, "ErrAlreadyAcked"},
		{ErrUnknownDelivery, "ErrUnknownDelivery"},
		{ErrNotSupported, "ErrNotSupported"},
		{ErrInvalidCredit, "ErrInvalidCredit"},
		{ErrExclusiveBusy, "ErrExclusiveBusy"},
		{ErrDetached, "ErrDetached"},
		{ErrInvalidOptions, "ErrInvalidOptions"},
		{ErrSubscriptionExists, "ErrSubscriptionExists"},
		{errInjected, "errInjected"},
	} {
		if errors.Is(err, s.err) {
			return s.name
		}
	}
	return err.Error()
}

// dump describes the core's state, for a failure message.
func (h *harness) dump() string {
	s := h.sub
	var b strings.Builder
	fmt.Fprintf(&b, "type %v, consumers:", s.opts.Type)
	for _, c := range s.consumers {
		fmt.Fprintf(&b, " c%d(credit %d, out %d)", c.id, c.credit, c.out)
	}
	fmt.Fprintf(&b, "\npending reads %d, held writes %d, queued jobs %d, pins %d\n", len(h.pending), len(h.held), len(s.queued), len(s.pins))
	for _, p := range s.parts {
		fmt.Fprintf(&b, "partition %d: floor %d gaps %d epoch %d next %d fetching %v writes %d dirty %v buf %d retry %v busy %v inflight %d attempts %v\n",
			p.n, p.st.cursor.Floor(), p.st.cursor.Gaps(), p.st.epoch, p.next, p.fetching, len(p.writes), p.dirty, len(p.buf), p.retry, p.busy, p.inflight.Len(), p.st.attempts)
		for _, e := range p.inflight.h {
			fmt.Fprintf(&b, "  lease %d attempt %d c%d deadline t0+%v\n", e.Offset, e.Attempt, e.Consumer, e.Deadline.Sub(t0))
		}
	}
	for k, pn := range s.pins {
		fmt.Fprintf(&b, "pin %x: c%d out %d\n", k, pn.consumer, pn.out)
	}
	fmt.Fprintf(&b, "now t0+%v\n", h.now().Sub(t0))
	return b.String()
}
