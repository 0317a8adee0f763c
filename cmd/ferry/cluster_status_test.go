package main

import (
	"bytes"
	"encoding/json"
	"reflect"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/ferrymq/ferry/client"
	ferryv1 "github.com/ferrymq/ferry/proto/ferry/v1"
)

// TestClusterStatusJSON: ferry cluster status -o json keeps the admin
// API's JSON mapping (protojson) it printed before it read the status
// through the SDK, and the table shows health, leads and follower lag.
func TestClusterStatusJSON(t *testing.T) {
	resp := &ferryv1.GetClusterStatusResponse{Nodes: []*ferryv1.NodeStatus{
		{NodeId: 1, PeerAddr: "n1:7422", Groups: []*ferryv1.GroupStatus{
			{GroupId: 1, Role: "leader", Leader: 1, Term: 3, CommitIndex: 40, AppliedIndex: 40, FirstIndex: 1, LastIndex: 41, SnapshotIndex: 20,
				Followers: []*ferryv1.FollowerStatus{{NodeId: 2, MatchIndex: 38, Lag: 3, State: "replicate", Active: true}, {NodeId: 3, State: "probe"}}},
			{GroupId: 7, Topic: "orders", Partition: 1, Role: "follower", Leader: 2, Term: 1, Error: "disk"},
		}},
		{NodeId: 3, PeerAddr: "n3:7422", Error: "unreachable"},
	}}
	nodes := []client.NodeStatus{
		{NodeID: 1, PeerAddr: "n1:7422", Groups: []client.GroupStatus{
			{GroupID: 1, Role: "leader", Leader: 1, Term: 3, CommitIndex: 40, AppliedIndex: 40, FirstIndex: 1, LastIndex: 41, SnapshotIndex: 20,
				Followers: []client.FollowerStatus{{NodeID: 2, MatchIndex: 38, Lag: 3, State: "replicate", Active: true}, {NodeID: 3, State: "probe"}}},
			{GroupID: 7, Topic: "orders", Partition: 1, Role: "follower", Leader: 2, Term: 1, Error: "disk"},
		}},
		{NodeID: 3, PeerAddr: "n3:7422", Error: "unreachable"},
	}
	want, err := protojson.Marshal(resp)
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	if err := printJSON(&b, clusterStatusToJSON(nodes)); err != nil {
		t.Fatal(err)
	}
	var w, g any
	if err := json.Unmarshal(want, &w); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b.Bytes(), &g); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(w, g) {
		t.Errorf("cluster status JSON\n got %s\nwant %s", b.Bytes(), want)
	}
	b.Reset()
	if err := printJSON(&b, clusterStatusToJSON(nil)); err != nil || b.String() != "{}\n" {
		t.Errorf("no nodes: %q, %v; want {} as protojson prints", b.String(), err)
	}

	b.Reset()
	if err := printClusterStatus(&b, nodes); err != nil {
		t.Fatal(err)
	}
	for _, line := range []string{
		"1     n1:7422    group failed",
		"3     n3:7422    unreachable: unreachable",
		"1      metadata  1     leader        1       3     40      40       41    2:3 3:0(inactive)",
		"7      orders/1  1     failed: disk  2       1     0       0        0",
	} {
		if !strings.Contains(b.String(), line) {
			t.Errorf("table is missing %q:\n%s", line, b.String())
		}
	}
}
