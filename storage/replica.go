package storage

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"

	"github.com/dgraph-io/badger/v4"
)

// A replicated partition (cluster mode) keeps its write path and changes
// where a group goes. Its writer still gathers appends, cursor writes,
// trims and expiry into groups, but instead of committing a group it
// encodes it as an entry (entry.go), with the time and a proposal id, and
// hands it to the partition's Raft group through a Proposer. Every replica,
// the proposing one included, gets the committed entries back through
// Replica.Apply, in log order, and its writer applies each with applyEntry
// in one transaction that also records the entry's index. On the node that
// proposed it, the entry's proposal id finds the requests of the group,
// which are answered with the entry's results: a publish is acknowledged
// once a quorum holds it and this node applied it.
//
// An apply needs no fsync of its own: the entry is durable in the Raft log
// of a quorum, a replica that loses an apply in a power cut finds the
// applied index behind and the entry replayed, and the Raft log is only
// compacted behind a snapshot, which calls Sync first. Under FsyncAlways
// it gets one all the same: Badger's SyncWrites is the whole database's,
// so each entry's apply transaction is synced as it commits — a second
// fsync per entry on every node, and what bounds a cluster's publish rate
// on one disk (docs/benchmarks.md).
//
// A write across partitions cannot be one entry of one group: Write makes
// it in order instead (writeOrdered). A barrier that reaches a replicated
// writer all the same (it became replicated meanwhile) fails with
// ErrReplicatedMulti.

// Proposer hands a partition's entries to its Raft group.
type Proposer interface {
	// Propose appends data to the group's log, in the order of the calls,
	// without blocking on the group. If the entry cannot be appended (this
	// node does not lead the group, the group is stopping) or is not
	// applied as proposed (leadership was lost before it committed),
	// failed is called with why, once — and the entry may still be
	// committed by a later leader, so a failed proposal's outcome is
	// unknown, as a timeout's is. failed must not block on the writer.
	Propose(data []byte, failed func(error))
}

// Leadership is what a Proposer may also tell: whether this node leads
// the partition's group. In a replicated store only the leader runs
// retention (a trim is an entry every replica applies).
type Leadership interface {
	Leads() bool
}

// Replica is a partition's side of its Raft group: what the group's state
// machine calls.
type Replica struct {
	p *Partition
	s *Store // for the topic's subscriptions and dedup window, on Import
}

// Replicate makes topic's partition part a replicated one: from now on its
// writer proposes through proposer what it used to commit. Writes queued
// before the call are committed locally, as before. It returns the
// partition's Replica, whose Applied index the Raft group restarts from.
func (s *Store) Replicate(ctx context.Context, topic string, part uint32, proposer Proposer) (*Replica, error) {
	if proposer == nil {
		return nil, fmt.Errorf("replicate %s/%d: nil proposer: %w", topic, part, ErrInvalidConfig)
	}
	_, p, err := s.partition(topic, part)
	if err != nil {
		return nil, err
	}
	// A partition holding references already (a restart) bounds its log's
	// compaction from the start, before its proposer knows the log.
	refLog, err := s.pinnedLog(p)
	if err != nil {
		return nil, fmt.Errorf("replicate %s/%d: %w", topic, part, err)
	}
	if _, err := p.do(ctx, command{kind: cmdReplicate, proposer: proposer, refLog: refLog}); err != nil {
		return nil, err
	}
	return &Replica{p: p, s: s}, nil
}

// pinnedLog returns the Raft log of the entry p's pinned message references
// (refs.go), loading it, or nil if p pins none.
func (s *Store) pinnedLog(p *Partition) (*RaftLog, error) {
	vis := p.visible.Load()
	if vis.pin == 0 {
		return nil, nil
	}
	var ref entryRef
	err := s.db.View(func(txn *badger.Txn) error {
		it := messageKeys(txn, p.tid, p.part)
		defer it.Close()
		it.Seek(messageSeekKey(p.tid, p.part, vis.pinOff))
		if !it.Valid() {
			return fmt.Errorf("pinned message %d is missing: %w", vis.pinOff, ErrCorrupt)
		}
		return it.Item().Value(func(v []byte) (err error) {
			ref, _, err = decodeMessageRef(v)
			return err
		})
	})
	if err != nil {
		return nil, fmt.Errorf("pinned message %d: %w", vis.pinOff, err)
	}
	return s.RaftLog(ref.group)
}

// Applied is the Raft index of the last entry the partition applied (0 if
// none).
func (r *Replica) Applied() uint64 { return r.p.applied.Load() }

// TopicID returns the id of the partition's topic (Topic.ID).
func (r *Replica) TopicID() uint32 { return r.p.tid }

// Partition returns the partition's number.
func (r *Replica) Partition() uint32 { return r.p.part }

// Sync returns once every entry applied before the call is durable (under
// the fsync policy: with FsyncNever, once it is committed). Apply does not
// sync; a Raft group calls Sync before it compacts its log behind the
// partition's applied index, so no entry leaves the log while its apply
// could still be lost.
func (r *Replica) Sync(ctx context.Context) error {
	st, resume, err := r.p.hold(ctx)
	if err != nil {
		return err
	}
	// Queued while the writer is held, so before Close can close the syncer.
	req := enqueueSync(r.p.sync)
	resume(st)
	if err := req.wait(); err != nil {
		return fmt.Errorf("sync topic %q partition %d: %w", r.p.topic, r.p.part, err)
	}
	// Durable now: the log may be compacted up to the pin of st, not
	// beyond — a later trim not yet synced could be lost and replayed.
	r.p.syncedPin.Store(st.meta.pin)
	return nil
}

// Entry is a committed Raft entry of a partition's group, for Apply.
type Entry struct {
	Index uint64
	Data  []byte
}

// Apply applies committed entries, given in log order, and returns once
// they are applied (an entry at an index already applied is skipped). An
// entry that every replica finds malformed is recorded as applied and
// changes nothing else; an error means an entry could not be applied here
// (the store is closing, a Badger write failed) and the group must not
// move past it: the entries before it may be applied, Applied says how
// far. The entries go in as few transactions as hold them (applyRun).
func (r *Replica) Apply(ctx context.Context, entries []Entry) error {
	if len(entries) == 0 {
		return nil
	}
	_, err := r.p.do(ctx, command{kind: cmdApplyEntry, entries: entries})
	return err
}

// replicate switches the writer to proposing.
func (p *Partition) replicate(st partitionState, r *request) {
	if p.proposer == nil {
		p.refSkip = -1
		p.proposals = make(map[uint64][]*request)
		p.nextProposal = rand.Uint64() >> 1 // ids of another node's proposals are unlikely to meet ours
	}
	p.proposer = r.cmd.proposer
	if lp, ok := r.cmd.proposer.(Leadership); ok {
		p.leadership.Store(&lp)
	}
	p.replicated.Store(true)
	p.applied.Store(st.meta.applied)
	p.syncedPin.Store(st.meta.pin)
	p.pin.Store(st.meta.pin)
	if r.cmd.refLog != nil {
		p.useLog(r.cmd.refLog)
	}
	close(r.done)
}

// entryRef returns where the entry the writer applies at index is, in a
// log of this store, or nil if the writer does not know (yet): the
// proposer may tell it (EntryLog) once its group runs. Asked at every
// entry, so that a log loaded anew (its group dropped and run again) is
// bounded too.
func (p *Partition) entryRef(index uint64) *entryRef {
	if el, ok := p.proposer.(EntryLog); ok {
		if l, skip := el.EntryLog(); l != nil && l.db == p.db && skip >= 0 && skip <= maxEntrySkip {
			p.refSkip = skip
			p.useLog(l)
		}
	}
	if p.refSkip < 0 {
		return nil
	}
	return &entryRef{group: p.refLog.group, index: index, skip: p.refSkip}
}

// useLog makes l, in the partition's store, the log of the partition's
// entries as far as compaction goes: Compact keeps what the synced pin
// says is referenced.
func (p *Partition) useLog(l *RaftLog) {
	if p.refLog == l || l.db != p.db {
		return
	}
	p.refLog = l
	l.retainFrom(p.retained)
}

// propose encodes a group as an entry and proposes it; its requests are
// answered when the entry is applied, or when the proposal fails.
func (p *Partition) propose(group []*request, cmds []*command) {
	p.nextProposal++
	id := p.nextProposal
	data, err := encodeEntry(p.clk.Now(), id, cmds)
	if err != nil {
		for _, r := range group {
			r.err = fmt.Errorf("encode entry: %w", err)
			close(r.done)
		}
		return
	}
	p.proposals[id] = append([]*request(nil), group...)
	p.proposer.Propose(data, func(cause error) {
		// Back through the queue, as proposals belong to the writer, and
		// from a goroutine of its own, as failed must not block on the
		// writer. If the partition closed meanwhile, the writer failed
		// them all already.
		go func() {
			_, _ = p.submit(context.Background(), command{kind: cmdProposalFailed, proposal: id, cause: cause})
		}()
	})
}

// failProposal answers a failed proposal's requests with cause.
func (p *Partition) failProposal(id uint64, cause error) {
	for _, r := range p.proposals[id] {
		r.err = fmt.Errorf("topic %q partition %d: %w", p.topic, p.part, cause)
		close(r.done)
	}
	delete(p.proposals, id)
}

// failProposals answers every pending proposal with cause.
func (p *Partition) failProposals(cause error) {
	for id := range p.proposals {
		p.failProposal(id, cause)
	}
}

// applyEntries applies a run of committed entries, a transaction's worth
// at a time (maxRun), and answers r once every entry is applied and
// published by the store's syncer, or at the first that fails.
func (p *Partition) applyEntries(st partitionState, r *request) partitionState {
	ents := r.cmd.entries
	var last *syncGroup
	for len(ents) > 0 {
		n := p.maxRun(ents)
		next, g, err := p.applyRun(st, ents[:n])
		if err != nil {
			if last != nil {
				p.sync.enqueue(*last)
			}
			r.err = err
			close(r.done)
			return next
		}
		st, ents = next, ents[n:]
		if g != nil {
			if last != nil {
				p.sync.enqueue(*last)
			}
			last = g
		}
	}
	if last == nil { // every entry applied already
		close(r.done)
		return st
	}
	last.reqs = append(last.reqs, r)
	p.sync.enqueue(*last)
	return st
}

// maxRun is how many of ents, from the first, one transaction takes: as
// many as hold at most the committer's bytes of data (at least one). A
// message stored as a reference writes much less than its data, so the
// bound is cautious; a run too big all the same is split (applyRun).
func (p *Partition) maxRun(ents []Entry) int {
	size := len(ents[0].Data)
	n := 1
	for n < len(ents) && size+len(ents[n].Data) <= p.sync.commits.maxBytes {
		size += len(ents[n].Data)
		n++
	}
	return n
}

// applyRun applies ents in one transaction, committed once: under
// FsyncAlways Badger syncs each commit, which an apply does not need (its
// entries are durable in the Raft log), so one commit per run rather than
// per entry is what lets a replica apply as fast as its group commits.
// It enqueues the sync groups of every entry but the last, and returns
// the last's for the caller to answer its request with; nil if every
// entry was applied already. A run too big for a transaction is applied
// in halves; a run with an entry that fails otherwise (malformed, a
// Badger error) is applied again one entry at a time, as the states are
// values and apply deterministic, so that a malformed entry is skipped
// alone and the ones before a failure stay applied.
func (p *Partition) applyRun(st partitionState, ents []Entry) (partitionState, *syncGroup, error) {
	txn := p.db.NewTransaction(true)
	defer txn.Discard()
	next, groups, err := p.applyInTxn(txn, st, ents)
	if err == nil {
		err = p.sync.guard.commit(txn.Commit)
	}
	switch {
	case err == nil:
		return p.pastRun(next, ents, groups)
	case len(ents) == 1 && errors.Is(err, ErrCorrupt):
		return p.skipMalformed(st, ents[0], err)
	case len(ents) == 1:
		return st, nil, fmt.Errorf("apply entry %d: %w", ents[0].Index, err)
	}
	txn.Discard()
	step := 1
	if errors.Is(err, badger.ErrTxnTooBig) {
		step = (len(ents) + 1) / 2
	}
	var last *syncGroup
	for i := 0; i < len(ents); i += step {
		next, g, err := p.applyRun(st, ents[i:min(i+step, len(ents))])
		if err != nil {
			if last != nil {
				p.sync.enqueue(*last)
			}
			return next, nil, err
		}
		st = next
		if g != nil {
			if last != nil {
				p.sync.enqueue(*last)
			}
			last = g
		}
	}
	return st, last, nil
}

// appliedGroup is an entry applied in a run, not committed yet: its sync
// group, and its proposal if this writer proposed it and waits for it.
type appliedGroup struct {
	g        syncGroup
	proposal uint64 // 0: nobody here waits for it
}

// applyInTxn applies ents, one after the other, against txn: each sees
// the ones before it, not committed yet (partitionState.apply). It
// returns the state after the last and one group per entry applied (none
// for an entry applied already).
func (p *Partition) applyInTxn(txn *badger.Txn, st partitionState, ents []Entry) (partitionState, []appliedGroup, error) {
	var groups []appliedGroup
	for _, e := range ents {
		next, a, err := st.applyEntry(txn, p.entryRef(e.Index), e.Index, e.Data)
		if errors.Is(err, errApplied) {
			continue
		}
		if err != nil {
			return st, nil, err
		}
		reqs := p.proposals[a.proposal]
		claimed := slices.ContainsFunc(groups, func(ag appliedGroup) bool { return ag.proposal == a.proposal })
		if len(reqs) != len(a.cmds) || claimed {
			// Not proposed here (or failed here first, or skipped, or
			// committed twice and answered by the first): nobody waits
			// for the results, but the messages go to the tail cache.
			reqs, a.proposal = nil, 0
		}
		g := p.syncGroupOf(st, next, reqs, a.cmds, a.results)
		g.wrote = false // durable in the Raft log already
		groups = append(groups, appliedGroup{g: g, proposal: a.proposal})
		st = next
	}
	return st, groups, nil
}

// pastRun takes the writer past a committed run of entries, which took it
// to next: the proposals answered leave the pending ones, every group but
// the last is enqueued with the syncer, and the last returned.
func (p *Partition) pastRun(next partitionState, ents []Entry, groups []appliedGroup) (partitionState, *syncGroup, error) {
	next.committed()
	p.applied.Store(ents[len(ents)-1].Index)
	p.pin.Store(next.meta.pin)
	for _, ag := range groups {
		if ag.proposal != 0 {
			delete(p.proposals, ag.proposal)
		}
	}
	if len(groups) == 0 {
		return next, nil, nil
	}
	for _, ag := range groups[:len(groups)-1] {
		p.sync.enqueue(ag.g)
	}
	return next, &groups[len(groups)-1].g, nil
}

// skipMalformed records a malformed entry, which every replica finds so,
// as applied, in a transaction of its own.
func (p *Partition) skipMalformed(st partitionState, e Entry, cause error) (partitionState, *syncGroup, error) {
	p.log.Error("replicated entry is malformed; skipped", "topic", p.topic, "partition", p.part, "index", e.Index, "err", cause)
	txn := p.db.NewTransaction(true)
	defer txn.Discard()
	next, err := st.skipEntry(txn, e.Index)
	if err == nil {
		err = p.sync.guard.commit(txn.Commit)
	}
	if err != nil {
		return st, nil, fmt.Errorf("apply entry %d: %w", e.Index, err)
	}
	g := p.syncGroupOf(st, next, nil, nil, nil)
	g.wrote = false
	return p.pastRun(next, []Entry{e}, []appliedGroup{{g: g}})
}
