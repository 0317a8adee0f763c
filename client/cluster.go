package client

import (
	"context"

	ferryv1 "github.com/ferrymq/ferry/proto/ferry/v1"
)

// NodeStatus is one node's view of its Raft groups.
type NodeStatus struct {
	// NodeID is the node's id.
	NodeID uint64
	// PeerAddr is the node's node-to-node address.
	PeerAddr string
	// Error is empty if the node answered; else why it did not.
	Error string
	// Groups are the groups the node runs: the metadata group first, then
	// the partitions' in group id order.
	Groups []GroupStatus
}

// GroupStatus is one Raft group as one of its replicas sees it.
type GroupStatus struct {
	// GroupID is the group's id.
	GroupID uint64
	// Topic and Partition are what the group replicates; Topic is empty
	// for the metadata group.
	Topic     string
	Partition uint32
	// Role is this replica's role: leader, follower, candidate or
	// pre-candidate.
	Role string
	// Leader is the leader's node id; 0 while none is known.
	Leader uint64
	// Term is the current term.
	Term uint64
	// CommitIndex is the highest index known committed; AppliedIndex the
	// highest applied here.
	CommitIndex, AppliedIndex uint64
	// FirstIndex and LastIndex are the first and last entries in the log;
	// SnapshotIndex the latest snapshot's index.
	FirstIndex, LastIndex, SnapshotIndex uint64
	// Followers is, on the leader, each follower's progress; empty
	// elsewhere.
	Followers []FollowerStatus
	// Error is why the group stopped; empty while it runs.
	Error string
}

// FollowerStatus is how far a group's leader knows a follower to be.
type FollowerStatus struct {
	// NodeID is the follower's node id.
	NodeID uint64
	// MatchIndex is the highest index known replicated to it.
	MatchIndex uint64
	// Lag is the entries it lacks: the leader's last index minus
	// MatchIndex.
	Lag uint64
	// State is how the leader replicates to it: probe, replicate or
	// snapshot.
	State string
	// Active is whether the leader heard from it within the last election
	// timeout.
	Active bool
}

// ClusterStatus returns every node's Raft groups as the nodes see them,
// in node id order: the node the client talks to asks the others. A
// single-node broker refuses with FAILED_PRECONDITION.
func (c *Client) ClusterStatus(ctx context.Context) ([]NodeStatus, error) {
	var resp *ferryv1.GetClusterStatusResponse
	err := c.call(ctx, func(ctx context.Context) (err error) {
		resp, err = c.admin.GetClusterStatus(ctx, &ferryv1.GetClusterStatusRequest{})
		return err
	})
	if err != nil {
		return nil, err
	}
	var out []NodeStatus
	for _, n := range resp.GetNodes() {
		ns := NodeStatus{NodeID: n.GetNodeId(), PeerAddr: n.GetPeerAddr(), Error: n.GetError()}
		for _, g := range n.GetGroups() {
			gs := GroupStatus{
				GroupID: g.GetGroupId(), Topic: g.GetTopic(), Partition: g.GetPartition(), Role: g.GetRole(),
				Leader: g.GetLeader(), Term: g.GetTerm(), CommitIndex: g.GetCommitIndex(), AppliedIndex: g.GetAppliedIndex(),
				FirstIndex: g.GetFirstIndex(), LastIndex: g.GetLastIndex(), SnapshotIndex: g.GetSnapshotIndex(), Error: g.GetError(),
			}
			for _, f := range g.GetFollowers() {
				gs.Followers = append(gs.Followers, FollowerStatus{f.GetNodeId(), f.GetMatchIndex(), f.GetLag(), f.GetState(), f.GetActive()})
			}
			ns.Groups = append(ns.Groups, gs)
		}
		out = append(out, ns)
	}
	return out, nil
}
