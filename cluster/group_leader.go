package cluster

// A group's leadership and status: the preferred leader, transfers, the
// leader watchers and the status report.

import (
	"context"
	"fmt"
	"slices"

	"go.etcd.io/raft/v3"
)

// preferredLeader is the voter that campaigns first in a new group: the
// groups' ids spread their leaders round-robin over sorted voters.
func preferredLeader(voters []uint64, group uint64) uint64 {
	if len(voters) == 0 {
		return 0
	}
	vs := slices.Sorted(slices.Values(voters))
	return vs[group%uint64(len(vs))]
}

// TransferLeadership asks the leader to hand leadership to node to and
// returns once to leads, as this replica sees it. It fails with a
// *NotLeaderError on a replica that is not the leader, an error wrapping
// ErrTransferFailed if the transfer was given up (to did not catch up
// within an election timeout) or another node took over, ErrInvalidConfig
// if to is not a voter, and ctx's error if ctx ends first. Proposals fail
// with ErrProposalDropped while a transfer is under way.
func (g *Group) TransferLeadership(ctx context.Context, to uint64) error {
	t := &transfer{to: to, done: make(chan error, 1)}
	start := func() {
		st := g.rn.BasicStatus()
		switch {
		case st.RaftState != raft.StateLeader:
			t.done <- &NotLeaderError{Group: g.id, Leader: st.Lead}
		case to == g.node:
			t.done <- nil
		case !slices.Contains(g.confState.GetVoters(), to):
			t.done <- fmt.Errorf("group %d: node %d is not a voter: %w", g.id, to, ErrInvalidConfig)
		default:
			g.wake(0)
			g.log.Info("transferring leadership", "to", to, "term", st.GetTerm())
			g.rn.TransferLeader(to)
			g.transfers = append(g.transfers, t)
		}
	}
	if err := g.do(ctx, start); err != nil {
		return err
	}
	select {
	case err := <-t.done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	case <-g.done:
		return g.err
	}
}

// Status returns the group's state as this replica sees it; once the
// group has stopped, its state at that moment, with Err set.
func (g *Group) Status() Status {
	c := make(chan Status, 1)
	if err := g.do(context.Background(), func() { c <- g.status() }); err != nil {
		return g.final
	}
	return <-c
}

// WatchLeader returns a channel that receives the group's LeaderChange
// each time the leader or the term changes, starting with the current
// one, and a function that stops the watch and closes the channel. The
// channel holds one value and a new one replaces an unread one: a slow
// reader misses steps, never the latest. It is closed when the group
// stops.
func (g *Group) WatchLeader() (<-chan LeaderChange, func()) {
	c := make(chan LeaderChange, 1)
	g.watchMu.Lock()
	defer g.watchMu.Unlock()
	if g.watchClosed {
		close(c)
		return c, func() {}
	}
	g.watchers[c] = struct{}{}
	c <- g.current
	return c, func() {
		g.watchMu.Lock()
		defer g.watchMu.Unlock()
		if _, ok := g.watchers[c]; ok {
			delete(g.watchers, c)
			close(c)
		}
	}
}

// observe notices a change of leader or term (telling the watchers),
// fails the pending proposals once their term or leader has changed, and settles the transfers whose outcome is known.
func (g *Group) observe() {
	st := g.rn.BasicStatus()
	if st.Lead != g.lead || st.GetTerm() != g.term {
		g.lead, g.term = st.Lead, st.GetTerm()
		g.leader.Store(st.Lead)
		if st.Lead != 0 {
			g.log.Info("raft leader", "leader", st.Lead, "term", st.GetTerm())
		}
		g.notify(LeaderChange{Group: g.id, Leader: st.Lead, Term: st.GetTerm()})
	}
	if len(g.pending) > 0 && (st.Lead != g.pendLead || st.GetTerm() != g.pendTerm) {
		err := fmt.Errorf("group %d: proposed in term %d under leader %d, now term %d with leader %d: %w", g.id, g.pendTerm, g.pendLead, st.GetTerm(), st.Lead, ErrLeadershipLost)
		for seq, p := range g.pending {
			delete(g.pending, seq)
			p.finish(0, err)
		}
	}
	if len(g.transfers) > 0 {
		g.transfers = slices.DeleteFunc(g.transfers, func(t *transfer) bool {
			switch {
			case st.Lead == t.to:
				t.done <- nil
			case st.RaftState == raft.StateLeader && st.LeadTransferee == 0:
				t.done <- fmt.Errorf("group %d: node %d did not take over within an election timeout: %w", g.id, t.to, ErrTransferFailed)
			case st.RaftState != raft.StateLeader && st.Lead != 0:
				t.done <- fmt.Errorf("group %d: node %d took over instead of node %d: %w", g.id, st.Lead, t.to, ErrTransferFailed)
			default:
				return false
			}
			return true
		})
	}
}

// notify hands c to every watcher, replacing a value it has not read.
func (g *Group) notify(c LeaderChange) {
	g.watchMu.Lock()
	defer g.watchMu.Unlock()
	g.current = c
	for w := range g.watchers {
		select {
		case <-w:
		default:
		}
		w <- c
	}
}

// status reports the group's state; run calls it.
func (g *Group) status() Status {
	st := g.rn.Status()
	first, _ := g.rlog.FirstIndex()
	last, _ := g.rlog.LastIndex()
	s := Status{
		Group:          g.id,
		Node:           g.node,
		State:          st.RaftState,
		Term:           st.GetTerm(),
		Leader:         st.Lead,
		LeadTransferee: st.LeadTransferee,
		Commit:         st.GetCommit(),
		Applied:        g.applied.Load(),
		FirstIndex:     first,
		LastIndex:      last,
		SnapshotIndex:  g.snapIndex.Load(),
		Quiesced:       g.quiesced,
	}
	if st.RaftState == raft.StateLeader {
		s.Followers = make(map[uint64]Progress, len(st.Progress))
		for id, pr := range st.Progress {
			if id == g.node {
				continue
			}
			p := Progress{Match: pr.Match, Next: pr.Next, State: pr.State.String(), Active: pr.RecentActive}
			if g.quiesced {
				p.Active = g.h.live.isLive(id) // raft's activity is frozen with its ticks
			}
			if last > pr.Match {
				p.Lag = last - pr.Match
			}
			s.Followers[id] = p
		}
	}
	return s
}
