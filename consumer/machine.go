package consumer

import (
	"fmt"
	"slices"
	"sync/atomic"
	"time"

	"github.com/ferrymq/ferry/storage"
)

// machine is the delivery engine of one subscription: a deterministic
// state machine, like etcd-raft's RawNode. Its methods take events (a
// consumer attached, credit, acks, fetched messages, a write done, a tick,
// with the time) and queue effects in out (deliveries to send, reads and
// writes to do, replies to give); the Engine's loop (loop.go) does the I/O
// and feeds the results back. It reads no clock, starts no goroutine and is
// not safe for concurrent use.
//
// This file holds its state and the events of consumers and the clock
// (attach, setCredit, detach, tick, seek); its methods spread over files by
// story: dispatch.go (who gets which message), flow.go (credit and
// queues), acks.go (ack, nack, extend, dead letters), commit.go, writes.go
// (its state to the log), fetch.go (the log to its buffers) and retry.go.
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
