package cluster

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"
)

// blockApply makes sm's Apply block on the entry with data "block" until
// release is called (at the latest at cleanup); entered is closed once it
// blocks.
func blockApply(t *testing.T, sm *testSM) (entered chan struct{}, release func()) {
	entered, unblock := make(chan struct{}), make(chan struct{})
	var once, rel sync.Once
	sm.mu.Lock()
	sm.onApply = func(ents []testEntry) { // under sm.mu
		for _, e := range ents {
			if e.data == "block" {
				once.Do(func() { close(entered) })
				<-unblock
			}
		}
	}
	sm.mu.Unlock()
	release = func() { rel.Do(func() { close(unblock) }) }
	t.Cleanup(release)
	return entered, release
}

// waitClosed waits for c to be closed, or fails the test after waitLong.
func waitClosed(t *testing.T, c <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-c:
	case <-time.After(waitLong):
		t.Fatalf("not after %v: %s", waitLong, what)
	}
}

type asyncResult struct {
	n     int
	index uint64
	err   error
}

// TestApplyBlockedKeepsLeadership blocks the leader's Apply for five
// election timeouts: its loop goes on ticking and sending heartbeats, so
// no follower calls an election (leader and term unchanged everywhere),
// and it goes on committing entries the followers apply, while its own
// applied index (Status.Applied) stays put, it takes no snapshot beyond
// it, and no proposal is answered before its entry is applied there.
// Once Apply returns, everything applies in order, every proposal is
// answered after its entry is applied, and snapshots go on.
func TestApplyBlockedKeepsLeadership(t *testing.T) {
	c := newTestCluster(t, 3, func(o *Options) { o.SnapshotEntries, o.SnapshotKeepEntries = 2, 1 })
	c.addGroup(1)
	leader := c.waitLeader(1, c.ids...)
	c.propose(1, "warm")
	lg := c.group(leader, 1)
	term := lg.Status().Term
	var watches []<-chan LeaderChange
	for _, id := range c.ids {
		w, stop := c.group(id, 1).WatchLeader()
		t.Cleanup(stop)
		<-w // the current one
		watches = append(watches, w)
	}
	sm := c.nodes[leader].sms[1]
	before := sm.Applied()
	entered, release := blockApply(t, sm)

	const after = 5
	results := make(chan asyncResult, after+1)
	answer := func(n int) func(uint64, error) {
		return func(index uint64, err error) {
			if err == nil && sm.Applied() < index { // sm.mu is free once Apply returned
				err = fmt.Errorf("answered at %d with the state machine applied up to %d", index, sm.Applied())
			}
			results <- asyncResult{n: n, index: index, err: err}
		}
	}
	lg.ProposeAsync([]byte("block"), answer(0))
	waitClosed(t, entered, "the leader's Apply blocks")
	for n := 1; n <= after; n++ {
		lg.ProposeAsync(fmt.Appendf(nil, "after-%d", n), answer(n))
	}

	// Five election timeouts (at their longest: 2 × ElectionTicks) in
	// the nodes' time, watching for any change of leader or term.
	wait := time.Duration(5*2*c.nodes[leader].host.opts.ElectionTicks) * testTick
	start := c.clk.Now()
	eventually(t, waitLong, "five election timeouts pass", func() bool {
		for i, w := range watches {
			select {
			case lc := <-w:
				t.Fatalf("node %d saw leader %d in term %d while the leader's Apply blocked (leader %d, term %d before)",
					c.ids[i], lc.Leader, lc.Term, leader, term)
			default:
			}
		}
		return c.clk.Now().Sub(start) >= wait
	})
	st := lg.Status() // the loop answers
	if st.Term != term || st.State.String() != "StateLeader" {
		t.Fatalf("leader %d: %v in term %d, want the leader in term %d", leader, st.State, st.Term, term)
	}
	if st.Commit < before+1+after || st.Applied != before || st.SnapshotIndex > st.Applied {
		t.Fatalf("leader: commit %d, applied %d, snapshot at %d; want commit ≥ %d, applied %d (the blocked batch not applied) and no snapshot beyond it",
			st.Commit, st.Applied, st.SnapshotIndex, before+1+after, before)
	}
	for _, id := range c.ids {
		if id != leader {
			c.nodes[id].sms[1].waitApplied(t, st.Commit)
		}
	}
	select {
	case r := <-results:
		t.Fatalf("proposal %d answered (index %d, %v) before the leader applied it", r.n, r.index, r.err)
	default:
	}

	release()
	var last uint64
	for range after + 1 {
		select {
		case r := <-results:
			if r.err != nil || r.index <= last {
				t.Fatalf("proposal %d: index %d, %v; want an index after %d", r.n, r.index, r.err, last)
			}
			last = r.index
		case <-time.After(waitLong):
			t.Fatalf("proposals not answered after %v", waitLong)
		}
	}
	ents := c.checkConverged(1)
	var got []string
	for _, e := range ents {
		if e.index > before {
			got = append(got, e.data)
		}
	}
	want := []string{"block", "after-1", "after-2", "after-3", "after-4", "after-5"}
	if len(got) < len(want) || fmt.Sprint(got[:len(want)]) != fmt.Sprint(want) {
		t.Fatalf("applied after %d: %q, want %q first", before, got, want)
	}
	if st := lg.Status(); st.Term != term || st.Leader != leader {
		t.Fatalf("leader %d in term %d at the end, want %d in term %d", st.Leader, st.Term, leader, term)
	}
	eventually(t, waitLong, "the leader snapshots past the entries once blocked", func() bool {
		st := lg.Status()
		return st.SnapshotIndex > before+after && st.SnapshotIndex <= st.Applied
	})
}

// TestApplyStopAbandons closes a node while its Apply blocks: Close waits
// for the batch under way, applies nothing after it, and fails the
// proposals whose entries it did not apply with ErrClosed. Restarted, the
// node applies everything in order, once.
func TestApplyStopAbandons(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	c.addGroup(1)
	leader := c.waitLeader(1, c.ids...)
	c.propose(1, "warm")
	lg := c.group(leader, 1)
	sm := c.nodes[leader].sms[1]
	entered, release := blockApply(t, sm)
	results := make(chan asyncResult, 2)
	lg.ProposeAsync([]byte("block"), func(index uint64, err error) { results <- asyncResult{n: 0, index: index, err: err} })
	waitClosed(t, entered, "the leader's Apply blocks")
	lg.ProposeAsync([]byte("after"), func(index uint64, err error) { results <- asyncResult{n: 1, index: index, err: err} })
	eventually(t, waitLong, "the entry after the blocked one commits", func() bool {
		st := lg.Status()
		return st.Commit >= st.Applied+2
	})

	closed := make(chan struct{})
	go func() {
		defer close(closed)
		ctx, cancel := context.WithTimeout(context.Background(), waitLong)
		defer cancel()
		if err := c.nodes[leader].host.Close(ctx); err != nil {
			t.Errorf("close host: %v", err)
		}
	}()
	select {
	case <-closed:
		t.Fatal("Close returned while Apply was still under way")
	case <-time.After(10 * tickPace): // not an assertion of timing: Close may not return before release
	}
	release()
	waitClosed(t, closed, "Close returns")
	got := map[int]asyncResult{}
	for range 2 {
		r := <-results // both answered before Close returned
		got[r.n] = r
	}
	if r := got[0]; r.err != nil {
		t.Fatalf("the blocked entry's proposal: %v, want its index (its batch applied)", r.err)
	}
	if r := got[1]; !errors.Is(r.err, ErrClosed) {
		t.Fatalf("the proposal after it: index %d, %v; want ErrClosed (never applied here)", r.index, r.err)
	}
	if applied := sm.Applied(); applied != got[0].index {
		t.Fatalf("applied %d after Close, want %d: nothing applies after the batch under way", applied, got[0].index)
	}
	c.stop(leader)
	c.restart(leader)
	ents := c.checkConverged(1)
	var n int
	for _, e := range ents {
		if e.data == "block" || e.data == "after" {
			n++
		}
	}
	if n != 2 {
		t.Fatalf("applied %d of the entries block and after on every node, want each once", n)
	}
}

// TestApplyBacklogPausesProposals blocks the leader's Apply with a small
// backlog bound: once what it was handed and has not applied passes the
// bound, it takes no more proposals (they wait in the queue, its log does
// not grow) while it keeps its leadership; once Apply returns, they are
// all appended, applied in order and answered.
func TestApplyBacklogPausesProposals(t *testing.T) {
	c, leader := backlogCluster(t)
	lg := c.group(leader, 1)
	term := lg.Status().Term
	sm := c.nodes[leader].sms[1]
	entered, release := blockApply(t, sm)
	const wave = 16 // of 1 KiB each: four times the bound
	results := make(chan asyncResult, 2*wave+1)
	propose := func(n int, data []byte) {
		lg.ProposeAsync(data, func(index uint64, err error) { results <- asyncResult{n: n, index: index, err: err} })
	}
	propose(0, []byte("block"))
	waitClosed(t, entered, "the leader's Apply blocks")
	pad := make([]byte, 1<<10)
	for n := 1; n <= wave; n++ {
		propose(n, fmt.Appendf(nil, "%03d-%s", n, pad))
	}
	var last uint64
	eventually(t, waitLong, "the first wave commits", func() bool {
		st := lg.Status()
		last = st.LastIndex
		return st.Commit == st.LastIndex && st.Commit > st.Applied+wave
	})
	for n := wave + 1; n <= 2*wave; n++ {
		propose(n, fmt.Appendf(nil, "%03d-%s", n, pad))
	}
	wait := time.Duration(3*2*c.nodes[leader].host.opts.ElectionTicks) * testTick
	start := c.clk.Now()
	eventually(t, waitLong, "three election timeouts pass", func() bool {
		if st := lg.Status(); st.LastIndex != last || st.Term != term || st.Leader != leader {
			t.Fatalf("leader %d in term %d with last index %d while its applier is over the bound; want leader %d in term %d, last index %d",
				st.Leader, st.Term, st.LastIndex, leader, term, last)
		}
		return c.clk.Now().Sub(start) >= wait
	})
	release()
	var prev uint64
	for n := 0; n <= 2*wave; n++ {
		select {
		case r := <-results:
			if r.err != nil || r.n != n || r.index <= prev {
				t.Fatalf("answer %d: proposal %d, index %d, %v; want proposal %d at an index after %d", n, r.n, r.index, r.err, n, prev)
			}
			prev = r.index
		case <-time.After(waitLong):
			t.Fatalf("proposals not answered after %v", waitLong)
		}
	}
	c.checkConverged(1)
}

// TestApplyBacklogDropsAppends blocks a follower's Apply with a small
// backlog bound: once what it was handed and has not applied passes the
// bound, it drops the appends that carry entries (its log stops growing
// while the leader's grows), but it still takes heartbeats: no election,
// the term unchanged. Once Apply returns it catches up and applies the
// same entries as the others.
func TestApplyBacklogDropsAppends(t *testing.T) {
	c, leader := backlogCluster(t)
	term := c.group(leader, 1).Status().Term
	follower := c.ids[0]
	if follower == leader {
		follower = c.ids[1]
	}
	fg, lg := c.group(follower, 1), c.group(leader, 1)
	propose := func(data string) { // on the leader: a follower would answer once it applied
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), waitLong)
		defer cancel()
		if _, err := lg.Propose(ctx, []byte(data)); err != nil {
			t.Fatalf("propose %.10q: %v", data, err)
		}
	}
	entered, release := blockApply(t, c.nodes[follower].sms[1])
	propose("block")
	waitClosed(t, entered, "the follower's Apply blocks")
	pad := make([]byte, 1<<10)
	for n := 1; n <= 16; n++ { // four times the bound
		propose(fmt.Sprintf("%03d-%s", n, pad))
	}
	var last uint64
	eventually(t, waitLong, "the follower's applier is handed more than the bound", func() bool {
		return fg.ap.backlog() >= maxApplyBacklog
	})
	last = fg.Status().LastIndex // from now on it takes no entries
	for n := 17; n <= 32; n++ {
		propose(fmt.Sprintf("%03d-%s", n, pad))
	}
	wait := time.Duration(3*2*c.nodes[leader].host.opts.ElectionTicks) * testTick
	start := c.clk.Now()
	eventually(t, waitLong, "three election timeouts pass", func() bool {
		st := fg.Status()
		if st.LastIndex != last || st.Term != term || st.Leader != leader {
			t.Fatalf("follower: leader %d in term %d, last index %d while its applier is over the bound; want leader %d in term %d, last index %d",
				st.Leader, st.Term, st.LastIndex, leader, term, last)
		}
		return c.clk.Now().Sub(start) >= wait
	})
	if lst := lg.Status(); lst.Commit < last+16 {
		t.Fatalf("leader: commit %d, want at least %d (the second wave committed without the follower)", lst.Commit, last+16)
	}
	release()
	c.checkConverged(1)
}

// backlogCluster starts three nodes whose groups take an applier backlog
// bound of 4 KiB, with group 1 led and one entry applied; it returns the
// cluster and group 1's leader. The bound is put back when t ends.
func backlogCluster(t *testing.T) (*testCluster, uint64) {
	t.Helper()
	b := maxApplyBacklog
	t.Cleanup(func() { maxApplyBacklog = b })
	maxApplyBacklog = 4 << 10 // the groups take it when they open
	c := newTestCluster(t, 3, nil)
	c.addGroup(1)
	leader := c.waitLeader(1, c.ids...)
	c.propose(1, "warm")
	return c, leader
}

// TestApplyBacklogNodeBound: the appliers of all a node's groups hold at
// most maxNodeApplyBacklog bytes together. With a follower's applies of
// two groups stuck, the first group fills its own bound; the second then
// takes entries only until the node's bound is reached — under its own —
// and from then on none, for three election timeouts, while its leader
// commits without it; released, both catch up and the node's count goes
// back to zero.
func TestApplyBacklogNodeBound(t *testing.T) {
	b, nb := maxApplyBacklog, maxNodeApplyBacklog
	t.Cleanup(func() { maxApplyBacklog, maxNodeApplyBacklog = b, nb })
	maxApplyBacklog, maxNodeApplyBacklog = 4<<10, 6<<10 // taken when the hosts open
	c := newTestCluster(t, 3, nil)
	c.addGroup(1)
	c.addGroup(2)
	l1, l2 := c.waitLeader(1, c.ids...), c.waitLeader(2, c.ids...)
	var f uint64 // a follower of both groups
	for _, id := range c.ids {
		if id != l1 && id != l2 {
			f = id
		}
	}
	c.propose(1, "warm")
	c.propose(2, "warm")
	propose := func(group uint64, lg *Group, data string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), waitLong)
		defer cancel()
		if _, err := lg.Propose(ctx, []byte(data)); err != nil {
			t.Fatalf("group %d: propose %.10q: %v", group, data, err)
		}
	}
	lg1, lg2 := c.group(l1, 1), c.group(l2, 2)
	fg1, fg2 := c.group(f, 1), c.group(f, 2)
	entered1, release1 := blockApply(t, c.nodes[f].sms[1])
	entered2, release2 := blockApply(t, c.nodes[f].sms[2])
	propose(1, lg1, "block")
	propose(2, lg2, "block")
	waitClosed(t, entered1, "the follower's Apply of group 1 blocks")
	waitClosed(t, entered2, "the follower's Apply of group 2 blocks")
	pad := make([]byte, 1<<10)
	for n := 1; n <= 8; n++ {
		propose(1, lg1, fmt.Sprintf("%03d-%s", n, pad))
	}
	eventually(t, waitLong, "group 1's applier on the follower is handed its bound", func() bool {
		return fg1.ap.backlog() >= maxApplyBacklog
	})
	// Group 2's entries one at a time, each handed to the follower's
	// applier before the next is proposed, until the node's bound is
	// reached. The bound is checked when an append arrives: entries a
	// follower has already appended are handed whatever it says, and a
	// follower slowed by load appends several before handing any (CI run
	// 45 saw seven handed at once, past group 2's own bound).
	host := c.nodes[f].host
	for n := 1; host.applyBacklog.Load() < int64(maxNodeApplyBacklog); n++ {
		if n > 8 {
			t.Fatalf("8 entries of group 2 handed and the node's appliers hold %d bytes, under its bound %d", host.applyBacklog.Load(), maxNodeApplyBacklog)
		}
		before := fg2.ap.backlog()
		propose(2, lg2, fmt.Sprintf("%03d-%s", n, pad))
		eventually(t, waitLong, "group 2's entry handed to the follower's applier", func() bool { return fg2.ap.backlog() > before })
	}
	if got := fg2.ap.backlog(); got >= maxApplyBacklog {
		t.Fatalf("group 2's applier holds %d bytes, its own bound %d: the node's bound did not stop it first", got, maxApplyBacklog)
	}
	last, term := fg2.Status().LastIndex, lg2.Status().Term
	for n := 9; n <= 16; n++ {
		propose(2, lg2, fmt.Sprintf("%03d-%s", n, pad))
	}
	wait := time.Duration(3*2*host.opts.ElectionTicks) * testTick
	start := c.clk.Now()
	eventually(t, waitLong, "three election timeouts pass", func() bool {
		if st := fg2.Status(); st.LastIndex != last || st.Term != term {
			t.Fatalf("follower's group 2: last index %d in term %d over the node's bound; want %d in term %d", st.LastIndex, st.Term, last, term)
		}
		return c.clk.Now().Sub(start) >= wait
	})
	if lst := lg2.Status(); lst.Commit < last+8 {
		t.Fatalf("group 2's leader: commit %d, want at least %d", lst.Commit, last+8)
	}
	release1()
	release2()
	c.checkConverged(1)
	c.checkConverged(2)
	eventually(t, waitLong, "the node's applier count back to zero", func() bool { return host.applyBacklog.Load() == 0 })
}
