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
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/ferrymq/ferry/broker"
	ferryv1 "github.com/ferrymq/ferry/proto/ferry/v1"
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
		var resp *ferryv1.GetClusterStatusResponse
		err := cf.withAdmin(cmd.Context(), func(ctx context.Context, c ferryv1.AdminServiceClient) (err error) {
			resp, err = c.GetClusterStatus(ctx, &ferryv1.GetClusterStatusRequest{})
			return err
		})
		if err != nil {
			return err
		}
		if cf.output == "json" {
			b, err := protojson.Marshal(resp)
			if err != nil {
				return err
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "%s\n", b)
			return err
		}
		return printClusterStatus(cmd.OutOrStdout(), resp)
	}
	return cmd
}

// printClusterStatus prints the nodes, then one line per group and node.
func printClusterStatus(w io.Writer, resp *ferryv1.GetClusterStatusResponse) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tPEER ADDR\tHEALTH\tGROUPS\tLEADS")
	for _, n := range resp.GetNodes() {
		health, leads := "ok", 0
		if n.GetError() != "" {
			health = "unreachable: " + n.GetError()
		}
		for _, g := range n.GetGroups() {
			if g.GetRole() == "leader" {
				leads++
			}
			if g.GetError() != "" {
				health = "group failed"
			}
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%d\t%d\n", n.GetNodeId(), n.GetPeerAddr(), health, len(n.GetGroups()), leads)
	}
	fmt.Fprintln(tw)
	fmt.Fprintln(tw, "GROUP\tNAME\tNODE\tROLE\tLEADER\tTERM\tCOMMIT\tAPPLIED\tLAST\tFOLLOWERS (node:lag)")
	for _, n := range resp.GetNodes() {
		for _, g := range n.GetGroups() {
			name := "metadata"
			if g.GetTopic() != "" {
				name = g.GetTopic() + "/" + strconv.FormatUint(uint64(g.GetPartition()), 10)
			}
			var fl []string
			for _, f := range g.GetFollowers() {
				s := fmt.Sprintf("%d:%d", f.GetNodeId(), f.GetLag())
				if !f.GetActive() {
					s += "(inactive)"
				}
				fl = append(fl, s)
			}
			role := g.GetRole()
			if g.GetError() != "" {
				role = "failed: " + g.GetError()
			}
			fmt.Fprintf(tw, "%d\t%s\t%d\t%s\t%d\t%d\t%d\t%d\t%d\t%s\n", g.GetGroupId(), name, n.GetNodeId(), role,
				g.GetLeader(), g.GetTerm(), g.GetCommitIndex(), g.GetAppliedIndex(), g.GetLastIndex(), strings.Join(fl, " "))
		}
	}
	return tw.Flush()
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
