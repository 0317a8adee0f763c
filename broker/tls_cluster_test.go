package broker

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"path/filepath"
	"testing"
	"time"

	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/ferrymq/ferry/internal/tlsfiles/tlstest"
	clusterv1 "github.com/ferrymq/ferry/proto/ferry/cluster/v1"
	ferryv1 "github.com/ferrymq/ferry/proto/ferry/v1"
)

// peerCreds are mutual TLS credentials presenting certFile (signed by a
// CA of dir) to a node-to-node port that serves a certificate of ca.
func peerCreds(t testing.TB, ca *tlstest.CA, certFile, keyFile string) credentials.TransportCredentials {
	t.Helper()
	c, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	return credentials.NewTLS(&tls.Config{RootCAs: pool, Certificates: []tls.Certificate{c}})
}

// forgedBeats is the issue's attack: a heartbeat at a huge term, for each
// group, from node from to node to.
func forgedBeats(t testing.TB, groups []uint64, from, to uint64) *clusterv1.SendRequest {
	t.Helper()
	req := &clusterv1.SendRequest{FromNode: from, ToNode: to}
	for _, g := range groups {
		b, err := proto.Marshal(&raftpb.Message{Type: raftpb.MsgHeartbeat.Enum(), From: new(from), To: new(to), Term: new(uint64(50000))})
		if err != nil {
			t.Fatal(err)
		}
		req.Messages = append(req.Messages, &clusterv1.GroupMessage{GroupId: g, Message: b})
	}
	return req
}

// sendBatch sends req on a Raft stream over conn and returns how the
// stream ended.
func sendBatch(ctx context.Context, conn *grpc.ClientConn, req *clusterv1.SendRequest) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	st, err := clusterv1.NewRaftTransportServiceClient(conn).Send(ctx)
	if err != nil {
		return err
	}
	if err := st.Send(req); err != nil {
		_, err = st.CloseAndRecv()
		return err
	}
	_, err = st.CloseAndRecv()
	return err
}

// fetchAs asks for group's partition as node from, and returns how the
// stream ended before its first frame.
func fetchAs(ctx context.Context, conn *grpc.ClientConn, group, from, to uint64) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	st, err := clusterv1.NewRaftTransportServiceClient(conn).FetchPartition(ctx, &clusterv1.FetchPartitionRequest{
		FromNode: from, ToNode: to, GroupId: group, TopicId: uint32(group >> 32), Partition: uint32(group),
	})
	if err != nil {
		return err
	}
	_, err = st.Recv()
	return err
}

// snapshotAs sends a snapshot header for group as node from and returns how
// the stream ended.
func snapshotAs(ctx context.Context, conn *grpc.ClientConn, group, from, to uint64) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	st, err := clusterv1.NewRaftTransportServiceClient(conn).SendSnapshot(ctx)
	if err != nil {
		return err
	}
	b, err := proto.Marshal(&raftpb.Message{Type: raftpb.MsgSnap.Enum(), From: new(from), To: new(to), Term: new(uint64(50000)),
		Snapshot: &raftpb.Snapshot{Metadata: &raftpb.SnapshotMetadata{Index: new(uint64(1 << 40)), Term: new(uint64(50000))}}})
	if err != nil {
		return err
	}
	hdr := &clusterv1.SendSnapshotRequest{Frame: &clusterv1.SendSnapshotRequest_Header{Header: &clusterv1.SnapshotHeader{
		FromNode: from, ToNode: to, GroupId: group, Message: b}}}
	if err := st.Send(hdr); err != nil {
		_, err = st.CloseAndRecv()
		return err
	}
	_, err = st.CloseAndRecv()
	return err
}

// maxTerm is the highest term of any group on any node, as node ts sees
// the cluster, and the groups' ids.
func maxTerm(t testing.TB, ts *testServer) (uint64, []uint64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := ts.admin.GetClusterStatus(ctx, &ferryv1.GetClusterStatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var top uint64
	seen := map[uint64]bool{}
	var groups []uint64
	for _, n := range resp.GetNodes() {
		if n.GetError() != "" {
			t.Fatalf("node %d: %s", n.GetNodeId(), n.GetError())
		}
		for _, g := range n.GetGroups() {
			top = max(top, g.GetTerm())
			if !seen[g.GetGroupId()] {
				seen[g.GetGroupId()] = true
				groups = append(groups, g.GetGroupId())
			}
		}
	}
	return top, groups
}

// TestClusterTLSForgedPeer: with TLS on, the issue's attacks on the
// node-to-node port — heartbeats at term 50,000 "from node 3",
// FetchPartition as "node 3", a snapshot "from node 3", and the public API
// there — are refused
// whoever tries: a plaintext client, a certificate of another CA naming
// node 3, a certificate of the cluster's CA for node 4 (not a member) or
// for no node, and node 1's own certificate speaking for node 3. Nothing
// changes: no term moves, the topic stays, and the cluster goes on
// serving, over TLS, a publish through one node read through another.
func TestClusterTLSForgedPeer(t *testing.T) {
	dir, ca := tlsDir(t)
	c := startTestCluster(t, 3, withTLS(t, dir, ca))
	ctx := testContext(t)
	c[1].createTopic(t, "orders", &ferryv1.TopicConfig{Partitions: 2})
	c[1].publish(t, "orders", &ferryv1.PublishMessage{Id: "before", Key: []byte("k"), Payload: []byte("x")})
	before, groups := maxTerm(t, c[1])
	var part uint64 // a partition's group
	for _, g := range groups {
		if g>>32 != 0 && g>>63 == 0 {
			part = g
		}
	}
	if part == 0 {
		t.Fatalf("no partition group among %v", groups)
	}
	target := c[2].srv.opts.Cluster.Addr // node 2's node-to-node port

	other := tlstest.NewCA(t, t.TempDir(), "other")
	odir := filepath.Dir(other.File)
	node1 := peerCreds(t, ca, filepath.Join(dir, "node1.crt"), filepath.Join(dir, "node1.key"))
	c4, k4 := ca.Issue(t, dir, "node4", 4)
	oc3, ok3 := other.Issue(t, odir, "node3", 3)
	attackers := []struct {
		name  string
		creds credentials.TransportCredentials
		want  codes.Code
	}{
		{"plaintext", insecure.NewCredentials(), codes.Unavailable},
		{"another CA's node 3", peerCreds(t, ca, oc3, ok3), codes.Unavailable},
		{"the CA's node 4", peerCreds(t, ca, c4, k4), codes.Unauthenticated},
		{"the CA's client certificate", peerCreds(t, ca, filepath.Join(dir, "client.crt"), filepath.Join(dir, "client.key")), codes.Unauthenticated},
		{"node 1 as node 3", node1, codes.PermissionDenied},
	}
	for _, a := range attackers {
		conn := dialTLS(t, target, a.creds)
		if err := sendBatch(ctx, conn, forgedBeats(t, groups, 3, 2)); status.Code(err) != a.want {
			t.Errorf("%s: heartbeats from node 3 = %v, want %v", a.name, err, a.want)
		}
		if err := fetchAs(ctx, conn, part, 3, 2); status.Code(err) != a.want {
			t.Errorf("%s: FetchPartition as node 3 = %v, want %v", a.name, err, a.want)
		}
		if err := snapshotAs(ctx, conn, part, 3, 2); status.Code(err) != a.want {
			t.Errorf("%s: snapshot from node 3 = %v, want %v", a.name, err, a.want)
		}
	}
	// Node 1's certificate speaks for node 1 (an empty batch, a beat, is
	// taken), but never calls the public API on the node-to-node port.
	conn := dialTLS(t, target, node1)
	if err := sendBatch(ctx, conn, &clusterv1.SendRequest{FromNode: 1, ToNode: 2}); err != nil {
		t.Errorf("node 1's beat as node 1 = %v, want it taken", err)
	}
	if _, err := ferryv1.NewAdminServiceClient(conn).DeleteTopic(ctx, &ferryv1.DeleteTopicRequest{Name: "orders"}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("DeleteTopic on the node-to-node port = %v, want PERMISSION_DENIED", err)
	}

	after, _ := maxTerm(t, c[1])
	if after > before+2 || after >= 50000 {
		t.Errorf("terms went from %d to %d under the attacks", before, after)
	}
	if _, err := c[3].admin.GetTopic(ctx, &ferryv1.GetTopicRequest{Name: "orders"}); err != nil {
		t.Errorf("GetTopic(orders) after the attacks: %v", err)
	}
	// Publish through node 1, read through node 3: the cluster still
	// works, its nodes talking over mutual TLS.
	c[1].publish(t, "orders", &ferryv1.PublishMessage{Id: "after", Key: []byte("k"), Payload: []byte("y")})
	eventuallyB(t, "node 3 holds both messages", func() bool { return len(logOf(t, c[3], "orders", 2)) == 2 })
	t.Logf("terms before %d, after %d; node 3 holds %v", before, after, logOf(t, c[3], "orders", 2))
}
