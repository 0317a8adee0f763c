package main

import (
	"strings"
	"testing"

	ferryv1 "github.com/ferrymq/ferry/proto/ferry/v1"
)

// healthyStatus is three nodes in the metadata group and one partition's
// group; node 1 leads both.
func healthyStatus() *ferryv1.GetClusterStatusResponse {
	resp := &ferryv1.GetClusterStatusResponse{}
	for id := uint64(1); id <= 3; id++ {
		n := &ferryv1.NodeStatus{NodeId: id}
		for _, g := range []*ferryv1.GroupStatus{{GroupId: 1 << 63}, {GroupId: 1 << 32, Topic: "t"}} {
			g.Leader, g.AppliedIndex, g.Role = 1, 7, "follower"
			if id == 1 {
				g.Role = "leader"
				g.Followers = []*ferryv1.FollowerStatus{{NodeId: 2, Active: true}, {NodeId: 3, Active: true}}
			}
			n.Groups = append(n.Groups, g)
		}
		resp.Nodes = append(resp.Nodes, n)
	}
	return resp
}

func TestStatusProblems(t *testing.T) {
	for _, tc := range []struct {
		name     string
		breakIt  func(*ferryv1.GetClusterStatusResponse)
		caughtUp bool
		want     string // in a problem; "" for none
	}{
		{name: "healthy", breakIt: func(*ferryv1.GetClusterStatusResponse) {}},
		{name: "healthy and caught up", breakIt: func(*ferryv1.GetClusterStatusResponse) {}, caughtUp: true},
		{name: "node missing", breakIt: func(r *ferryv1.GetClusterStatusResponse) { r.Nodes = r.Nodes[:2] }, want: "2 nodes, want 3"},
		{name: "node unreachable", breakIt: func(r *ferryv1.GetClusterStatusResponse) { r.Nodes[2].Error, r.Nodes[2].Groups = "refused", nil },
			want: "node 3: refused"},
		{name: "group missing on a node", breakIt: func(r *ferryv1.GetClusterStatusResponse) { r.Nodes[1].Groups = r.Nodes[1].Groups[:1] },
			want: "group t/0 on 2 nodes"},
		{name: "no leader", breakIt: func(r *ferryv1.GetClusterStatusResponse) { r.Nodes[2].Groups[1].Leader = 0 },
			want: "node 3 knows no leader"},
		{name: "two leaders", breakIt: func(r *ferryv1.GetClusterStatusResponse) { r.Nodes[2].Groups[1].Leader = 3 },
			want: "different leaders"},
		{name: "follower inactive", breakIt: func(r *ferryv1.GetClusterStatusResponse) { r.Nodes[0].Groups[0].Followers[1].Active = false },
			want: "1 active followers, want 2"},
		{name: "follower lags", breakIt: func(r *ferryv1.GetClusterStatusResponse) { r.Nodes[0].Groups[0].Followers[0].Lag = 4 },
			caughtUp: true, want: "follower 2 lags 4"},
		{name: "applied differs", breakIt: func(r *ferryv1.GetClusterStatusResponse) { r.Nodes[1].Groups[1].AppliedIndex = 6 },
			caughtUp: true, want: "applied indexes differ"},
		{name: "applied differs, not asked", breakIt: func(r *ferryv1.GetClusterStatusResponse) { r.Nodes[1].Groups[1].AppliedIndex = 6 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp := healthyStatus()
			tc.breakIt(resp)
			_, problems := statusProblems(resp, 3, tc.caughtUp)
			got := strings.Join(problems, "; ")
			switch {
			case tc.want == "" && got != "":
				t.Errorf("problems %q, want none", got)
			case tc.want != "" && !strings.Contains(got, tc.want):
				t.Errorf("problems %q, want one with %q", got, tc.want)
			}
		})
	}
}

// logOf builds a one-partition log of ids at offsets 0, 1, ...
func logOf(ids ...string) partitionLogs {
	var ms []*ferryv1.Message
	for i, id := range ids {
		ms = append(ms, &ferryv1.Message{Id: id, Offset: uint64(i), Payload: []byte(id)})
	}
	return partitionLogs{ms}
}

func TestLogChecks(t *testing.T) {
	acked := map[string]ack{"a": {0, 0}, "b": {0, 1}}
	if m := logOf("a", "b", "c").missing(acked); len(m) != 0 {
		t.Errorf("complete log: missing %v", m)
	}
	if m := logOf("a").missing(acked); len(m) != 1 || !strings.HasPrefix(m[0], "b ") {
		t.Errorf("log without b: missing %v, want b", m)
	}
	if m := logOf("b", "a").missing(acked); len(m) != 2 {
		t.Errorf("log with a and b swapped: missing %v, want both", m)
	}
	if d := logOf("a", "b", "a").duplicates(); len(d) != 1 || d[0] != "a" {
		t.Errorf("duplicates %v, want [a]", d)
	}
	if d := logOf("a", "b").diff(logOf("a", "b")); d != "" {
		t.Errorf("equal logs differ: %s", d)
	}
	if d := logOf("a", "b").diff(logOf("a")); d == "" {
		t.Error("a shorter log does not differ")
	}
	if d := logOf("a", "b").diff(logOf("a", "c")); d == "" {
		t.Error("logs with another id at an offset do not differ")
	}
}
