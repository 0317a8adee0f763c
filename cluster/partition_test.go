package cluster

import (
	"context"
	"errors"
	"expvar"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"go.etcd.io/raft/v3/raftpb"

	"github.com/ferrymq/ferry/storage"
)

// These tests run a storage partition through a Raft group of three nodes
// — storage.Replicate's writer proposing through Group.ProposeAsync, every
// replica applying through storage.Replica — as the broker does in cluster
// mode; and a follower that fell behind the compacted log catching up
// from a partition snapshot, fetching the partition from a peer.

const partitionGroup = 1

// addPartition creates topic orders on node id's store (if it has not got
// it), makes its partition 0 replicated and runs its group; it returns the
// group's state machine. tweak, if given, adjusts the state machine before
// the group starts.
func (c *testCluster) addPartition(id uint64, tweak ...func(*PartitionStateMachine)) *PartitionStateMachine {
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
	sm := NewPartitionStateMachine(rep)
	for _, f := range tweak {
		f(sm)
	}
	g, err := c.nodes[id].host.AddGroup(partitionGroup, c.ids, sm)
	if err != nil {
		c.t.Fatalf("node %d: AddGroup: %v", id, err)
	}
	p.SetGroup(g)
	return sm
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

// partitionLog reads orders partition 0 on node id: "offset id payload",
// the line of offset n at index n, an empty line for an offset retention
// trimmed. A read that finds the partition shorter than a moment before
// (an import began: the partition reads empty until it ends), or trimmed
// meanwhile, returns what was read so far: callers wait for the lengths
// they want.
func (c *testCluster) partitionLog(id uint64) []string {
	c.t.Helper()
	ps, err := c.nodes[id].store.Partitions("orders")
	if err != nil {
		c.t.Fatalf("node %d: %v", id, err)
	}
	out := make([]string, ps[0].First)
	for from := ps[0].First; ; {
		msgs, err := c.nodes[id].store.Read(context.Background(), "orders", 0, from, 1000, 4<<20)
		var oor *storage.OffsetOutOfRangeError
		if errors.As(err, &oor) {
			return out
		}
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

// waitPartitionConverged waits until every running node holds the
// messages up to offset want-1 (from the first retention left), the same
// ones at the same offsets.
func (c *testCluster) waitPartitionConverged(want int) []string {
	c.t.Helper()
	var logs [][]string
	eventually(c.t, waitLong, fmt.Sprintf("every node holds the same messages up to offset %d", want-1), func() bool {
		logs = logs[:0]
		for _, id := range c.running() {
			l := c.partitionLog(id)
			if len(l) != want || len(logs) > 0 && !slices.Equal(l, logs[0]) {
				return false
			}
			logs = append(logs, l)
		}
		return true
	})
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
	c := startCluster(t, 3, clusterConfig{fsync: storage.FsyncNever})
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

// TestPartitionWritesOnce: on every node of three, a replicated
// partition's payloads are written once — in the Raft entries — not again
// when the entries are applied (storage stores references to them): the
// bytes the three stores write to their Badger value logs and memtables
// (Badger's counters, for the whole process) stay within 1.3× three times
// the payload bytes. Before the references they were 2.2×.
func TestPartitionWritesOnce(t *testing.T) {
	c := startCluster(t, 3, clusterConfig{fsync: storage.FsyncNever})
	for _, id := range c.ids {
		c.addPartition(id)
	}
	leader := c.waitLeader(partitionGroup, c.ids...)
	c.publish(leader, batchOf("warm", 1))
	c.waitPartitionConverged(1)
	before := badgerWritten(t)
	const batches, n, size = 20, 50, 1024
	for b := range batches {
		batch := make([]storage.Message, n)
		for i := range batch {
			batch[i] = storage.Message{ID: fmt.Sprintf("b%d-%d", b, i), Payload: make([]byte, size)}
		}
		c.publish(leader, batch)
	}
	c.waitPartitionConverged(1 + batches*n)
	ratio := float64(badgerWritten(t)-before) / float64(3*batches*n*size)
	t.Logf("%.2f bytes written per payload byte per node", ratio)
	if ratio < 1 || ratio > 1.3 {
		t.Fatalf("%.2f bytes written per payload byte per node, want 1 to 1.3", ratio)
	}
}

// badgerWritten is what every Badger database of the process has written
// to value logs and memtables (their WAL), from Badger's expvar counters.
func badgerWritten(t *testing.T) int64 {
	t.Helper()
	var n int64
	for _, name := range []string{"badger_write_bytes_vlog", "badger_write_bytes_l0"} {
		v, ok := expvar.Get(name).(*expvar.Int)
		if !ok {
			t.Fatalf("badger exports no %s", name)
		}
		n += v.Value()
	}
	return n
}

// snapshotCluster starts three nodes whose groups snapshot every 10
// entries, keep 5 behind, and send partition copies in chunks of 1 KiB;
// each has topic orders (dedup window 1h) with subscription kitchen and
// runs its partition 0's group. It returns the cluster, the leader and the
// subscription's id.
func snapshotCluster(t *testing.T) (*testCluster, uint64, uint32) {
	t.Helper()
	c := startCluster(t, 3, clusterConfig{fsync: storage.FsyncNever, tweak: func(o *Options) {
		o.SnapshotEntries, o.SnapshotKeepEntries = 10, 5
		o.SnapshotChunkBytes = 1 << 10
	}})
	var sid uint32
	for _, id := range c.ids {
		st := c.nodes[id].store
		if _, err := st.CreateTopic(context.Background(), "orders", storage.TopicConfig{Partitions: 1, DedupWindow: time.Hour}); err != nil {
			t.Fatal(err)
		}
		sub, err := st.CreateSubscription(context.Background(), "orders", "kitchen", nil, [][]byte{[]byte("start")})
		if err != nil {
			t.Fatal(err)
		}
		sid = sub.ID
		c.addPartition(id)
	}
	return c, c.waitLeader(partitionGroup, c.ids...), sid
}

// write stores w on node id until it is acknowledged, retrying while
// leadership moves.
func (c *testCluster) write(id uint64, w storage.Write) {
	c.t.Helper()
	eventually(c.t, waitLong, fmt.Sprintf("node %d acknowledges a write", id), func() bool {
		_, err := c.nodes[id].store.Write(context.Background(), w)
		return err == nil
	})
}

// fallBehind stops a follower of the partition's group, then publishes
// batches of 5 (with a cursor write and an acked id after each), with
// retention keeping the last fallBehindKeep messages, until the leader's
// log is compacted past what the follower has: the log keeps every entry
// a retained message is stored in (storage's message references), so only
// retention lets it go. It returns the follower and the batches published
// meanwhile.
func (c *testCluster) fallBehind(leader uint64, sid uint32) (uint64, [][]storage.Message) {
	c.t.Helper()
	behind := c.ids[0]
	if behind == leader {
		behind = c.ids[1]
	}
	last := c.group(behind, partitionGroup).Status().LastIndex
	c.stop(behind)
	ctx := context.Background()
	st := c.nodes[leader].store
	if _, err := st.UpdateTopic(ctx, "orders", func(tc *storage.TopicConfig) { tc.RetentionMaxMessages = fallBehindKeep }); err != nil {
		c.t.Fatal(err)
	}
	var batches [][]storage.Message
	for b := 0; b < 30 || (b < 100 && c.group(leader, partitionGroup).Status().FirstIndex <= last+1); b++ {
		batch := batchOf(fmt.Sprintf("late-b%d", b), 5)
		c.publish(leader, batch)
		c.write(leader, storage.Write{Topic: "orders", Subscription: sid,
			Cursors:  []storage.CursorWrite{{Partition: 0, State: []byte(fmt.Sprint("after late batch ", b))}},
			AckedIDs: []string{batch[0].ID}, AckedIDTTL: 100000 * time.Hour})
		batches = append(batches, batch)
		if err := st.EnforceRetention(ctx); err != nil {
			c.t.Fatalf("node %d: retention: %v", leader, err)
		}
	}
	if first := c.group(leader, partitionGroup).Status().FirstIndex; first <= last+1 {
		c.t.Fatalf("leader's log starts at %d; node %d's ends at %d: no snapshot needed", first, behind, last)
	}
	return behind, batches
}

// fallBehindKeep is how many messages retention keeps while fallBehind
// publishes.
const fallBehindKeep = 20

// checkSameState checks that every running node has the same cursors and
// acked ids for sid, and that ids are acked.
func (c *testCluster) checkSameState(sid uint32, acked []string) {
	c.t.Helper()
	var want string
	for i, id := range c.running() {
		st := c.nodes[id].store
		cursors, err := st.Cursors("orders", sid)
		if err != nil {
			c.t.Fatalf("node %d: cursors: %v", id, err)
		}
		got, err := st.AckedIDs("orders", sid, append(slices.Clone(acked), "never-acked"))
		if err != nil {
			c.t.Fatalf("node %d: acked ids: %v", id, err)
		}
		if !slices.Equal(got, append(slices.Repeat([]bool{true}, len(acked)), false)) {
			c.t.Fatalf("node %d: acked ids %v of %q", id, got, acked)
		}
		state := fmt.Sprintf("%q", cursors)
		if i == 0 {
			want = state
		} else if state != want {
			c.t.Fatalf("node %d has cursors %s, node %d %s", id, state, c.running()[0], want)
		}
	}
}

// TestPartitionSnapshotCatchUp: the partition's group compacts its log
// behind snapshots that hold no messages; a follower stopped meanwhile
// comes back behind the leader's first index, gets a snapshot, fetches the
// partition from a peer, and then holds exactly the same messages at the
// same offsets, the same cursors and acked ids — and, once it leads, gives
// the same dedup answers: a retry of a batch published while it was down
// is answered as duplicates at the original offsets.
func TestPartitionSnapshotCatchUp(t *testing.T) {
	c, leader, sid := snapshotCluster(t)
	for b := range 5 {
		c.publish(leader, batchOf(fmt.Sprintf("early-b%d", b), 5))
	}
	c.waitPartitionConverged(25)

	behind, late := c.fallBehind(leader, sid)
	want := 25 + 5*len(late)
	c.waitPartitionConverged(want)

	c.start(behind)
	sm := c.addPartition(behind)
	log := c.waitPartitionConverged(want)
	if sm.Imports() == 0 {
		t.Fatalf("node %d caught up without importing the partition: the log was not compacted", behind)
	}
	var acked []string
	for _, b := range late {
		acked = append(acked, b[0].ID)
	}
	c.checkSameState(sid, acked)

	// The caught-up node leads; a retry of a late batch is a duplicate.
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	if err := c.group(leader, partitionGroup).TransferLeadership(ctx, behind); err != nil {
		t.Fatalf("transfer leadership to node %d: %v", behind, err)
	}
	retry := late[len(late)-2] // retained: fallBehindKeep covers the last batches
	res := c.publish(behind, retry)
	for i, r := range res {
		wantLine := fmt.Sprintf("%d %s payload of %s", r.Offset, retry[i].ID, retry[i].ID)
		if !r.Duplicate || int(r.Offset) >= len(log) || log[r.Offset] != wantLine {
			t.Fatalf("retry of %s on node %d: %+v, want a duplicate of %q", retry[i].ID, behind, r, wantLine)
		}
	}
	res = c.publish(behind, batchOf("after", 1))
	if res[0].Duplicate || res[0].Offset != uint64(want) {
		t.Fatalf("a new message on node %d: %+v, want offset %d", behind, res[0], want)
	}
	c.waitPartitionConverged(want + 1)
}

// TestPartitionSnapshotRestoreCutShort: a follower whose import of the
// partition stops after two chunks (the peer failing, then the node
// stopping mid-restore) is left with a partition that reads empty and
// claims nothing applied; restarted, its group finds the snapshot it saved
// ahead of the partition, fetches the partition again, and catches up.
func TestPartitionSnapshotRestoreCutShort(t *testing.T) {
	c, leader, sid := snapshotCluster(t)
	behind, late := c.fallBehind(leader, sid)
	want := 5 * len(late)
	c.waitPartitionConverged(want)

	c.start(behind)
	cut := make(chan struct{}, 1)
	c.addPartition(behind, func(sm *PartitionStateMachine) {
		sm.afterChunk = func(chunks int) error {
			if chunks < 2 {
				return nil
			}
			select {
			case cut <- struct{}{}:
			default:
			}
			return errors.New("cut short after two chunks")
		}
	})
	select {
	case <-cut:
	case <-time.After(waitLong):
		t.Fatalf("node %d never imported two chunks", behind)
	}
	c.stop(behind)

	c.start(behind)
	if ps, err := c.nodes[behind].store.Partitions("orders"); err != nil || ps[0].Head != 0 {
		t.Fatalf("node %d after a cut-short import: %+v, %v; want an empty partition", behind, ps, err)
	}
	sm := c.addPartition(behind)
	c.waitPartitionConverged(want)
	if sm.Imports() != 1 {
		t.Fatalf("node %d imported %d copies after it restarted, want 1", behind, sm.Imports())
	}
	var acked []string
	for _, b := range late {
		acked = append(acked, b[0].ID)
	}
	c.checkSameState(sid, acked)
}

// TestPartitionSnapshotSyncs: a partition's snapshot, which lets the group
// compact its log, first makes the partition's applies durable (they are
// not fsynced on their own); its marker names the partition and what it
// applied, and Restore takes only a marker of this partition.
func TestPartitionSnapshotSyncs(t *testing.T) {
	sopts := storage.DefaultOptions(t.TempDir())
	sopts.Logger = testLogger(t)
	sopts.MemTableBytes = storage.MinMemTableBytes
	sopts.Fsync = storage.FsyncAlways
	st, err := storage.Open(sopts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close(context.Background()) })
	topic, err := st.CreateTopic(context.Background(), "orders", storage.TopicConfig{Partitions: 2})
	if err != nil {
		t.Fatal(err)
	}
	rep, err := st.Replicate(context.Background(), "orders", 1, &PartitionProposer{})
	if err != nil {
		t.Fatal(err)
	}
	sm := NewPartitionStateMachine(rep)
	before := st.Syncs()
	data, err := sm.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	if st.Syncs() == before {
		t.Fatal("Snapshot did not sync the store")
	}
	tid, part, applied, err := decodePartitionMarker(data)
	if err != nil || tid != topic.ID() || part != 1 || applied != 0 {
		t.Fatalf("marker %x: topic id %d partition %d applied %d, %v", data, tid, part, applied, err)
	}
	snap := func(data []byte) *raftpb.Snapshot {
		return &raftpb.Snapshot{Data: data, Metadata: &raftpb.SnapshotMetadata{Index: new(uint64(9)), Term: new(uint64(2))}}
	}
	if err := sm.Restore(snap(encodePartitionMarker(topic.ID(), 0, 9))); !errors.Is(err, storage.ErrCorrupt) {
		t.Fatalf("Restore of another partition's marker: %v, want ErrCorrupt", err)
	}
	if err := sm.Restore(snap(data)); err == nil {
		t.Fatal("Restore of a marker ahead of the partition succeeded without fetching it")
	}
}
