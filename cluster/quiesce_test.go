package cluster

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// electionTimeout is the tests' election timeout in fake time: the
// default ElectionTicks of testTick.
const electionTimeout = 10 * testTick

// waitQuiesced waits until group is quiesced on every running node.
func (c *testCluster) waitQuiesced(group uint64) {
	c.t.Helper()
	eventually(c.t, waitLong, fmt.Sprintf("group %d quiesced on nodes %v", group, c.running()), func() bool {
		for _, id := range c.running() {
			if !c.group(id, group).Quiesced() {
				return false
			}
		}
		return true
	})
}

// sumHosts adds up count over the running nodes' hosts.
func (c *testCluster) sumHosts(count func(*Host) uint64) uint64 {
	n := uint64(0)
	for _, id := range c.running() {
		n += count(c.nodes[id].host)
	}
	return n
}

// raftSent is how many Raft messages the running nodes have sent.
func (c *testCluster) raftSent() uint64 {
	return c.sumHosts(func(h *Host) uint64 { return h.tr.queued.Load() })
}

// wakes is how many times the running nodes' quiesced groups woke.
func (c *testCluster) wakes() uint64 {
	return c.sumHosts(func(h *Host) uint64 { return h.live.wakes.Load() })
}

// livenessChanges is how many times the running nodes found a peer down
// or back up.
func (c *testCluster) livenessChanges() uint64 {
	return c.sumHosts(func(h *Host) uint64 { return h.live.changes.Load() })
}

// TestIdleGroupQuiesces: an idle group's leader and followers stop ticking
// and sending once everything is committed and applied everywhere; for
// three election timeouts of ticks nothing is sent and nothing wakes (the
// nodes only beat, one batch per node pair), and no applier goroutine runs. A proposal wakes it and is
// applied on every node well within one election timeout, and the group
// goes back to rest.
func TestIdleGroupQuiesces(t *testing.T) {
	var regsMu sync.Mutex
	regs := make(map[uint64]*prometheus.Registry)
	c := newTestCluster(t, 3, func(o *Options) {
		regsMu.Lock()
		defer regsMu.Unlock()
		regs[o.NodeID] = prometheus.NewRegistry()
		o.Registerer = regs[o.NodeID]
	})
	c.addGroup(1)
	c.addGroup(2)
	c.waitLeader(1, c.ids...)
	for i := range 20 {
		c.propose(1, fmt.Sprintf("before %d", i))
	}
	c.waitQuiesced(1)
	c.waitQuiesced(2)

	// Three election timeouts at rest: nothing sent, nothing woken. A
	// window in which a node was found down (a beat late under load; it
	// wakes the groups it leads, by design) is not at rest: try another.
	for try := 1; ; try++ {
		sent, wakes, flaps := c.raftSent(), c.wakes(), c.livenessChanges()
		start := c.clk.Now()
		for c.clk.Now().Sub(start) < 3*electionTimeout {
			time.Sleep(tickPace)
		}
		if f := c.livenessChanges(); f != flaps {
			if try == 5 {
				t.Fatalf("peers found down or back %d times in each of 5 windows of three election timeouts", f-flaps)
			}
			t.Logf("window %d: %d liveness changes (a late beat); another window", try, f-flaps)
			c.waitQuiesced(1)
			c.waitQuiesced(2)
			continue
		}
		for _, id := range c.ids {
			for _, gid := range []uint64{1, 2} {
				g := c.group(id, gid)
				if !g.Quiesced() {
					t.Fatalf("node %d: group %d woke with nothing to do: %+v", id, gid, g.Status())
				}
				g.ap.mu.Lock()
				running := g.ap.running
				g.ap.mu.Unlock()
				if running {
					t.Fatalf("node %d: group %d at rest still runs its applier goroutine", id, gid)
				}
			}
		}
		if got := c.raftSent(); got != sent {
			t.Fatalf("%d raft messages sent over three election timeouts at rest; want none", got-sent)
		}
		if got := c.wakes(); got != wakes {
			t.Fatalf("%d wakes at rest; want none", got-wakes)
		}
		break
	}
	for _, id := range c.ids {
		regsMu.Lock()
		reg := regs[id]
		regsMu.Unlock()
		if q, live := gauge(t, reg, "ferry_raft_groups_quiesced"), gauge(t, reg, "ferry_raft_peers_live"); q != 2 || live != 2 {
			t.Fatalf("node %d: ferry_raft_groups_quiesced %v, ferry_raft_peers_live %v; want 2 and 2", id, q, live)
		}
	}
	leader := c.group(1, 1).Leader()
	if st := c.group(leader, 1).Status(); !st.Quiesced || st.State.String() != "StateLeader" {
		t.Fatalf("node %d: %+v, want a quiesced leader", leader, st)
	}

	woke := c.clk.Now()
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	idx, err := c.group(leader, 1).Propose(ctx, []byte("wake up"))
	if err != nil {
		t.Fatalf("propose to the quiesced leader: %v", err)
	}
	for _, id := range c.ids {
		c.nodes[id].sms[1].waitApplied(t, idx)
	}
	took := c.clk.Now().Sub(woke)
	t.Logf("a proposal to the quiesced group was applied on every node after %v of fake time", took)
	if took >= electionTimeout {
		t.Fatalf("waking and applying took %v of fake time; want under one election timeout, %v", took, electionTimeout)
	}
	if got := c.group(leader, 1).Leader(); got != leader {
		t.Fatalf("leader changed from %d to %d on waking", leader, got)
	}
	c.waitQuiesced(1)
	c.checkConverged(1)
}

// TestQuiescedLeaderLost: when the leader node of a quiesced group stops
// (closed) or goes silent (every link cut, as a SIGSTOP or a partition
// looks), its followers find the node down from the missing beats and
// elect a new leader (within one to two election timeouts after the last
// beat, as an awake group does; the bound leaves room for a split vote
// under load); the group takes proposals again; a cut-off leader steps
// down; and the old leader, back, follows the new one.
func TestQuiescedLeaderLost(t *testing.T) {
	for _, how := range []string{"stop", "isolate"} {
		t.Run(how, func(t *testing.T) {
			c := newTestCluster(t, 3, nil)
			c.addGroup(1)
			old := c.waitLeader(1, c.ids...)
			c.propose(1, "before")
			c.waitQuiesced(1)

			lost := c.clk.Now()
			if how == "stop" {
				c.stop(old)
			} else {
				c.isolate(old)
			}
			var rest []uint64
			for _, id := range c.running() {
				if id != old {
					rest = append(rest, id)
				}
			}
			leader := c.waitLeader(1, rest...)
			took := c.clk.Now().Sub(lost)
			t.Logf("node %d lost (%s); node %d leads after %v of fake time (%d ticks)", old, how, leader, took, took/testTick)
			if limit := 5 * electionTimeout; took > limit { // as TestLeaderStops: typically 1.5 to 2
				t.Fatalf("a new leader took %v, more than %v", took, limit)
			}
			ctx, cancel := context.WithTimeout(context.Background(), waitLong)
			defer cancel()
			if _, err := c.group(leader, 1).Propose(ctx, []byte("after")); err != nil {
				t.Fatalf("propose to the new leader: %v", err)
			}

			if how == "isolate" {
				// Cut off from every peer, the old leader finds them down,
				// wakes and steps down (CheckQuorum) instead of resting as
				// a leader nobody follows.
				eventually(t, waitLong, fmt.Sprintf("cut-off node %d steps down", old), func() bool {
					return c.group(old, 1).Status().State.String() != "StateLeader"
				})
				if took := c.clk.Now().Sub(lost); took > 5*electionTimeout {
					t.Fatalf("the cut-off leader stepped down after %v, more than %v", took, 5*electionTimeout)
				}
			}
			if how == "stop" {
				c.restart(old)
			} else {
				c.heal(old)
			}
			if got := c.waitLeader(1, c.ids...); got == old {
				t.Fatalf("node %d leads again; the new leader %d should have kept it", old, leader)
			}
			c.checkConverged(1)
			c.waitQuiesced(1)
		})
	}
}

// TestQuiescedFollowerCatchesUp: a follower cut off while its group is at
// rest misses entries (the others commit them and rest again without it);
// when its links heal, its node's beats wake the leader, which catches it
// up before the group rests again: it applies every entry without a new
// proposal.
func TestQuiescedFollowerCatchesUp(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	c.addGroup(1)
	leader := c.waitLeader(1, c.ids...)
	c.propose(1, "before")
	c.waitQuiesced(1)
	behind := c.ids[0]
	if behind == leader {
		behind = c.ids[1]
	}
	c.isolate(behind)
	eventually(t, waitLong, fmt.Sprintf("node %d found node %d down", leader, behind), func() bool {
		return !c.nodes[leader].host.live.isLive(behind)
	})
	var last uint64
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	for i := range 5 {
		idx, err := c.group(leader, 1).Propose(ctx, fmt.Appendf(nil, "while cut off %d", i))
		if err != nil {
			t.Fatalf("propose with node %d cut off: %v", behind, err)
		}
		last = idx
	}
	eventually(t, waitLong, "the group at rest on the nodes still connected", func() bool {
		for _, id := range c.ids {
			if id != behind && !c.group(id, 1).Quiesced() {
				return false
			}
		}
		return true
	})
	if _, applied := c.nodes[behind].sms[1].snapshot(); len(applied) > 0 && applied[len(applied)-1].index >= last {
		t.Fatalf("node %d applied up to %d while cut off", behind, applied[len(applied)-1].index)
	}

	c.heal(behind)
	c.nodes[behind].sms[1].waitApplied(t, last)
	c.waitQuiesced(1)
	c.checkConverged(1)
}

// gauge returns the value of the unlabelled gauge name in reg.
func gauge(tb testing.TB, reg *prometheus.Registry, name string) float64 {
	tb.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		tb.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) == 1 {
			return mf.GetMetric()[0].GetGauge().GetValue()
		}
	}
	tb.Fatalf("no gauge %s", name)
	return 0
}
