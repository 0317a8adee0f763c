package cluster

// Quiescence: a group at rest takes no ticks and sends no heartbeats, as
// CockroachDB's quiescent ranges do, so that thousands of idle partitions
// cost next to nothing.
//
// A leader quiesces at a tick when nothing is under way: no proposal
// pending or queued, no transfer, everything committed is applied, and
// every follower on a live node (liveness.go) has the whole log, is
// replicated to and was heard from — and those live voters, itself
// included, are a quorum. (A voter counts as live here until its node
// has been silent for two election timeouts: liveness.go's gone.) It then sends each live follower a quiesce
// heartbeat (a MsgHeartbeat whose Context is quiesceMarker, carrying the
// commit index) and stops ticking. A follower that steps a quiesce
// heartbeat from its leader, in its term, with nothing of its own pending
// and the same commit index, stops ticking too, and does not answer it.
//
// A quiesced group wakes (ticks again) on:
//   - a proposal, a leadership transfer or a snapshot;
//   - any message but a quiesce heartbeat (an append, a vote, a wake);
//   - on a follower, its leader's node found down: no frame from it for an
//     election timeout. The follower then counts that silence as its
//     election timeout (it ticks ElectionTicks at once) and campaigns,
//     with pre-vote, as after any leader loss;
//   - on a leader, its live voters no longer a quorum (it re-checks it,
//     and steps down if it is cut off), or a voter's node back up that
//     lacks entries (it catches the voter up).
//
// A follower that wakes for anything but its leader sends the leader a
// wake (an unsolicited MsgHeartbeatResp, which a leader takes as a sign
// of life), so that the leader ticks and heartbeats again before the
// follower's election timeout runs out; an awake follower that has not
// heard from its live leader for half an election timeout sends one too
// (a lost quiesce heartbeat or wake).

import (
	"bytes"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"go.etcd.io/raft/v3/tracker"
)

// quiesceMarker is the Context of a quiesce heartbeat. A follower echoes
// a heartbeat's Context in its answer; it drops (or strips) the answer to
// this one, so a leader never sees it.
var quiesceMarker = []byte("ferry.quiesce.v1")

// isQuiesceBeat reports whether m is a leader's quiesce heartbeat.
func isQuiesceBeat(m *raftpb.Message) bool {
	return m.GetType() == raftpb.MsgHeartbeat && bytes.Equal(m.GetContext(), quiesceMarker)
}

// Quiesced reports whether the group is at rest on this node: it takes no
// ticks and sends no heartbeats until something wakes it.
func (g *Group) Quiesced() bool { return g.asleep.Load() }

// onTick is the loop's tick: a quiesced group ignores it; a leader with
// nothing under way quiesces instead of ticking.
func (g *Group) onTick() {
	if g.quiesced || g.maybeQuiesce() {
		return
	}
	g.rn.Tick()
	g.ticks++
	g.expireForwarded()
	g.pingLeader()
}

// setQuiesced records the group's state for the loop and the Host.
func (g *Group) setQuiesced(q bool) {
	g.quiesced = q
	g.asleep.Store(q)
	g.h.setAwake(g, !q)
	if q {
		g.silent = 0
		g.ap.park()
	} else {
		g.h.live.wakes.Add(1)
	}
}

// maybeQuiesce quiesces a leader with nothing under way, telling its live
// followers; it reports whether it did.
func (g *Group) maybeQuiesce() bool {
	st := g.rn.BasicStatus()
	if st.RaftState != raft.StateLeader || st.LeadTransferee != 0 ||
		len(g.pending) > 0 || g.propq.len() > 0 || len(g.transfers) > 0 ||
		g.queued != st.GetCommit() || g.applied.Load() != st.GetCommit() {
		return false
	}
	commit, term := st.GetCommit(), st.GetTerm()
	var live []uint64
	var matches []uint64
	ok, voters := true, 0
	g.rn.WithProgress(func(id uint64, typ raft.ProgressType, pr tracker.Progress) {
		if typ != raft.ProgressTypePeer {
			return
		}
		voters++
		switch {
		case id == g.node:
			ok = ok && pr.Match == commit // the leader's own log holds nothing uncommitted
		case g.h.live.gone(id):
			// A voter on a node silent for two election timeouts is left
			// out: it catches up when its node is back, which wakes the
			// group.
		default:
			ok = ok && pr.Match == commit && pr.State == tracker.StateReplicate && pr.RecentActive && !pr.IsPaused()
			live = append(live, id)
			matches = append(matches, pr.Match)
		}
	})
	if !ok || 2*(len(live)+1) <= voters {
		return false
	}
	msgs := make([]*raftpb.Message, len(live))
	for i, id := range live {
		// As raft's own heartbeats: never a commit index beyond what the
		// follower has (all of it here).
		msgs[i] = &raftpb.Message{Type: raftpb.MsgHeartbeat.Enum(), From: new(g.node), To: new(id),
			Term: new(term), Commit: new(min(matches[i], commit)), Context: quiesceMarker}
	}
	g.h.tr.Send(g.id, msgs)
	g.setQuiesced(true)
	return true
}

// stepQuiesceBeat steps a quiesce heartbeat as the heartbeat it is (term,
// leader, commit index) and quiesces the follower if it agrees with the
// leader and has nothing of its own under way. Its answer is dropped if
// it quiesced, and turned into a plain one (a wake) if not: see outgoing.
func (g *Group) stepQuiesceBeat(m *raftpb.Message) {
	if err := g.rn.Step(m); err != nil {
		g.log.Debug("raft message not stepped", "from", m.GetFrom(), "type", m.GetType().String(), "err", err)
	}
	st := g.rn.BasicStatus()
	if st.Lead == m.GetFrom() {
		g.silent = 0
	}
	if g.quiesced {
		return
	}
	if st.RaftState == raft.StateFollower && st.Lead == m.GetFrom() && st.GetTerm() == m.GetTerm() &&
		st.GetCommit() == m.GetCommit() && len(g.pending) == 0 && g.propq.len() == 0 {
		g.setQuiesced(true)
	}
}

// outgoing filters a Ready's messages: the answers to quiesce heartbeats
// are dropped on a quiesced follower, and sent plain (a wake, for the
// leader to tick again) by one that did not quiesce.
func (g *Group) outgoing(msgs []*raftpb.Message) []*raftpb.Message {
	n := 0
	for _, m := range msgs {
		if m.GetType() == raftpb.MsgHeartbeatResp && bytes.Equal(m.GetContext(), quiesceMarker) {
			if g.quiesced {
				continue
			}
			m.Context = nil
		}
		msgs[n] = m
		n++
	}
	return msgs[:n]
}

// wake makes a quiesced group tick again, because of a message from node
// from (0 for anything else). A follower tells its leader, unless the
// message came from it.
func (g *Group) wake(from uint64) {
	if !g.quiesced {
		return
	}
	g.setQuiesced(false)
	st := g.rn.BasicStatus()
	if st.RaftState != raft.StateLeader && st.Lead != 0 && st.Lead != from {
		g.sendWake(st.Lead, st.GetTerm())
	}
}

// sendWake sends the leader lead an unsolicited heartbeat answer: the
// leader takes it as a sign of life of this follower, and wakes.
func (g *Group) sendWake(lead, term uint64) {
	g.h.tr.Send(g.id, []*raftpb.Message{{Type: raftpb.MsgHeartbeatResp.Enum(), From: new(g.node), To: new(lead), Term: new(term)}})
}

// pingLeader runs at each tick of an awake follower: one that has not
// heard from its live leader for half an election timeout wakes it (a
// quiesce heartbeat or a wake was lost), before its own election timeout
// runs out.
func (g *Group) pingLeader() {
	st := g.rn.BasicStatus()
	if st.RaftState != raft.StateFollower || st.Lead == 0 {
		g.silent = 0
		return
	}
	g.silent++
	if g.silent >= uint64(max(1, g.h.opts.ElectionTicks/2)) && g.h.live.isLive(st.Lead) {
		g.silent = 0
		g.sendWake(st.Lead, st.GetTerm())
	}
}

// heard notes a message stepped from node from: from the leader, the
// follower is not silent.
func (g *Group) heard(from uint64) {
	if from == g.lead {
		g.silent = 0
	}
}

// peersChanged handles nodes found down or back up (down says which): a
// quiesced follower whose leader's node is down wakes and campaigns as
// soon as its election timeout allows, counting the silence already
// waited. A quiesced leader wakes only if the change concerns it: the
// live nodes among its voters are no longer a quorum (it re-checks its
// quorum, and steps down if it is cut off), or a voter back up lacks
// entries (it catches the voter up). A node down takes the groups it led
// to an election; the many others stay at rest.
func (g *Group) peersChanged(changed map[uint64]bool) {
	if !g.quiesced {
		return
	}
	st := g.rn.BasicStatus()
	if st.RaftState == raft.StateLeader {
		if g.leaderConcerned(changed, st.GetCommit()) {
			g.wake(0)
		}
		return
	}
	if down, ok := changed[st.Lead]; ok && down {
		g.log.Debug("quiesced group's leader node is down; waking to elect another", "leader", st.Lead, "term", st.GetTerm())
		g.setQuiesced(false)
		for range g.h.opts.ElectionTicks {
			g.rn.Tick()
		}
	}
}

// leaderConcerned reports whether a quiesced leader must wake for the
// peers' changes: its live voters, itself included, are no quorum any
// more, or a voter back up has not all of the log up to commit.
func (g *Group) leaderConcerned(changed map[uint64]bool, commit uint64) bool {
	voters := g.confState.GetVoters()
	live, concerned := 0, false
	for _, v := range voters {
		if v == g.node || g.h.live.isLive(v) {
			live++
		}
		if _, ok := changed[v]; ok {
			concerned = true
		}
	}
	if !concerned {
		return false
	}
	if 2*live <= len(voters) {
		return true
	}
	behind := false
	g.rn.WithProgress(func(id uint64, _ raft.ProgressType, pr tracker.Progress) {
		if down, ok := changed[id]; ok && !down && pr.Match < commit {
			behind = true
		}
	})
	return behind
}
