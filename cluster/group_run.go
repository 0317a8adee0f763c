package cluster

// A group's loop: run takes one event at a time, steps the RawNode and
// handles every Ready that follows — save, send, hand to the applier,
// Advance — until Host.Close or a failure.

import (
	"errors"
	"fmt"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
)

// run is the group's loop: it takes one event (a tick, messages,
// proposals, a snapshot, a control call or the transport's reports), then
// handles every Ready that follows, until Host.Close or a failure.
//
// Each Ready is handled in the order raft's docs give for synchronous
// storage writes: save the hard state, entries and snapshot (durable on
// return), send the messages (a leader sends first: see handleReadies),
// hand the committed entries to the applier, Advance. The loop does not
// wait for them to apply (group_apply.go).
func (g *Group) run() {
	if snap := g.restoreOpen; snap != nil {
		g.restoreOpen = nil
		if err := g.restoreFromPeers(g.sm.(peerRestorer), snap); err != nil {
			g.fail(err)
			return
		}
	}
	g.ap.start()
	for {
		propc, progress := g.propq.ready, (<-chan struct{})(nil)
		if g.applyFull(nil) {
			propc, progress = nil, g.ap.progress // until the applier catches up
		}
		select {
		case <-g.stopc:
			g.stop(fmt.Errorf("group %d: %w", g.id, ErrClosed))
			return
		case <-g.tickc:
			g.onTick()
		case <-g.recvq.ready:
			for range maxStepBatch {
				m, ok := g.recvq.pop()
				if !ok {
					break
				}
				g.step(m)
			}
			g.recvq.more()
		case <-propc:
			if p, ok := g.propq.pop(); ok {
				g.propose(p)
			}
			g.propq.more()
		case s := <-g.snapc:
			g.wake(s.m.GetFrom())
			g.snapFrom = s.m.GetFrom()
			s.done <- g.rn.Step(s.m)
		case f := <-g.ctrlc:
			f()
		case <-g.reportc:
			g.takeReports()
		case <-progress:
		case <-g.ap.failed:
			g.fail(g.ap.failure())
			return
		case t := <-g.ap.taken:
			if err := g.saveSnapshot(t); err != nil {
				g.fail(err)
				return
			}
		}
		if err := g.handleReadies(); err != nil {
			g.fail(err)
			return
		}
		g.observe()
	}
}

// fail stops the loop on err: with ErrClosed if the host is closing (a
// restore from peers gave up), else with ErrGroupFailed.
func (g *Group) fail(err error) {
	if errors.Is(err, errStopping) {
		g.stop(fmt.Errorf("group %d: %w", g.id, ErrClosed))
		return
	}
	g.log.Error("raft group failed; it stops", "err", err)
	g.stop(fmt.Errorf("group %d: %w: %w", g.id, ErrGroupFailed, err))
}

// step steps an inbound message. Raft refuses some on its own (a response
// from a node that is not a member); they are dropped.
func (g *Group) step(m *raftpb.Message) {
	if isQuiesceBeat(m) {
		g.stepQuiesceBeat(m)
		return
	}
	g.wake(m.GetFrom())
	g.heard(m.GetFrom())
	if g.h.refuses(g.id, m) || g.applyFull(m) {
		return // dropped: no room for it (diskgate.go, group_apply.go)
	}
	if err := g.rn.Step(m); err != nil {
		g.log.Debug("raft message not stepped", "from", m.GetFrom(), "type", m.GetType().String(), "err", err)
	}
}

// propose takes first and whatever else is queued, up to a batch, and
// appends them as one MsgProp: on a leader they are saved together.
func (g *Group) propose(first *proposal) {
	batch := []*proposal{first}
	size := len(first.data)
	for len(batch) < maxProposeBatch && size < maxProposeBytes {
		p, ok := g.propq.pop()
		if !ok {
			break
		}
		batch = append(batch, p)
		size += len(p.data)
	}
	g.wake(0)
	st := g.rn.BasicStatus()
	forwarded := st.RaftState != raft.StateLeader
	if forwarded && (!g.h.opts.ForwardProposals || st.Lead == 0) {
		err := &NotLeaderError{Group: g.id, Leader: st.Lead}
		for _, p := range batch {
			p.finish(0, err)
		}
		return
	}
	ents := make([]*raftpb.Entry, len(batch))
	for i, p := range batch {
		ents[i] = &raftpb.Entry{Data: p.data}
	}
	err := g.rn.Step(&raftpb.Message{Type: raftpb.MsgProp.Enum(), From: new(g.node), Entries: ents})
	if err != nil {
		if errors.Is(err, raft.ErrProposalDropped) {
			err = ErrProposalDropped
		}
		err = fmt.Errorf("group %d: %w", g.id, err)
		for _, p := range batch {
			p.finish(0, err)
		}
		return
	}
	// observe failed the proposals of an earlier term or leader, so all
	// pending ones are of this term and leader.
	g.pendTerm, g.pendLead = st.GetTerm(), st.Lead
	for _, p := range batch {
		p.data = nil // raft has its own copy
		if forwarded {
			p.forwardedAt = g.ticks + 1
		}
		g.pending[p.seq] = p
	}
}

// expireForwarded fails the proposals forwarded to the leader that have
// not come back in an append within forwardTimeoutTicks: the leader may
// have dropped them (it does so silently while it transfers leadership,
// or when too much is uncommitted), or the message was lost.
func (g *Group) expireForwarded() {
	limit := uint64(forwardTimeoutElections * g.h.opts.ElectionTicks)
	var err error
	for seq, p := range g.pending {
		if p.forwardedAt == 0 || p.index != 0 || g.ticks-(p.forwardedAt-1) < limit {
			continue
		}
		if err == nil {
			err = fmt.Errorf("group %d: forwarded to leader %d, not appended within %d ticks: %w", g.id, g.pendLead, limit, ErrLeadershipLost)
		}
		delete(g.pending, seq)
		p.finish(0, err)
	}
}

// takeReports passes the transport's reports to the RawNode.
func (g *Group) takeReports() {
	g.reportsMu.Lock()
	unreachable, snaps, peers := g.unreachable, g.snapReports, g.peers
	g.unreachable, g.snapReports, g.peers = make(map[uint64]struct{}), nil, nil
	g.reportsMu.Unlock()
	if len(unreachable) > 0 || len(snaps) > 0 {
		g.wake(0) // a follower's progress changed: re-check before quiescing
	}
	if len(peers) > 0 {
		g.peersChanged(peers)
	}
	for to := range unreachable {
		g.rn.ReportUnreachable(to)
	}
	for _, r := range snaps {
		g.rn.ReportSnapshot(r.to, r.st)
	}
}

// handleReadies handles Readies until the RawNode has none.
func (g *Group) handleReadies() error {
	for g.rn.HasReady() {
		rd := g.rn.Ready()
		// A leader sends before it saves, so its followers write the
		// entries while it does (raft's doc, step 2; the thesis,
		// 10.2.1): it counts itself towards the quorum only once Advance
		// tells it its own write is done. Anyone else saves first, so
		// its votes and acknowledgements are durable before they go out;
		// so does a leader whose term or vote is not saved yet (a group of
		// one, elected in the Ready that made it a candidate).
		hs := rd.HardState
		lead := g.rn.BasicStatus().RaftState == raft.StateLeader &&
			(hs == nil || hs.GetTerm() == g.savedTerm && hs.GetVote() == g.savedVote)
		msgs := g.outgoing(rd.Messages)
		if lead {
			g.h.tr.Send(g.id, msgs)
		}
		if err := g.save(rd); err != nil {
			return err
		}
		if !raft.IsEmptySnap(rd.Snapshot) {
			if err := g.restore(rd.Snapshot); err != nil {
				return err
			}
		}
		g.trackAppended(rd.Entries)
		if !lead {
			g.h.tr.Send(g.id, msgs)
		}
		if err := g.handToApplier(rd.CommittedEntries); err != nil {
			return err
		}
		g.rn.Advance(rd)
	}
	return nil
}

// save persists a Ready's snapshot, entries and hard state, durable on
// return. Entries go in transactions of at most saveChunkBytes, the hard
// state with the last: a crash in between leaves entries without the
// commit index that covers them, which Raft handles.
//
// A Ready that only moves the commit index (!MustSync, the common case on
// a leader once a quorum acknowledged) is not saved at once: its hard
// state goes with the next write, or before a snapshot. A commit index
// lost in a crash is learnt again from the leader; saving it first would
// cost an fsync per round trip.
func (g *Group) save(rd raft.Ready) error {
	hs := rd.HardState
	if raft.IsEmptyHardState(hs) {
		hs = g.unsavedHS
	}
	if !rd.MustSync && len(rd.Entries) == 0 && raft.IsEmptySnap(rd.Snapshot) {
		g.unsavedHS = hs
		return nil
	}
	g.unsavedHS = nil
	ents, snap := rd.Entries, rd.Snapshot
	for {
		n, size := 0, 0
		for n < len(ents) {
			s := len(ents[n].GetData()) + 32
			if n > 0 && size+s > saveChunkBytes {
				break
			}
			size += s
			n++
		}
		if n == len(ents) {
			if err := g.rlog.Save(hs, ents, snap); err != nil {
				return err
			}
			if !raft.IsEmptyHardState(hs) {
				g.savedTerm, g.savedVote = hs.GetTerm(), hs.GetVote()
			}
			return nil
		}
		if err := g.rlog.Save(nil, ents[:n], snap); err != nil {
			return err
		}
		ents, snap = ents[n:], nil
	}
}

// errStopping is what restoreFromPeers returns when the group stops
// before a peer could restore it; fail makes it ErrClosed.
var errStopping = errors.New("stopping")

// trackAppended notes the index each of this node's pending proposals
// was appended at.
func (g *Group) trackAppended(ents []*raftpb.Entry) {
	if len(g.pending) == 0 {
		return
	}
	for _, e := range ents {
		if e.GetType() != raftpb.EntryNormal || len(e.GetData()) == 0 {
			continue
		}
		node, seq, _, err := decodeEntry(e.GetData())
		if err != nil || node != g.node {
			continue
		}
		if p := g.pending[seq]; p != nil {
			p.index = e.GetIndex()
		}
	}
}

// saveHardState saves a hard state save left unsaved.
func (g *Group) saveHardState() error {
	if g.unsavedHS == nil {
		return nil
	}
	if err := g.rlog.Save(g.unsavedHS, nil, nil); err != nil {
		return err
	}
	g.unsavedHS = nil
	return nil
}

// stop ends the loop with err: every waiting call gets it, the watchers'
// channels close.
func (g *Group) stop(err error) {
	if g.err == nil { // a clean stop: the commit index is worth keeping
		if serr := g.saveHardState(); serr != nil {
			g.log.Debug("hard state not saved at stop", "err", serr)
		}
	}
	for _, p := range g.ap.close() { // nothing applies once it returns
		p.finish(0, err)
	}
	g.final = g.status()
	g.final.Err = err
	g.err = err
	for seq, p := range g.pending {
		delete(g.pending, seq)
		p.finish(0, err)
	}
	g.stopMu.Lock()
	g.stopped = true
	g.stopMu.Unlock()
	g.h.setAwake(g, false) // run sets it no more
	for {
		p, ok := g.propq.pop() // queued, never taken
		if !ok {
			break
		}
		p.finish(0, err)
	}
	for _, t := range g.transfers {
		t.done <- err
	}
	g.transfers = nil
	g.watchMu.Lock()
	g.watchClosed = true
	for w := range g.watchers {
		close(w)
	}
	g.watchers = nil
	g.watchMu.Unlock()
	close(g.done)
}
