package cluster

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/ferrymq/ferry/internal/clock"
	"github.com/ferrymq/ferry/storage"
)

// ownWait bounds how long Cursors waits for the topic's barriers.
const ownWait = 10 * time.Second

// PartitionGroup returns the group of topic's partition part on this
// node; an error wrapping storage.ErrNotReplicated while it does not run.
func (n *Node) PartitionGroup(topic string, part uint32) (*Group, error) {
	t, err := n.store.Topic(topic)
	if err != nil {
		return nil, err
	}
	n.partsMu.Lock()
	rp := n.parts[partGroupID(t.ID(), part)]
	n.partsMu.Unlock()
	if rp == nil {
		return nil, fmt.Errorf("topic %q partition %d: %w", topic, part, storage.ErrNotReplicated)
	}
	return rp.group, nil
}

// ownerGroup returns the group of subscription sub's owner partition, and
// that partition.
func (n *Node) ownerGroup(topic, sub string) (*Group, uint32, error) {
	t, err := n.store.Topic(topic)
	if err != nil {
		return nil, 0, err
	}
	part := OwnerPartition(sub, t.Config.Partitions)
	g, err := n.PartitionGroup(topic, part)
	return g, part, err
}

// Owner returns the node that owns subscription sub of topic: the leader
// of its owner partition, or a *NotLeaderError while there is none.
func (n *Node) Owner(topic, sub string) (uint64, error) {
	g, _, err := n.ownerGroup(topic, sub)
	if err != nil {
		return 0, err
	}
	leader := g.Leader()
	if leader == 0 {
		return 0, &NotLeaderError{Group: g.ID()}
	}
	return leader, nil
}

// Cursors loads a subscription's cursors once the topic's partitions have
// applied every write committed before: the previous owner's last cursor
// writes included.
func (n *Node) Cursors(topic string, sid uint32) ([][]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), ownWait)
	defer cancel()
	if err := n.SyncTopic(ctx, topic); err != nil {
		return nil, err
	}
	return n.store.Cursors(topic, sid)
}

// Own takes subscription name of topic over as its owner. Its epoch is
// the Raft term in which this node leads the subscription's owner
// partition: one leader per term, and a later owner is elected in a later
// term, so epochs grow with every change of owner. The fence at that epoch
// goes through every partition of the topic, and once it is applied here,
// so is every write committed before it: the cursors read then hold every
// write an earlier owner made, and none it makes after can land
// (storage.ErrFenced). It fails with an error wrapping ErrNotOwner if this
// node does not lead the owner partition.
func (n *Node) Own(ctx context.Context, topic, name string, sid uint32) (uint64, [][]byte, error) {
	epoch, err := n.ownerEpoch(topic, name)
	if err != nil {
		return 0, nil, err
	}
	if err := n.fence(ctx, topic, name, sid, epoch); err != nil {
		return 0, nil, err
	}
	cursors, err := n.store.Cursors(topic, sid)
	return epoch, cursors, err
}

// ownerEpoch is the term in which this node leads subscription sub's owner
// partition; an error wrapping ErrNotOwner if it does not.
func (n *Node) ownerEpoch(topic, sub string) (uint64, error) {
	g, part, err := n.ownerGroup(topic, sub)
	if err != nil {
		return 0, err
	}
	st := g.Status()
	if st.Err != nil {
		return 0, st.Err
	}
	if st.Leader != n.id {
		return 0, fmt.Errorf("node %d does not lead topic %q partition %d, which owns subscription %q: %w", n.id, topic, part, sub, ErrNotOwner)
	}
	return st.Term, nil
}

// fence raises subscription sid's owner epoch to epoch in every partition
// of topic, trying again while a partition's outcome is unknown (an
// election) as long as this node still owns the subscription in that
// epoch. A fence is idempotent.
func (n *Node) fence(ctx context.Context, topic, sub string, sid uint32, epoch uint64) error {
	for {
		err := n.store.Fence(ctx, topic, sid, epoch)
		if !outcomeUnknown(err) && !errors.Is(err, storage.ErrNotReplicated) {
			return err
		}
		if now, oerr := n.ownerEpoch(topic, sub); oerr != nil || now != epoch {
			return err
		}
		if !clock.Sleep(n.clk, retryPause, ctx.Done()) {
			return err
		}
	}
}
