package cluster

import (
	"slices"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
	"go.etcd.io/raft/v3"
)

// NodeStatus is a node's view of its groups, for `ferry cluster status`.
type NodeStatus struct {
	ID       uint64 // the node's id
	PeerAddr string // its node-to-node address, as Peers gives it
	// Groups are the groups running on the node: the metadata group
	// first, then the partitions' groups in id order.
	Groups []GroupStatus
}

// GroupStatus is one group's Status with the partition it replicates.
type GroupStatus struct {
	Status
	Topic     string // the partition's topic; "" for the metadata group
	Partition uint32 // the partition
}

// LocalStatus is this node's view of its groups.
func (n *Node) LocalStatus() NodeStatus {
	ns := NodeStatus{ID: n.id, PeerAddr: n.opts.Peers[n.id]}
	n.partsMu.Lock()
	names := make(map[uint64]*replicatedPart, len(n.parts))
	for gid, rp := range n.parts {
		names[gid] = rp
	}
	n.partsMu.Unlock()
	groups := n.host.Groups()
	// The metadata group's id is the largest: put it first.
	for i := len(groups) - 1; i >= 0; i-- {
		if groups[i].ID() == MetadataGroup {
			groups = append(append([]*Group{groups[i]}, groups[:i]...), groups[i+1:]...)
			break
		}
	}
	for _, g := range groups {
		gs := GroupStatus{Status: g.Status()}
		if rp := names[gs.Group]; rp != nil {
			gs.Topic, gs.Partition = rp.topic, rp.part
		}
		ns.Groups = append(ns.Groups, gs)
	}
	return ns
}

// Ready reports whether the node can serve: the metadata group and every
// partition's group know a leader.
func (n *Node) Ready() bool {
	for _, g := range n.host.Groups() {
		if g.Leader() == 0 {
			return false
		}
	}
	return true
}

// RefusingAppends reports whether this node refuses Raft appends for disk
// space (Host.RefusingAppends).
func (n *Node) RefusingAppends() bool { return n.host.RefusingAppends() }

// nodeCollector reports a node's Raft groups at each scrape, from the
// same view as LocalStatus.
type nodeCollector struct {
	n                                 *Node
	leader, term, commit, applied, up *prometheus.Desc
	lag                               *prometheus.Desc
	refusing, refused                 *prometheus.Desc
}

// NewCollector returns the collector of n's ferry_raft_* metrics, for the
// caller to register.
func NewCollector(n *Node) prometheus.Collector {
	labels := []string{"group", "topic", "partition"}
	d := func(name, help string, extra ...string) *prometheus.Desc {
		return prometheus.NewDesc(name, help, append(slices.Clone(labels), extra...), nil)
	}
	return &nodeCollector{n: n,
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

func (c *nodeCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.leader, c.term, c.commit, c.applied, c.up, c.lag, c.refusing, c.refused} {
		ch <- d
	}
}

func (c *nodeCollector) Collect(ch chan<- prometheus.Metric) {
	ch <- prometheus.MustNewConstMetric(c.refusing, prometheus.GaugeValue, b2f(c.n.host.RefusingAppends()))
	ch <- prometheus.MustNewConstMetric(c.refused, prometheus.CounterValue, float64(c.n.host.RefusedAppends()))
	for _, g := range c.n.LocalStatus().Groups {
		part := ""
		if g.Topic != "" {
			part = strconv.FormatUint(uint64(g.Partition), 10)
		}
		lv := []string{strconv.FormatUint(g.Group, 10), g.Topic, part}
		gauge := func(d *prometheus.Desc, v float64) {
			ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, lv...)
		}
		gauge(c.leader, b2f(g.State == raft.StateLeader))
		gauge(c.term, float64(g.Term))
		gauge(c.commit, float64(g.Commit))
		gauge(c.applied, float64(g.Applied))
		gauge(c.up, b2f(g.Err == nil))
		for _, id := range c.n.voters {
			f, ok := g.Followers[id]
			if !ok {
				continue
			}
			ch <- prometheus.MustNewConstMetric(c.lag, prometheus.GaugeValue, float64(f.Lag),
				append(slices.Clone(lv), strconv.FormatUint(id, 10))...)
		}
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
