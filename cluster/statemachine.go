package cluster

import (
	"context"

	"go.etcd.io/raft/v3/raftpb"

	clusterv1 "github.com/ferrymq/ferry/proto/ferry/cluster/v1"
)

// StateMachine is what a Group replicates: the deterministic application
// of the group's committed entries, in log order, on every replica. The
// Group calls it one call at a time: Apply and Snapshot from its applier
// goroutine, Applied and Restore from its loop while the applier is idle
// (group_apply.go).
type StateMachine interface {
	// Apply applies committed entries, in log order, each exactly once
	// (counting what Restore brought in). Each entry is one Propose's data,
	// with its Index and Term; Raft's own entries (a new leader's empty
	// entry, configuration changes) are the Group's business and never
	// passed, so indexes may skip. Apply must be deterministic: the same
	// entries applied to the same state give the same state on every
	// replica, so it must not fail where another replica would not (an
	// error stops the group: ErrGroupFailed). It must not modify the
	// entries or their data, and may keep them.
	Apply(entries []*raftpb.Entry) error
	// Applied returns the index of the last entry applied or restored, as
	// the state machine would find it after a restart: a durable state
	// machine returns what it has made durable, an in-memory one 0. The
	// Group asks once, when it starts, and passes on only later entries.
	Applied() uint64
	// Snapshot returns the state as of the last entry applied, encoded
	// for Restore. The Group stores it as the Raft snapshot at its applied
	// index (which may be past the last entry Apply saw, if Raft's own
	// entries followed it) and sends it to followers too far behind to
	// catch up from the log. The slice is the Group's.
	Snapshot() ([]byte, error)
	// Restore replaces the state with the one in snap.Data, as of
	// snap.Metadata.Index: Applied returns that index afterwards. Empty
	// data is the empty state (the snapshot a new group starts from, at
	// index 1, has none). It must not modify snap, and may keep it.
	Restore(snap *raftpb.Snapshot) error
}

// peerRestorer is a StateMachine whose snapshots do not hold its state
// but mark where it was taken (PartitionStateMachine): it restores one by
// fetching the state from a peer that has applied at least that far. For
// a snapshot with data the Group calls restoreFrom, not Restore, with the
// node that sent the snapshot first, then the other voters in turn, over
// and over after a backoff until one works or the group stops (ctx ends).
// Applied may then be past the snapshot's index, and past the last entry
// of the group's log.
type peerRestorer interface {
	restoreFrom(ctx context.Context, snap *raftpb.Snapshot, f partitionFetcher, group, peer uint64) error
}

// partitionFetcher opens FetchPartition streams to peers: the Transport.
type partitionFetcher interface {
	// fetchPartition asks node peer for a partition; req's from and to
	// are filled in. recv returns the responses, checked, then io.EOF.
	fetchPartition(ctx context.Context, peer uint64, req *clusterv1.FetchPartitionRequest) (recv func() (*clusterv1.FetchPartitionResponse, error), err error)
}
