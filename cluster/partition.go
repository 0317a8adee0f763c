package cluster

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"sync/atomic"

	"go.etcd.io/raft/v3/raftpb"

	clusterv1 "github.com/ferrymq/ferry/proto/ferry/cluster/v1"
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

// Leads reports whether this node leads the group (storage.Leadership).
func (p *PartitionProposer) Leads() bool {
	g := p.g.Load()
	return g != nil && g.Leader() == g.node
}

// EntryLog returns the group's Raft log, nil until the group is set, and
// the length of the header the group puts before a proposal's data
// (storage.EntryLog): the partition then stores applied messages as
// references to their entries in it, not copies.
func (p *PartitionProposer) EntryLog() (*storage.RaftLog, int) {
	if g := p.g.Load(); g != nil {
		return g.rlog, entryHeaderLen
	}
	return nil, 0
}

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
// Its snapshots do not carry the partition's messages, which every
// replica has in its store: a snapshot is a marker of where it was taken,
// cheap to take every Options.SnapshotEntries entries, so the group
// compacts its log. A replica that gets one from the leader (it was too
// far behind for the log) fetches the partition itself from a peer that
// has applied at least the snapshot's index: FetchPartition on the
// node-to-node transport, storage.Replica.Export on the peer and Import
// here (docs/cluster.md, "Partition snapshots").
type PartitionStateMachine struct {
	rep      *storage.Replica
	restored atomic.Uint64 // the empty snapshot a new group starts from
	imports  atomic.Uint64 // copies of the partition imported from peers
	// afterChunk, if set (tests), is called after each chunk imported;
	// an error aborts the import as a failed peer would.
	afterChunk func(chunks int) error
}

// NewPartitionStateMachine returns the state machine of rep's group.
func NewPartitionStateMachine(rep *storage.Replica) *PartitionStateMachine {
	return &PartitionStateMachine{rep: rep}
}

// Apply applies entries through the Replica; see StateMachine.
func (m *PartitionStateMachine) Apply(ents []*raftpb.Entry) error {
	run := make([]storage.Entry, 0, len(ents))
	for _, e := range ents {
		if len(e.GetData()) == 0 {
			continue // a barrier
		}
		run = append(run, storage.Entry{Index: e.GetIndex(), Data: e.GetData()})
	}
	return m.rep.Apply(context.Background(), run)
}

// Applied returns the index of the last entry the partition applied. It
// may be beyond the last entry of the group's log: a copy fetched from a
// peer may have applied more than the snapshot that asked for it.
func (m *PartitionStateMachine) Applied() uint64 { return max(m.rep.Applied(), m.restored.Load()) }

// Imports returns how many times the partition was replaced by a copy
// fetched from a peer to restore a snapshot.
func (m *PartitionStateMachine) Imports() uint64 { return m.imports.Load() }

// Partition snapshot marker, the data of a partition group's snapshot:
//
//	ver u8 | topic id u32 | partition u32 | applied u64
//
// applied is the partition's applied index when it was taken, at most the
// snapshot's index (which counts Raft's own entries too).
const (
	partitionMarkerVersion = 1
	partitionMarkerLen     = 1 + 4 + 4 + 8
)

func encodePartitionMarker(tid, part uint32, applied uint64) []byte {
	b := make([]byte, 0, partitionMarkerLen)
	b = append(b, partitionMarkerVersion)
	b = binary.BigEndian.AppendUint32(b, tid)
	b = binary.BigEndian.AppendUint32(b, part)
	return binary.BigEndian.AppendUint64(b, applied)
}

// decodePartitionMarker decodes a marker; a malformed one is
// storage.ErrCorrupt.
func decodePartitionMarker(b []byte) (tid, part uint32, applied uint64, err error) {
	if len(b) != partitionMarkerLen || b[0] != partitionMarkerVersion {
		return 0, 0, 0, fmt.Errorf("partition snapshot marker %x: %w", b, storage.ErrCorrupt)
	}
	return binary.BigEndian.Uint32(b[1:]), binary.BigEndian.Uint32(b[5:]), binary.BigEndian.Uint64(b[9:]), nil
}

// Snapshot makes every entry the partition applied durable (its applies
// are not fsynced on their own, and the group compacts its log behind the
// snapshot), then returns a marker of where it was taken.
func (m *PartitionStateMachine) Snapshot() ([]byte, error) {
	if err := m.rep.Sync(context.Background()); err != nil {
		return nil, err
	}
	return encodePartitionMarker(m.rep.TopicID(), m.rep.Partition(), m.rep.Applied()), nil
}

// Restore takes the empty snapshot a new group starts from. A marker needs
// the partition from a peer, which the group fetches through restoreFrom:
// Restore takes one only if the partition has applied that far already.
func (m *PartitionStateMachine) Restore(snap *raftpb.Snapshot) error {
	index := snap.GetMetadata().GetIndex()
	if len(snap.GetData()) == 0 {
		m.restored.Store(index)
		return nil
	}
	if err := m.checkMarker(snap.GetData()); err != nil {
		return err
	}
	if m.rep.Applied() < index {
		return fmt.Errorf("partition snapshot at %d: applied %d; the partition must be fetched from a peer", index, m.rep.Applied())
	}
	return nil
}

// checkMarker checks that a marker names this partition.
func (m *PartitionStateMachine) checkMarker(data []byte) error {
	tid, part, _, err := decodePartitionMarker(data)
	if err != nil {
		return err
	}
	if tid != m.rep.TopicID() || part != m.rep.Partition() {
		return fmt.Errorf("snapshot of topic id %d partition %d given to topic id %d partition %d: %w",
			tid, part, m.rep.TopicID(), m.rep.Partition(), storage.ErrCorrupt)
	}
	return nil
}

// restoreFrom restores snap, a marker, by fetching group's partition from
// node peer and importing it (peerRestorer). A partition that has applied
// the snapshot's index already is left as it is.
func (m *PartitionStateMachine) restoreFrom(ctx context.Context, snap *raftpb.Snapshot, f partitionFetcher, group, peer uint64) error {
	if err := m.checkMarker(snap.GetData()); err != nil {
		return err
	}
	index := snap.GetMetadata().GetIndex()
	if m.rep.Applied() >= index {
		return nil
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	recv, err := f.fetchPartition(ctx, peer, &clusterv1.FetchPartitionRequest{
		GroupId: group, TopicId: m.rep.TopicID(), Partition: m.rep.Partition(), MinAppliedIndex: index,
	})
	if err != nil {
		return err
	}
	resp, err := recv()
	if err == io.EOF {
		return fmt.Errorf("node %d sent no data: %w", peer, ErrInvalidFrame)
	}
	if err != nil {
		return err
	}
	// Only now, with a peer that has the data: Import empties the partition.
	im, err := m.rep.Import(ctx, index)
	if err != nil {
		return err
	}
	defer im.Abort()
	for chunks := 1; ; chunks++ {
		if err := im.Add(resp.GetChunk()); err != nil {
			return err
		}
		if m.afterChunk != nil {
			if err := m.afterChunk(chunks); err != nil {
				return err
			}
		}
		if resp, err = recv(); err == io.EOF {
			break
		} else if err != nil {
			return err
		}
	}
	if err := im.Finish(); err != nil {
		return err
	}
	m.imports.Add(1)
	return nil
}

// export streams the partition to a peer restoring it (FetchPartition), in
// chunks of about chunkBytes, if it has applied req's least index.
func (m *PartitionStateMachine) export(ctx context.Context, req *clusterv1.FetchPartitionRequest, chunkBytes int,
	send func(*clusterv1.FetchPartitionResponse) error) error {
	if req.GetTopicId() != m.rep.TopicID() || req.GetPartition() != m.rep.Partition() {
		return fmt.Errorf("group %d replicates topic id %d partition %d, not topic id %d partition %d: %w",
			req.GetGroupId(), m.rep.TopicID(), m.rep.Partition(), req.GetTopicId(), req.GetPartition(), errWrongPartition)
	}
	ex, err := m.rep.Export(ctx)
	if err != nil {
		return err
	}
	defer ex.Close()
	if ex.Applied() < req.GetMinAppliedIndex() {
		return fmt.Errorf("group %d: applied %d here, below the snapshot's %d; ask another node", req.GetGroupId(), ex.Applied(), req.GetMinAppliedIndex())
	}
	for {
		chunk, err := ex.Next(chunkBytes)
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if err := send(&clusterv1.FetchPartitionResponse{AppliedIndex: ex.Applied(), Chunk: chunk}); err != nil {
			return err
		}
	}
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
