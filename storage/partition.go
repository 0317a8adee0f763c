package storage

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dgraph-io/badger/v4"

	"github.com/ferrymq/ferry/internal/clock"
	"github.com/ferrymq/ferry/internal/failpoint"
)

// Partition is one partition's write path: a queue of commands and the one
// goroutine that applies them. The writer gathers whatever is queued into a
// group, applies it in one Badger transaction (shared with other
// partitions' groups committing at the time: commit.go), hands the group to
// the store's syncer (one fsync for every partition's groups), and moves on to
// the next group while the sync runs. Requests are answered once the sync
// covering them is done, in the order they were queued.
//
// An idle partition costs a few hundred bytes, not a goroutine and a
// queue: the writer is started by the first command queued and exits once
// the queue is empty (and no proposal of its waits for its entry), leaving
// its state in the partition for the next one. The queue is a slice that
// grows with what waits, up to Options.QueueLength, and is let go when
// empty.
type Partition struct {
	topic string
	tid   uint32
	part  uint32
	db    *badger.DB
	clk   clock.Clock
	log   *slog.Logger
	sync  *syncer
	opts  *Options

	dedupWindow time.Duration // for rebuilding the dedup index on first write

	queueMu sync.Mutex // guards closed, pending, room, running, waiting, exited and idle
	closed  bool
	pending []*request     // queued for the writer, oldest first; at most opts.QueueLength
	room    chan struct{}  // closed when the writer takes from a full queue; nil if nobody waits
	running bool           // a writer goroutine runs
	waiting bool           // the running writer waits on wake for a command
	wake    chan struct{}  // capacity 1: a command for the waiting writer
	exited  chan struct{}  // closed when the running writer exits; nil if none runs
	idle    partitionState // the state while no writer runs

	// visible is the state as of the last durable group: reads, stats and
	// retention see only synced data.
	visible atomic.Pointer[partitionMeta]
	tail    *tailCache
	sweptTo atomic.Uint64 // where the next sweep below first starts (sweep.go)

	notifyMu sync.Mutex    // guards notify
	notify   chan struct{} // closed when visible changes; nil once closed for good

	// Replication (replica.go), owned by the writer: once a proposer is
	// set, groups are proposed as entries and answered when applied.
	proposer     Proposer
	nextProposal uint64                     // the last proposal id given; starts random
	proposals    map[uint64][]*request      // proposed, not yet applied or failed
	applied      atomic.Uint64              // the Raft index of the last entry applied
	replicated   atomic.Bool                // a proposer is set (read by Write)
	leadership   atomic.Pointer[Leadership] // the proposer's, if it tells (read by retention)
	// refLog is the log the partition's entries are in, once known
	// (EntryLog, or a reference already stored), and refSkip the bytes of
	// the group's header in their data, -1 until the proposer tells it:
	// applied messages are then stored as references to the entries.
	refLog  *RaftLog
	refSkip int
	// syncedPin is the pin (refs.go) as of the last Replica.Sync, or as
	// loaded, and pin the pin as of the last entry applied: refLog keeps
	// the entries from the lower of the two that is not 0 (retained).
	syncedPin, pin atomic.Uint64
}

// retained is the index of the oldest entry of refLog the partition's
// messages may reference, 0 if none: the pin as of the last sync — a trim
// applied since may be lost in a power cut, and replayed — or, if that
// says none, the pin since, as references applied since may be lost but
// are read meanwhile.
func (p *Partition) retained() uint64 {
	synced, now := p.syncedPin.Load(), p.pin.Load()
	if synced == 0 || now != 0 && now < synced {
		return now
	}
	return synced
}

// request is a queued command and, once done is closed, its outcome.
type request struct {
	cmd  command
	res  result
	err  error
	done chan struct{}
}

// Pending is an append that was queued and may not be durable yet.
type Pending struct{ r *request }

// Wait blocks until the append is durable or failed, or ctx ends. A ctx that
// ends first leaves the append queued: it may still be stored.
func (p *Pending) Wait(ctx context.Context) ([]AppendResult, error) {
	select {
	case <-p.r.done:
		return p.r.res.appended, p.r.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// Done is closed once the append is durable or failed.
func (p *Pending) Done() <-chan struct{} { return p.r.done }

// newPartition makes a partition on st; its writer starts with the first
// command. If st has no dedup index, the writer first rebuilds it from the
// log with dedupWindow, and appends wait for that; reads do not.
func newPartition(topic string, st partitionState, dedupWindow time.Duration, db *badger.DB, sy *syncer, opts *Options, tails *tailBudget) *Partition {
	p := &Partition{
		topic:       topic,
		tid:         st.tid,
		part:        st.part,
		db:          db,
		clk:         opts.Clock,
		log:         opts.Logger,
		sync:        sy,
		opts:        opts,
		dedupWindow: dedupWindow,
		wake:        make(chan struct{}, 1),
		idle:        st,
		tail:        newTailCache(opts.TailCacheBytes, tails),
		notify:      make(chan struct{}),
	}
	m := st.meta
	p.visible.Store(&m)
	return p
}

// submit queues cmd for the writer, starting it if none runs. It blocks
// while the queue is full. Once ctx has ended it fails, every time: a
// caller queueing a stream's batches in order must never see an earlier one
// refused and a later one stored — a later message of a key ahead of an
// earlier one once the earlier is sent again.
func (p *Partition) submit(ctx context.Context, cmd command) (*request, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	r := &request{cmd: cmd, done: make(chan struct{})}
	p.queueMu.Lock()
	for !p.closed && len(p.pending) >= p.opts.QueueLength {
		if p.room == nil {
			p.room = make(chan struct{})
		}
		room := p.room
		p.queueMu.Unlock()
		select {
		case <-room:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		p.queueMu.Lock()
	}
	defer p.queueMu.Unlock()
	if p.closed {
		return nil, ErrClosed
	}
	p.pending = append(p.pending, r)
	switch {
	case !p.running:
		p.running = true
		p.exited = make(chan struct{})
		go p.run(p.idle, p.exited)
		p.idle = partitionState{}
	case p.waiting:
		p.waiting = false
		p.wake <- struct{}{}
	}
	return r, nil
}

// next takes the oldest queued command for the writer. If the queue is
// empty, it returns ok false when the writer should exit: the partition is
// closed, or (wait true) nothing else is owed to the writer — st is then
// kept for the next writer. Otherwise, with wait, it waits for a command;
// without, it returns ok false.
func (p *Partition) next(st partitionState, wait bool) (r *request, ok bool) {
	p.queueMu.Lock()
	defer p.queueMu.Unlock()
	for len(p.pending) == 0 {
		if !wait {
			return nil, false
		}
		if p.closed || len(p.proposals) == 0 {
			p.stop(st)
			return nil, false
		}
		// A proposal waits for its entry or its failure, both of which
		// come through the queue.
		p.waiting = true
		p.queueMu.Unlock()
		<-p.wake
		p.queueMu.Lock()
	}
	r = p.pending[0]
	p.pending[0] = nil
	p.pending = p.pending[1:]
	if len(p.pending) == 0 {
		p.pending = nil // let the backing array go
	}
	if p.room != nil {
		close(p.room)
		p.room = nil
	}
	return r, true
}

// stop records that the writer exits with st; p.queueMu must be held.
func (p *Partition) stop(st partitionState) {
	if p.closed {
		p.failProposals(ErrClosed)
	}
	p.idle = st
	p.running = false
	close(p.exited)
	p.exited = nil
}

// do submits cmd and waits for its outcome.
func (p *Partition) do(ctx context.Context, cmd command) (result, error) {
	r, err := p.submit(ctx, cmd)
	if err != nil {
		return result{}, err
	}
	select {
	case <-r.done:
		return r.res, r.err
	case <-ctx.Done():
		return result{}, ctx.Err()
	}
}

// close stops taking commands, lets the writer finish every queued one and
// waits for it. Safe to call more than once.
func (p *Partition) close() {
	p.queueMu.Lock()
	p.closed = true
	if p.room != nil {
		close(p.room)
		p.room = nil
	}
	if p.waiting {
		p.waiting = false
		p.wake <- struct{}{}
	}
	exited := p.exited
	p.queueMu.Unlock()
	if exited != nil {
		<-exited
	}
	p.notifyMu.Lock()
	if p.notify != nil {
		close(p.notify)
		p.notify = nil
	}
	p.notifyMu.Unlock()
}

// dedupLoaded reports whether the partition may hold dedup ids in memory:
// its writer runs, or the state it left has ids. Retention skips expiry on
// a partition that has none, so as not to start its writer.
func (p *Partition) dedupLoaded() bool {
	p.queueMu.Lock()
	defer p.queueMu.Unlock()
	return p.running || (p.idle.dedup != nil && p.idle.dedup.len() > 0)
}

// publish makes a durable group visible: its messages go into the tail
// cache, then the new state is published and waiters are woken.
func (p *Partition) publish(meta *partitionMeta, msgs []Message, sizes []int) {
	p.tail.append(msgs, sizes)
	p.tail.trim(meta.first)
	p.visible.Store(meta)
	p.notifyMu.Lock()
	if p.notify != nil {
		close(p.notify)
		p.notify = make(chan struct{})
	}
	p.notifyMu.Unlock()
}

// waitHead blocks until the visible head is beyond off, and returns it.
func (p *Partition) waitHead(ctx context.Context, off uint64) (uint64, error) {
	for {
		p.notifyMu.Lock()
		ch := p.notify
		p.notifyMu.Unlock()
		if head := p.visible.Load().head; head > off {
			return head, nil
		}
		if ch == nil {
			return 0, ErrClosed
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
}

// run is the writer loop. It owns st until it exits, closing exited.
func (p *Partition) run(st partitionState, exited chan struct{}) {
	if st.dedup == nil {
		var err error
		st.dedup, err = openDedup(p.db, p.tid, p.part, st.meta, p.clk.Now(), p.dedupWindow)
		if err != nil {
			p.log.Error("partition dedup index rebuild failed; refusing writes", "topic", p.topic, "partition", p.part, "err", err)
			st.dedup = nil // the next writer tries again
			for r, ok := p.next(st, true); ok; r, ok = p.next(st, true) {
				r.err = fmt.Errorf("rebuild dedup index: %w", err)
				close(r.done)
			}
			return
		}
		p.log.Debug("partition dedup index opened", "topic", p.topic, "partition", p.part, "ids", st.dedup.len())
	}
	var group []*request
	var cmds []*command
	for r, ok := p.next(st, true); ok; r, ok = p.next(st, true) {
		var parked *request // a control command that ended the group
		if r.cmd.control() {
			st = p.control(st, r)
			continue
		}
		group = append(group[:0], r)
		size := r.cmd.size
		for len(group) < p.opts.MaxGroupAppends && size < p.opts.MaxGroupBytes {
			r, ok := p.next(st, false)
			if !ok {
				break
			}
			if r.cmd.control() {
				parked = r
				break
			}
			group = append(group, r)
			size += r.cmd.size
		}
		if p.proposer != nil {
			group = p.skipUndueExpiries(st, group)
		}
		cmds = cmds[:0]
		for _, r := range group {
			cmds = append(cmds, &r.cmd)
		}
		switch {
		case len(group) == 0:
		case p.proposer != nil:
			p.propose(group, cmds)
		case p.opts.Replicated:
			for _, r := range group {
				r.err = fmt.Errorf("topic %q partition %d: %w", p.topic, p.part, ErrNotReplicated)
				close(r.done)
			}
		default:
			st = p.commit(st, group, cmds)
		}
		clear(group) // answered: let the requests go
		if parked != nil {
			st = p.control(st, parked)
		}
	}
}

// skipUndueExpiries answers, without proposing them, the expiries of group
// that would forget nothing (expiryDue), and returns the rest: retention
// asks every partition that holds ids at every pass, and an entry would
// wake a resting group on every node for nothing.
func (p *Partition) skipUndueExpiries(st partitionState, group []*request) []*request {
	kept := group[:0]
	for _, r := range group {
		if r.cmd.kind == cmdExpireDedup {
			due, err := st.expiryDue(p.db, p.clk.Now(), r.cmd.dedupWindow)
			if err == nil && !due {
				close(r.done) // nothing to forget: result zero, no more
				continue
			}
		}
		kept = append(kept, r)
	}
	clear(group[len(kept):])
	return kept
}

// control handles a command the writer acts on itself.
func (p *Partition) control(st partitionState, r *request) partitionState {
	switch r.cmd.kind {
	case cmdBarrier:
		if p.proposer != nil {
			r.err = fmt.Errorf("topic %q partition %d: %w", p.topic, p.part, ErrReplicatedMulti)
			close(r.done)
			return st
		}
		return p.park(st, r)
	case cmdReplicate:
		p.replicate(st, r)
	case cmdApplyEntry:
		return p.applyEntries(st, r)
	case cmdProposalFailed:
		p.failProposal(r.cmd.proposal, r.cmd.cause)
		close(r.done)
	case cmdHold:
		return p.park(st, r)
	default:
		r.err = fmt.Errorf("command kind %d: %w", r.cmd.kind, ErrCorrupt)
		close(r.done)
	}
	return st
}

// park hands st to the multi-partition write that queued r and waits for
// the state after it (write.go). Commands queued behind r wait too, so
// nothing else touches the partition meanwhile.
func (p *Partition) park(st partitionState, r *request) partitionState {
	r.cmd.barrier.held <- st
	st = <-r.cmd.barrier.resume
	close(r.done)
	return st
}

// hold parks the writer, replicated or not, and returns its state and the
// function that hands the writer the state to go on from, to be called
// once. Meanwhile the caller owns the partition's state, its Badger keys
// and its pending proposals: nothing else is applied.
func (p *Partition) hold(ctx context.Context) (partitionState, func(partitionState), error) {
	b := &barrier{held: make(chan partitionState, 1), resume: make(chan partitionState, 1)}
	r, err := p.submit(ctx, command{kind: cmdHold, barrier: b})
	if err != nil {
		return partitionState{}, nil, err
	}
	select {
	case st := <-b.held:
		return st, func(next partitionState) {
			b.resume <- next
			<-r.done
		}, nil
	case <-r.done: // the writer failed before it got there
		if r.err != nil {
			return partitionState{}, nil, r.err
		}
		return partitionState{}, nil, ErrClosed
	}
}

// commit has the store's committer apply one group, commit it (with other
// partitions' groups) and pass it to the syncer. A group too big for one
// transaction is split and each command committed alone.
func (p *Partition) commit(st partitionState, group []*request, cmds []*command) partitionState {
	size := 0
	for _, c := range cmds {
		size += c.size
	}
	next, err := p.sync.commits.do(p, st, group, cmds, size)
	if errors.Is(err, badger.ErrTxnTooBig) && len(group) > 1 {
		for i := range group {
			st = p.commit(st, group[i:i+1], cmds[i:i+1])
		}
		return st
	}
	if err != nil {
		p.log.Error("partition commit failed", "topic", p.topic, "partition", p.part, "err", err)
		for _, r := range group {
			r.err = fmt.Errorf("commit: %w", err)
			close(r.done)
		}
		return st
	}
	return next
}

// syncGroupOf is the sync group of cmds, which took the partition from st
// to next with results: the messages they stored go to the tail cache once
// the group is durable, and reqs, the requests of cmds (none for an entry
// another node proposed), are answered with their results.
func (p *Partition) syncGroupOf(st, next partitionState, reqs []*request, cmds []*command, results []result) syncGroup {
	g := syncGroup{p: p, reqs: append([]*request(nil), reqs...)}
	for i, r := range reqs {
		r.res = results[i]
		if err := results[i].err; err != nil {
			r.err = fmt.Errorf("topic %q partition %d: %w", p.topic, p.part, err)
		}
	}
	for i, c := range cmds {
		g.wrote = g.wrote || c.writes()
		for j, a := range results[i].appended {
			if a.Duplicate {
				continue
			}
			g.msgs = append(g.msgs, cachedMessage(&c.msgs[j], p.part, a.Offset, results[i].at))
			g.sizes = append(g.sizes, results[i].sizes[j])
		}
	}
	meta := next.meta
	g.meta = &meta
	g.wrote = g.wrote || !meta.equal(st.meta)
	return g
}

func (p *Partition) applyTxn(st partitionState, cmds []*command) (partitionState, []result, error) {
	txn := p.db.NewTransaction(true)
	defer txn.Discard()
	next, results, err := st.apply(txn, cmds, p.clk.Now())
	if err != nil {
		return st, nil, err
	}
	failpoint.Hit("partition-before-commit")
	if err := p.sync.guard.commit(txn.Commit); err != nil {
		return st, nil, err
	}
	return next, results, nil
}

// syncGroup is a committed group waiting for the fsync that makes it durable.
type syncGroup struct {
	p     *Partition     // nil for a Raft log's write: nothing to publish
	meta  *partitionMeta // the partition's state after the group
	wrote bool           // the group changed the log (else, e.g., duplicates only)
	reqs  []*request
	msgs  []Message // the messages the group stored, for the tail cache
	sizes []int     // their record sizes
}

// cachedMessage is m as stored at off and as Read returns it from Badger:
// empty keys and headers are nil, an empty payload is not.
func cachedMessage(m *Message, part uint32, off uint64, t time.Time) Message {
	c := Message{ID: m.ID, Key: m.Key, Payload: m.Payload, Headers: m.Headers, Partition: part, Offset: off, PublishTime: t}
	if len(c.Key) == 0 {
		c.Key = nil
	}
	if c.Payload == nil {
		c.Payload = []byte{}
	}
	if len(c.Headers) == 0 {
		c.Headers = nil
	}
	return c
}
