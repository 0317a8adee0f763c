package cluster

import "go.etcd.io/raft/v3/raftpb"

// StateMachine is what a Group replicates: the deterministic application
// of the group's committed entries, in log order, on every replica. The
// Group calls it from its own goroutine only, one call at a time.
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
