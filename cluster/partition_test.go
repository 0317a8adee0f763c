package cluster

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"

	"github.com/ferrymq/ferry/storage"
)

// These tests run a storage partition through a Raft group of three nodes
// — storage.Replicate's writer proposing through Group.ProposeAsync, every
// replica applying through storage.Replica — as the broker will once it is
// wired to the cluster. Partition snapshots are not built yet (a follower
// too far behind would need the partition's messages, not a small state),
// so these groups never snapshot.

const partitionGroup = 1

// addPartition creates topic orders on node id's store (if it has not got
// it), makes its partition 0 replicated and runs its group.
func (c *testCluster) addPartition(id uint64) {
	c.t.Helper()
	ctx := context.Background()
	st := c.nodes[id].store
	if _, err := st.Topic("orders"); errors.Is(err, storage.ErrTopicNotFound) {
		if _, err := st.CreateTopic(ctx, "orders", storage.TopicConfig{Partitions: 1}); err != nil {
			c.t.Fatalf("node %d: create topic: %v", id, err)
		}
	}
	p := &PartitionProposer{}
	rep, err := st.Replicate(ctx, "orders", 0, p)
	if err != nil {
		c.t.Fatalf("node %d: Replicate: %v", id, err)
	}
	g, err := c.nodes[id].host.AddGroup(partitionGroup, c.ids, NewPartitionStateMachine(rep))
	if err != nil {
		c.t.Fatalf("node %d: AddGroup: %v", id, err)
	}
	p.SetGroup(g)
}

// publish appends batch to orders on node id until it is acknowledged,
// retrying with the same ids while leadership moves (a retry of a batch
// that did commit is answered as duplicates); it returns the results.
func (c *testCluster) publish(id uint64, batch []storage.Message) []storage.AppendResult {
	c.t.Helper()
	var res []storage.AppendResult
	eventually(c.t, waitLong, fmt.Sprintf("node %d acknowledges a batch", id), func() bool {
		var err error
		res, err = c.nodes[id].store.Append(context.Background(), "orders", 0, batch)
		return err == nil
	})
	return res
}

// partitionLog reads orders partition 0 on node id: "offset id payload".
func (c *testCluster) partitionLog(id uint64) []string {
	c.t.Helper()
	var out []string
	for from := uint64(0); ; {
		msgs, err := c.nodes[id].store.Read(context.Background(), "orders", 0, from, 1000, 4<<20)
		if err != nil {
			c.t.Fatalf("node %d: read: %v", id, err)
		}
		if len(msgs) == 0 {
			return out
		}
		for _, m := range msgs {
			out = append(out, fmt.Sprintf("%d %s %s", m.Offset, m.ID, m.Payload))
		}
		from = msgs[len(msgs)-1].Offset + 1
	}
}

// waitPartitionConverged waits until every running node holds want
// messages, and checks that they hold the same ones at the same offsets.
func (c *testCluster) waitPartitionConverged(want int) []string {
	c.t.Helper()
	var logs [][]string
	eventually(c.t, waitLong, fmt.Sprintf("every node holds %d messages", want), func() bool {
		logs = logs[:0]
		for _, id := range c.running() {
			l := c.partitionLog(id)
			if len(l) != want {
				return false
			}
			logs = append(logs, l)
		}
		return true
	})
	for i := 1; i < len(logs); i++ {
		if !slices.Equal(logs[i], logs[0]) {
			c.t.Fatalf("nodes %v disagree on the partition", c.running())
		}
	}
	return logs[0]
}

func batchOf(prefix string, n int) []storage.Message {
	b := make([]storage.Message, n)
	for i := range b {
		id := fmt.Sprintf("%s-%d", prefix, i)
		b[i] = storage.Message{ID: id, Payload: []byte("payload of " + id)}
	}
	return b
}

// TestReplicatedPartitionFailover: a publish to a replicated partition is
// acknowledged once a quorum has it and lands at the same offset on every
// replica; a follower refuses it, naming the leader; when the leader stops,
// the survivors elect another and go on from the same head, losing nothing
// acknowledged; the old leader comes back and catches up from the log; and
// every message is stored once, its offsets dense.
func TestReplicatedPartitionFailover(t *testing.T) {
	c := startCluster(t, 3, clusterConfig{fsync: storage.FsyncNever, tweak: func(o *Options) {
		o.SnapshotEntries = 1 << 62 // see the top of the file
	}})
	for _, id := range c.ids {
		c.addPartition(id)
	}
	leader := c.waitLeader(partitionGroup, c.ids...)
	follower := c.ids[0]
	if follower == leader {
		follower = c.ids[1]
	}
	_, err := c.nodes[follower].store.Append(context.Background(), "orders", 0, batchOf("refused", 1))
	var nle *NotLeaderError
	if !errors.As(err, &nle) || nle.Leader != leader {
		t.Fatalf("append on follower %d: %v, want a NotLeaderError naming %d", follower, err, leader)
	}

	// Concurrent batches; every acknowledged message is at a distinct offset.
	acked := map[string]uint64{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for b := range 10 {
				batch := batchOf(fmt.Sprintf("first-w%d-b%d", w, b), 10)
				res := c.publish(leader, batch)
				mu.Lock()
				for i, r := range res {
					acked[batch[i].ID] = r.Offset
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	c.waitPartitionConverged(400)

	// The leader stops; the other two go on.
	c.stop(leader)
	next := c.waitLeader(partitionGroup, c.running()...)
	for b := range 10 {
		batch := batchOf(fmt.Sprintf("second-b%d", b), 10)
		for i, r := range c.publish(next, batch) {
			acked[batch[i].ID] = r.Offset
		}
	}
	c.waitPartitionConverged(500)

	// The old leader comes back and catches up from the log.
	c.start(leader)
	c.addPartition(leader)
	log := c.waitPartitionConverged(500)

	seen := map[string]bool{}
	for off, line := range log {
		var o uint64
		var id, payload string
		if _, err := fmt.Sscanf(line, "%d %s payload of %s", &o, &id, &payload); err != nil || o != uint64(off) {
			t.Fatalf("message %d is %q: offsets are not dense", off, line)
		}
		if seen[id] {
			t.Fatalf("id %s stored twice", id)
		}
		seen[id] = true
		if want, ok := acked[id]; !ok || want != o {
			t.Fatalf("message %s at offset %d, acknowledged at %d (%v)", id, o, want, ok)
		}
	}
	if len(acked) != 500 {
		t.Fatalf("%d messages acknowledged, want 500", len(acked))
	}
}
