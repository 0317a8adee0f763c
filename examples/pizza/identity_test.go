package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ferrymq/ferry/client"
	ferryv1 "github.com/ferrymq/ferry/proto/ferry/v1"
)

// TestLeastPrivilege starts the demo's broker process as the supervisor
// does, with the identities makeIdentities writes, and checks over real
// gRPC that each principal's token can publish only to the topics its
// service owns and read only its own subscriptions — every other publish
// and read is PERMISSION_DENIED — and that a caller without a token, or
// with one the broker does not know, is UNAUTHENTICATED.
func TestLeastPrivilege(t *testing.T) {
	const kitchens = 2
	bin := buildDemo(t)
	dir := t.TempDir()
	ids, err := makeIdentities(filepath.Join(dir, identityDir), "127.0.0.1", kitchens)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range principals(kitchens) {
		fi, err := os.Stat(ids.tokenFile(p))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s's token file has mode %v, want 0600", p, fi.Mode().Perm())
		}
	}
	addr, err := freeAddr("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	startBroker(t, bin, append([]string{"--data-dir", filepath.Join(dir, brokerDir), "--grpc-addr", addr}, ids.brokerArgs()...))

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	admin := dialAs(t, ids, supervisorPrincipal)
	c, err := client.Dial(ctx, addr, admin.dialOptions()...)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := setup(ctx, c); err != nil {
		t.Fatalf("the supervisor's setup: %v", err)
	}

	for _, p := range principals(kitchens) {
		conn := rawConn(t, addr, dialAs(t, ids, p))
		role := p
		if strings.HasPrefix(p, kitchenDirPrefix) {
			role = "kitchen"
		}
		for _, tp := range topics {
			want := codes.PermissionDenied
			if slices.Contains(publishes[role], tp.name) {
				want = codes.OK
			}
			_, err := ferryv1.NewPublisherServiceClient(conn).Publish(ctx, &ferryv1.PublishRequest{Topic: tp.name,
				Messages: []*ferryv1.PublishMessage{{Id: "probe-" + p, Payload: []byte("{}")}}})
			if got := status.Code(err); got != want {
				t.Errorf("%s publishes to %s: %v, want %v", p, tp.name, err, want)
			}
		}
		for _, s := range subscriptions {
			want := codes.PermissionDenied
			if s.name == role || p == supervisorPrincipal {
				want = codes.OK
			}
			_, err := ferryv1.NewAdminServiceClient(conn).GetSubscription(ctx, &ferryv1.GetSubscriptionRequest{Topic: s.topic, Name: s.name})
			if got := status.Code(err); got != want {
				t.Errorf("%s reads subscription %s/%s: %v, want %v", p, s.topic, s.name, err, want)
			}
		}
		// Nobody but the supervisor manages topics.
		_, err := ferryv1.NewAdminServiceClient(conn).DeleteTopic(ctx, &ferryv1.DeleteTopicRequest{Name: topicOrders})
		if p != supervisorPrincipal && status.Code(err) != codes.PermissionDenied {
			t.Errorf("%s deletes %s: %v, want PermissionDenied", p, topicOrders, err)
		}
	}

	for name, sec := range map[string]security{
		"no token":      {creds: admin.creds},
		"unknown token": {creds: admin.creds, token: "not-a-token-the-broker-knows"},
	} {
		conn := rawConn(t, addr, sec)
		_, err := ferryv1.NewPublisherServiceClient(conn).Publish(ctx, &ferryv1.PublishRequest{Topic: topicOrders,
			Messages: []*ferryv1.PublishMessage{{Id: "probe", Payload: []byte("{}")}}})
		if status.Code(err) != codes.Unauthenticated {
			t.Errorf("%s: publish: %v, want Unauthenticated", name, err)
		}
		_, err = ferryv1.NewAdminServiceClient(conn).GetTopic(ctx, &ferryv1.GetTopicRequest{Name: topicOrders})
		if status.Code(err) != codes.Unauthenticated {
			t.Errorf("%s: get topic: %v, want Unauthenticated", name, err)
		}
	}
	// The refused probes stored nothing: orders holds none of them.
	tp, err := c.GetTopic(ctx, topicOrders)
	if err != nil {
		t.Fatal(err)
	}
	var stored uint64
	for _, p := range tp.Partitions {
		stored += p.Messages
	}
	if want := uint64(1); stored != want { // the storefront's probe
		t.Errorf("orders holds %d messages, want %d", stored, want)
	}
}

// dialAs is the security of principal p with the demo's identities.
func dialAs(t *testing.T, ids identities, p string) security {
	t.Helper()
	sec, err := loadSecurity(ids.caFile(), ids.tokenFile(p))
	if err != nil {
		t.Fatal(err)
	}
	return sec
}

// rawConn is a gRPC connection presenting sec, closed when the test ends.
func rawConn(t *testing.T, addr string, sec security) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(addr, sec.grpcOptions()...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// startBroker runs `pizza broker` with args until the test ends.
func startBroker(t *testing.T, bin string, args []string) {
	t.Helper()
	cmd := exec.Command(bin, append([]string{"broker"}, args...)...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	})
}
