package cluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/ferrymq/ferry/storage"
)

// These tests run the metadata group over three nodes: topics and
// subscriptions made through the leader appear on every node's store with
// the same ids, configs and create times, across failover, catch-up from
// the log and from a snapshot, and a restart that replays entries.

// openMetadata starts the metadata group on node id.
func (c *testCluster) openMetadata(id uint64) *Metadata {
	c.t.Helper()
	m, err := OpenMetadata(c.nodes[id].host, c.ids)
	if err != nil {
		c.t.Fatalf("node %d: OpenMetadata: %v", id, err)
	}
	return m
}

// metaView renders everything the metadata group keeps in node id's store:
// topics with id, create time and config, their subscriptions with id,
// create time, config and cursors, and the id counters. A topic or
// subscription deleted while it reads makes a view of its own, unequal
// to any other node's.
func (c *testCluster) metaView(id uint64) string {
	c.t.Helper()
	st := c.nodes[id].store
	var b strings.Builder
	for _, t := range st.Topics() {
		fmt.Fprintf(&b, "topic %s id=%d created=%s %+v\n", t.Name, t.ID(), t.CreateTime.Format(time.RFC3339Nano), t.Config)
		subs, err := st.Subscriptions(t.Name)
		if errors.Is(err, storage.ErrTopicNotFound) {
			return fmt.Sprintf("node %d: changing: %v", id, err)
		}
		if err != nil {
			c.t.Fatalf("node %d: %v", id, err)
		}
		for _, s := range subs {
			cur, err := st.Cursors(t.Name, s.ID)
			if errors.Is(err, storage.ErrTopicNotFound) || errors.Is(err, storage.ErrSubscriptionNotFound) {
				return fmt.Sprintf("node %d: changing: %v", id, err)
			}
			if err != nil {
				c.t.Fatalf("node %d: %v", id, err)
			}
			fmt.Fprintf(&b, "  sub %s id=%d created=%s config=%q cursors=%q\n", s.Name, s.ID, s.CreateTime.Format(time.RFC3339Nano), s.Config, cur)
		}
	}
	next, err := st.NextIDs()
	if err != nil {
		c.t.Fatalf("node %d: %v", id, err)
	}
	fmt.Fprintf(&b, "next %+v\n", next)
	return b.String()
}

// waitMetaConverged waits until every running node's store holds the same
// metadata, and the leader's group has been applied everywhere; it returns
// the view.
func (c *testCluster) waitMetaConverged(ms map[uint64]*Metadata) string {
	c.t.Helper()
	nodes := c.running()
	var view string
	eventually(c.t, waitLong, fmt.Sprintf("nodes %v hold the same metadata", nodes), func() bool {
		leader := ms[nodes[0]].Group().Leader()
		lm := ms[leader]
		if lm == nil || c.nodes[leader].host == nil {
			return false
		}
		want := lm.Group().Status().Applied
		view = c.metaView(nodes[0])
		for _, id := range nodes {
			if ms[id].Group().Status().Applied < want || c.metaView(id) != view {
				return false
			}
		}
		return true
	})
	return view
}

// metaCtx bounds the metadata calls of a test.
func metaCtx(tb testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	tb.Cleanup(cancel)
	return ctx
}

// TestMetadataReplicates: topics and subscriptions made through the leader
// exist on every node with the same ids, configs and create times (the
// leader's clock); a follower refuses, naming the leader; a conflicting
// create returns the store's error to the proposer and changes nothing
// anywhere; deletes go everywhere.
func TestMetadataReplicates(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	ms := map[uint64]*Metadata{}
	for _, id := range c.ids {
		ms[id] = c.openMetadata(id)
	}
	leader := c.waitLeader(MetadataGroup, c.ids...)
	lm := ms[leader]
	ctx := metaCtx(t)

	before := c.clk.Now()
	for i := range 3 {
		if _, err := lm.CreateTopic(ctx, fmt.Sprintf("t%d", i), storage.TopicConfig{Partitions: uint32(i + 1)}); err != nil {
			t.Fatalf("CreateTopic t%d: %v", i, err)
		}
	}
	orders, err := lm.CreateTopic(ctx, "orders", storage.TopicConfig{Partitions: 2, RetentionMaxMessages: 100})
	if err != nil {
		t.Fatal(err)
	}
	sub, err := lm.CreateSubscription(ctx, "orders", "kitchen", []byte("cfg-1"), [][]byte{[]byte("c0"), []byte("c1")})
	if err != nil {
		t.Fatal(err)
	}
	after := c.clk.Now()
	if orders.ID() != 4 || sub.ID != 1 {
		t.Fatalf("orders has id %d, kitchen %d; want 4 and 1", orders.ID(), sub.ID)
	}
	if orders.CreateTime.Before(before.Truncate(time.Microsecond)) || orders.CreateTime.After(after) {
		t.Fatalf("orders created at %v, not between %v and %v", orders.CreateTime, before, after)
	}

	// An identical create is answered with the topic as it is.
	again, err := lm.CreateTopic(ctx, "orders", storage.TopicConfig{Partitions: 2, RetentionMaxMessages: 100})
	if err != nil || again != orders {
		t.Fatalf("identical create: %+v, %v; want %+v", again, err, orders)
	}
	view := c.waitMetaConverged(ms)
	t.Logf("every node:\n%s", view)

	// A follower refuses, naming the leader.
	follower := c.ids[0]
	if follower == leader {
		follower = c.ids[1]
	}
	_, err = ms[follower].CreateTopic(ctx, "refused", storage.TopicConfig{})
	var nle *NotLeaderError
	if !errors.As(err, &nle) || nle.Leader != leader {
		t.Fatalf("create on follower %d: %v, want a NotLeaderError naming %d", follower, err, leader)
	}

	// Refusals: the store's error on the proposer, no change anywhere.
	if _, err := lm.CreateTopic(ctx, "orders", storage.TopicConfig{Partitions: 3}); !errors.Is(err, storage.ErrTopicExists) {
		t.Fatalf("conflicting create: %v, want ErrTopicExists", err)
	}
	if s, err := lm.CreateSubscription(ctx, "orders", "kitchen", []byte("other"), [][]byte{nil, nil}); !errors.Is(err, storage.ErrSubscriptionExists) || s.ID != sub.ID {
		t.Fatalf("conflicting subscription create: %+v, %v; want kitchen with ErrSubscriptionExists", s, err)
	}
	if err := lm.DeleteTopic(ctx, "missing"); !errors.Is(err, storage.ErrTopicNotFound) {
		t.Fatalf("delete of a missing topic: %v, want ErrTopicNotFound", err)
	}
	if _, err := lm.UpdateTopic(ctx, "orders", storage.TopicConfig{Partitions: 5}); !errors.Is(err, storage.ErrInvalidConfig) {
		t.Fatalf("update changing partitions: %v, want ErrInvalidConfig", err)
	}
	if _, err := lm.CreateSubscription(ctx, "orders", "short", nil, [][]byte{nil}); !errors.Is(err, storage.ErrInvalidConfig) {
		t.Fatalf("subscription with one cursor for two partitions: %v, want ErrInvalidConfig", err)
	}
	if got := c.waitMetaConverged(ms); got != view {
		t.Fatalf("refused changes changed the metadata:\n%s\nwant\n%s", got, view)
	}

	// Updates and deletes go everywhere.
	up, err := lm.UpdateTopic(ctx, "orders", storage.TopicConfig{RetentionMaxMessages: 7})
	if err != nil || up.Config.Partitions != 2 || up.Config.RetentionMaxMessages != 7 {
		t.Fatalf("UpdateTopic: %+v, %v", up, err)
	}
	if _, err := lm.UpdateSubscription(ctx, "orders", "kitchen", []byte("cfg-2")); err != nil {
		t.Fatal(err)
	}
	if err := lm.DeleteTopic(ctx, "t1"); err != nil {
		t.Fatal(err)
	}
	if _, err := lm.CreateSubscription(ctx, "t0", "gone", nil, [][]byte{nil}); err != nil {
		t.Fatal(err)
	}
	if err := lm.DeleteSubscription(ctx, "t0", "gone"); err != nil {
		t.Fatal(err)
	}
	view = c.waitMetaConverged(ms)
	for _, id := range c.ids {
		st := c.nodes[id].store
		if _, err := st.Topic("t1"); !errors.Is(err, storage.ErrTopicNotFound) {
			t.Fatalf("node %d: t1 after delete: %v", id, err)
		}
		if _, err := st.Subscription("t0", "gone"); !errors.Is(err, storage.ErrSubscriptionNotFound) {
			t.Fatalf("node %d: subscription gone after delete: %v", id, err)
		}
		if s, err := st.Subscription("orders", "kitchen"); err != nil || !bytes.Equal(s.Config, []byte("cfg-2")) {
			t.Fatalf("node %d: kitchen %+v, %v", id, s, err)
		}
	}
	if !strings.Contains(view, "next {Topic:5 Subscription:3}") {
		t.Fatalf("id counters:\n%s", view)
	}
}

// TestMetadataFailover: the leader stops, the others elect another, which
// makes more changes; the old leader comes back and catches up from the
// log. A follower then stops while the leader makes enough changes to
// snapshot and compact its log past it, deleting a topic it has; back, it
// catches up from the snapshot — the same ids, times and counters, the
// deleted topic gone — and goes on applying entries after it.
func TestMetadataFailover(t *testing.T) {
	c := newTestCluster(t, 3, func(o *Options) {
		o.SnapshotEntries = 20
		o.SnapshotKeepEntries = 5
	})
	ms := map[uint64]*Metadata{}
	for _, id := range c.ids {
		ms[id] = c.openMetadata(id)
	}
	ctx := metaCtx(t)
	leader := c.waitLeader(MetadataGroup, c.ids...)
	for i := range 5 {
		if _, err := ms[leader].CreateTopic(ctx, fmt.Sprintf("first-%d", i), storage.TopicConfig{}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := ms[leader].CreateSubscription(ctx, "first-0", "s", []byte("x"), [][]byte{[]byte("c")}); err != nil {
		t.Fatal(err)
	}
	c.waitMetaConverged(ms)

	// The leader stops; the other two go on.
	c.stop(leader)
	next := c.waitLeader(MetadataGroup, c.running()...)
	for i := range 5 {
		if _, err := ms[next].CreateTopic(ctx, fmt.Sprintf("second-%d", i), storage.TopicConfig{}); err != nil {
			t.Fatal(err)
		}
	}
	if err := ms[next].DeleteTopic(ctx, "first-1"); err != nil {
		t.Fatal(err)
	}
	c.waitMetaConverged(ms)

	// The old leader comes back and catches up from the log.
	c.start(leader)
	ms[leader] = c.openMetadata(leader)
	c.waitMetaConverged(ms)
	if st := ms[leader].Group().Status(); st.SnapshotIndex > 1 {
		t.Logf("node %d caught up through a snapshot at %d", leader, st.SnapshotIndex)
	}

	// A follower stops; the leader snapshots and compacts past it.
	lead := c.waitLeader(MetadataGroup, c.ids...)
	down := c.ids[0]
	if down == lead {
		down = c.ids[1]
	}
	downLast := ms[down].Group().Status().LastIndex
	c.stop(down)
	if err := ms[lead].DeleteTopic(ctx, "first-0"); err != nil { // down has it, and its subscription
		t.Fatal(err)
	}
	for i := range 40 {
		name := fmt.Sprintf("third-%d", 9-i%10) // ids in the reverse of name order
		if i < 10 {
			if _, err := ms[lead].CreateTopic(ctx, name, storage.TopicConfig{}); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if _, err := ms[lead].UpdateTopic(ctx, name, storage.TopicConfig{RetentionMaxMessages: uint64(i)}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := ms[lead].CreateSubscription(ctx, "third-0", "s", []byte("y"), [][]byte{[]byte("c3")}); err != nil {
		t.Fatal(err)
	}
	if st := ms[lead].Group().Status(); st.FirstIndex <= downLast+1 {
		t.Fatalf("leader's log starts at %d; it should have compacted past node %d's last entry %d", st.FirstIndex, down, downLast)
	}
	c.start(down)
	ms[down] = c.openMetadata(down)
	view := c.waitMetaConverged(ms)
	if st := ms[down].Group().Status(); st.SnapshotIndex <= downLast {
		t.Fatalf("node %d: snapshot index %d, want past %d: it did not catch up from a snapshot", down, st.SnapshotIndex, downLast)
	}
	if strings.Contains(view, "first-0") || strings.Contains(view, "first-1") || !strings.Contains(view, "third-9") {
		t.Fatalf("metadata after the snapshot:\n%s", view)
	}

	// And it goes on from the snapshot: a create gets the same id everywhere.
	tp, err := ms[lead].CreateTopic(ctx, "fourth", storage.TopicConfig{})
	if err != nil {
		t.Fatal(err)
	}
	if tp.ID() != 21 {
		t.Fatalf("fourth has id %d, want 21 (20 topics made before it)", tp.ID())
	}
	t.Logf("every node:\n%s", c.waitMetaConverged(ms))
}

// TestMetadataReplay: a node restarts with its applied index behind its
// store — as after a crash between the last change of a batch and the
// index the batch's unchanged entries bring — and replays those entries
// (identical creates, refused ones) without changing anything twice. A
// plain restart replays nothing.
func TestMetadataReplay(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	ms := map[uint64]*Metadata{}
	for _, id := range c.ids {
		ms[id] = c.openMetadata(id)
	}
	ctx := metaCtx(t)
	leader := c.waitLeader(MetadataGroup, c.ids...)
	lm := ms[leader]
	if _, err := lm.CreateTopic(ctx, "a", storage.TopicConfig{}); err != nil {
		t.Fatal(err)
	}
	if _, err := lm.CreateSubscription(ctx, "a", "s", nil, [][]byte{nil}); err != nil {
		t.Fatal(err)
	}
	c.waitMetaConverged(ms)
	follower := c.ids[0]
	if follower == leader {
		follower = c.ids[1]
	}
	changed, err := c.nodes[follower].store.AdminApplied(MetadataGroup)
	if err != nil {
		t.Fatal(err)
	}

	// Entries that change nothing.
	if _, err := lm.CreateTopic(ctx, "a", storage.TopicConfig{}); err != nil {
		t.Fatal(err)
	}
	if _, err := lm.CreateTopic(ctx, "a", storage.TopicConfig{Partitions: 2}); !errors.Is(err, storage.ErrTopicExists) {
		t.Fatal(err)
	}
	if _, err := lm.CreateSubscription(ctx, "a", "s", nil, [][]byte{nil}); !errors.Is(err, storage.ErrSubscriptionExists) {
		t.Fatal(err)
	}
	if err := lm.DeleteTopic(ctx, "b"); !errors.Is(err, storage.ErrTopicNotFound) {
		t.Fatal(err)
	}
	view := c.waitMetaConverged(ms)
	last := ms[follower].Applied()
	if last <= changed {
		t.Fatalf("applied %d, want past %d", last, changed)
	}

	// The follower restarts with its index back at the last change.
	c.stop(follower)
	c.start(follower)
	if err := c.nodes[follower].store.SetAdminApplied(MetadataGroup, changed); err != nil {
		t.Fatal(err)
	}
	ms[follower] = c.openMetadata(follower)
	eventually(t, waitLong, "the follower replays", func() bool { return ms[follower].Applied() >= last })
	if got := c.waitMetaConverged(ms); got != view {
		t.Fatalf("after the replay:\n%s\nwant\n%s", got, view)
	}

	// A plain restart of every node replays nothing and changes nothing.
	for _, id := range c.ids {
		c.stop(id)
	}
	for _, id := range c.ids {
		c.start(id)
		ms[id] = c.openMetadata(id)
		if got := ms[id].Applied(); got < last {
			t.Fatalf("node %d restarts at applied %d, want %d", id, got, last)
		}
	}
	c.waitLeader(MetadataGroup, c.ids...)
	if got := c.waitMetaConverged(ms); got != view {
		t.Fatalf("after a restart:\n%s\nwant\n%s", got, view)
	}
}
