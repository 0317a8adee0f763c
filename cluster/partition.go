package cluster

import (
	"context"
	"sync/atomic"

	"go.etcd.io/raft/v3/raftpb"

	"github.com/ferrymq/ferry/storage"
)

// A partition's Raft group replicates a storage partition: its writer
// proposes entries through a Proposer (PartitionProposer), and every
// replica's state machine (PartitionStateMachine) applies the committed
// ones through the partition's storage.Replica.

// PartitionProposer is a partition writer's way into its group
// (storage.Proposer). The group is set once it runs, as the group needs
// the partition's Replica first; until then proposals fail with ErrClosed.
type PartitionProposer struct{ g atomic.Pointer[Group] }

// SetGroup makes p propose to g.
func (p *PartitionProposer) SetGroup(g *Group) { p.g.Store(g) }

// Propose proposes data to the group; see storage.Proposer.
func (p *PartitionProposer) Propose(data []byte, failed func(error)) {
	g := p.g.Load()
	if g == nil {
		failed(ErrClosed)
		return
	}
	g.ProposeAsync(data, func(_ uint64, err error) {
		if err != nil {
			failed(err)
		}
	})
}

// PartitionStateMachine is a partition group's state machine: its
// storage.Replica. An entry with no data is a barrier (Barrier): it
// changes nothing, and applying it tells the proposer that every entry
// before it is applied here.
//
// Partition snapshots are not built: a snapshot would have to carry the
// partition's messages. Snapshot answers ErrNoSnapshots, so a partition's
// group keeps its whole Raft log, and a follower catches up from it.
type PartitionStateMachine struct {
	rep      *storage.Replica
	restored atomic.Uint64 // the empty snapshot a new group starts from
}

// NewPartitionStateMachine returns the state machine of rep's group.
func NewPartitionStateMachine(rep *storage.Replica) *PartitionStateMachine {
	return &PartitionStateMachine{rep: rep}
}

// Apply applies entries through the Replica; see StateMachine.
func (m *PartitionStateMachine) Apply(ents []*raftpb.Entry) error {
	for _, e := range ents {
		if len(e.GetData()) == 0 {
			continue // a barrier
		}
		if err := m.rep.Apply(context.Background(), e.GetIndex(), e.GetData()); err != nil {
			return err
		}
	}
	return nil
}

// Applied returns the index of the last entry the partition applied.
func (m *PartitionStateMachine) Applied() uint64 { return max(m.rep.Applied(), m.restored.Load()) }

// Snapshot answers ErrNoSnapshots.
func (m *PartitionStateMachine) Snapshot() ([]byte, error) { return nil, ErrNoSnapshots }

// Restore takes the empty snapshot a new group starts from; a snapshot
// with data cannot be restored, as none is ever taken.
func (m *PartitionStateMachine) Restore(snap *raftpb.Snapshot) error {
	if len(snap.GetData()) > 0 {
		return ErrNoSnapshots
	}
	m.restored.Store(snap.GetMetadata().GetIndex())
	return nil
}

// Barrier returns once every entry committed to g before the call is
// applied on this node: the state a new leader of the group, or a node
// about to serve from the group's partition, reads afterwards includes
// every write acknowledged before. It proposes an empty entry, so it
// fails as Propose does.
func Barrier(ctx context.Context, g *Group) error {
	_, err := g.Propose(ctx, nil)
	return err
}
