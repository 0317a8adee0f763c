package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"google.golang.org/grpc"

	ferryv1 "github.com/ferrymq/ferry/proto/ferry/v1"
)

func runStatus(ctx context.Context, lg *slog.Logger, args []string) error {
	fs := flag.NewFlagSet("status", flag.ExitOnError)
	var cf commonFlags
	cf.add(fs, 2*time.Minute)
	server := fs.String("server", "", "a node's gRPC address (host:port)")
	nodes := fs.Int("nodes", 3, "how many nodes the cluster has")
	caughtUp := fs.Bool("caught-up", false, "also require every node to have applied every group to the same index")
	_ = fs.Parse(args)
	if *server == "" {
		return fmt.Errorf("status: -server is required")
	}
	if err := cf.setup(); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, cf.timeout)
	defer cancel()
	groups, err := waitHealthy(ctx, lg, *server, *nodes, *caughtUp)
	if err != nil {
		return err
	}
	fmt.Printf("cluster status: %d nodes answer, %d raft groups, each with one leader all nodes name and %d active followers\n",
		*nodes, groups, *nodes-1)
	return nil
}

// waitHealthy asks server for the cluster's status until statusProblems
// finds none, and returns the number of groups; when ctx ends first, the
// last problems are the error.
func waitHealthy(ctx context.Context, lg *slog.Logger, server string, nodes int, caughtUp bool) (groups int, err error) {
	conn, err := grpc.NewClient(server, grpcOptions()...)
	if err != nil {
		return 0, fmt.Errorf("connect to %s: %w", server, err)
	}
	defer conn.Close()
	admin := ferryv1.NewAdminServiceClient(conn)
	var last []string
	for {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		resp, err := admin.GetClusterStatus(cctx, &ferryv1.GetClusterStatusRequest{})
		cancel()
		if err != nil {
			last = []string{fmt.Sprintf("GetClusterStatus through %s: %v", server, err)}
		} else {
			var n int
			n, last = statusProblems(resp, nodes, caughtUp)
			if len(last) == 0 {
				return n, nil
			}
		}
		select {
		case <-ctx.Done():
			return 0, fmt.Errorf("%w: cluster not healthy through %s: %s", errCheck, server, strings.Join(last, "; "))
		case <-time.After(time.Second):
		}
		lg.Debug("cluster not healthy yet", "problems", strings.Join(last, "; "))
	}
}

// statusProblems lists what keeps the status from a healthy cluster of
// nodes nodes: a node missing or not answering, a group missing on a node
// or failed, a group whose nodes name no leader or different ones, or
// whose leader has not nodes-1 active followers. With caughtUp, also a
// group applied to different indexes on different nodes, or a follower
// lagging. It returns the number of groups seen.
func statusProblems(resp *ferryv1.GetClusterStatusResponse, nodes int, caughtUp bool) (groups int, problems []string) {
	bad := func(format string, a ...any) { problems = append(problems, fmt.Sprintf(format, a...)) }
	if got := len(resp.GetNodes()); got != nodes {
		bad("%d nodes, want %d", got, nodes)
	}
	type view struct {
		node uint64
		g    *ferryv1.GroupStatus
	}
	byGroup := map[uint64][]view{}
	for _, n := range resp.GetNodes() {
		if n.GetError() != "" {
			bad("node %d: %s", n.GetNodeId(), n.GetError())
			continue
		}
		for _, g := range n.GetGroups() {
			byGroup[g.GetGroupId()] = append(byGroup[g.GetGroupId()], view{n.GetNodeId(), g})
		}
	}
	ids := make([]uint64, 0, len(byGroup))
	for id := range byGroup {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, id := range ids {
		views := byGroup[id]
		name := groupName(views[0].g)
		if len(views) != nodes {
			bad("group %s on %d nodes, want %d", name, len(views), nodes)
		}
		leader := views[0].g.GetLeader()
		var applied []uint64
		for _, v := range views {
			g := v.g
			switch {
			case g.GetError() != "":
				bad("group %s failed on node %d: %s", name, v.node, g.GetError())
			case g.GetLeader() == 0:
				bad("group %s: node %d knows no leader", name, v.node)
			case g.GetLeader() != leader:
				bad("group %s: nodes name different leaders (%d, %d)", name, leader, g.GetLeader())
			}
			applied = append(applied, g.GetAppliedIndex())
			if v.node != leader || leader == 0 {
				continue
			}
			if g.GetRole() != "leader" {
				bad("group %s: node %d is named leader but is %s", name, v.node, g.GetRole())
			}
			active := 0
			for _, f := range g.GetFollowers() {
				if f.GetActive() {
					active++
				}
				if caughtUp && f.GetLag() != 0 {
					bad("group %s: follower %d lags %d entries", name, f.GetNodeId(), f.GetLag())
				}
			}
			if active != nodes-1 {
				bad("group %s: %d active followers, want %d", name, active, nodes-1)
			}
		}
		if caughtUp && slices.Min(applied) != slices.Max(applied) {
			bad("group %s: applied indexes differ across nodes: %v", name, applied)
		}
	}
	return len(ids), problems
}

func groupName(g *ferryv1.GroupStatus) string {
	if g.GetTopic() == "" {
		return "metadata"
	}
	return fmt.Sprintf("%s/%d", g.GetTopic(), g.GetPartition())
}
