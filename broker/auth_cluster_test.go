package broker

import (
	"context"
	"fmt"
	"io"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/ferrymq/ferry/client"
	ferryv1 "github.com/ferrymq/ferry/proto/ferry/v1"
)

// dialTLSToken connects with creds, sending tok with every call.
func dialTLSToken(tb testing.TB, addr string, creds credentials.TransportCredentials, tok string) *grpc.ClientConn {
	tb.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds),
		grpc.WithPerRPCCredentials(client.TokenCredentials(func(context.Context) (string, error) { return tok, nil }, false)))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = conn.Close() })
	return conn
}

// TestClusterAuthForwarded: three nodes with mutual TLS and auth. A
// subscription call made through a node that does not own the
// subscription is forwarded to its owner carrying the caller's principal,
// and served there (the owner refuses a forwarded call without one); a
// call the policy refuses is refused by the node called, and never
// forwarded. On the node-to-node port, a forwarded principal is believed
// only from a member node: the client certificate is refused, and a
// member's call without a principal too.
func TestClusterAuthForwarded(t *testing.T) {
	dir, ca := tlsDir(t)
	c := startTestCluster(t, 3, withTLS(t, dir, ca), withAuth(t, t.TempDir(), nil))
	ctx := testContext(t)
	// The test servers' own connections present client.crt: principal
	// "client", granted everything.
	c[1].createTopic(t, "orders", &ferryv1.TopicConfig{Partitions: 2})
	c[1].createSub(t, "orders", "kitchen", subConfig(atLeast, shared))
	c[1].createSub(t, "orders", "billing", subConfig(atLeast, shared))
	c[1].publish(t, "orders", &ferryv1.PublishMessage{Id: "order-1", Key: []byte("k"), Payload: []byte("x")})
	var owner uint64
	eventuallyB(t, "kitchen has an owner", func() bool {
		var err error
		owner, err = c[1].srv.node.Owner("orders", "kitchen")
		return err == nil && owner != 0
	})
	creds := testClientTLS(t, c[1].srv.opts.TLS)
	forwarded := 0
	for id, ts := range c {
		kitchen := dialTLSToken(t, ts.srv.GRPCAddr().String(), creds, testTokens["kitchen"])
		adm := ferryv1.NewAdminServiceClient(kitchen)
		if id != owner {
			forwarded++
		}
		err := retryUnavailable(ctx, func(ctx context.Context) error {
			_, err := adm.GetSubscription(ctx, &ferryv1.GetSubscriptionRequest{Topic: "orders", Name: "kitchen"})
			return err
		})
		if err != nil {
			t.Errorf("kitchen's GetSubscription through node %d (owner %d) = %v", id, owner, err)
		}
		_, err = adm.GetSubscription(ctx, &ferryv1.GetSubscriptionRequest{Topic: "orders", Name: "billing"})
		wantStatus(t, err, codes.PermissionDenied, `read permission on subscription "billing" of topic "orders"`)
		_, err = adm.GetClusterStatus(ctx, &ferryv1.GetClusterStatusRequest{})
		wantStatus(t, err, codes.PermissionDenied, "cluster permission")
	}
	if forwarded != 2 {
		t.Fatalf("%d nodes forwarded, want 2", forwarded)
	}
	// The status fans out to every node, forwarding the caller's
	// principal: each answers.
	st, err := c[2].admin.GetClusterStatus(ctx, &ferryv1.GetClusterStatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, ns := range st.GetNodes() {
		if ns.GetError() != "" {
			t.Errorf("node %d's status: %s", ns.GetNodeId(), ns.GetError())
		}
	}
	// kitchen consumes order 1 through a node that is not the owner: the
	// stream is proxied to the owner with kitchen's principal.
	via := owner%3 + 1
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	s, err := ferryv1.NewSubscriberServiceClient(dialTLSToken(t, c[via].srv.GRPCAddr().String(), creds, testTokens["kitchen"])).Subscribe(sctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Send(&ferryv1.SubscribeRequest{Frame: &ferryv1.SubscribeRequest_Init{Init: &ferryv1.SubscribeInit{Topic: "orders", Subscription: "kitchen", Credit: 10}}}); err != nil && err != io.EOF {
		t.Fatal(err)
	}
	if r, err := s.Recv(); err != nil || len(r.GetDeliveries().GetDeliveries()) != 1 {
		t.Errorf("kitchen's Subscribe through node %d (owner %d) = %v, %v; want order 1", via, owner, r, err)
	}
	cancel()

	// The owner's node-to-node port: a member node's call is believed
	// only with a principal; a client certificate is no member, whatever
	// principal it claims.
	target := c[owner].srv.opts.Cluster.Addr
	member := uint64(1)
	if owner == 1 {
		member = 2
	}
	memberCreds := peerCreds(t, ca, filepath.Join(dir, fmt.Sprintf("node%d.crt", member)), filepath.Join(dir, fmt.Sprintf("node%d.key", member)))
	asMember := ferryv1.NewAdminServiceClient(dialTLS(t, target, memberCreds))
	get := &ferryv1.GetSubscriptionRequest{Topic: "orders", Name: "kitchen"}
	_, err = asMember.GetSubscription(ctx, get)
	wantStatus(t, err, codes.Unauthenticated, "without its caller's principal")
	if _, err := asMember.GetSubscription(metadata.AppendToOutgoingContext(ctx, principalKey, "kitchen", forwardedKey, "1"), get); err != nil {
		t.Errorf("a member's forwarded call with a principal = %v, want it served", err)
	}
	asClient := ferryv1.NewAdminServiceClient(dialTLS(t, target, peerCreds(t, ca, filepath.Join(dir, "client.crt"), filepath.Join(dir, "client.key"))))
	_, err = asClient.DeleteSubscription(metadata.AppendToOutgoingContext(ctx, principalKey, "admin", forwardedKey, "1"),
		&ferryv1.DeleteSubscriptionRequest{Topic: "orders", Name: "kitchen"})
	if code := status.Code(err); code != codes.Unauthenticated {
		t.Errorf("a client certificate forwarding as admin on the node-to-node port = %v, want UNAUTHENTICATED", err)
	}
	if _, err := c[1].admin.GetSubscription(ctx, get); err != nil {
		t.Errorf("kitchen's subscription after the attempts: %v", err)
	}
}
