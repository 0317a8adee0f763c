package cluster

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/ferrymq/ferry/storage"
)

// TestReplicate: three nodes elect a leader of one group; 1000 proposals,
// from concurrent proposers, are applied by all three state machines in
// the same order, each at the index its Propose returned; a follower
// refuses a proposal at once, naming the leader.
func TestReplicate(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	c.addGroup(1)
	leader := c.waitLeader(1, c.ids...)
	g := c.group(leader, 1)

	const proposers, each = 8, 125
	idx := make([][]uint64, proposers)
	var wg sync.WaitGroup
	errs := make(chan error, proposers)
	for w := range proposers {
		wg.Go(func() {
			for i := range each {
				index, err := g.Propose(context.Background(), fmt.Appendf(nil, "w%d-%d", w, i))
				if err != nil {
					errs <- fmt.Errorf("proposer %d, entry %d: %w", w, i, err)
					return
				}
				idx[w] = append(idx[w], index)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}

	want := c.checkConverged(1)
	at := make(map[string]uint64, len(want))
	for _, e := range want {
		if _, dup := at[e.data]; dup {
			t.Fatalf("%q applied twice", e.data)
		}
		at[e.data] = e.index
	}
	for w := range proposers {
		for i, index := range idx[w] {
			data := fmt.Sprintf("w%d-%d", w, i)
			if at[data] != index {
				t.Fatalf("%q: Propose returned index %d, applied at %d", data, index, at[data])
			}
		}
	}
	if len(want) != proposers*each+1 { // and checkConverged's own entry
		t.Fatalf("applied %d entries, want %d", len(want), proposers*each+1)
	}

	for _, id := range c.ids {
		if id == leader {
			continue
		}
		_, err := c.group(id, 1).Propose(context.Background(), []byte("at a follower"))
		var nle *NotLeaderError
		if !errors.As(err, &nle) || nle.Leader != leader || nle.Group != 1 || !errors.Is(err, ErrNotLeader) {
			t.Fatalf("Propose on follower %d: %v, want a NotLeaderError naming %d", id, err, leader)
		}
	}
	st := g.Status()
	if len(st.Followers) != 2 || st.Leader != leader || st.Applied < st.Commit-0 || st.Commit == 0 {
		t.Fatalf("leader status %+v", st)
	}
	t.Logf("leader %d status: term %d commit %d applied %d followers %+v", leader, st.Term, st.Commit, st.Applied, st.Followers)
	for _, id := range c.ids {
		if sm := c.nodes[id].sms[1]; !slices.Equal(sm.restores, nil) {
			t.Fatalf("node %d restored snapshots %v; the log was never compacted", id, sm.restores)
		}
	}
}

// proposeN proposes n entries named prefix-i through the leader and
// returns them, all acknowledged.
func proposeN(c *testCluster, group uint64, prefix string, n int) []testEntry {
	c.t.Helper()
	acked := make([]testEntry, n)
	for i := range n {
		data := fmt.Sprintf("%s-%d", prefix, i)
		acked[i] = testEntry{index: c.propose(group, data), data: data}
	}
	return acked
}

// checkHas fails unless every acknowledged entry is in applied, at its
// index.
func checkHas(tb testing.TB, node uint64, applied []testEntry, acked []testEntry) {
	tb.Helper()
	at := make(map[uint64]string, len(applied))
	for _, e := range applied {
		at[e.index] = e.data
	}
	for _, e := range acked {
		if got, ok := at[e.index]; !ok || got != e.data {
			tb.Fatalf("node %d: acknowledged %q at %d, applied %q there", node, e.data, e.index, got)
		}
	}
}

// TestLeaderStops: the leader's host closes; the other two elect a new
// leader within a few election timeouts, keep every acknowledged entry and
// take new ones; the old leader comes back with an empty state machine and
// catches up from its own log and the leader's.
func TestLeaderStops(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	c.addGroup(1)
	old := c.waitLeader(1, c.ids...)
	acked := proposeN(c, 1, "before", 200)

	c.stop(old)
	stopped := c.clk.Now()
	rest := c.running()
	leader := c.waitLeader(1, rest...)
	took := c.clk.Now().Sub(stopped)
	t.Logf("node %d stopped; node %d leads after %v of fake time (%d ticks)", old, leader, took, took/testTick)
	if limit := 5 * 10 * testTick; took > limit { // five election timeouts of 10 ticks
		t.Fatalf("a new leader took %v, more than %v", took, limit)
	}
	acked = append(acked, proposeN(c, 1, "after", 200)...)
	for _, id := range rest {
		sm := c.nodes[id].sms[1]
		sm.waitApplied(t, acked[len(acked)-1].index) // a follower learns of the commit after the leader
		_, applied := sm.snapshot()
		checkHas(t, id, applied, acked)
	}

	c.restart(old)
	got := c.checkConverged(1)
	checkHas(t, old, got, acked)
	if r := c.nodes[old].sms[1].restores; len(r) != 0 {
		t.Fatalf("node %d caught up from snapshots %v; the log had everything", old, r)
	}
}

// TestSnapshotCatchUp: a follower is down while the leader applies enough
// to snapshot and compact its log past the follower's last entry; back up,
// the follower gets the snapshot (streamed in chunks) and then the rest of
// the log.
func TestSnapshotCatchUp(t *testing.T) {
	c := newTestCluster(t, 3, func(o *Options) {
		o.SnapshotEntries = 50
		o.SnapshotKeepEntries = 10
		o.SnapshotChunkBytes = 512 // several chunks per snapshot
	})
	c.addGroup(1)
	leader := c.waitLeader(1, c.ids...)
	acked := proposeN(c, 1, "first", 30)
	var down uint64
	for _, id := range c.ids {
		if id != leader {
			down = id
			break
		}
	}
	c.stop(down)
	acked = append(acked, proposeN(c, 1, "while-down", 300)...)
	st := c.group(leader, 1).Status()
	if st.FirstIndex <= 31 {
		t.Fatalf("leader's log starts at %d; it should have compacted past the follower", st.FirstIndex)
	}
	t.Logf("leader %d: snapshot at %d, log %d to %d", leader, st.SnapshotIndex, st.FirstIndex, st.LastIndex)

	c.restart(down)
	got := c.checkConverged(1)
	checkHas(t, down, got, acked)
	if r := c.nodes[down].sms[1].restores; len(r) == 0 || r[len(r)-1] < st.FirstIndex-1 {
		t.Fatalf("node %d restored snapshots %v; want one at %d or later", down, r, st.FirstIndex-1)
	}
	// Its own log was compacted too, on the snapshot it got.
	if fst := c.group(down, 1).Status(); fst.SnapshotIndex < st.FirstIndex-1 {
		t.Fatalf("node %d: snapshot index %d", down, fst.SnapshotIndex)
	}
}

// TestMinorityRefusesWrites: the leader is cut off from both followers. Its
// pending proposal fails (it steps down: check quorum) and so does every
// later one, at once; the majority elects a leader and commits; healed,
// all three converge, with every acknowledged entry and without the cut
// off leader's proposal.
func TestMinorityRefusesWrites(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	c.addGroup(1)
	old := c.waitLeader(1, c.ids...)
	acked := proposeN(c, 1, "before", 50)

	c.isolate(old)
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	_, err := c.group(old, 1).Propose(ctx, []byte("cut-off"))
	if err == nil || !(errors.Is(err, ErrLeadershipLost) || errors.Is(err, ErrNotLeader)) {
		t.Fatalf("Propose on the cut-off leader: %v, want ErrLeadershipLost or ErrNotLeader", err)
	}
	t.Logf("cut-off leader %d refused: %v", old, err)
	eventually(t, waitLong, "the cut-off node steps down", func() bool {
		return c.group(old, 1).Status().State.String() != "StateLeader"
	})
	_, err = c.group(old, 1).Propose(ctx, []byte("cut-off-2"))
	if !errors.Is(err, ErrNotLeader) {
		t.Fatalf("Propose on the cut-off node after it stepped down: %v, want ErrNotLeader", err)
	}

	var majority []uint64
	for _, id := range c.ids {
		if id != old {
			majority = append(majority, id)
		}
	}
	leader := c.waitLeader(1, majority...)
	for i := range 50 {
		data := fmt.Sprintf("majority-%d", i)
		idx, err := c.group(leader, 1).Propose(ctx, []byte(data))
		if err != nil {
			t.Fatalf("Propose on the majority's leader %d: %v", leader, err)
		}
		acked = append(acked, testEntry{index: idx, data: data})
	}

	c.heal(old)
	got := c.checkConverged(1)
	checkHas(t, old, got, acked)
	for _, e := range got {
		if e.data == "cut-off" || e.data == "cut-off-2" {
			t.Fatalf("the cut-off leader's proposal %q was applied at %d", e.data, e.index)
		}
	}
	if l := c.group(old, 1).Leader(); l == old {
		t.Fatalf("node %d leads again after healing; pre-vote should have kept it out", old)
	}
}

// TestTransferLeadership: the leader hands over to a follower, watchers
// hear of it, and the new leader takes proposals while the old one
// forwards callers to it.
func TestTransferLeadership(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	c.addGroup(1)
	old := c.waitLeader(1, c.ids...)
	proposeN(c, 1, "before", 20)
	to := old%3 + 1

	watch, stop := c.group(to, 1).WatchLeader()
	defer stop()
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	if err := c.group(to, 1).TransferLeadership(ctx, to); !errors.Is(err, ErrNotLeader) {
		t.Fatalf("TransferLeadership on a follower: %v, want ErrNotLeader", err)
	}
	if err := c.group(old, 1).TransferLeadership(ctx, 99); !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("TransferLeadership to a non-voter: %v, want ErrInvalidConfig", err)
	}
	if err := c.group(old, 1).TransferLeadership(ctx, to); err != nil {
		t.Fatalf("TransferLeadership(%d): %v", to, err)
	}
	if got := c.waitLeader(1, c.ids...); got != to {
		t.Fatalf("leader %d after the transfer, want %d", got, to)
	}
	for ch := range watch {
		if ch.Leader == to {
			break
		}
	}
	_, err := c.group(old, 1).Propose(ctx, []byte("at the old leader"))
	var nle *NotLeaderError
	if !errors.As(err, &nle) || nle.Leader != to {
		t.Fatalf("Propose at the old leader: %v, want NotLeaderError naming %d", err, to)
	}
	if _, err := c.group(to, 1).Propose(ctx, []byte("at the new leader")); err != nil {
		t.Fatal(err)
	}
	c.checkConverged(1)
}

// TestManyGroups: 50 groups on three nodes all elect, commit, and spread
// their leaders over the nodes. (Each group heartbeats on its own: 50
// groups are 20 times the messages of one, hence the slower pace.)
func TestManyGroups(t *testing.T) {
	const groups = 50
	c := startCluster(t, 3, clusterConfig{fsync: storage.FsyncNever, pace: 2 * tickPace})
	for g := range uint64(groups) {
		c.addGroup(g + 1)
	}
	spread := make(map[uint64]int)
	for g := range uint64(groups) {
		spread[c.waitLeader(g+1, c.ids...)]++
	}
	var wg sync.WaitGroup
	for g := range uint64(groups) {
		wg.Go(func() { proposeN(c, g+1, "e", 10) })
	}
	wg.Wait()
	for g := range uint64(groups) {
		c.checkConverged(g + 1)
	}
	// New groups campaign first on their preferred voter, round-robin
	// (TestPreferredLeaderSpreads), so the spread is about 17, 17 and 16;
	// but an election lost under load moves a group, so it is logged, not
	// asserted (a bound on it failed a CI run: 24, 23 and 3).
	t.Logf("leaders per node, %d groups: %v", groups, spread)
}

// TestPreferredLeaderSpreads: the voters that campaign first in new groups
// take the groups' ids round-robin, whatever the order of the voters.
func TestPreferredLeaderSpreads(t *testing.T) {
	count := map[uint64]int{}
	for g := range uint64(50) {
		a, b := preferredLeader([]uint64{3, 1, 2}, g+1), preferredLeader([]uint64{1, 2, 3}, g+1)
		if a != b {
			t.Fatalf("group %d: preferred leader %d or %d by the voters' order", g+1, a, b)
		}
		count[a]++
	}
	if count[1] != 16 || count[2] != 17 || count[3] != 17 {
		t.Fatalf("preferred leaders of 50 groups: %v, want 16, 17 and 17", count)
	}
	if preferredLeader(nil, 1) != 0 {
		t.Fatal("a group without voters has a preferred leader")
	}
}

// TestAddGroupChecksVoters: a group to bootstrap must name this node and
// known peers, once each.
func TestAddGroupChecksVoters(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	h := c.nodes[1].host
	for _, voters := range [][]uint64{nil, {2, 3}, {1, 2, 9}, {1, 2, 2}} {
		if _, err := h.AddGroup(5, voters, newTestSM()); !errors.Is(err, ErrInvalidConfig) {
			t.Fatalf("AddGroup(5, %v): %v, want ErrInvalidConfig", voters, err)
		}
	}
	if _, err := h.AddGroup(0, c.ids, newTestSM()); !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("AddGroup(0): %v, want ErrInvalidConfig", err)
	}
	if _, err := h.AddGroup(5, c.ids, newTestSM()); err != nil {
		t.Fatal(err)
	}
	if _, err := h.AddGroup(5, c.ids, newTestSM()); !errors.Is(err, ErrGroupExists) {
		t.Fatalf("AddGroup twice: %v, want ErrGroupExists", err)
	}
	g, _ := h.Group(5)
	if _, err := g.Propose(context.Background(), make([]byte, 9<<20)); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("Propose of 9 MiB: %v, want ErrTooLarge", err)
	}
	c.stop(1)
	if _, err := g.Propose(context.Background(), []byte("x")); !errors.Is(err, ErrClosed) {
		t.Fatalf("Propose after Close: %v, want ErrClosed", err)
	}
	if st := g.Status(); !errors.Is(st.Err, ErrClosed) {
		t.Fatalf("Status after Close: %+v", st)
	}
	if _, err := h.AddGroup(6, c.ids, newTestSM()); !errors.Is(err, ErrClosed) {
		t.Fatalf("AddGroup after Close: %v, want ErrClosed", err)
	}
}

// TestEntryHeader: a proposal's header round-trips; a short or unknown
// one is refused.
func TestEntryHeader(t *testing.T) {
	b := encodeEntry(7, 1<<40+3, []byte("payload"))
	node, seq, data, err := decodeEntry(b)
	if err != nil || node != 7 || seq != 1<<40+3 || string(data) != "payload" {
		t.Fatalf("decode: %d %d %q %v", node, seq, data, err)
	}
	for _, bad := range [][]byte{nil, b[:entryHeaderLen-1], append([]byte{2}, b[1:]...)} {
		if _, _, _, err := decodeEntry(bad); err == nil {
			t.Fatalf("decodeEntry(%x) succeeded", bad)
		}
	}
	if _, _, data, err := decodeEntry(b[:entryHeaderLen]); err != nil || len(data) != 0 {
		t.Fatalf("empty payload: %q %v", data, err)
	}
}

// TestProposeAsync: proposals queued without waiting are applied in the
// order of the calls and answered once each; after Close they fail at
// once.
func TestProposeAsync(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	c.addGroup(1)
	leader := c.waitLeader(1, c.ids...)
	g := c.group(leader, 1)
	const n = 300
	answers := make(chan [2]uint64, n) // call, index
	var failed sync.Map
	for i := range uint64(n) {
		g.ProposeAsync(fmt.Appendf(nil, "async-%d", i), func(index uint64, err error) {
			if err != nil {
				failed.Store(i, err)
			}
			answers <- [2]uint64{i, index}
		})
	}
	last := uint64(0)
	for range n {
		a := <-answers
		if err, ok := failed.Load(a[0]); ok {
			t.Fatalf("proposal %d: %v", a[0], err)
		}
		if a[1] <= last {
			t.Fatalf("proposal %d applied at %d, after an earlier call's %d", a[0], a[1], last)
		}
		last = a[1]
	}
	got := c.checkConverged(1)
	i := 0
	for _, e := range got {
		if strings.HasPrefix(e.data, "async-") {
			if want := fmt.Sprintf("async-%d", i); e.data != want {
				t.Fatalf("applied %q at %d, want %q", e.data, e.index, want)
			}
			i++
		}
	}

	c.stop(leader)
	errc := make(chan error, 1)
	g.ProposeAsync([]byte("late"), func(_ uint64, err error) { errc <- err })
	if err := <-errc; !errors.Is(err, ErrClosed) {
		t.Fatalf("ProposeAsync after Close: %v, want ErrClosed", err)
	}
}

// TestForwardedProposals: with ForwardProposals, a follower's proposal is
// forwarded to the leader and answered once applied on the follower, at
// the same index everywhere; a follower cut off from the leader fails its
// proposal (the forwarded message is lost: ErrLeadershipLost, or no
// leader is known any more: ErrNotLeader) instead of hanging, and nothing
// it proposed while cut off is applied twice after healing.
func TestForwardedProposals(t *testing.T) {
	c := newTestCluster(t, 3, func(o *Options) { o.ForwardProposals = true })
	c.addGroup(1)
	leader := c.waitLeader(1, c.ids...)
	follower := c.ids[0]
	if follower == leader {
		follower = c.ids[1]
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	for i := range 20 {
		data := fmt.Sprintf("forwarded-%d", i)
		idx, err := c.group(follower, 1).Propose(ctx, []byte(data))
		if err != nil {
			t.Fatalf("Propose %d on follower %d: %v", i, follower, err)
		}
		c.nodes[leader].sms[1].waitApplied(t, idx)
		_, ents := c.nodes[leader].sms[1].snapshot()
		if e := ents[len(ents)-1]; e.index != idx || e.data != data {
			t.Fatalf("the leader's entry at %d is %+v, want %q", idx, e, data)
		}
	}

	c.isolate(follower)
	_, err := c.group(follower, 1).Propose(ctx, []byte("cut-off"))
	if !errors.Is(err, ErrLeadershipLost) && !errors.Is(err, ErrNotLeader) {
		t.Fatalf("Propose on the cut-off follower: %v, want ErrLeadershipLost or ErrNotLeader", err)
	}
	t.Logf("cut-off follower %d refused: %v", follower, err)
	c.heal(follower)
	c.propose(1, "after")
	got := c.checkConverged(1)
	seen := map[string]bool{}
	for _, e := range got {
		if seen[e.data] {
			t.Fatalf("entry %q applied twice", e.data)
		}
		seen[e.data] = true
	}
	for i := range 20 {
		if !seen[fmt.Sprintf("forwarded-%d", i)] {
			t.Fatalf("forwarded-%d was acknowledged and is not applied", i)
		}
	}
}
