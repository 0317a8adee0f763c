package cluster

import "go.etcd.io/raft/v3"

// Status is a group's state as one replica sees it, for `ferry cluster
// status`.
type Status struct {
	Group uint64 // the group's id
	Node  uint64 // the replica's node id
	// State is the replica's role: StateFollower, StatePreCandidate,
	// StateCandidate or StateLeader.
	State  raft.StateType
	Term   uint64 // current term
	Leader uint64 // the leader's node id; 0 if none is known
	// LeadTransferee is the node leadership is being transferred to, on a
	// leader; 0 if none.
	LeadTransferee uint64
	Commit         uint64 // highest index known committed
	Applied        uint64 // highest index applied (state machine or Raft's own)
	FirstIndex     uint64 // first entry still in the log
	LastIndex      uint64 // last entry in the log
	SnapshotIndex  uint64 // index of the latest snapshot
	// Quiesced says the group is at rest on this replica: no ticks, no
	// heartbeats, until a proposal or a message wakes it.
	Quiesced bool
	// Followers is, on the leader, each other voter's replication
	// progress; nil on other replicas.
	Followers map[uint64]Progress
	// Err is why the group stopped (ErrClosed, or one wrapping
	// ErrGroupFailed); nil while it runs.
	Err error
}

// Progress is how far the leader knows a follower to be.
type Progress struct {
	Match uint64 // highest index known replicated to the follower
	Next  uint64 // next index the leader sends it
	Lag   uint64 // LastIndex - Match: entries the follower lacks
	// State is how the leader replicates to it: StateProbe (finding where
	// the logs agree, or unreachable), StateReplicate (streaming) or
	// StateSnapshot (a snapshot is being sent).
	State string
	// Active says the leader heard from it within the last election
	// timeout; on a quiesced leader, which counts no time, that the
	// follower's node was heard from (a beat) within one.
	Active bool
}

// LeaderChange says who leads a group, from the term on, as this replica
// learned it.
type LeaderChange struct {
	Group  uint64 // the group's id
	Leader uint64 // the leader's node id; 0 while none is known (an election)
	Term   uint64 // the term
}
