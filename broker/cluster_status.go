package broker

import (
	"context"
	"strings"
	"sync"
	"time"

	"github.com/ferrymq/ferry/cluster"
	ferryv1 "github.com/ferrymq/ferry/proto/ferry/v1"
)

// statusTimeout bounds how long GetClusterStatus waits for a peer's view.
const statusTimeout = 3 * time.Second

// status returns this node's view of its groups and, unless local, every
// other node's, asked for in parallel, in node id order; a node that does
// not answer in time is reported with the error.
func (n *node) status(ctx context.Context, local bool) *ferryv1.GetClusterStatusResponse {
	if local {
		return &ferryv1.GetClusterStatusResponse{Nodes: []*ferryv1.NodeStatus{n.localStatus()}}
	}
	voters := n.Voters()
	resp := &ferryv1.GetClusterStatusResponse{Nodes: make([]*ferryv1.NodeStatus, len(voters))}
	var wg sync.WaitGroup
	for i, id := range voters {
		if id == n.ID() {
			resp.Nodes[i] = n.localStatus()
			continue
		}
		ns := &ferryv1.NodeStatus{NodeId: id, PeerAddr: n.peers[id]}
		resp.Nodes[i] = ns
		wg.Go(func() { n.peerStatus(ctx, ns) })
	}
	wg.Wait()
	return resp
}

// peerStatus fills ns with the groups of node ns.NodeId, as it reports
// them, or with the error.
func (n *node) peerStatus(ctx context.Context, ns *ferryv1.NodeStatus) {
	conn, err := n.conn(ns.NodeId)
	if err != nil {
		ns.Error = err.Error()
		return
	}
	cctx, cancel := context.WithTimeout(forwardIdentity(ctx), statusTimeout)
	defer cancel()
	r, err := ferryv1.NewAdminServiceClient(conn).GetClusterStatus(cctx, &ferryv1.GetClusterStatusRequest{Local: true})
	switch {
	case err != nil:
		ns.Error = err.Error()
	case len(r.GetNodes()) == 0:
		ns.Error = "answered with no status"
	default:
		for _, got := range r.GetNodes() {
			if got.GetNodeId() == ns.NodeId {
				ns.Groups = got.GetGroups()
			}
		}
	}
}

// localStatus is this node's view of its groups, as the API reports it.
func (n *node) localStatus() *ferryv1.NodeStatus {
	st := n.LocalStatus()
	ns := &ferryv1.NodeStatus{NodeId: st.ID, PeerAddr: st.PeerAddr}
	voters := n.Voters()
	for _, g := range st.Groups {
		ns.Groups = append(ns.Groups, groupStatus(g, voters))
	}
	return ns
}

// groupStatus is g as the API reports it, its followers in voters' order.
func groupStatus(g cluster.GroupStatus, voters []uint64) *ferryv1.GroupStatus {
	gs := &ferryv1.GroupStatus{
		GroupId:       g.Group,
		Topic:         g.Topic,
		Partition:     g.Partition,
		Role:          roleName(g.State.String()),
		Leader:        g.Leader,
		Term:          g.Term,
		CommitIndex:   g.Commit,
		AppliedIndex:  g.Applied,
		FirstIndex:    g.FirstIndex,
		LastIndex:     g.LastIndex,
		SnapshotIndex: g.SnapshotIndex,
	}
	if g.Err != nil {
		gs.Error = g.Err.Error()
	}
	for _, id := range voters {
		p, ok := g.Followers[id]
		if !ok {
			continue
		}
		gs.Followers = append(gs.Followers, &ferryv1.FollowerStatus{NodeId: id, MatchIndex: p.Match, Lag: p.Lag,
			State: roleName(p.State), Active: p.Active})
	}
	return gs
}

// roleName turns raft's "StateLeader" or "StateReplicate" into "leader"
// or "replicate".
func roleName(s string) string {
	s = strings.TrimPrefix(s, "State")
	switch s {
	case "PreCandidate":
		return "pre-candidate"
	}
	return strings.ToLower(s)
}
