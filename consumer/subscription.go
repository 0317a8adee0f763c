package consumer

import (
	"errors"
	"fmt"
	"hash/fnv"
	"slices"
	"strconv"
	"time"

	"github.com/ferrymq/ferry/storage"
)

// Fetch sizes. A partition's buffer of messages not yet delivered is
// refilled once it holds less than half its target: the consumers' free
// credit, at least fetchMin and at most fetchMax messages — so a
// subscription whose consumers hold their whole window keeps only a few
// messages in memory besides those they hold. One fetch reads at most
// fetchBytes.
const (
	fetchMin   = 32
	fetchMax   = 512
	fetchBytes = 4 << 20
)

// Headers of a dead-lettered message, naming where it came from.
const (
	HeaderDeadLetterTopic        = "ferry-dead-letter-topic"
	HeaderDeadLetterPartition    = "ferry-dead-letter-partition"
	HeaderDeadLetterOffset       = "ferry-dead-letter-offset"
	HeaderDeadLetterSubscription = "ferry-dead-letter-subscription"
	HeaderDeadLetterAttempts     = "ferry-dead-letter-attempts"
)

// subscription is the delivery engine of one subscription: a deterministic
// state machine, like etcd-raft's RawNode. Its methods take events (a
// consumer attached, credit, acks, fetched messages, a write done, a tick,
// with the time) and queue effects in out (deliveries to send, reads and
// writes to do, replies to run); the Engine's loop (engine.go) does the I/O
// and feeds the results back. It reads no clock, starts no goroutine and is
// not safe for concurrent use.
type subscription struct {
	topic string
	name  string
	sid   uint32
	opts  Options
	// horizon is how long acked ids are remembered (0: for ever).
	horizon time.Duration
	// route picks a dead-letter message's partition.
	route func(topic string, m *storage.Message) (uint32, error)

	parts     []*partition
	consumers []*consumerState // in attach order: FAILOVER's first is active
	byID      map[uint64]*consumerState
	// queueBytes bounds each consumer's queue (EngineOptions.QueueBytes).
	queueBytes int
	rr         int             // SHARED: where the next round-robin pick starts
	pins       map[uint64]*pin // KEY_SHARED: key hash → consumer holding it
	queued     []*writeJob     // commits and dead letters waiting for their partitions
	nextJob    uint64

	stats Stats
	out   output
	// now is the time of the last step: redeliveries due by then wait for
	// credit or their key, not for a timer (see nextDeadline).
	now time.Time
}

// partition is a subscription's delivery state in one partition.
type partition struct {
	n        uint32
	st       *partitionState // what is stored: cursor, epoch, attempts
	inflight *Inflight
	msgs     map[uint64]*storage.Message // outstanding or awaiting redelivery
	retry    []uint64                    // offsets awaiting redelivery, increasing
	// retryLater: some offset in retry may have a notBefore still to
	// come, so nextDeadline looks through retry (else it need not: after
	// a mass disconnect retry holds thousands, all due at once).
	retryLater bool
	busy       map[uint64]bool // in a commit or dead-letter write

	buf      []storage.Message // fetched, not yet delivered, from offset next-len(buf)
	next     uint64            // the next offset to fetch
	fetchSeq uint64            // bumped by a seek: results of older fetches are dropped
	fetching bool
	// behind: a NONE partition skipped what its consumers could not take;
	// the next fetch starts at the head.
	behind bool

	writes []*writeJob // in flight, in the order they were issued
	// retryWriteAt: the last write failed; the next waits until then.
	retryWriteAt time.Time
	dirty        bool       // the stored state is behind st
	sends        []Delivery // to send once the next write is durable
	waiters      []func(error)
	ackedIDs     []string // EFFECTIVELY_ONCE: ids acked since the last write
	// rereads: offsets awaiting redelivery whose payload is being read
	// again (reread), and the generation that fences reads from before a
	// seek.
	rereading  bool
	rereadSeq  uint64
	rereadWant []uint64
	// loadedIDs are message ids the loop read for offsets delivered before
	// a restart and not fetched again, so their acks reach the horizon.
	loadedIDs map[uint64]string
}

// consumerState is one attached consumer.
type consumerState struct {
	id     uint64
	credit int // most outstanding deliveries
	out    int // outstanding deliveries
	// queued deliveries were handed to the consumer's queue (or wait for
	// a write to be) and not yet taken by its stream; see hasRoom.
	queued      int
	queuedBytes int
	// pendingBytes are of deliveries waiting for their write
	// (durableSends) before they are queued.
	pendingBytes int
}

func (c *consumerState) hasCredit() bool { return c.out < c.credit }

// pin holds a KEY_SHARED key at a consumer while it has deliveries of it
// outstanding, so the key's messages go to one consumer at a time.
type pin struct {
	consumer uint64
	out      int
}

// writeJob is one storage.Write the loop does for the subscription. A
// partition has at most one write in flight, so writes of a partition land
// in the order they were made and each carries the whole state.
type writeJob struct {
	id         uint64
	parts      []uint32
	epoch      map[uint32]uint32 // each partition's epoch when the job was made
	acks       map[uint32][]uint64
	deadLetter bool // a dead letter's write, not a commit's
	// ackedIDs are the ids of the messages it acks, for the acked-id
	// horizon (EFFECTIVELY_ONCE).
	ackedIDs []string
	w        storage.Write
	// sends and waiters of the partitions, taken when the write is issued:
	// they wait for it to be durable.
	sends   []Delivery
	waiters []func(error)
	done    func(res [][]storage.AppendResult, err error)

	finished  bool // written has its outcome
	completed bool // complete has applied it
	res       [][]storage.AppendResult
	err       error
}

// fetch asks the loop to read a partition from an offset (waiting for the
// head to pass it) and hand the messages to fetched.
type fetch struct {
	part uint32
	from uint64
	max  int // most messages to read
	seq  uint64
	// latest: read from the partition's head, not from; the messages in
	// between are skipped (NONE consumers that fell behind).
	latest bool
	// ackedIDs: look up which messages' ids the subscription acked
	// (EFFECTIVELY_ONCE's dedup horizon).
	ackedIDs bool
}

// reread asks the loop to read a partition's messages in [from, to) again,
// for redeliveries, and hand them to reread.
type reread struct {
	part     uint32
	from, to uint64
	seq      uint64
}

// output is what the subscription asks its loop to do. The loop takes it
// after every event.
type output struct {
	sends   []Delivery
	rereads []reread
	fetches []fetch
	writes  []*writeJob
	replies []func()
}

// Stats are a subscription's counters and gauges.
type Stats struct {
	Backlog       uint64    // messages not acked, across partitions
	Inflight      int       // outstanding deliveries
	OldestUnacked time.Time // publish time of the oldest unacked message held in memory; zero if none
	Consumers     int
	Delivered     uint64 // deliveries made, redeliveries included
	Redelivered   uint64
	Acked         uint64
	Nacked        uint64
	DeadLettered  uint64
	StaleAcks     uint64 // acks, nacks and commits refused as stale or unknown
	Skipped       uint64 // messages skipped as already acked by id (EFFECTIVELY_ONCE)
	// Dropped counts messages a NONE subscription skipped because its
	// consumers fell more than noneMaxLag behind (skipped forward).
	Dropped uint64
}

func newSubscription(topic, name string, sid uint32, opts Options, states []*partitionState, heads []uint64,
	route func(string, *storage.Message) (uint32, error)) *subscription {
	s := &subscription{topic: topic, name: name, sid: sid, opts: opts, route: route, pins: make(map[uint64]*pin),
		byID: make(map[uint64]*consumerState), queueBytes: DefaultQueueBytes}
	for i, st := range states {
		p := &partition{n: uint32(i), st: st, inflight: NewInflight(), msgs: make(map[uint64]*storage.Message), busy: make(map[uint64]bool)}
		p.next = st.cursor.Floor()
		if opts.Guarantee == None {
			p.next = heads[i]
		}
		// Attempts recorded before a restart: their messages are fetched
		// again from the floor and go out as redeliveries.
		s.parts = append(s.parts, p)
	}
	return s
}

// durableSends reports whether a delivery may go out only once the state
// recording it is durable: AT_MOST_ONCE moves its cursor first, and the
// attempts of EFFECTIVELY_ONCE and dead-lettering subscriptions are
// recorded before the delivery they count.
func (s *subscription) durableSends() bool {
	return s.opts.Guarantee == AtMostOnce || s.persistAttempts()
}

// persistAttempts reports whether attempts are part of the stored state.
func (s *subscription) persistAttempts() bool {
	return s.opts.Guarantee == EffectivelyOnce || s.opts.MaxDeliveries > 0
}

func (s *subscription) consumer(id uint64) *consumerState { return s.byID[id] }

// attach adds consumer id with credit.
func (s *subscription) attach(id uint64, credit int, now time.Time) error {
	if err := checkCredit(credit); err != nil {
		return err
	}
	if s.opts.Type == Exclusive && len(s.consumers) > 0 {
		return fmt.Errorf("subscription %q: %w", s.name, ErrExclusiveBusy)
	}
	c := &consumerState{id: id, credit: credit}
	s.consumers = append(s.consumers, c)
	s.byID[id] = c
	s.step(now)
	return nil
}

// setCredit changes a consumer's credit.
func (s *subscription) setCredit(id uint64, credit int, now time.Time) error {
	if err := checkCredit(credit); err != nil {
		return err
	}
	c := s.consumer(id)
	if c == nil {
		return ErrDetached
	}
	c.credit = credit
	s.step(now)
	return nil
}

// detach removes a consumer. What it held is redelivered at once under
// AT_LEAST_ONCE, when its deadline passes under EFFECTIVELY_ONCE (it may
// still commit over another connection), and never under AT_MOST_ONCE.
// It costs the consumer's own deliveries and, per partition, O(1) besides
// (the list of consumers aside, a copy of pointers): a consumer that held
// nothing frees nothing, so nothing is dispatched.
func (s *subscription) detach(id uint64, now time.Time) {
	c := s.byID[id]
	if c == nil {
		return
	}
	delete(s.byID, id)
	i := slices.Index(s.consumers, c)
	s.consumers = slices.Delete(s.consumers, i, i+1)
	freed := c.queued > 0 // a FAILOVER successor may take what waited for it
	for _, p := range s.parts {
		var again []uint64
		for _, l := range p.inflight.RemoveConsumer(id) {
			freed = true
			s.unpin(p, l.Offset)
			switch s.opts.Guarantee {
			case AtLeastOnce:
				again = append(again, l.Offset)
			case EffectivelyOnce:
				l.Consumer = 0
				p.inflight.Add(l)
				s.pinTo(p, l.Offset, 0)
			default:
				delete(p.msgs, l.Offset)
			}
		}
		s.toRetryAll(p, again)
	}
	if freed {
		s.step(now)
	}
}

// step delivers what can be delivered, then queues fetches and writes.
func (s *subscription) step(now time.Time) {
	s.now = now
	s.dispatch(now)
	s.issueWrites()
	s.queueRereads()
	s.queueFetches()
}

// keyHash is the KEY_SHARED hash of a key (FNV-1a 64).
func keyHash(key []byte) uint64 {
	h := fnv.New64a()
	h.Write(key)
	return h.Sum64()
}

// pick chooses the consumer for m, or nil if the one it must go to has no
// room (hasRoom: credit and queue).
func (s *subscription) pick(m *storage.Message) *consumerState {
	ok := s.hasRoom
	switch s.opts.Type {
	case Exclusive, Failover:
		if c := s.consumers[0]; ok(c) {
			return c
		}
		return nil
	case KeyShared:
		if len(m.Key) == 0 {
			break
		}
		h := keyHash(m.Key)
		var c *consumerState
		if pn, pinned := s.pins[h]; pinned {
			c = s.consumer(pn.consumer)
		} else {
			c = s.rendezvous(h)
		}
		if c != nil && ok(c) {
			return c
		}
		return nil
	}
	for i := range s.consumers {
		c := s.consumers[(s.rr+i)%len(s.consumers)]
		if ok(c) {
			s.rr = (s.rr + i + 1) % len(s.consumers)
			return c
		}
	}
	return nil
}

// rendezvous is the consumer with the highest score for key hash h: when
// consumers come and go only the keys of those that left, or a fair share
// for one that joined, move.
func (s *subscription) rendezvous(h uint64) *consumerState {
	var best *consumerState
	var bestScore uint64
	for _, c := range s.consumers {
		x := h ^ (c.id * 0x9E3779B97F4A7C15)
		x ^= x >> 33
		x *= 0xff51afd7ed558ccd
		x ^= x >> 33
		if best == nil || x > bestScore {
			best, bestScore = c, x
		}
	}
	return best
}

// dispatch hands out due redeliveries, then fetched messages, while
// consumers have credit.
func (s *subscription) dispatch(now time.Time) {
	if len(s.consumers) == 0 {
		return
	}
	var blocked map[uint64]bool // KEY_SHARED keys that must wait this round
	for _, p := range s.parts {
		if s.opts.Type == KeyShared {
			blocked = make(map[uint64]bool)
		}
		stalled := false
		s.skipLagging(p, now)
		s.dispatchRetries(p, now, blocked, &stalled)
		if !stalled {
			n := len(p.retry)
			s.dispatchBuffer(p, now, blocked)
			if len(p.retry) > n {
				// Fetched messages that ran out of attempts before a
				// restart: dead-letter them now, not at the next event.
				s.dispatchRetries(p, now, blocked, &stalled)
			}
		}
	}
}

// hold reports whether a message that could not be placed stops the pass:
// only KEY_SHARED looks past it, to other keys.
func (s *subscription) hold(m *storage.Message, blocked map[uint64]bool) bool {
	if s.opts.Type == KeyShared && len(m.Key) > 0 {
		blocked[keyHash(m.Key)] = true
		return false
	}
	return true
}

func (s *subscription) isBlocked(m *storage.Message, blocked map[uint64]bool) bool {
	return len(blocked) > 0 && len(m.Key) > 0 && blocked[keyHash(m.Key)]
}

func (s *subscription) dispatchRetries(p *partition, now time.Time, blocked map[uint64]bool, stalled *bool) {
	kept := p.retry[:0]
	for i, off := range p.retry {
		a := p.st.attempts[off]
		m := p.msgs[off]
		if *stalled || a.notBefore.After(now) || s.isBlocked(m, blocked) {
			kept = append(kept, off)
			continue
		}
		if m.Payload == nil {
			// Its payload was let go when it went out: read it again first,
			// holding back what must follow it.
			s.wantReread(p, off)
			kept = append(kept, off)
			*stalled = s.hold(m, blocked)
			if *stalled {
				kept = keepRest(p.retry, kept, i)
				break
			}
			continue
		}
		if s.opts.MaxDeliveries > 0 && a.n >= s.opts.MaxDeliveries {
			s.deadLetter(p, off, m, a.n)
			continue
		}
		c := s.pick(m)
		if c == nil {
			kept = append(kept, off)
			*stalled = s.hold(m, blocked)
			if *stalled {
				kept = keepRest(p.retry, kept, i)
				break
			}
			continue
		}
		s.deliver(p, c, m, now)
	}
	p.retry = kept
}

func (s *subscription) dispatchBuffer(p *partition, now time.Time, blocked map[uint64]bool) {
	kept := p.buf[:0]
	for i := range p.buf {
		m := &p.buf[i]
		switch {
		case p.st.cursor.Acked(m.Offset):
			continue
		case p.busy[m.Offset], s.isBlocked(m, blocked):
			kept = append(kept, *m)
			continue
		}
		if a, ok := p.st.attempts[m.Offset]; ok && s.opts.Guarantee != None {
			// Delivered before a restart: a redelivery, when its deadline
			// or backoff allows.
			mc := *m
			p.msgs[m.Offset] = &mc
			if a.notBefore.After(now) || (s.opts.MaxDeliveries > 0 && a.n >= s.opts.MaxDeliveries) {
				s.toRetry(p, m.Offset, a.notBefore)
				continue
			}
		}
		c := s.pick(m)
		if c == nil {
			kept = append(kept, *m)
			if s.hold(m, blocked) {
				kept = append(kept, p.buf[i+1:]...)
				break
			}
			continue
		}
		mc := *m
		s.deliver(p, c, &mc, now)
	}
	clear(p.buf[len(kept):])
	p.buf = kept
}

// deliver makes one delivery of m to c.
func (s *subscription) deliver(p *partition, c *consumerState, m *storage.Message, now time.Time) {
	off := m.Offset
	d := Delivery{Consumer: c.id, ID: DeliveryID{Partition: p.n, Offset: off, Attempt: 1, Epoch: p.st.epoch}, Message: *m}
	s.stats.Delivered++
	if s.opts.Guarantee == None {
		s.send(d)
		return
	}
	deadline := now.Add(s.opts.AckTimeout)
	// What stays in memory while the delivery is out is the message without
	// its payload and headers: a redelivery reads them again (reread), so
	// a subscription's memory does not grow with its consumers' credit
	// times the message size.
	held := *m
	held.Payload, held.Headers = nil, nil
	p.msgs[off] = &held
	if s.opts.Guarantee == AtMostOnce {
		// The cursor moves before the message goes out: never twice.
		p.st.cursor.Ack(off)
		p.dirty = true
	} else {
		a := p.st.attempts[off]
		a.n++
		a.notBefore = deadline
		p.st.attempts[off] = a
		d.ID.Attempt = a.n
		if a.n > 1 {
			s.stats.Redelivered++
		}
		p.dirty = p.dirty || s.persistAttempts()
	}
	p.inflight.Add(Lease{Offset: off, Attempt: d.ID.Attempt, Consumer: c.id, Deadline: deadline})
	c.out++
	s.pinTo(p, off, c.id)
	if s.durableSends() {
		c.pendingBytes += deliverySize(&d)
		p.sends = append(p.sends, d)
	} else {
		s.send(d)
	}
}

// pinKey is the KEY_SHARED key hash of the message at off, if it has a
// key and the subscription is KEY_SHARED.
func (s *subscription) pinKey(p *partition, off uint64) (uint64, bool) {
	if s.opts.Type != KeyShared {
		return 0, false
	}
	m := p.msgs[off]
	if m == nil || len(m.Key) == 0 {
		return 0, false
	}
	return keyHash(m.Key), true
}

// pinTo holds off's key at consumer (0 for none: an EFFECTIVELY_ONCE
// delivery whose consumer left, still outstanding until its deadline).
func (s *subscription) pinTo(p *partition, off uint64, consumer uint64) {
	h, ok := s.pinKey(p, off)
	if !ok {
		return
	}
	pn := s.pins[h]
	if pn == nil {
		pn = &pin{}
		s.pins[h] = pn
	}
	pn.consumer = consumer
	pn.out++
}

// unpin releases off's key once its last outstanding delivery is done.
func (s *subscription) unpin(p *partition, off uint64) {
	h, ok := s.pinKey(p, off)
	if !ok {
		return
	}
	if pn := s.pins[h]; pn != nil {
		if pn.out--; pn.out <= 0 {
			delete(s.pins, h)
		}
	}
}

// toRetry queues off for redelivery no earlier than notBefore.
func (s *subscription) toRetry(p *partition, off uint64, notBefore time.Time) {
	if !notBefore.IsZero() {
		p.retryLater = true
	}
	a := p.st.attempts[off]
	a.notBefore = notBefore
	p.st.attempts[off] = a
	p.dirty = p.dirty || s.persistAttempts()
	if p.msgs[off] == nil {
		return // not fetched yet: the fetch finds its attempts
	}
	if i, found := slices.BinarySearch(p.retry, off); !found {
		p.retry = slices.Insert(p.retry, i, off)
	}
}

// release ends off's outstanding delivery, if any, freeing its consumer's
// credit.
func (s *subscription) release(p *partition, off uint64) {
	if l, ok := p.inflight.Remove(off); ok {
		s.released(p, l)
	}
}

// released frees what lease l held, once it is out of p.inflight: its key
// and its consumer's credit.
func (s *subscription) released(p *partition, l Lease) {
	s.unpin(p, l.Offset)
	if c := s.consumer(l.Consumer); c != nil {
		c.out--
	}
}

// forget drops what is held for an acked off.
func (s *subscription) forget(p *partition, off uint64) {
	s.release(p, off)
	delete(p.st.attempts, off)
	delete(p.msgs, off)
	delete(p.loadedIDs, off)
	if i, found := slices.BinarySearch(p.retry, off); found {
		p.retry = slices.Delete(p.retry, i, i+1)
	}
}

// messageID is the id of the message at off, if it is known: in memory,
// or read by the loop (noteIDs).
func (s *subscription) messageID(p *partition, off uint64) string {
	if m := p.msgs[off]; m != nil {
		return m.ID
	}
	return p.loadedIDs[off]
}

// unloaded returns the ids among ids that an EFFECTIVELY_ONCE ack or commit
// could take but whose message is not in memory (delivered before a
// restart, not fetched again): the loop reads their message ids and hands
// them to noteIDs first, so that the acked-id horizon gets them.
func (s *subscription) unloaded(ids []DeliveryID) []DeliveryID {
	if s.opts.Guarantee != EffectivelyOnce {
		return nil
	}
	var out []DeliveryID
	for _, id := range ids {
		if p, err := s.check(id, false); err == nil && p.msgs[id.Offset] == nil {
			out = append(out, id)
		}
	}
	return out
}

// noteIDs records message ids the loop read for unloaded deliveries.
func (s *subscription) noteIDs(found map[DeliveryID]string) {
	for id, mid := range found {
		p := s.parts[id.Partition]
		if _, ok := p.st.attempts[id.Offset]; !ok || mid == "" {
			continue
		}
		if p.loadedIDs == nil {
			p.loadedIDs = make(map[uint64]string)
		}
		p.loadedIDs[id.Offset] = mid
	}
}

// check finds the partition of an ack, nack, extend or commit and says
// whether id names the current attempt of an outstanding delivery.
// AT_LEAST_ONCE takes an ack of an older attempt: the message was processed.
func (s *subscription) check(id DeliveryID, ack bool) (*partition, error) {
	if id.Partition >= uint32(len(s.parts)) {
		return nil, fmt.Errorf("delivery %s: no partition %d: %w", id, id.Partition, ErrUnknownDelivery)
	}
	p := s.parts[id.Partition]
	if s.opts.Guarantee == AtMostOnce && id.Epoch == p.st.epoch {
		// The cursor passed every delivered message before it went out:
		// an outstanding delivery is found by its lease, not the cursor.
		if l, ok := p.inflight.Get(id.Offset); ok && l.Attempt == id.Attempt {
			return p, nil
		}
	}
	switch {
	case p.st.cursor.Acked(id.Offset):
		return nil, fmt.Errorf("delivery %s: %w", id, ErrAlreadyAcked)
	case id.Epoch != p.st.epoch:
		return nil, fmt.Errorf("delivery %s is from before a seek: %w", id, ErrStaleAttempt)
	case p.busy[id.Offset]:
		return nil, fmt.Errorf("delivery %s is being committed: %w", id, ErrUnknownDelivery)
	}
	if s.opts.Guarantee == AtMostOnce {
		return nil, fmt.Errorf("delivery %s: %w", id, ErrUnknownDelivery) // no lease matched above
	}
	a, ok := p.st.attempts[id.Offset]
	switch {
	case !ok || id.Attempt == 0 || id.Attempt > a.n:
		return nil, fmt.Errorf("delivery %s: %w", id, ErrUnknownDelivery)
	case id.Attempt < a.n && !(ack && s.opts.Guarantee == AtLeastOnce):
		return nil, fmt.Errorf("delivery %s: attempt %d is current: %w", id, a.n, ErrStaleAttempt)
	}
	return p, nil
}

// ack acks deliveries. Each gets a result (nil or why it was refused). For
// EFFECTIVELY_ONCE, reply runs once the acks are durable (with the write's
// error, if it failed); otherwise at once. Acks under AT_MOST_ONCE only
// free credit; NONE takes none.
func (s *subscription) ack(ids []DeliveryID, now time.Time, reply func(results []error, err error)) {
	results := make([]error, len(ids))
	touched := map[*partition]bool{}
	for i, id := range ids {
		if s.opts.Guarantee == None {
			results[i] = fmt.Errorf("acks: %w", ErrNotSupported)
			continue
		}
		p, err := s.check(id, true)
		if err != nil {
			results[i] = err
			s.stats.StaleAcks++
			continue
		}
		if s.opts.Guarantee == AtMostOnce {
			s.release(p, id.Offset)
			delete(p.msgs, id.Offset)
			continue
		}
		if mid := s.messageID(p, id.Offset); s.opts.Guarantee == EffectivelyOnce && mid != "" {
			p.ackedIDs = append(p.ackedIDs, mid)
		}
		s.forget(p, id.Offset)
		p.st.cursor.Ack(id.Offset)
		p.dirty = true
		touched[p] = true
		s.stats.Acked++
	}
	if s.opts.Guarantee != EffectivelyOnce || len(touched) == 0 {
		s.reply(func() { reply(results, nil) })
	} else {
		s.afterWrites(touched, func(err error) { reply(results, err) })
	}
	s.step(now)
}

// afterWrites runs fn once the next write of every partition in parts is
// done, with the first error.
func (s *subscription) afterWrites(parts map[*partition]bool, fn func(error)) {
	left := len(parts)
	var first error
	for p := range parts {
		p.waiters = append(p.waiters, func(err error) {
			if first == nil {
				first = err
			}
			if left--; left == 0 {
				s.reply(func() { fn(first) })
			}
		})
	}
}

func (s *subscription) reply(fn func()) { s.out.replies = append(s.out.replies, fn) }

// nack makes deliveries due again after the backoff for their attempt.
func (s *subscription) nack(ids []DeliveryID, now time.Time) []error {
	results := make([]error, len(ids))
	for i, id := range ids {
		if s.opts.Guarantee == None || s.opts.Guarantee == AtMostOnce {
			results[i] = fmt.Errorf("nack: %w", ErrNotSupported)
			continue
		}
		p, err := s.check(id, false)
		if err != nil {
			results[i] = err
			s.stats.StaleAcks++
			continue
		}
		s.release(p, id.Offset)
		s.toRetry(p, id.Offset, now.Add(s.opts.Backoff(id.Attempt)))
		s.stats.Nacked++
	}
	s.step(now)
	return results
}

// extend moves the deadline of outstanding deliveries to now+d.
func (s *subscription) extend(ids []DeliveryID, d time.Duration, now time.Time) []error {
	results := make([]error, len(ids))
	for i, id := range ids {
		if s.opts.Guarantee == None {
			results[i] = fmt.Errorf("extend: %w", ErrNotSupported)
			continue
		}
		p, err := s.check(id, false)
		if err == nil && !p.inflight.Extend(id.Offset, now.Add(d)) {
			err = fmt.Errorf("delivery %s is not outstanding: %w", id, ErrUnknownDelivery)
		}
		if err != nil {
			results[i] = err
			continue
		}
		if a, ok := p.st.attempts[id.Offset]; ok {
			a.notBefore = now.Add(d)
			p.st.attempts[id.Offset] = a
			p.dirty = p.dirty || s.persistAttempts()
		}
	}
	s.step(now)
	return results
}

// tick makes what is due due: outstanding deliveries past their deadline
// are redelivered (AT_MOST_ONCE only frees the credit).
func (s *subscription) tick(now time.Time) {
	for _, p := range s.parts {
		for _, l := range p.inflight.Due(now) {
			s.released(p, l)
			if s.opts.Guarantee == AtMostOnce {
				delete(p.msgs, l.Offset)
				continue
			}
			s.toRetry(p, l.Offset, time.Time{})
		}
	}
	s.step(now)
}

// nextDeadline is when tick next has something to do. A redelivery
// already due at the last step is left out: it waits for credit or for
// its key, which only an event brings, and counting it would hide the
// later deadlines behind a time already past.
func (s *subscription) nextDeadline() (time.Time, bool) {
	var next time.Time
	found := false
	earlier := func(t time.Time) {
		if !found || t.Before(next) {
			next, found = t, true
		}
	}
	for _, p := range s.parts {
		if t, ok := p.inflight.NextDeadline(); ok {
			earlier(t)
		}
		if p.retryLater {
			later := false
			for _, off := range p.retry {
				if t := p.st.attempts[off].notBefore; t.After(s.now) {
					earlier(t)
					later = true
				}
			}
			p.retryLater = later // s.now only moves on: none will be later again
		}
		if p.dirty && p.retryWriteAt.After(s.now) {
			earlier(p.retryWriteAt)
		}
	}
	return next, found
}

// commit acks deliveries and appends messages in one atomic write. Every
// id must name the current attempt; else nothing happens and reply gets
// the first refusal.
func (s *subscription) commit(ids []DeliveryID, appends []storage.AppendBatch, now time.Time,
	reply func(res [][]storage.AppendResult, err error)) {
	if s.opts.Guarantee != AtLeastOnce && s.opts.Guarantee != EffectivelyOnce {
		s.reply(func() { reply(nil, fmt.Errorf("commit: %w", ErrNotSupported)) })
		return
	}
	acks := map[uint32][]uint64{}
	seen := map[DeliveryID]bool{}
	for _, id := range ids {
		if _, err := s.check(id, s.opts.Guarantee == AtLeastOnce); err != nil || seen[id] {
			if err == nil {
				err = fmt.Errorf("delivery %s named twice: %w", id, ErrUnknownDelivery)
			}
			s.stats.StaleAcks++
			s.reply(func() { reply(nil, err) })
			return
		}
		seen[id] = true
		acks[id.Partition] = append(acks[id.Partition], id.Offset)
	}
	job := &writeJob{acks: acks, w: storage.Write{Appends: appends}, done: func(res [][]storage.AppendResult, err error) {
		s.reply(func() { reply(res, err) })
	}}
	if s.opts.Guarantee == EffectivelyOnce {
		for _, id := range ids {
			if mid := s.messageID(s.parts[id.Partition], id.Offset); mid != "" {
				job.ackedIDs = append(job.ackedIDs, mid)
			}
		}
	}
	for part, offs := range acks {
		p := s.parts[part]
		for _, off := range offs {
			s.release(p, off)
			p.busy[off] = true
			// Not redelivered while its commit is in flight: a failed
			// write queues it again (written).
			if i, found := slices.BinarySearch(p.retry, off); found {
				p.retry = slices.Delete(p.retry, i, i+1)
			}
		}
	}
	s.queue(job)
	s.step(now)
}

// deadLetter sends off to the dead-letter topic and acks it, atomically.
func (s *subscription) deadLetter(p *partition, off uint64, m *storage.Message, attempts uint32) {
	dl := storage.Message{ID: m.ID, Key: m.Key, Payload: m.Payload, Headers: make(map[string]string, len(m.Headers)+5)}
	for k, v := range m.Headers {
		dl.Headers[k] = v
	}
	dl.Headers[HeaderDeadLetterTopic] = s.topic
	dl.Headers[HeaderDeadLetterPartition] = strconv.FormatUint(uint64(p.n), 10)
	dl.Headers[HeaderDeadLetterOffset] = strconv.FormatUint(off, 10)
	dl.Headers[HeaderDeadLetterSubscription] = s.name
	dl.Headers[HeaderDeadLetterAttempts] = strconv.FormatUint(uint64(attempts), 10)
	part, err := s.route(s.opts.DeadLetterTopic, &dl)
	if err != nil {
		// The dead-letter topic is gone: keep the message and try again
		// after the longest backoff.
		s.toRetry(p, off, m.PublishTime.Add(s.opts.BackoffMax))
		return
	}
	p.busy[off] = true
	job := &writeJob{
		deadLetter: true,
		acks:       map[uint32][]uint64{p.n: {off}},
		w:          storage.Write{Appends: []storage.AppendBatch{{Topic: s.opts.DeadLetterTopic, Partition: part, Messages: []storage.Message{dl}}}},
	}
	if s.opts.Guarantee == EffectivelyOnce && m.ID != "" {
		job.ackedIDs = []string{m.ID}
	}
	job.done = func(_ [][]storage.AppendResult, err error) {
		if err == nil {
			s.stats.DeadLettered++
		}
	}
	s.queue(job)
}

// queue adds a job that acks offsets; it is issued once its partitions
// have no write in flight.
func (s *subscription) queue(job *writeJob) {
	for part := range job.acks {
		job.parts = append(job.parts, part)
	}
	slices.Sort(job.parts)
	s.queued = append(s.queued, job)
}

// issueWrites issues queued jobs whose partitions are free, in order, then
// a plain state write for every other partition behind its store.
func (s *subscription) issueWrites() {
	var taken map[uint32]bool // partitions a queued job waits for; none most of the time
	if len(s.queued) > 0 {
		taken = make(map[uint32]bool)
	}
	kept := s.queued[:0]
	for _, job := range s.queued {
		free := true
		for _, part := range job.parts {
			free = free && len(s.parts[part].writes) == 0 && !taken[part]
		}
		if !free {
			for _, part := range job.parts {
				taken[part] = true // later jobs keep their order
			}
			kept = append(kept, job)
			continue
		}
		s.issue(job)
	}
	clear(s.queued[len(kept):])
	s.queued = kept
	for _, p := range s.parts {
		if p.dirty && !taken[p.n] && s.opts.Guarantee != None && s.mayPipeline(p) {
			s.issue(&writeJob{parts: []uint32{p.n}})
		}
	}
}

// issue snapshots the state of job's partitions — with job's acks applied,
// for a commit or dead letter — into its write and hands it to the loop.
func (s *subscription) issue(job *writeJob) {
	s.nextJob++
	job.id = s.nextJob
	job.epoch = make(map[uint32]uint32, len(job.parts))
	job.w.Topic, job.w.Subscription, job.w.AckedIDTTL = s.topic, s.sid, s.horizon
	withAttempts := s.persistAttempts()
	for _, part := range job.parts {
		p := s.parts[part]
		st := p.st
		if offs := job.acks[part]; len(offs) > 0 {
			st = p.st.withAcks(offs)
		}
		job.w.Cursors = append(job.w.Cursors, storage.CursorWrite{Partition: part, State: st.appendBinary(nil, withAttempts)})
		job.epoch[part] = p.st.epoch
		job.sends = append(job.sends, p.sends...)
		job.waiters = append(job.waiters, p.waiters...)
		job.w.AckedIDs = append(job.w.AckedIDs, p.ackedIDs...)
		p.sends, p.waiters, p.ackedIDs = nil, nil, nil
		p.writes = append(p.writes, job)
		p.dirty = false
	}
	job.w.AckedIDs = append(job.w.AckedIDs, job.ackedIDs...)
	s.out.writes = append(s.out.writes, job)
}

// mayPipeline reports whether a plain state write of p may be issued now.
// Writes of a partition land in the order they are issued, each with the
// whole state, so several may be in flight — up to maxPipelined, and only
// when deliveries or replies wait for them (acks alone are written behind,
// one at a time). A commit or dead letter is alone in flight: a state
// write issued meanwhile would not hold its acks yet, and would drop them.
func (s *subscription) mayPipeline(p *partition) bool {
	switch {
	case s.now.Before(p.retryWriteAt):
		return false
	case len(p.writes) == 0:
		return true
	case p.writes[0].acks != nil || len(p.writes) >= maxPipelined:
		return false
	}
	return len(p.sends) > 0 || len(p.waiters) > 0
}

// maxPipelined is the most state writes of a partition in flight at once.
const maxPipelined = 4

// writeRetry is how long a partition waits to write again after a write
// failed, and a message whose commit or dead letter failed to be due again.
const writeRetry = time.Second

// settled reports whether everything the subscription holds is stored, or
// its last write failed: nothing is in flight or queued.
func (s *subscription) settled() bool {
	if len(s.queued) > 0 {
		return false
	}
	for _, p := range s.parts {
		if len(p.writes) > 0 || (p.dirty && p.retryWriteAt.IsZero()) {
			return false
		}
	}
	return true
}

// written takes the outcome of a write issued by issue. Outcomes are
// applied in issue order per partition: one that arrives early waits for
// those before it.
func (s *subscription) written(job *writeJob, res [][]storage.AppendResult, err error, now time.Time) {
	job.finished, job.res, job.err = true, res, err
	if len(job.parts) == 0 {
		s.complete(job) // a commit that only publishes holds no partition
	}
	for _, part := range job.parts {
		p := s.parts[part]
		for len(p.writes) > 0 && p.writes[0].finished {
			j := p.writes[0]
			p.writes = p.writes[1:]
			s.complete(j)
		}
	}
	s.step(now)
}

// complete applies a finished write: its acks, sends, waiters and reply.
func (s *subscription) complete(job *writeJob) {
	if job.completed {
		return // a multi-partition job, completed from another partition
	}
	job.completed = true
	err := job.err
	for _, part := range job.parts {
		p := s.parts[part]
		for _, off := range job.acks[part] {
			delete(p.busy, off)
			if err == nil && job.epoch[part] == p.st.epoch {
				s.forget(p, off)
				p.st.cursor.Ack(off)
				if !job.deadLetter {
					s.stats.Acked++ // dead letters are counted apart
				}
			} else if err != nil {
				s.toRetry(p, off, s.now.Add(writeRetry))
			}
		}
		p.retryWriteAt = time.Time{}
		if err != nil {
			// What it held is still to be stored: try again, not at once.
			p.dirty = true
			p.retryWriteAt = s.now.Add(writeRetry)
		}
	}
	for i := range job.sends {
		if c := s.consumer(job.sends[i].Consumer); c != nil {
			c.pendingBytes = max(c.pendingBytes-deliverySize(&job.sends[i]), 0)
		}
	}
	if err == nil {
		for _, d := range job.sends {
			s.send(d)
		}
	} else {
		s.dropSends(job.sends)
	}
	for _, w := range job.waiters {
		w(err)
	}
	if job.done != nil {
		job.done(job.res, err)
	}
}

// dropSends handles deliveries whose write failed: they never went out, so
// their credit is freed; under EFFECTIVELY_ONCE they are due again at once
// (AT_MOST_ONCE loses them, as it may).
func (s *subscription) dropSends(sends []Delivery) {
	for i := range sends {
		d := &sends[i]
		p := s.parts[d.ID.Partition]
		if l, ok := p.inflight.Get(d.ID.Offset); !ok || l.Attempt != d.ID.Attempt {
			continue
		}
		s.release(p, d.ID.Offset)
		if s.opts.Guarantee != AtMostOnce {
			s.toRetry(p, d.ID.Offset, time.Time{})
		}
	}
}

// wantReread notes that off needs its payload read again.
func (s *subscription) wantReread(p *partition, off uint64) {
	if i, found := slices.BinarySearch(p.rereadWant, off); !found {
		p.rereadWant = slices.Insert(p.rereadWant, i, off)
	}
}

// queueRereads asks for the payloads redeliveries wait for: one read per
// partition at a time, of the lowest offsets wanted, spanning at most
// fetchMax offsets.
func (s *subscription) queueRereads() {
	for _, p := range s.parts {
		if p.rereading || len(p.rereadWant) == 0 {
			continue
		}
		from := p.rereadWant[0]
		to := from + 1
		for _, off := range p.rereadWant {
			if off-from >= fetchMax {
				break
			}
			to = off + 1
		}
		p.rereading = true
		s.out.rereads = append(s.out.rereads, reread{part: p.n, from: from, to: to, seq: p.rereadSeq})
	}
}

// reread takes messages read again for redeliveries. A message retention
// removed meanwhile is skipped (skipTo) when the fetch finds it gone.
func (s *subscription) reread(r reread, msgs []storage.Message, err error, now time.Time) {
	p := s.parts[r.part]
	if r.seq != p.rereadSeq {
		return
	}
	p.rereading = false
	for i := range msgs {
		m := &msgs[i]
		if held := p.msgs[m.Offset]; held != nil && held.Payload == nil {
			full := *m
			p.msgs[m.Offset] = &full
		}
	}
	kept := p.rereadWant[:0]
	for _, off := range p.rereadWant {
		if m := p.msgs[off]; m != nil && m.Payload == nil && (off >= r.to || err != nil) {
			kept = append(kept, off)
		}
	}
	p.rereadWant = kept
	var oor *storage.OffsetOutOfRangeError
	if errors.As(err, &oor) && oor.Offset < oor.First {
		s.skipTo(p, oor.First)
	}
	s.step(now)
}

// queueFetches asks for more messages where a partition's buffer runs low
// and someone could take them.
func (s *subscription) queueFetches() {
	if len(s.consumers) == 0 {
		return
	}
	target := fetchMax
	if s.opts.Guarantee == None && !s.anyRoom() {
		return // a NONE partition that waits costs nothing; skipLagging
	}
	if s.opts.Guarantee != None {
		free := 0
		for _, c := range s.consumers {
			free += max(c.credit-c.out, 0)
		}
		target = min(max(free, fetchMin), fetchMax)
	}
	for _, p := range s.parts {
		if p.fetching || len(p.buf) >= target/2 {
			continue
		}
		p.fetching = true
		s.out.fetches = append(s.out.fetches, fetch{part: p.n, from: p.next, max: target - len(p.buf), seq: p.fetchSeq,
			latest: p.behind, ackedIDs: s.opts.Guarantee == EffectivelyOnce})
	}
}

// fetched takes the outcome of a fetch: messages from f.from, and for
// EFFECTIVELY_ONCE which of their ids the subscription already acked
// (those are acked again, not delivered). An *OffsetOutOfRangeError below
// the first retained offset skips what retention removed.
func (s *subscription) fetched(f fetch, msgs []storage.Message, ackedID []bool, err error, now time.Time) {
	p := s.parts[f.part]
	if f.seq != p.fetchSeq {
		return // from before a seek
	}
	p.fetching = false
	var oor *storage.OffsetOutOfRangeError
	switch {
	case errors.As(err, &oor) && oor.Offset < oor.First:
		p.next = oor.First
		if s.opts.Guarantee != None {
			s.skipTo(p, oor.First)
		}
	case err != nil:
		// Try again at the next event; the loop backs off.
	default:
		if f.latest && len(msgs) > 0 && msgs[0].Offset > p.next {
			s.stats.Dropped += msgs[0].Offset - p.next
			p.next = msgs[0].Offset
		}
		if f.latest {
			p.behind = false
		}
		for i := range msgs {
			m := &msgs[i]
			if m.Offset != p.next {
				break
			}
			p.next++
			if i < len(ackedID) && ackedID[i] && !p.st.cursor.Acked(m.Offset) {
				s.forget(p, m.Offset)
				p.st.cursor.Ack(m.Offset)
				p.dirty = true
				s.stats.Skipped++
				continue
			}
			p.buf = append(p.buf, *m)
		}
	}
	s.step(now)
}

// skipTo counts every offset below first as acked: retention removed them.
func (s *subscription) skipTo(p *partition, first uint64) {
	if p.st.cursor.Floor() >= first {
		return
	}
	for off := range p.st.attempts {
		if off < first {
			s.forget(p, off)
		}
	}
	p.st.cursor.Skip(first)
	p.dirty = true
}

// seek moves every partition's cursor to offs: earlier offsets count as
// acked, later ones as not. Outstanding deliveries are dropped and fenced
// off by a new epoch. reply runs once the new cursors are durable.
func (s *subscription) seek(offs []uint64, now time.Time, reply func(error)) {
	touched := map[*partition]bool{}
	for i, p := range s.parts {
		p.inflight = NewInflight()
		p.st.epoch++
		p.st.cursor.Seek(offs[i])
		clear(p.st.attempts)
		clear(p.msgs)
		p.retry, p.buf, p.ackedIDs, p.loadedIDs, p.rereadWant = nil, nil, nil, nil, nil
		p.rereadSeq++
		p.rereading = false
		p.next = offs[i]
		p.fetchSeq++
		p.fetching = false
		p.dirty = true
		touched[p] = true
	}
	clear(s.pins)
	for _, c := range s.consumers {
		c.out = 0
	}
	if s.opts.Guarantee == None {
		s.reply(func() { reply(nil) })
	} else {
		s.afterWrites(touched, reply)
	}
	s.step(now)
}

// statsNow returns the stats with the gauges filled in from heads.
func (s *subscription) statsNow(heads []uint64) Stats {
	st := s.stats
	st.Consumers = len(s.consumers)
	for i, p := range s.parts {
		st.Inflight += p.inflight.Len()
		if s.opts.Guarantee == None {
			continue
		}
		if i < len(heads) && heads[i] > p.st.cursor.Floor() {
			st.Backlog += heads[i] - p.st.cursor.Floor() - uint64(p.st.cursor.Gaps())
		}
		floor := p.st.cursor.Floor()
		var oldest *storage.Message
		if m := p.msgs[floor]; m != nil {
			oldest = m
		} else if len(p.buf) > 0 && p.buf[0].Offset == floor {
			oldest = &p.buf[0]
		}
		if oldest != nil && (st.OldestUnacked.IsZero() || oldest.PublishTime.Before(st.OldestUnacked)) {
			st.OldestUnacked = oldest.PublishTime
		}
	}
	return st
}
