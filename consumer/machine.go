package consumer

import (
	"fmt"
	"hash/fnv"
	"slices"
	"sync/atomic"
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

// machine is the delivery engine of one subscription: a deterministic
// state machine, like etcd-raft's RawNode. Its methods take events (a
// consumer attached, credit, acks, fetched messages, a write done, a tick,
// with the time) and queue effects in out (deliveries to send, reads and
// writes to do, replies to give); the Engine's loop (loop.go) does the I/O
// and feeds the results back. It reads no clock, starts no goroutine and is
// not safe for concurrent use.
type machine struct {
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
	// epoch is the owner epoch its writes carry (storage.Write.Epoch):
	// given by an Owner log when the subscription was loaded; 0 else.
	epoch uint64
	// committing maps the ids of commits in flight to their job; commits
	// remembers the ids of landed ones, for the whole engine, under num
	// (commit.go, commit_memory.go).
	committing map[DeliveryID]*writeJob
	commits    *commitMemory
	num        uint64

	stats Stats
	out   output
	// now is the time of the last step: redeliveries due by then wait for
	// credit or their key, not for a timer (see nextDeadline).
	now time.Time
}

// partition is a subscription's delivery state in one partition.
type partition struct {
	n        uint32
	st       *cursorRecord // what is stored: cursor, epoch, attempts
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
	waiters      []*waiter  // replies waiting for the next write
	ackedIDs     []string   // EFFECTIVELY_ONCE: ids acked since the last write
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
	// closing is its Consumer's flag, set when its stream ends, before
	// the detach reaches the loop; nil: never (the core's own tests).
	closing *atomic.Bool
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
	id    uint64
	parts []uint32
	epoch map[uint32]uint32 // each partition's epoch when the job was made
	acks  map[uint32][]uint64
	// ids, leases and joined are a commit's: the ids it acks, the
	// outstanding deliveries it took, and retries waiting for its outcome.
	ids        []DeliveryID
	sum        uint64 // sumAppends of w.Appends
	leases     []commitLease
	joined     []callID // retries of the commit, answered with its outcome
	deadLetter bool     // a dead letter's write, not a commit's
	// ackedIDs are the ids of the messages it acks, for the acked-id
	// horizon (EFFECTIVELY_ONCE).
	ackedIDs []string
	w        storage.Write
	// sends and waiters of the partitions, taken when the write is issued:
	// they wait for it to be durable.
	sends   []Delivery
	waiters []*waiter
	// call is the commit's caller, answered with its outcome (0: none, a
	// dead letter or a plain state write).
	call callID

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

// callID names a caller waiting for the machine's answer to an ack, a
// commit or a seek: the loop picks it (from 1; 0 is no caller) when it
// hands the call to the machine, and gives the caller the reply that
// carries it.
type callID uint64

// reply is the machine's answer to a call, plain data the loop resolves:
// an ack's results, a commit's append results, and the error of the write
// the answer waited for (or why a commit was refused).
type reply struct {
	call    callID
	results []error                  // an ack's: per id, nil if it was taken
	res     [][]storage.AppendResult // a commit's
	err     error
}

// waiter is a reply that waits for the writes of one or more partitions:
// it goes out once left reaches 0, with the first write's error.
type waiter struct {
	reply
	left int
}

// output is what the machine asks its loop to do. The loop takes it
// after every event.
type output struct {
	sends   []Delivery
	rereads []reread
	fetches []fetch
	writes  []*writeJob
	replies []reply
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

func newMachine(topic, name string, sid uint32, opts Options, states []*cursorRecord, heads []uint64,
	route func(string, *storage.Message) (uint32, error)) *machine {
	s := &machine{topic: topic, name: name, sid: sid, opts: opts, route: route, pins: make(map[uint64]*pin),
		byID: make(map[uint64]*consumerState), queueBytes: DefaultQueueBytes,
		committing: make(map[DeliveryID]*writeJob), commits: newCommitMemory(0), num: subNumbers.Add(1)}
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
func (s *machine) durableSends() bool {
	return s.opts.Guarantee == AtMostOnce || s.persistAttempts()
}

// persistAttempts reports whether attempts are part of the stored state.
func (s *machine) persistAttempts() bool {
	return s.opts.Guarantee == EffectivelyOnce || s.opts.MaxDeliveries > 0
}

func (s *machine) consumer(id uint64) *consumerState { return s.byID[id] }

// attach adds consumer id with credit.
func (s *machine) attach(id uint64, credit int, now time.Time) error {
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
func (s *machine) setCredit(id uint64, credit int, now time.Time) error {
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
func (s *machine) detach(id uint64, now time.Time) {
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
func (s *machine) step(now time.Time) {
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
func (s *machine) pick(m *storage.Message) *consumerState {
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
func (s *machine) rendezvous(h uint64) *consumerState {
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
func (s *machine) dispatch(now time.Time) {
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
func (s *machine) hold(m *storage.Message, blocked map[uint64]bool) bool {
	if s.opts.Type == KeyShared && len(m.Key) > 0 {
		blocked[keyHash(m.Key)] = true
		return false
	}
	return true
}

func (s *machine) isBlocked(m *storage.Message, blocked map[uint64]bool) bool {
	return len(blocked) > 0 && len(m.Key) > 0 && blocked[keyHash(m.Key)]
}

func (s *machine) dispatchRetries(p *partition, now time.Time, blocked map[uint64]bool, stalled *bool) {
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

func (s *machine) dispatchBuffer(p *partition, now time.Time, blocked map[uint64]bool) {
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
func (s *machine) deliver(p *partition, c *consumerState, m *storage.Message, now time.Time) {
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
func (s *machine) pinKey(p *partition, off uint64) (uint64, bool) {
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
func (s *machine) pinTo(p *partition, off uint64, consumer uint64) {
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
func (s *machine) unpin(p *partition, off uint64) {
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
func (s *machine) toRetry(p *partition, off uint64, notBefore time.Time) {
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
func (s *machine) release(p *partition, off uint64) {
	if l, ok := p.inflight.Remove(off); ok {
		s.released(p, l)
	}
}

// released frees what lease l held, once it is out of p.inflight: its key
// and its consumer's credit.
func (s *machine) released(p *partition, l Lease) {
	s.unpin(p, l.Offset)
	if c := s.consumer(l.Consumer); c != nil {
		c.out--
	}
}

// forget drops what is held for an acked off.
func (s *machine) forget(p *partition, off uint64) {
	s.release(p, off)
	delete(p.st.attempts, off)
	delete(p.msgs, off)
	delete(p.loadedIDs, off)
	if i, found := slices.BinarySearch(p.retry, off); found {
		p.retry = slices.Delete(p.retry, i, i+1)
	}
}

// answer queues r for the loop to hand to its caller.
func (s *machine) answer(r reply) {
	if r.call != 0 {
		s.out.replies = append(s.out.replies, r)
	}
}

// tick makes what is due due: outstanding deliveries past their deadline
// are redelivered (AT_MOST_ONCE only frees the credit).
func (s *machine) tick(now time.Time) {
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
func (s *machine) nextDeadline() (time.Time, bool) {
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

// maxPipelined is the most state writes of a partition in flight at once.
const maxPipelined = 4

// writeRetry is how long a partition waits to write again after a write
// failed, and a message whose commit or dead letter failed to be due again.
const writeRetry = time.Second

// seek moves every partition's cursor to offs: earlier offsets count as
// acked, later ones as not. Outstanding deliveries are dropped and fenced
// off by a new epoch. call is answered once the new cursors are durable.
func (s *machine) seek(call callID, offs []uint64, now time.Time) {
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
		s.answer(reply{call: call})
	} else {
		s.afterWrites(touched, reply{call: call})
	}
	s.step(now)
}

// statsNow returns the stats with the gauges filled in from heads.
func (s *machine) statsNow(heads []uint64) Stats {
	st := s.stats
	st.Consumers = len(s.consumers)
	for i, p := range s.parts {
		st.Inflight += p.inflight.Len()
		if s.opts.Guarantee == None {
			continue
		}
		if i < len(heads) {
			st.Backlog += p.st.backlog(heads[i])
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
