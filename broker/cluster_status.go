package broker

import (
	"context"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

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
	resp := &ferryv1.GetClusterStatusResponse{Nodes: make([]*ferryv1.NodeStatus, len(n.voters))}
	var wg sync.WaitGroup
	for i, id := range n.voters {
		if id == n.id {
			resp.Nodes[i] = n.localStatus()
			continue
		}
		ns := &ferryv1.NodeStatus{NodeId: id, PeerAddr: n.peers[id]}
		resp.Nodes[i] = ns
		wg.Go(func() {
			conn, err := n.conn(id)
			if err != nil {
				ns.Error = err.Error()
				return
			}
			cctx, cancel := context.WithTimeout(ctx, statusTimeout)
			defer cancel()
			r, err := ferryv1.NewAdminServiceClient(conn).GetClusterStatus(cctx, &ferryv1.GetClusterStatusRequest{Local: true})
			switch {
			case err != nil:
				ns.Error = err.Error()
			case len(r.GetNodes()) == 0:
				ns.Error = "answered with no status"
			default:
				for _, got := range r.GetNodes() {
					if got.GetNodeId() == id {
						ns.Groups = got.GetGroups()
					}
				}
			}
		})
	}
	wg.Wait()
	return resp
}

// localStatus is this node's view of its groups.
func (n *node) localStatus() *ferryv1.NodeStatus {
	ns := &ferryv1.NodeStatus{NodeId: n.id, PeerAddr: n.peers[n.id]}
	n.mu.Lock()
	names := make(map[uint64]*replicatedPart, len(n.parts))
	for gid, rp := range n.parts {
		names[gid] = rp
	}
	n.mu.Unlock()
	groups := n.host.Groups()
	// The metadata group's id is the largest: put it first.
	for i := len(groups) - 1; i >= 0; i-- {
		if groups[i].ID() == cluster.MetadataGroup {
			groups = append(append([]*cluster.Group{groups[i]}, groups[:i]...), groups[i+1:]...)
			break
		}
	}
	for _, g := range groups {
		st := g.Status()
		gs := &ferryv1.GroupStatus{
			GroupId:       st.Group,
			Role:          roleName(st.State.String()),
			Leader:        st.Leader,
			Term:          st.Term,
			CommitIndex:   st.Commit,
			AppliedIndex:  st.Applied,
			FirstIndex:    st.FirstIndex,
			LastIndex:     st.LastIndex,
			SnapshotIndex: st.SnapshotIndex,
		}
		if rp := names[st.Group]; rp != nil {
			gs.Topic, gs.Partition = rp.topic, rp.part
		}
		if st.Err != nil {
			gs.Error = st.Err.Error()
		}
		for _, id := range n.voters {
			p, ok := st.Followers[id]
			if !ok {
				continue
			}
			gs.Followers = append(gs.Followers, &ferryv1.FollowerStatus{NodeId: id, MatchIndex: p.Match, Lag: p.Lag,
				State: roleName(p.State), Active: p.Active})
		}
		ns.Groups = append(ns.Groups, gs)
	}
	return ns
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

// raftCollector reports this node's Raft groups at each scrape, from the
// same view as GetClusterStatus.
type raftCollector struct {
	n                                 *node
	leader, term, commit, applied, up *prometheus.Desc
	lag                               *prometheus.Desc
	refusing, refused                 *prometheus.Desc
}

func newRaftCollector(n *node) *raftCollector {
	labels := []string{"group", "topic", "partition"}
	d := func(name, help string, extra ...string) *prometheus.Desc {
		return prometheus.NewDesc(name, help, append(slices.Clone(labels), extra...), nil)
	}
	return &raftCollector{n: n,
		leader:  d("ferry_raft_leader", "1 if this node leads the group, else 0 (topic and partition are empty for the metadata group)."),
		term:    d("ferry_raft_term", "The group's current term on this node; it rises with each election."),
		commit:  d("ferry_raft_commit_index", "The highest log index this node knows committed."),
		applied: d("ferry_raft_applied_index", "The highest log index applied on this node."),
		up:      d("ferry_raft_group_up", "1 while the group runs on this node, 0 if it stopped on a failure."),
		lag:     d("ferry_raft_follower_lag_entries", "On the group's leader: log entries the follower lacks.", "follower"),
		refusing: prometheus.NewDesc("ferry_raft_appends_refused",
			"1 while this node refuses raft appends and snapshots for disk space (below half its reserve, or read-only on a disk error): leaders do not count it towards a quorum.", nil, nil),
		refused: prometheus.NewDesc("ferry_raft_refused_appends_total",
			"Raft appends and snapshots this node dropped for disk space.", nil, nil),
	}
}

func (c *raftCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.leader, c.term, c.commit, c.applied, c.up, c.lag, c.refusing, c.refused} {
		ch <- d
	}
}

func (c *raftCollector) Collect(ch chan<- prometheus.Metric) {
	ch <- prometheus.MustNewConstMetric(c.refusing, prometheus.GaugeValue, b2f(c.n.host.RefusingAppends()))
	ch <- prometheus.MustNewConstMetric(c.refused, prometheus.CounterValue, float64(c.n.host.RefusedAppends()))
	for _, g := range c.n.localStatus().GetGroups() {
		part := ""
		if g.GetTopic() != "" {
			part = strconv.FormatUint(uint64(g.GetPartition()), 10)
		}
		lv := []string{strconv.FormatUint(g.GetGroupId(), 10), g.GetTopic(), part}
		gauge := func(d *prometheus.Desc, v float64) {
			ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, lv...)
		}
		gauge(c.leader, b2f(g.GetRole() == "leader"))
		gauge(c.term, float64(g.GetTerm()))
		gauge(c.commit, float64(g.GetCommitIndex()))
		gauge(c.applied, float64(g.GetAppliedIndex()))
		gauge(c.up, b2f(g.GetError() == ""))
		for _, f := range g.GetFollowers() {
			ch <- prometheus.MustNewConstMetric(c.lag, prometheus.GaugeValue, float64(f.GetLag()),
				append(slices.Clone(lv), strconv.FormatUint(f.GetNodeId(), 10))...)
		}
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// ready reports whether the node can serve: the metadata group and every
// partition's group know a leader.
func (n *node) ready() bool {
	for _, g := range n.host.Groups() {
		if g.Leader() == 0 {
			return false
		}
	}
	return true
}
