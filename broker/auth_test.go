package broker

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	"github.com/ferrymq/ferry/auth"
	"github.com/ferrymq/ferry/client"
	ferryv1 "github.com/ferrymq/ferry/proto/ferry/v1"
)

// The tokens of the auth tests: admin may do everything; kitchen
// consumes orders through its subscription and publishes to kitchen.*;
// nobody is known but granted nothing.
var testTokens = map[string]string{"admin": "admin-token", "kitchen": "kitchen-token", "nobody": "nobody-token"}

const testAuthPolicy = `
rules:
  - principals: [admin, client]
    permissions: [publish, subscribe, read, admin, cluster]
    topics: ["*"]
  - principals: [kitchen]
    permissions: [subscribe, read]
    topics: [orders]
    subscriptions: [kitchen]
  - principals: [kitchen]
    permissions: [publish, read]
    topics: ["kitchen.*"]
`

// syncBuffer is a log destination tests read while the broker writes.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// withAuth writes the test token and policy files into dir and turns
// auth on with them; the broker's log (INFO and up) goes to logs too, if
// given.
func withAuth(t testing.TB, dir string, logs *syncBuffer) func(*Options) {
	var b strings.Builder
	b.WriteString("tokens:\n")
	names := make([]string, 0, len(testTokens))
	for name := range testTokens {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		fmt.Fprintf(&b, "  - name: %s\n    sha256: %s\n", name, auth.HashToken(testTokens[name]))
	}
	tokens, policy := filepath.Join(dir, "tokens.yaml"), filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(tokens, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(policy, []byte(testAuthPolicy), 0o600); err != nil {
		t.Fatal(err)
	}
	return func(o *Options) {
		o.Auth = &AuthOptions{TokensFile: tokens, PolicyFile: policy, ReloadInterval: 20 * time.Millisecond}
		if logs != nil {
			o.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
		}
	}
}

// dialToken connects without TLS, sending tok (if any) with every call.
func dialToken(tb testing.TB, addr, tok string) *grpc.ClientConn {
	tb.Helper()
	opts := []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
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

// authCall is one call of the public API, on the test's topic orders and
// subscription kitchen; what it would change if it went through is in
// authState.
type authCall struct {
	method string
	// denied names the permission and resource a refusal must name.
	denied string
	call   func(ctx context.Context, conn *grpc.ClientConn) error
}

func authCalls() []authCall {
	msg := []*ferryv1.PublishMessage{{Payload: []byte("intruder")}}
	pub := func(c *grpc.ClientConn) ferryv1.PublisherServiceClient { return ferryv1.NewPublisherServiceClient(c) }
	sub := func(c *grpc.ClientConn) ferryv1.SubscriberServiceClient { return ferryv1.NewSubscriberServiceClient(c) }
	adm := func(c *grpc.ClientConn) ferryv1.AdminServiceClient { return ferryv1.NewAdminServiceClient(c) }
	kitchen := `subscription "kitchen" of topic "orders"`
	return []authCall{
		{"Publish", `publish permission on topic "orders"`, func(ctx context.Context, c *grpc.ClientConn) error {
			_, err := pub(c).Publish(ctx, &ferryv1.PublishRequest{Topic: "orders", Messages: msg})
			return err
		}},
		{"PublishStream", `publish permission on topic "orders"`, func(ctx context.Context, c *grpc.ClientConn) error {
			s, err := pub(c).PublishStream(ctx)
			if err != nil {
				return err
			}
			// A stream refused at once fails Send with EOF: Recv says why.
			if err := s.Send(&ferryv1.PublishStreamRequest{Sequence: 1, Topic: "orders", Messages: msg}); err != nil && err != io.EOF {
				return err
			}
			r, err := s.Recv()
			if err == nil && r.GetError() != nil {
				return status.Error(codes.Code(r.GetError().GetCode()), r.GetError().GetMessage())
			}
			return err
		}},
		{"Subscribe", "subscribe permission on " + kitchen, func(ctx context.Context, c *grpc.ClientConn) error {
			s, err := sub(c).Subscribe(ctx)
			if err != nil {
				return err
			}
			if err := s.Send(&ferryv1.SubscribeRequest{Frame: &ferryv1.SubscribeRequest_Init{Init: &ferryv1.SubscribeInit{Topic: "orders", Subscription: "kitchen", Credit: 10}}}); err != nil && err != io.EOF {
				return err
			}
			_, err = s.Recv()
			return err
		}},
		{"Ack", "subscribe permission on " + kitchen, func(ctx context.Context, c *grpc.ClientConn) error {
			_, err := sub(c).Ack(ctx, &ferryv1.AckRequest{Topic: "orders", Subscription: "kitchen", DeliveryIds: []string{"x"}})
			return err
		}},
		{"Nack", "subscribe permission on " + kitchen, func(ctx context.Context, c *grpc.ClientConn) error {
			_, err := sub(c).Nack(ctx, &ferryv1.NackRequest{Topic: "orders", Subscription: "kitchen", DeliveryIds: []string{"x"}})
			return err
		}},
		{"ModifyAckDeadline", "subscribe permission on " + kitchen, func(ctx context.Context, c *grpc.ClientConn) error {
			_, err := sub(c).ModifyAckDeadline(ctx, &ferryv1.ModifyAckDeadlineRequest{Topic: "orders", Subscription: "kitchen", DeliveryIds: []string{"x"}})
			return err
		}},
		{"Commit", "subscribe permission on " + kitchen, func(ctx context.Context, c *grpc.ClientConn) error {
			_, err := sub(c).Commit(ctx, &ferryv1.CommitRequest{Topic: "orders", Subscription: "kitchen",
				Publishes: []*ferryv1.CommitPublish{{Topic: "orders", Messages: []*ferryv1.PublishMessage{{Id: "c1", Payload: []byte("x")}}}}})
			return err
		}},
		{"Seek", "subscribe permission on " + kitchen, func(ctx context.Context, c *grpc.ClientConn) error {
			_, err := sub(c).Seek(ctx, &ferryv1.SeekRequest{Topic: "orders", Subscription: "kitchen", Position: &ferryv1.Position{Kind: ferryv1.PositionKind_POSITION_KIND_LATEST}})
			return err
		}},
		{"CreateTopic", `admin permission on topic "new"`, func(ctx context.Context, c *grpc.ClientConn) error {
			_, err := adm(c).CreateTopic(ctx, &ferryv1.CreateTopicRequest{Name: "new", Config: &ferryv1.TopicConfig{Partitions: 1}})
			return err
		}},
		{"GetTopic", `read permission on topic "orders"`, func(ctx context.Context, c *grpc.ClientConn) error {
			_, err := adm(c).GetTopic(ctx, &ferryv1.GetTopicRequest{Name: "orders"})
			return err
		}},
		{"ListTopics", `read permission on topic "*"`, func(ctx context.Context, c *grpc.ClientConn) error {
			_, err := adm(c).ListTopics(ctx, &ferryv1.ListTopicsRequest{})
			return err
		}},
		{"UpdateTopic", `admin permission on topic "orders"`, func(ctx context.Context, c *grpc.ClientConn) error {
			_, err := adm(c).UpdateTopic(ctx, &ferryv1.UpdateTopicRequest{Name: "orders", Config: &ferryv1.TopicConfig{RetentionMaxMessages: 7},
				UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"retention_max_messages"}}})
			return err
		}},
		{"ReadMessages", `read permission on topic "orders"`, func(ctx context.Context, c *grpc.ClientConn) error {
			_, err := adm(c).ReadMessages(ctx, &ferryv1.ReadMessagesRequest{Topic: "orders", MaxMessages: 10})
			return err
		}},
		{"CreateSubscription", `admin permission on subscription "new" of topic "orders"`, func(ctx context.Context, c *grpc.ClientConn) error {
			_, err := adm(c).CreateSubscription(ctx, &ferryv1.CreateSubscriptionRequest{Topic: "orders", Name: "new", Config: &ferryv1.SubscriptionConfig{
				Guarantee: ferryv1.DeliveryGuarantee_DELIVERY_GUARANTEE_AT_LEAST_ONCE, Type: ferryv1.SubscriptionType_SUBSCRIPTION_TYPE_SHARED}})
			return err
		}},
		{"GetSubscription", "read permission on " + kitchen, func(ctx context.Context, c *grpc.ClientConn) error {
			_, err := adm(c).GetSubscription(ctx, &ferryv1.GetSubscriptionRequest{Topic: "orders", Name: "kitchen"})
			return err
		}},
		{"ListSubscriptions", `read permission on topic "orders"`, func(ctx context.Context, c *grpc.ClientConn) error {
			_, err := adm(c).ListSubscriptions(ctx, &ferryv1.ListSubscriptionsRequest{Topic: "orders"})
			return err
		}},
		{"UpdateSubscription", "admin permission on " + kitchen, func(ctx context.Context, c *grpc.ClientConn) error {
			_, err := adm(c).UpdateSubscription(ctx, &ferryv1.UpdateSubscriptionRequest{Topic: "orders", Name: "kitchen",
				Config: &ferryv1.SubscriptionConfig{MaxDeliveries: 3}, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"max_deliveries"}}})
			return err
		}},
		{"GetClusterStatus", "cluster permission on the cluster", func(ctx context.Context, c *grpc.ClientConn) error {
			_, err := adm(c).GetClusterStatus(ctx, &ferryv1.GetClusterStatusRequest{})
			return err
		}},
		{"ListClients", `admin permission on topic "*"`, func(ctx context.Context, c *grpc.ClientConn) error {
			_, err := adm(c).ListClients(ctx, &ferryv1.ListClientsRequest{})
			return err
		}},
		{"DeleteSubscription", "admin permission on " + kitchen, func(ctx context.Context, c *grpc.ClientConn) error {
			_, err := adm(c).DeleteSubscription(ctx, &ferryv1.DeleteSubscriptionRequest{Topic: "orders", Name: "kitchen"})
			return err
		}},
		{"DeleteTopic", `admin permission on topic "orders"`, func(ctx context.Context, c *grpc.ClientConn) error {
			_, err := adm(c).DeleteTopic(ctx, &ferryv1.DeleteTopicRequest{Name: "orders", Force: true})
			return err
		}},
	}
}

// authState is what the calls could change: topics and their configs,
// partitions' heads, subscriptions' configs and positions.
func authState(t testing.TB, ctx context.Context, adm ferryv1.AdminServiceClient) string {
	t.Helper()
	lt, err := adm.ListTopics(ctx, &ferryv1.ListTopicsRequest{})
	if err != nil {
		t.Fatalf("ListTopics: %v", err)
	}
	var b strings.Builder
	for _, tp := range lt.GetTopics() {
		fmt.Fprintf(&b, "topic %s %s\n", tp.GetName(), prototext.Format(tp.GetConfig()))
		gt, err := adm.GetTopic(ctx, &ferryv1.GetTopicRequest{Name: tp.GetName()})
		if err != nil {
			t.Fatalf("GetTopic: %v", err)
		}
		for _, p := range gt.GetPartitions() {
			fmt.Fprintf(&b, "  partition %d head %d count %d\n", p.GetPartition(), p.GetHeadOffset(), p.GetMessageCount())
		}
		ls, err := adm.ListSubscriptions(ctx, &ferryv1.ListSubscriptionsRequest{Topic: tp.GetName()})
		if err != nil {
			t.Fatalf("ListSubscriptions: %v", err)
		}
		for i, s := range ls.GetSubscriptions() {
			st := ls.GetStats()[i]
			fmt.Fprintf(&b, "  subscription %s %s backlog %d in_flight %d delivered %d acked %d nacked %d\n", s.GetName(),
				prototext.Format(s.GetConfig()), st.GetBacklog(), st.GetInFlight(), st.GetDelivered(), st.GetAcked(), st.GetNacked())
		}
	}
	return b.String()
}

// TestAuthTableCoversEveryRPC: every method the public port serves has
// an rpcTable entry, and every entry is a method it serves; the calls of
// TestAuthEveryRPC cover every method of the API.
func TestAuthTableCoversEveryRPC(t *testing.T) {
	ts := startServer(t)
	served := map[string]bool{}
	for svc, info := range ts.srv.grpc.GetServiceInfo() {
		for _, m := range info.Methods {
			full := "/" + svc + "/" + m.Name
			served[full] = true
			if _, ok := rpcTable[full]; !ok {
				t.Errorf("%s has no rpcTable entry (auth_rpcs.go): say what permission it needs", full)
			}
		}
	}
	tested := map[string]bool{}
	for _, c := range authCalls() {
		tested[c.method] = true
	}
	for full, acc := range rpcTable {
		if !served[full] {
			t.Errorf("rpcTable names %s, which the public port does not serve", full)
		}
		if strings.HasPrefix(full, "/ferry.v1.") && !tested[full[strings.LastIndexByte(full, '/')+1:]] {
			t.Errorf("%s is not among TestAuthEveryRPC's calls", full)
		}
		if strings.HasPrefix(full, "/ferry.v1.") && (acc.open || (acc.needs == nil && acc.list == "")) {
			t.Errorf("%s needs no permission", full)
		}
	}
}

// TestAuthEveryRPC: with auth on, every RPC of the API is refused with
// UNAUTHENTICATED without credentials and with a wrong token, and with
// PERMISSION_DENIED (naming the permission and the resource) for a
// principal the policy grants nothing, and for one whose grants are
// elsewhere; none of them changes anything. Health stays open; each
// refusal is counted and audited. The admin then makes every call.
func TestAuthEveryRPC(t *testing.T) {
	var logs syncBuffer
	ts := startServer(t, withAuth(t, t.TempDir(), &logs))
	addr := ts.srv.GRPCAddr().String()
	ctx := testContext(t)
	admin := dialToken(t, addr, testTokens["admin"])
	adm := ferryv1.NewAdminServiceClient(admin)
	if _, err := adm.CreateTopic(ctx, &ferryv1.CreateTopicRequest{Name: "orders", Config: &ferryv1.TopicConfig{Partitions: 1}}); err != nil {
		t.Fatal(err)
	}
	if _, err := adm.CreateTopic(ctx, &ferryv1.CreateTopicRequest{Name: "kitchen.ready", Config: &ferryv1.TopicConfig{Partitions: 1}}); err != nil {
		t.Fatal(err)
	}
	if _, err := adm.CreateSubscription(ctx, &ferryv1.CreateSubscriptionRequest{Topic: "orders", Name: "kitchen", Config: &ferryv1.SubscriptionConfig{
		Guarantee: ferryv1.DeliveryGuarantee_DELIVERY_GUARANTEE_AT_LEAST_ONCE, Type: ferryv1.SubscriptionType_SUBSCRIPTION_TYPE_SHARED,
		Start: &ferryv1.Position{Kind: ferryv1.PositionKind_POSITION_KIND_EARLIEST}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := ferryv1.NewPublisherServiceClient(admin).Publish(ctx, &ferryv1.PublishRequest{Topic: "orders", Messages: []*ferryv1.PublishMessage{{Payload: []byte("order 1")}}}); err != nil {
		t.Fatal(err)
	}
	before := authState(t, ctx, adm)

	// A token in the header of another scheme, and metadata claiming a
	// forwarded principal (the public port never believes it).
	basic := dialToken(t, addr, "")
	forged := dialToken(t, addr, testTokens["nobody"])
	callers := []struct {
		name string
		conn *grpc.ClientConn
		md   metadata.MD
		want codes.Code
	}{
		{"no credentials", dialToken(t, addr, ""), nil, codes.Unauthenticated},
		{"a wrong token", dialToken(t, addr, "admin-tokem"), nil, codes.Unauthenticated},
		{"a basic header", basic, metadata.Pairs("authorization", "Basic YWRtaW46YWRtaW4="), codes.Unauthenticated},
		{"a principal granted nothing", dialToken(t, addr, testTokens["nobody"]), nil, codes.PermissionDenied},
		{"nobody claiming to be forwarded as admin", forged, metadata.Pairs(principalKey, "admin", forwardedKey, "2"), codes.PermissionDenied},
	}
	for _, cl := range callers {
		for _, c := range authCalls() {
			cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			if cl.md != nil {
				cctx = metadata.NewOutgoingContext(cctx, cl.md)
			}
			err := c.call(cctx, cl.conn)
			cancel()
			if status.Code(err) != cl.want {
				t.Errorf("%s: %s = %v, want %v", cl.name, c.method, err, cl.want)
				continue
			}
			if cl.want == codes.PermissionDenied && !strings.Contains(status.Convert(err).Message(), c.denied) {
				t.Errorf("%s: %s refused with %q, want it to name the %s", cl.name, c.method, status.Convert(err).Message(), c.denied)
			}
		}
	}
	// kitchen may consume orders through its subscription and publish to
	// kitchen.*, and nothing else.
	kitchen := dialToken(t, addr, testTokens["kitchen"])
	for _, c := range authCalls() {
		switch c.method {
		case "Subscribe", "Ack", "Nack", "ModifyAckDeadline", "Seek":
			// Subscribe would get order 1 and Seek move the cursor: run
			// below, once the state is compared.
			continue
		}
		err := c.call(ctx, kitchen)
		switch c.method {
		case "GetSubscription":
			if err != nil {
				t.Errorf("kitchen: %s = %v, want it served", c.method, err)
			}
		case "Commit": // kitchen consumes orders, but may not publish there
			wantStatus(t, err, codes.PermissionDenied, `publish permission on topic "orders"`)
		case "ListTopics":
		default:
			wantStatus(t, err, codes.PermissionDenied, c.denied)
		}
	}
	if after := authState(t, ctx, adm); after != before {
		t.Errorf("refused calls changed the state:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	lt, err := ferryv1.NewAdminServiceClient(kitchen).ListTopics(ctx, &ferryv1.ListTopicsRequest{})
	if err != nil || len(lt.GetTopics()) != 1 || lt.GetTopics()[0].GetName() != "kitchen.ready" {
		t.Errorf("kitchen's ListTopics = %v, %v; want kitchen.ready only", lt, err)
	}
	if _, err := ferryv1.NewPublisherServiceClient(kitchen).Publish(ctx, &ferryv1.PublishRequest{Topic: "kitchen.ready", Messages: []*ferryv1.PublishMessage{{Payload: []byte("pizza 1")}}}); err != nil {
		t.Errorf("kitchen publishes to kitchen.ready: %v", err)
	}
	// A publish stream's every frame is checked: kitchen's frame to
	// orders is answered with the refusal, and the stream goes on.
	ps, err := ferryv1.NewPublisherServiceClient(kitchen).PublishStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for seq, topic := range []string{"kitchen.ready", "orders", "kitchen.ready"} {
		if err := ps.Send(&ferryv1.PublishStreamRequest{Sequence: uint64(seq), Topic: topic, Messages: []*ferryv1.PublishMessage{{Payload: []byte("x")}}}); err != nil {
			t.Fatal(err)
		}
	}
	for seq, want := range []codes.Code{codes.OK, codes.PermissionDenied, codes.OK} {
		r, err := ps.Recv()
		if err != nil || r.GetSequence() != uint64(seq) || codes.Code(r.GetError().GetCode()) != want {
			t.Errorf("kitchen's stream, frame %d = %v, %v; want %v", seq, r, err, want)
		}
	}
	_ = ps.CloseSend()
	// kitchen consumes order 1.
	sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	s, err := ferryv1.NewSubscriberServiceClient(kitchen).Subscribe(sctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Send(&ferryv1.SubscribeRequest{Frame: &ferryv1.SubscribeRequest_Init{Init: &ferryv1.SubscribeInit{Topic: "orders", Subscription: "kitchen", Credit: 10}}}); err != nil {
		t.Fatal(err)
	}
	if r, err := s.Recv(); err != nil || len(r.GetDeliveries().GetDeliveries()) != 1 {
		t.Errorf("kitchen's Subscribe = %v, %v; want order 1", r, err)
	}
	cancel()
	if _, err := ferryv1.NewSubscriberServiceClient(kitchen).Seek(ctx, &ferryv1.SeekRequest{Topic: "orders", Subscription: "kitchen",
		Position: &ferryv1.Position{Kind: ferryv1.PositionKind_POSITION_KIND_EARLIEST}}); err != nil {
		t.Errorf("kitchen seeks its subscription: %v", err)
	}

	// Health needs no credentials; reflection needs some.
	anon := dialToken(t, addr, "")
	if st, err := checkHealth(ctx, anon, ""); err != nil || st != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("health without credentials = %v, %v", st, err)
	}
	if code, _ := httpGet(t, "http://"+ts.srv.HTTPAddr().String()+"/readyz"); code != 200 {
		t.Errorf("/readyz = %d", code)
	}

	// Refusals are counted by reason and audited: who, what, result.
	reg := ts.srv.Registry()
	if n := labeledCounter(t, reg, "ferry_auth_refusals_total", "reason", "unauthenticated", "method", "DeleteTopic"); n != 3 {
		t.Errorf("unauthenticated DeleteTopic refusals = %v, want 3", n)
	}
	if n := labeledCounter(t, reg, "ferry_auth_refusals_total", "reason", "permission_denied", "method", "Publish"); n != 3 {
		t.Errorf("denied Publish refusals = %v, want 3", n) // nobody twice, kitchen once
	}
	for _, line := range []string{`principal=nobody auth_method=token`, `method=/ferry.v1.AdminService/DeleteTopic result=permission_denied`, `result=unauthenticated reason="the bearer token is not recognised`} {
		if !strings.Contains(logs.String(), line) {
			t.Errorf("no audit line with %s", line)
		}
	}

	// The admin may make every call.
	for _, c := range authCalls() {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := c.call(cctx, admin)
		cancel()
		if code := status.Code(err); code == codes.Unauthenticated || code == codes.PermissionDenied {
			t.Errorf("admin: %s = %v", c.method, err)
		}
	}
}

// labeledCounter is the value of counter name with the given label
// pairs on reg (0 if absent).
func labeledCounter(t testing.TB, reg prometheus.Gatherer, name string, kv ...string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metric:
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			for i := 0; i+1 < len(kv); i += 2 {
				if labels[kv[i]] != kv[i+1] {
					continue metric
				}
			}
			return m.GetCounter().GetValue()
		}
	}
	return 0
}

// TestAuthReload: the broker follows changes to its token and policy
// files without a restart: a grant added to the policy applies, a token
// added for rotation works beside the old one, the old one removed is
// refused; an invalid policy is kept out (counted) and the previous one
// stays in force.
func TestAuthReload(t *testing.T) {
	dir := t.TempDir()
	ts := startServer(t, withAuth(t, dir, nil))
	addr := ts.srv.GRPCAddr().String()
	ctx := testContext(t)
	adm := ferryv1.NewAdminServiceClient(dialToken(t, addr, testTokens["admin"]))
	if _, err := adm.CreateTopic(ctx, &ferryv1.CreateTopicRequest{Name: "public.menu", Config: &ferryv1.TopicConfig{Partitions: 1}}); err != nil {
		t.Fatal(err)
	}
	nobody := ferryv1.NewAdminServiceClient(dialToken(t, addr, testTokens["nobody"]))
	getMenu := func(c ferryv1.AdminServiceClient) codes.Code {
		_, err := c.GetTopic(ctx, &ferryv1.GetTopicRequest{Name: "public.menu"})
		return status.Code(err)
	}
	if code := getMenu(nobody); code != codes.PermissionDenied {
		t.Fatalf("nobody's GetTopic = %v before the grant", code)
	}
	write := func(name, body string) {
		tmp := filepath.Join(dir, name+".tmp")
		if err := os.WriteFile(tmp, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	grant := testAuthPolicy + "  - principals: [nobody]\n    permissions: [read]\n    topics: [\"public.*\"]\n"
	write("policy.yaml", grant)
	eventuallyB(t, "the new grant applies", func() bool { return getMenu(nobody) == codes.OK })

	write("policy.yaml", grant+"  - principals: [nobody]\n    permissions: [reed]\n")
	eventuallyB(t, "the invalid policy is counted", func() bool {
		return labeledCounter(t, ts.srv.Registry(), "ferry_auth_reload_failures_total", "file", "policy") == 1
	})
	if code := getMenu(nobody); code != codes.OK {
		t.Errorf("after an invalid policy, nobody's GetTopic = %v: the previous policy is not in force", code)
	}

	// Rotation: nobody gets a second token, then loses the first.
	tokens := func(entries ...string) string {
		return "tokens:\n" + strings.Join(entries, "")
	}
	entry := func(name, tok string) string {
		return fmt.Sprintf("  - name: %s\n    sha256: %s\n", name, auth.HashToken(tok))
	}
	rotated := ferryv1.NewAdminServiceClient(dialToken(t, addr, "nobody-token-2"))
	write("tokens.yaml", tokens(entry("admin", testTokens["admin"]), entry("nobody", testTokens["nobody"]), entry("nobody", "nobody-token-2")))
	eventuallyB(t, "the new token works", func() bool { return getMenu(rotated) == codes.OK })
	if code := getMenu(nobody); code != codes.OK {
		t.Errorf("during the rotation, the old token = %v", code)
	}
	write("tokens.yaml", tokens(entry("admin", testTokens["admin"]), entry("nobody", "nobody-token-2")))
	eventuallyB(t, "the old token is refused", func() bool { return getMenu(nobody) == codes.Unauthenticated })
	if code := getMenu(rotated); code != codes.OK {
		t.Errorf("after the rotation, the new token = %v", code)
	}
}

// TestAuthSDKToken: client.WithToken is refused over plaintext unless
// allowed, works over TLS, and the SDK's producer gets the broker's
// refusals as they are.
func TestAuthSDKToken(t *testing.T) {
	dir, ca := tlsDir(t)
	// TLS without client certificates: the token is the only identity.
	ts := startServer(t, func(o *Options) {
		withTLS(t, dir, ca)(o)
		o.TLS.ClientCAFile = ""
	}, withAuth(t, t.TempDir(), nil))
	addr := ts.srv.GRPCAddr().String()
	ctx := testContext(t)
	if _, err := client.Dial(ctx, addr, client.WithToken(testTokens["admin"])); err == nil || !strings.Contains(err.Error(), "transport") {
		t.Errorf("Dial with a token over plaintext = %v, want it refused", err)
	}
	tlsCreds, err := client.TLSFromFiles(ca.File, "", "")
	if err != nil {
		t.Fatal(err)
	}
	admin, err := client.Dial(ctx, addr, client.WithTLS(tlsCreds), client.WithToken(testTokens["admin"]))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	if _, err := admin.CreateTopic(ctx, "orders", client.TopicConfig{Partitions: 1}); err != nil {
		t.Fatalf("admin's CreateTopic over TLS: %v", err)
	}
	kitchen, err := client.Dial(ctx, addr, client.WithTLS(tlsCreds), client.WithToken(testTokens["kitchen"]))
	if err != nil {
		t.Fatal(err)
	}
	defer kitchen.Close()
	_, err = kitchen.NewProducer("orders", client.ProducerOptions{}).Publish(ctx, &client.Message{Payload: []byte("x")})
	if client.StatusCode(err) != codes.PermissionDenied {
		t.Errorf("kitchen's Publish to orders = %v, want PERMISSION_DENIED", err)
	}
	// A wrong token: the producer's stream is refused, and its publishes
	// fail (not retried forever), each time.
	wrong, err := client.Dial(ctx, addr, client.WithTLS(tlsCreds), client.WithToken("stolen"))
	if err != nil {
		t.Fatal(err)
	}
	defer wrong.Close()
	prod := wrong.NewProducer("orders", client.ProducerOptions{})
	for i := range 2 {
		pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err = prod.Publish(pctx, &client.Message{Payload: []byte("x")})
		cancel()
		if client.StatusCode(err) != codes.Unauthenticated {
			t.Errorf("publish %d with a wrong token = %v, want UNAUTHENTICATED", i, err)
		}
	}
	anon, err := client.Dial(ctx, addr, client.WithTLS(tlsCreds))
	if err != nil {
		t.Fatal(err)
	}
	defer anon.Close()
	if _, err := anon.GetTopic(ctx, "orders"); client.StatusCode(err) != codes.Unauthenticated {
		t.Errorf("GetTopic without a token = %v, want UNAUTHENTICATED", err)
	}
	// Allowed explicitly, a token goes over plaintext (tests, loopback).
	plain := startServer(t, withAuth(t, t.TempDir(), nil))
	pc, err := client.Dial(ctx, plain.srv.GRPCAddr().String(), client.WithToken(testTokens["admin"]), client.WithTokenOverPlaintext())
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	if _, err := pc.CreateTopic(ctx, "orders", client.TopicConfig{Partitions: 1}); err != nil {
		t.Errorf("CreateTopic with a token over plaintext, allowed: %v", err)
	}
}

// TestAuthRevokesOpenStreams: a grant or a token revoked while a stream
// is open ends what relied on it: the consumer's Subscribe stream ends
// with PERMISSION_DENIED at its next delivery, a publish stream's next
// frame is refused, and once the token is gone, UNAUTHENTICATED.
func TestAuthRevokesOpenStreams(t *testing.T) {
	dir := t.TempDir()
	ts := startServer(t, withAuth(t, dir, nil))
	addr := ts.srv.GRPCAddr().String()
	ctx := testContext(t)
	admin := dialToken(t, addr, testTokens["admin"])
	adm := ferryv1.NewAdminServiceClient(admin)
	for _, name := range []string{"orders", "kitchen.ready"} {
		if _, err := adm.CreateTopic(ctx, &ferryv1.CreateTopicRequest{Name: name, Config: &ferryv1.TopicConfig{Partitions: 1}}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := adm.CreateSubscription(ctx, &ferryv1.CreateSubscriptionRequest{Topic: "orders", Name: "kitchen", Config: subConfig(atLeast, shared)}); err != nil {
		t.Fatal(err)
	}
	pubOrder := func(id string) {
		t.Helper()
		if _, err := ferryv1.NewPublisherServiceClient(admin).Publish(ctx, &ferryv1.PublishRequest{Topic: "orders", Messages: []*ferryv1.PublishMessage{{Id: id, Payload: []byte(id)}}}); err != nil {
			t.Fatal(err)
		}
	}
	pubOrder("order-1")
	kitchen := dialToken(t, addr, testTokens["kitchen"])
	sub, err := ferryv1.NewSubscriberServiceClient(kitchen).Subscribe(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := sub.Send(&ferryv1.SubscribeRequest{Frame: &ferryv1.SubscribeRequest_Init{Init: &ferryv1.SubscribeInit{Topic: "orders", Subscription: "kitchen", Credit: 10}}}); err != nil {
		t.Fatal(err)
	}
	if r, err := sub.Recv(); err != nil || len(r.GetDeliveries().GetDeliveries()) != 1 {
		t.Fatalf("kitchen's first delivery = %v, %v", r, err)
	}
	ps, err := ferryv1.NewPublisherServiceClient(kitchen).PublishStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	seq := uint64(0)
	publishFrame := func() codes.Code {
		t.Helper()
		seq++
		if err := ps.Send(&ferryv1.PublishStreamRequest{Sequence: seq, Topic: "kitchen.ready", Messages: []*ferryv1.PublishMessage{{Payload: []byte("pizza")}}}); err != nil {
			t.Fatal(err)
		}
		r, err := ps.Recv()
		if err != nil {
			t.Fatal(err)
		}
		return codes.Code(r.GetError().GetCode())
	}
	if code := publishFrame(); code != codes.OK {
		t.Fatalf("kitchen's first frame = %v", code)
	}
	write := func(name, body string) {
		tmp := filepath.Join(dir, name+".tmp")
		if err := os.WriteFile(tmp, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	reloads := func(file string) float64 {
		return labeledCounter(t, ts.srv.Registry(), "ferry_auth_reloads_total", "file", file)
	}

	// The grants are revoked: kitchen's next delivery ends its stream,
	// its next frame is refused.
	write("policy.yaml", "rules:\n  - principals: [admin]\n    permissions: [publish, subscribe, read, admin, cluster]\n    topics: [\"*\"]\n")
	eventuallyB(t, "the policy is reloaded", func() bool { return reloads("policy") == 1 })
	pubOrder("order-2")
	if r, err := sub.Recv(); status.Code(err) != codes.PermissionDenied {
		t.Errorf("kitchen's stream after its grant was revoked = %v, %v; want PERMISSION_DENIED", r, err)
	}
	if code := publishFrame(); code != codes.PermissionDenied {
		t.Errorf("kitchen's frame after its grant was revoked = %v, want PERMISSION_DENIED", code)
	}

	// Granted again, then the token revoked.
	write("policy.yaml", testAuthPolicy)
	eventuallyB(t, "the policy is reloaded again", func() bool { return reloads("policy") == 2 })
	if code := publishFrame(); code != codes.OK {
		t.Errorf("kitchen's frame when granted again = %v", code)
	}
	write("tokens.yaml", "tokens:\n  - name: admin\n    sha256: "+auth.HashToken(testTokens["admin"])+"\n")
	eventuallyB(t, "the tokens are reloaded", func() bool { return reloads("tokens") == 1 })
	if code := publishFrame(); code != codes.Unauthenticated {
		t.Errorf("kitchen's frame after its token was revoked = %v, want UNAUTHENTICATED", code)
	}
}
