package cluster

import (
	"context"
	"testing"
)

// TestHandOffLeadership: before a graceful stop a node hands every group
// it leads to a follower, so that when it stops no group waits an election
// timeout for a leader — each has one the moment the node is gone, and
// takes proposals at once — and the node itself leads nothing.
func TestHandOffLeadership(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	const groups = 6
	for g := uint64(1); g <= groups; g++ {
		c.addGroup(g)
		c.waitLeader(g, c.ids...)
	}
	// The node leading the most groups hands off.
	leads := map[uint64]int{}
	for g := uint64(1); g <= groups; g++ {
		leads[c.group(1, g).Leader()]++
	}
	node := c.ids[0]
	for _, id := range c.ids {
		if leads[id] > leads[node] {
			node = id
		}
	}
	if leads[node] == 0 {
		t.Fatal("no node leads a group")
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	if err := c.nodes[node].host.HandOffLeadership(ctx); err != nil {
		t.Fatal(err)
	}
	for g := uint64(1); g <= groups; g++ {
		if st := c.group(node, g).Status(); st.Leader == node || st.Leader == 0 {
			t.Fatalf("group %d: leader %d after node %d handed off", g, st.Leader, node)
		}
	}

	// Stop it: every group has its leader already, and it proposes now.
	next := make(map[uint64]uint64)
	for g := uint64(1); g <= groups; g++ {
		next[g] = c.group(node, g).Leader()
	}
	c.stop(node)
	for g := uint64(1); g <= groups; g++ {
		if _, err := c.group(next[g], g).Propose(ctx, []byte("after the hand-off")); err != nil {
			t.Fatalf("group %d: propose at node %d right after the hand-off: %v", g, next[g], err)
		}
	}
}
