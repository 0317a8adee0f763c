package broker

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/ferrymq/ferry/auth"
	"github.com/ferrymq/ferry/client"
	"github.com/ferrymq/ferry/internal/clock"
	ferryv1 "github.com/ferrymq/ferry/proto/ferry/v1"

	"github.com/ferrymq/ferry/internal/ferrytest"
)

// dialTokenFrom connects from the local IP address local, sending tok
// with every call; *addr is set to the connection's local address once
// it is made.
func dialTokenFrom(tb testing.TB, addr, local, tok string, laddr *lockedString) *grpc.ClientConn {
	tb.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}}
	opts := []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, a string) (net.Conn, error) {
			c, err := d.DialContext(ctx, "tcp", a)
			if err == nil && laddr != nil {
				laddr.set(c.LocalAddr().String())
			}
			return c, err
		})}
	if tok != "" {
		opts = append(opts, grpc.WithPerRPCCredentials(client.TokenCredentials(func(context.Context) (string, error) { return tok, nil }, true)))
	}
	conn, err := grpc.NewClient(addr, opts...)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = conn.Close() })
	return conn
}

type lockedString struct {
	mu sync.Mutex
	s  string
}

func (l *lockedString) set(s string) { l.mu.Lock(); l.s = s; l.mu.Unlock() }
func (l *lockedString) get() string  { l.mu.Lock(); defer l.mu.Unlock(); return l.s }

// waitFor polls cond until it holds or 10s pass.
func waitFor(tb testing.TB, what string, cond func() (bool, string)) {
	tb.Helper()
	ferrytest.EventuallyState(tb, 10*time.Second, 10*time.Millisecond, what, cond)
}

// TestListClients: with auth on, two principals publishing and consuming
// over their own connections show up in ListClients (through the SDK)
// with their principals, remote addresses, open streams and messages;
// the ferry_client_* metrics count them by principal; a principal without
// admin is refused ListClients with PERMISSION_DENIED, counted as its
// refusal.
func TestListClients(t *testing.T) {
	dir := t.TempDir()
	ts := startServerIn(t, dir, withAuth(t, dir, nil))
	addr := ts.srv.GRPCAddr().String()
	ctx := testContext(t)
	var adminAddr, kitchenAddr lockedString
	adminConn := dialTokenFrom(t, addr, "127.0.0.1", testTokens["admin"], &adminAddr)
	kitchenConn := dialTokenFrom(t, addr, "127.0.0.2", testTokens["kitchen"], &kitchenAddr)
	adm := ferryv1.NewAdminServiceClient(adminConn)
	for _, tp := range []string{"orders", "kitchen.tickets"} {
		if _, err := adm.CreateTopic(ctx, &ferryv1.CreateTopicRequest{Name: tp}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := adm.CreateSubscription(ctx, &ferryv1.CreateSubscriptionRequest{Topic: "orders", Name: "kitchen", Config: &ferryv1.SubscriptionConfig{
		Guarantee: ferryv1.DeliveryGuarantee_DELIVERY_GUARANTEE_AT_LEAST_ONCE, Type: ferryv1.SubscriptionType_SUBSCRIPTION_TYPE_SHARED}}); err != nil {
		t.Fatal(err)
	}

	// kitchen: a Subscribe stream and a PublishStream; admin: a
	// PublishStream and 5 unary publishes to orders.
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	sub, err := ferryv1.NewSubscriberServiceClient(kitchenConn).Subscribe(sctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := sub.Send(&ferryv1.SubscribeRequest{Frame: &ferryv1.SubscribeRequest_Init{Init: &ferryv1.SubscribeInit{Topic: "orders", Subscription: "kitchen", Credit: 100}}}); err != nil {
		t.Fatal(err)
	}
	kpub, err := ferryv1.NewPublisherServiceClient(kitchenConn).PublishStream(sctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := kpub.Send(&ferryv1.PublishStreamRequest{Sequence: 1, Topic: "kitchen.tickets", Messages: batchOf("k", 3)}); err != nil {
		t.Fatal(err)
	}
	if r, err := kpub.Recv(); err != nil || r.GetError() != nil {
		t.Fatalf("kitchen's PublishStream: %v %v", r, err)
	}
	apub, err := ferryv1.NewPublisherServiceClient(adminConn).PublishStream(sctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := apub.Send(&ferryv1.PublishStreamRequest{Sequence: 1, Topic: "orders", Messages: batchOf("s", 2)}); err != nil {
		t.Fatal(err)
	}
	if _, err := apub.Recv(); err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		if _, err := ferryv1.NewPublisherServiceClient(adminConn).Publish(ctx, &ferryv1.PublishRequest{Topic: "orders", Messages: batchOf(fmt.Sprint("u", i), 1)}); err != nil {
			t.Fatal(err)
		}
	}
	got := 0
	for got < 7 {
		r, err := sub.Recv()
		if err != nil {
			t.Fatal(err)
		}
		got += len(r.GetDeliveries().GetDeliveries())
	}

	sdk, err := client.Dial(ctx, addr, client.WithToken(testTokens["admin"]), client.WithTokenOverPlaintext())
	if err != nil {
		t.Fatal(err)
	}
	defer sdk.Close()
	find := func(cs client.Clients, remote string) *client.ClientInfo {
		for i := range cs.Clients {
			if cs.Clients[i].RemoteAddr == remote {
				return &cs.Clients[i]
			}
		}
		return nil
	}
	waitFor(t, "both principals listed with their streams", func() (bool, string) {
		cs, err := sdk.ListClients(ctx)
		if err != nil {
			t.Fatal(err)
		}
		k, a := find(cs, kitchenAddr.get()), find(cs, adminAddr.get())
		ok := k != nil && a != nil &&
			k.Principal == "kitchen" && k.SubscribeStreams == 1 && k.PublishStreams == 1 && k.MessagesIn == 3 && k.MessagesOut == 7 &&
			a.Principal == "admin" && a.SubscribeStreams == 0 && a.PublishStreams == 1 && a.MessagesIn == 7 && a.MessagesOut == 0 &&
			time.Since(k.ConnectedTime) < time.Minute
		return ok, fmt.Sprintf("kitchen at %s: %+v; admin at %s: %+v; all: %+v", kitchenAddr.get(), k, adminAddr.get(), a, cs)
	})
	if !strings.HasPrefix(kitchenAddr.get(), "127.0.0.2:") {
		t.Fatalf("kitchen's address %s, want 127.0.0.2:*", kitchenAddr.get())
	}

	reg := ts.srv.Registry()
	for _, c := range []struct {
		name, principal string
		want            float64
	}{
		{"ferry_client_published_messages_total", "admin", 7},
		{"ferry_client_published_messages_total", "kitchen", 3},
		{"ferry_client_delivered_messages_total", "kitchen", 7},
		{"ferry_client_published_bytes_total", "kitchen", 3},
	} {
		if got := labeledCounter(t, reg, c.name, "principal", c.principal); got != c.want {
			t.Errorf("%s{principal=%q} = %v, want %v", c.name, c.principal, got, c.want)
		}
	}

	// kitchen may not list the clients; the refusal is its own.
	_, err = ferryv1.NewAdminServiceClient(kitchenConn).ListClients(ctx, &ferryv1.ListClientsRequest{})
	wantStatus(t, err, codes.PermissionDenied, "admin", `"*"`)
	if got := labeledCounter(t, reg, "ferry_client_refusals_total", "principal", "kitchen", "reason", "permission_denied"); got != 1 {
		t.Errorf("kitchen's permission_denied refusals = %v, want 1", got)
	}

	// Streams closed: they leave the listing.
	cancel()
	waitFor(t, "kitchen's streams closed", func() (bool, string) {
		cs, err := sdk.ListClients(ctx)
		if err != nil {
			t.Fatal(err)
		}
		k := find(cs, kitchenAddr.get())
		return k != nil && k.SubscribeStreams == 0 && k.PublishStreams == 0, fmt.Sprintf("%+v", k)
	})
}

// principalLabels is the distinct principal label values of metric name.
func principalLabels(tb testing.TB, reg prometheus.Gatherer, name string) (map[string]float64, float64) {
	tb.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		tb.Fatal(err)
	}
	got, sum := map[string]float64{}, 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "principal" {
					got[l.GetValue()] += m.GetCounter().GetValue()
				}
			}
			sum += m.GetCounter().GetValue()
		}
	}
	return got, sum
}

// TestClientStatsBounded: 500 principals (auth off: 500 source addresses
// 127.0.x.y), each publishing once over its own connection, leave at most
// ClientSeries+1 principal labels on each ferry_client_* metric, every
// call counted; and at most MaxTrackedClients connections tracked for
// ListClients, the rest counted as untracked, and forgotten once closed.
func TestClientStatsBounded(t *testing.T) {
	const principals, series, tracked = 500, 20, 50
	ts := startServer(t, func(o *Options) { o.ClientSeries, o.MaxTrackedClients = series, tracked })
	ts.createTopic(t, "orders", nil)
	addr := ts.srv.GRPCAddr().String()
	ctx := testContext(t)
	conns := make([]*grpc.ClientConn, principals)
	for i := range conns {
		conns[i] = dialFrom(t, addr, fmt.Sprintf("127.0.%d.%d", 1+i/250, 1+i%250))
		if _, err := ferryv1.NewPublisherServiceClient(conns[i]).Publish(ctx, &ferryv1.PublishRequest{Topic: "orders", Messages: batchOf(fmt.Sprint("m", i), 1)}); err != nil {
			t.Fatal(err)
		}
	}
	reg := ts.srv.Registry()
	for _, name := range []string{"ferry_client_calls_total", "ferry_client_published_messages_total", "ferry_client_published_bytes_total"} {
		labels, sum := principalLabels(t, reg, name)
		if len(labels) > series+1 {
			t.Errorf("%s has %d principal labels, over the bound %d+1", name, len(labels), series)
		}
		if labels[otherPrincipal] == 0 {
			t.Errorf("%s has nothing under %q (%d labels)", name, otherPrincipal, len(labels))
		}
		if name != "ferry_client_calls_total" && sum != principals {
			t.Errorf("%s sums to %v, want %d", name, sum, principals)
		}
	}

	resp, err := ts.admin.ListClients(ctx, &ferryv1.ListClientsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if n := len(resp.GetClients()); n != tracked || resp.GetUntracked() != principals+1-tracked {
		t.Fatalf("%d clients listed and %d untracked, want %d and %d", n, resp.GetUntracked(), tracked, principals+1-tracked)
	}
	for _, c := range conns {
		_ = c.Close()
	}
	waitFor(t, "closed connections forgotten", func() (bool, string) {
		resp, err := ts.admin.ListClients(ctx, &ferryv1.ListClientsRequest{})
		if err != nil {
			t.Fatal(err)
		}
		return len(resp.GetClients()) <= 1 && resp.GetUntracked() == 0, fmt.Sprintf("%d listed, %d untracked", len(resp.GetClients()), resp.GetUntracked())
	})
}

// TestPrincipalSeriesIdleGivesLabel: once full, a new principal is summed
// under "_other" until a labelled principal has been idle for
// principalSeriesIdle; then that one's series are deleted and the new
// one gets its label.
func TestPrincipalSeriesIdleGivesLabel(t *testing.T) {
	clk := clock.NewFake(time.Unix(1700000000, 0))
	reg := prometheus.NewRegistry()
	ps := newPrincipalSeries(2, clk, reg)
	ps.call("a", nil)
	ps.call("b", nil)
	ps.call("c", errors.New("x"))
	clk.Advance(principalSeriesIdle / 2)
	ps.call("b", nil)
	clk.Advance(principalSeriesIdle/2 + time.Second)
	ps.call("c", nil) // a is idle: c takes its place
	labels, _ := principalLabels(t, reg, "ferry_client_calls_total")
	want := map[string]float64{"b": 2, "c": 1, otherPrincipal: 1}
	if fmt.Sprint(labels) != fmt.Sprint(want) {
		t.Fatalf("calls by principal %v, want %v", labels, want)
	}
}

// TestAdminAuditLine: every admin action writes one audit line with its
// principal, method, resource and result, failed ones included; a call
// auth refused has the refusal's line only.
func TestAdminAuditLine(t *testing.T) {
	dir := t.TempDir()
	var logs syncBuffer
	ts := startServerIn(t, dir, withAuth(t, dir, &logs))
	ctx := testContext(t)
	adm := ferryv1.NewAdminServiceClient(dialToken(t, ts.srv.GRPCAddr().String(), testTokens["admin"]))
	if _, err := adm.CreateTopic(ctx, &ferryv1.CreateTopicRequest{Name: "orders"}); err != nil {
		t.Fatal(err)
	}
	_, err := adm.DeleteTopic(ctx, &ferryv1.DeleteTopicRequest{Name: "missing"})
	wantStatus(t, err, codes.NotFound)
	_, err = ferryv1.NewAdminServiceClient(dialToken(t, ts.srv.GRPCAddr().String(), testTokens["kitchen"])).DeleteTopic(ctx, &ferryv1.DeleteTopicRequest{Name: "orders"})
	wantStatus(t, err, codes.PermissionDenied)
	if _, err := adm.ListTopics(ctx, &ferryv1.ListTopicsRequest{}); err != nil {
		t.Fatal(err)
	}

	var actions []string
	for _, l := range strings.Split(logs.String(), "\n") {
		if strings.Contains(l, `msg="audit: admin action"`) {
			actions = append(actions, l[strings.Index(l, "msg="):])
		}
	}
	want := []string{
		`msg="audit: admin action" principal=admin auth_method=token peer=127.0.0.1:* method=/ferry.v1.AdminService/CreateTopic resource="topic \"orders\"" result=ok`,
		`msg="audit: admin action" principal=admin auth_method=token peer=127.0.0.1:* method=/ferry.v1.AdminService/DeleteTopic resource="topic \"missing\"" result=not_found`,
	}
	if len(actions) != len(want) {
		t.Fatalf("audit lines:\n%s\nwant %d like:\n%s", strings.Join(actions, "\n"), len(want), strings.Join(want, "\n"))
	}
	for i, w := range want {
		before, after, _ := strings.Cut(w, "127.0.0.1:*")
		got := actions[i]
		if !strings.HasPrefix(got, before+"127.0.0.1:") || !strings.HasSuffix(got, after) {
			t.Errorf("audit line %d:\n%s\nwant\n%s", i, got, w)
		}
	}
	if !strings.Contains(logs.String(), `msg="audit: call refused" principal=kitchen`) {
		t.Errorf("no refusal line for kitchen's DeleteTopic:\n%s", logs.String())
	}
}

// TestListClientsNeedsAdminOnEveryTopic: an admin of some topics may not
// list the clients (they show every principal's connections); an admin
// of every topic may.
func TestListClientsNeedsAdminOnEveryTopic(t *testing.T) {
	pol, err := auth.ParsePolicy([]byte(`
rules:
  - principals: [ops]
    permissions: [admin]
    topics: ["*"]
  - principals: [team]
    permissions: [admin]
    topics: ["orders.*"]
`))
	if err != nil {
		t.Fatal(err)
	}
	ns := rpcTable[adminSvc+"ListClients"].needs(&ferryv1.ListClientsRequest{})
	for principal, want := range map[string]bool{"ops": true, "team": false} {
		err := pol.Authorize(auth.Identity{Principal: principal}, ns[0].perm, ns[0].res)
		if (err == nil) != want {
			t.Errorf("%s may list the clients: %v, want %v", principal, err == nil, want)
		}
	}
}
