package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/ferrymq/ferry/broker"
	"github.com/ferrymq/ferry/client"
)

func newClusterCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "cluster", Short: "Inspect a cluster of brokers"}
	cmd.AddCommand(newClusterStatusCommand())
	return cmd
}

func newClusterStatusCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show every node's Raft groups: leaders, terms, indexes and lag",
		Long: `Show the cluster as its nodes see it. The broker named by --server asks
every other node for its view. For each node: whether it answered; for each
Raft group (the metadata group, and one per topic partition): the leader as
each node knows it, the term, the commit and applied indexes on each node,
and on the leader how many entries each follower lacks.`,
		Args: cobra.NoArgs,
	}
	cf := addClientFlags(cmd, true)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		var nodes []client.NodeStatus
		err := cf.withClient(cmd.Context(), func(ctx context.Context, c *client.Client) (err error) {
			nodes, err = c.ClusterStatus(ctx)
			return err
		})
		if err != nil {
			return err
		}
		if cf.output == "json" {
			return printJSON(cmd.OutOrStdout(), clusterStatusToJSON(nodes))
		}
		return printClusterStatus(cmd.OutOrStdout(), nodes)
	}
	return cmd
}

// printClusterStatus prints the nodes, then one line per group and node.
func printClusterStatus(w io.Writer, nodes []client.NodeStatus) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tPEER ADDR\tHEALTH\tGROUPS\tLEADS")
	for _, n := range nodes {
		health, leads := "ok", 0
		if n.Error != "" {
			health = "unreachable: " + n.Error
		}
		for _, g := range n.Groups {
			if g.Role == "leader" {
				leads++
			}
			if g.Error != "" {
				health = "group failed"
			}
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%d\t%d\n", n.NodeID, n.PeerAddr, health, len(n.Groups), leads)
	}
	fmt.Fprintln(tw)
	fmt.Fprintln(tw, "GROUP\tNAME\tNODE\tROLE\tLEADER\tTERM\tCOMMIT\tAPPLIED\tLAST\tFOLLOWERS (node:lag)")
	for _, n := range nodes {
		for _, g := range n.Groups {
			name := "metadata"
			if g.Topic != "" {
				name = g.Topic + "/" + strconv.FormatUint(uint64(g.Partition), 10)
			}
			var fl []string
			for _, f := range g.Followers {
				s := fmt.Sprintf("%d:%d", f.NodeID, f.Lag)
				if !f.Active {
					s += "(inactive)"
				}
				fl = append(fl, s)
			}
			role := g.Role
			if g.Error != "" {
				role = "failed: " + g.Error
			}
			fmt.Fprintf(tw, "%d\t%s\t%d\t%s\t%d\t%d\t%d\t%d\t%d\t%s\n", g.GroupID, name, n.NodeID, role,
				g.Leader, g.Term, g.CommitIndex, g.AppliedIndex, g.LastIndex, strings.Join(fl, " "))
		}
	}
	return tw.Flush()
}

// The -o json form of cluster status keeps the admin API's JSON mapping
// (protojson): lowerCamelCase names, 64-bit integers as strings, zero
// values left out.
type (
	clusterStatusJSON struct {
		Nodes []nodeStatusJSON `json:"nodes,omitempty"`
	}
	nodeStatusJSON struct {
		NodeID   uint64            `json:"nodeId,omitempty,string"`
		PeerAddr string            `json:"peerAddr,omitempty"`
		Error    string            `json:"error,omitempty"`
		Groups   []groupStatusJSON `json:"groups,omitempty"`
	}
	groupStatusJSON struct {
		GroupID       uint64               `json:"groupId,omitempty,string"`
		Topic         string               `json:"topic,omitempty"`
		Partition     uint32               `json:"partition,omitempty"`
		Role          string               `json:"role,omitempty"`
		Leader        uint64               `json:"leader,omitempty,string"`
		Term          uint64               `json:"term,omitempty,string"`
		CommitIndex   uint64               `json:"commitIndex,omitempty,string"`
		AppliedIndex  uint64               `json:"appliedIndex,omitempty,string"`
		FirstIndex    uint64               `json:"firstIndex,omitempty,string"`
		LastIndex     uint64               `json:"lastIndex,omitempty,string"`
		SnapshotIndex uint64               `json:"snapshotIndex,omitempty,string"`
		Followers     []followerStatusJSON `json:"followers,omitempty"`
		Error         string               `json:"error,omitempty"`
	}
	followerStatusJSON struct {
		NodeID     uint64 `json:"nodeId,omitempty,string"`
		MatchIndex uint64 `json:"matchIndex,omitempty,string"`
		Lag        uint64 `json:"lag,omitempty,string"`
		State      string `json:"state,omitempty"`
		Active     bool   `json:"active,omitempty"`
	}
)

func clusterStatusToJSON(nodes []client.NodeStatus) clusterStatusJSON {
	var out clusterStatusJSON
	for _, n := range nodes {
		nj := nodeStatusJSON{NodeID: n.NodeID, PeerAddr: n.PeerAddr, Error: n.Error}
		for _, g := range n.Groups {
			gj := groupStatusJSON{GroupID: g.GroupID, Topic: g.Topic, Partition: g.Partition, Role: g.Role, Leader: g.Leader, Term: g.Term,
				CommitIndex: g.CommitIndex, AppliedIndex: g.AppliedIndex, FirstIndex: g.FirstIndex, LastIndex: g.LastIndex,
				SnapshotIndex: g.SnapshotIndex, Error: g.Error}
			for _, f := range g.Followers {
				gj.Followers = append(gj.Followers, followerStatusJSON(f))
			}
			nj.Groups = append(nj.Groups, gj)
		}
		out.Nodes = append(out.Nodes, nj)
	}
	return out
}

// clusterFlags are ferry serve's cluster flags.
type clusterFlags struct {
	nodeID   uint64
	peerAddr string
	peers    string
	peersDNS string
	size     int
}

func (cf *clusterFlags) add(f *pflag.FlagSet) {
	cf.peerAddr, cf.size = "localhost:7422", 3
	f.Uint64Var(&cf.nodeID, "node-id", 0, "this node's id in the cluster, 1 or more (with --peers-dns, 0 takes it from the hostname's ordinal: ferry-0 is 1)")
	f.StringVar(&cf.peerAddr, "peer-addr", cf.peerAddr, "node-to-node listen address, in a cluster; loopback by default: give :7422 for nodes on other machines")
	f.StringVar(&cf.peers, "peers", "", "the cluster's nodes as id=host:port,... (node-to-node addresses, this node's included); empty: a single node")
	f.StringVar(&cf.peersDNS, "peers-dns", "", "a Kubernetes headless service NAME: the nodes are <statefulset>-<i>.NAME on --peer-addr's port, with ids i+1")
	f.IntVar(&cf.size, "cluster-size", cf.size, "with --peers-dns, how many nodes there are (the StatefulSet's replicas)")
}

// options returns the broker's cluster options, or nil for a single node.
// hostname names this machine (os.Hostname), for --peers-dns.
func (cf *clusterFlags) options(hostname func() (string, error)) (*broker.ClusterOptions, error) {
	switch {
	case cf.peers != "" && cf.peersDNS != "":
		return nil, fmt.Errorf("--peers and --peers-dns: give one")
	case cf.peers == "" && cf.peersDNS == "":
		if cf.nodeID != 0 {
			return nil, fmt.Errorf("--node-id %d without --peers or --peers-dns: a cluster needs its nodes", cf.nodeID)
		}
		return nil, nil
	}
	o := &broker.ClusterOptions{NodeID: cf.nodeID, Addr: cf.peerAddr, Peers: map[uint64]string{}}
	if cf.peers != "" {
		for _, p := range strings.Split(cf.peers, ",") {
			idStr, addr, ok := strings.Cut(strings.TrimSpace(p), "=")
			id, err := strconv.ParseUint(idStr, 10, 64)
			if !ok || err != nil || id == 0 || addr == "" {
				return nil, fmt.Errorf("--peers: %q is not id=host:port with an id of 1 or more", p)
			}
			if _, _, err := net.SplitHostPort(addr); err != nil {
				return nil, fmt.Errorf("--peers: node %d: %q: %v", id, addr, err)
			}
			if _, dup := o.Peers[id]; dup {
				return nil, fmt.Errorf("--peers: node %d is named twice", id)
			}
			o.Peers[id] = addr
		}
		if cf.nodeID == 0 {
			return nil, fmt.Errorf("--peers needs --node-id: which of them this node is")
		}
	} else {
		if cf.size < 1 {
			return nil, fmt.Errorf("--cluster-size %d: want 1 or more", cf.size)
		}
		_, port, err := net.SplitHostPort(cf.peerAddr)
		if err != nil {
			return nil, fmt.Errorf("--peer-addr %q: %v", cf.peerAddr, err)
		}
		host, err := hostname()
		if err != nil {
			return nil, fmt.Errorf("--peers-dns: hostname: %w", err)
		}
		i := strings.LastIndexByte(host, '-')
		ord, err := strconv.ParseUint(host[i+1:], 10, 32)
		if i <= 0 || err != nil {
			return nil, fmt.Errorf("--peers-dns: hostname %q is not a StatefulSet pod's (name-ordinal)", host)
		}
		set := host[:i]
		for k := range cf.size {
			o.Peers[uint64(k)+1] = net.JoinHostPort(fmt.Sprintf("%s-%d.%s", set, k, cf.peersDNS), port)
		}
		if o.NodeID == 0 {
			o.NodeID = ord + 1
		}
	}
	if _, ok := o.Peers[o.NodeID]; !ok {
		return nil, fmt.Errorf("--node-id %d is not among the cluster's nodes", o.NodeID)
	}
	return o, nil
}
