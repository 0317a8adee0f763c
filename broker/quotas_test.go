package broker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/ferrymq/ferry/internal/limits"
	ferryv1 "github.com/ferrymq/ferry/proto/ferry/v1"
)

// Each principal is a source address: Linux routes all of 127/8 to lo, so
// a client bound to 127.0.0.2 is another principal than one on 127.0.0.1.

// dialFrom connects to addr from the local IP address local.
func dialFrom(tb testing.TB, addr, local string) *grpc.ClientConn {
	tb.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, a string) (net.Conn, error) { return d.DialContext(ctx, "tcp", a) }))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = conn.Close() })
	return conn
}

func withLimits(l limits.Options) func(*Options) {
	return func(o *Options) { o.Limits = l }
}

// batchOf is n messages with ids prefix-0 … prefix-(n-1).
func batchOf(prefix string, n int) []*ferryv1.PublishMessage {
	msgs := make([]*ferryv1.PublishMessage, n)
	for i := range msgs {
		msgs[i] = &ferryv1.PublishMessage{Id: fmt.Sprintf("%s-%d", prefix, i), Payload: []byte("x")}
	}
	return msgs
}

// retryInfo is err's RetryInfo delay; it fails the test unless err is
// RESOURCE_EXHAUSTED with one.
func retryInfo(tb testing.TB, err error, words ...string) time.Duration {
	tb.Helper()
	wantStatus(tb, err, codes.ResourceExhausted, words...)
	for _, d := range status.Convert(err).Details() {
		if ri, ok := d.(*errdetails.RetryInfo); ok {
			return ri.GetRetryDelay().AsDuration()
		}
	}
	tb.Fatalf("%v has no RetryInfo", err)
	return 0
}

// labelled is the value of counter name with label limit=kind on ts.
func (ts *testServer) refusals(tb testing.TB, kind limits.Kind) float64 {
	tb.Helper()
	mfs, err := ts.srv.Registry().Gather()
	if err != nil {
		tb.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "ferry_limits_refusals_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			if m.GetLabel()[0].GetValue() == string(kind) {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

// One principal over its publish rate is refused, with a RetryInfo of the
// time its bucket needs; the refused batch is not stored, and another
// principal publishes on meanwhile.
func TestPublishLimitPerPrincipal(t *testing.T) {
	const rate = 100 // messages/s, and a bucket of 100 (1s)
	ts := startServer(t, withLimits(limits.Options{PublishMessages: rate}))
	ts.createTopic(t, "orders", nil)
	addr := ts.srv.GRPCAddr().String()
	noisy := ferryv1.NewPublisherServiceClient(dialFrom(t, addr, "127.0.0.2"))
	quiet := ferryv1.NewPublisherServiceClient(dialFrom(t, addr, "127.0.0.1"))
	ctx := testContext(t)

	first := time.Now()
	if _, err := noisy.Publish(ctx, &ferryv1.PublishRequest{Topic: "orders", Messages: batchOf("noisy-a", rate)}); err != nil {
		t.Fatalf("a full bucket's worth: %v", err)
	}
	_, err := noisy.Publish(ctx, &ferryv1.PublishRequest{Topic: "orders", Messages: batchOf("noisy-b", rate)})
	elapsed := time.Since(first)
	d := retryInfo(t, err, "127.0.0.2", "messages/s", "--limit-publish-msgs")
	// The bucket refilled for at most elapsed since it was emptied: the
	// delay is what is missing of 100 messages at 100/s.
	if d > time.Second || d < time.Second-elapsed-10*time.Millisecond {
		t.Fatalf("RetryInfo %v, want within (1s - %v, 1s]", d, elapsed)
	}
	t.Logf("refused with RetryInfo %v, %v after the first batch", d, elapsed)

	// The other principal's bucket is its own.
	for i := range 3 {
		msgs := batchOf(fmt.Sprintf("quiet-%d", i), 30)
		if _, err := quiet.Publish(ctx, &ferryv1.PublishRequest{Topic: "orders", Messages: msgs}); err != nil {
			t.Fatalf("the other principal's batch %d: %v", i, err)
		}
	}
	// The refused batch changed nothing: 100 + 90 stored.
	if h := ts.heads(t, "orders"); h[0] != rate+90 {
		t.Fatalf("head %d, want %d: the refused batch was stored", h[0], rate+90)
	}
	if n := ts.refusals(t, limits.PublishMessages); n != 1 {
		t.Fatalf("ferry_limits_refusals_total{limit=publish_messages} %v, want 1", n)
	}
	// After the delay asked for, the batch goes in.
	time.Sleep(d)
	if _, err := noisy.Publish(ctx, &ferryv1.PublishRequest{Topic: "orders", Messages: batchOf("noisy-b", rate)}); err != nil {
		t.Fatalf("after the RetryInfo delay: %v", err)
	}
}

// On a PublishStream the refusal ends the stream once the requests before
// it are answered, and nothing sent after it is stored: the SDK resends
// from the refused one, in order.
func TestPublishStreamLimit(t *testing.T) {
	ts := startServer(t, withLimits(limits.Options{PublishBytes: 1000, Burst: time.Second}))
	ts.createTopic(t, "orders", nil)
	pub := ferryv1.NewPublisherServiceClient(dialFrom(t, ts.srv.GRPCAddr().String(), "127.0.0.2"))
	stream, err := pub.PublishStream(testContext(t))
	if err != nil {
		t.Fatal(err)
	}
	big := []*ferryv1.PublishMessage{{Id: "a", Payload: make([]byte, 999)}}  // 1000 bytes with its id
	half := []*ferryv1.PublishMessage{{Id: "b", Payload: make([]byte, 499)}} // 500
	start := time.Now()
	for seq, msgs := range [][]*ferryv1.PublishMessage{big, half, batchOf("after", 1)} {
		// EOF: the broker ended the stream already (Recv says why).
		if err := stream.Send(&ferryv1.PublishStreamRequest{Sequence: uint64(seq + 1), Topic: "orders", Messages: msgs}); err != nil && !errors.Is(err, io.EOF) {
			t.Fatal(err)
		}
	}
	resp, err := stream.Recv()
	if err != nil || resp.GetSequence() != 1 || resp.GetError() != nil {
		t.Fatalf("first request: %v, %v", resp, err)
	}
	_, err = stream.Recv()
	elapsed := time.Since(start)
	d := retryInfo(t, err, "bytes/s", "--limit-publish-bytes")
	// 500 bytes at 1000 bytes/s, less what the bucket refilled meanwhile.
	if d > 500*time.Millisecond || d < 500*time.Millisecond-elapsed-10*time.Millisecond {
		t.Fatalf("RetryInfo %v, want within (500ms - %v, 500ms]", d, elapsed)
	}
	if h := ts.heads(t, "orders"); h[0] != 1 {
		t.Fatalf("head %d, want 1: a request after the refused one was stored", h[0])
	}
}

// A principal at its stream limit is refused another, others are not, and
// a stream closed frees its place.
func TestStreamLimit(t *testing.T) {
	ts := startServer(t, withLimits(limits.Options{Streams: 2}))
	ts.createTopic(t, "orders", nil)
	addr := ts.srv.GRPCAddr().String()
	noisy := ferryv1.NewPublisherServiceClient(dialFrom(t, addr, "127.0.0.2"))
	quiet := ferryv1.NewPublisherServiceClient(dialFrom(t, addr, "127.0.0.1"))
	// open opens a stream and makes one round trip on it, so the broker
	// holds it; it returns the error of that round trip.
	open := func(pub ferryv1.PublisherServiceClient, id string) (context.CancelFunc, error) {
		ctx, cancel := context.WithCancel(testContext(t))
		s, err := pub.PublishStream(ctx)
		if err == nil {
			// A Send on a stream the broker ended already says only EOF;
			// the Recv says why.
			if err = s.Send(&ferryv1.PublishStreamRequest{Sequence: 1, Topic: "orders", Messages: batchOf(id, 1)}); errors.Is(err, io.EOF) {
				err = nil
			}
		}
		if err == nil {
			_, err = s.Recv()
		}
		return cancel, err
	}
	var cancels []context.CancelFunc
	for i := range 2 {
		cancel, err := open(noisy, fmt.Sprintf("n%d", i))
		if err != nil {
			t.Fatalf("stream %d of 2: %v", i, err)
		}
		cancels = append(cancels, cancel)
	}
	_, err := open(noisy, "n2")
	if d := retryInfo(t, err, "streams", "--limit-streams"); d != limits.StreamRetry {
		t.Fatalf("RetryInfo %v, want %v", d, limits.StreamRetry)
	}
	// A subscribe stream counts too.
	sub, err := ferryv1.NewSubscriberServiceClient(dialFrom(t, addr, "127.0.0.2")).Subscribe(testContext(t))
	if err == nil {
		_, err = sub.Recv()
	}
	retryInfo(t, err, "streams")
	if _, err := open(quiet, "q0"); err != nil {
		t.Fatalf("another principal: %v", err)
	}
	cancels[0]()
	eventuallyB(t, "a closed stream frees its place", func() bool {
		cancel, err := open(noisy, "n3")
		if err == nil {
			cancels = append(cancels, cancel)
		}
		return err == nil
	})
	for _, c := range cancels {
		c()
	}
}

// A principal that created its limit of subscriptions is refused another
// until one of them is deleted (by anyone); re-creating one it has, or one
// that exists, counts nothing.
func TestSubscriptionLimit(t *testing.T) {
	ts := startServer(t, withLimits(limits.Options{Subscriptions: 2}))
	ts.createTopic(t, "orders", nil)
	addr := ts.srv.GRPCAddr().String()
	noisy := ferryv1.NewAdminServiceClient(dialFrom(t, addr, "127.0.0.2"))
	quiet := ferryv1.NewAdminServiceClient(dialFrom(t, addr, "127.0.0.1"))
	ctx := testContext(t)
	create := func(admin ferryv1.AdminServiceClient, name string) error {
		_, err := admin.CreateSubscription(ctx, &ferryv1.CreateSubscriptionRequest{Topic: "orders", Name: name, Config: subConfig(atLeast, shared)})
		return err
	}
	for _, name := range []string{"s1", "s2"} {
		if err := create(noisy, name); err != nil {
			t.Fatal(err)
		}
	}
	err := create(noisy, "s3")
	if d := retryInfo(t, err, "subscriptions", "--limit-subscriptions"); d != limits.SubscriptionRetry {
		t.Fatalf("RetryInfo %v, want %v", d, limits.SubscriptionRetry)
	}
	if _, err := ts.admin.GetSubscription(ctx, &ferryv1.GetSubscriptionRequest{Topic: "orders", Name: "s3"}); status.Code(err) != codes.NotFound {
		t.Fatalf("the refused subscription: %v, want NOT_FOUND", err)
	}
	if err := create(noisy, "s1"); err != nil {
		t.Fatalf("an identical create of one it has: %v", err)
	}
	if err := create(quiet, "q1"); err != nil {
		t.Fatalf("another principal: %v", err)
	}
	if err := create(noisy, "q1"); err != nil {
		t.Fatalf("an identical create of one that exists: %v", err)
	}
	if _, err := quiet.DeleteSubscription(ctx, &ferryv1.DeleteSubscriptionRequest{Topic: "orders", Name: "s1"}); err != nil {
		t.Fatal(err)
	}
	if err := create(noisy, "s3"); err != nil {
		t.Fatalf("after one of its subscriptions was deleted: %v", err)
	}
	// Deleted and created again by another: the new one is not noisy's.
	if _, err := quiet.DeleteSubscription(ctx, &ferryv1.DeleteSubscriptionRequest{Topic: "orders", Name: "s2"}); err != nil {
		t.Fatal(err)
	}
	if err := create(quiet, "s2"); err != nil {
		t.Fatal(err)
	}
	if err := create(noisy, "s4"); err != nil {
		t.Fatalf("after s2 was deleted and made again by another: %v", err)
	}
	retryInfo(t, create(noisy, "s5"), "subscriptions")
}

// A flood of principals keeps the broker's memory of them bounded, and a
// principal that keeps publishing stays limited through it.
func TestPrincipalsBounded(t *testing.T) {
	const maxPrincipals = 8
	ts := startServer(t, withLimits(limits.Options{PublishMessages: 5, Burst: time.Second, MaxPrincipals: maxPrincipals}))
	ts.createTopic(t, "orders", nil)
	addr := ts.srv.GRPCAddr().String()
	ctx := testContext(t)
	hot := ferryv1.NewPublisherServiceClient(dialFrom(t, addr, "127.0.0.2"))
	start := time.Now()
	hotStored := 0
	for i := range 40 {
		ip := fmt.Sprintf("127.0.1.%d", i+1)
		conn := dialFrom(t, addr, ip)
		if _, err := ferryv1.NewPublisherServiceClient(conn).Publish(ctx, &ferryv1.PublishRequest{Topic: "orders", Messages: batchOf(ip, 1)}); err != nil {
			t.Fatalf("principal %s: %v", ip, err)
		}
		_ = conn.Close()
		_, err := hot.Publish(ctx, &ferryv1.PublishRequest{Topic: "orders", Messages: batchOf(fmt.Sprintf("hot-%d", i), 5)})
		switch status.Code(err) {
		case codes.OK:
			hotStored += 5
		case codes.ResourceExhausted:
		default:
			t.Fatalf("the hot principal: %v", err)
		}
		if n := gaugeValue(t, ts, "ferry_limits_tracked_principals"); n > maxPrincipals {
			t.Fatalf("%v principals remembered, over the cap of %d", n, maxPrincipals)
		}
	}
	// The hot principal, used all along, kept its bucket: no more than
	// its burst plus its rate over the time taken.
	elapsed := time.Since(start)
	if most := 5 + int(5*elapsed.Seconds()); hotStored > most {
		t.Fatalf("the hot principal stored %d messages in %v, over its limit's %d", hotStored, elapsed, most)
	}
	t.Logf("the hot principal stored %d messages in %v beside 40 others", hotStored, elapsed)
}

func gaugeValue(tb testing.TB, ts *testServer, name string) float64 {
	tb.Helper()
	mfs, err := ts.srv.Registry().Gather()
	if err != nil {
		tb.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0].GetGauge().GetValue()
		}
	}
	tb.Fatalf("no metric %s", name)
	return 0
}

// Limits off (the default): no interceptor, nothing refused.
func TestLimitsOffByDefault(t *testing.T) {
	ts := startServer(t)
	ts.createTopic(t, "orders", nil)
	for i := range 5 {
		ts.publish(t, "orders", batchOf(fmt.Sprint(i), 1000)...)
	}
	if n := ts.refusals(t, limits.PublishMessages); n != 0 {
		t.Fatalf("%v refusals with no limit set", n)
	}
}

// A Commit's outputs are publishes: over the rate, the commit is refused
// whole and stores nothing.
func TestCommitOutputsLimited(t *testing.T) {
	ts := startServer(t, withLimits(limits.Options{PublishMessages: 10}))
	ts.createTopic(t, "in", nil)
	ts.createTopic(t, "out", nil)
	ts.createSub(t, "in", "proc", subConfig(effOnce, shared))
	sub := ferryv1.NewSubscriberServiceClient(dialFrom(t, ts.srv.GRPCAddr().String(), "127.0.0.2"))
	ctx := testContext(t)
	commit := func(prefix string) error {
		_, err := sub.Commit(ctx, &ferryv1.CommitRequest{Topic: "in", Subscription: "proc",
			Publishes: []*ferryv1.CommitPublish{{Topic: "out", Messages: batchOf(prefix, 10)}}})
		return err
	}
	if err := commit("a"); err != nil {
		t.Fatal(err)
	}
	d := retryInfo(t, commit("b"), "messages/s")
	if d <= 0 || d > time.Second {
		t.Fatalf("RetryInfo %v, want within (0, 1s]", d)
	}
	if h := ts.heads(t, "out"); h[0] != 10 {
		t.Fatalf("head %d, want 10: the refused commit stored its outputs", h[0])
	}
}

// TestPublishLimitPerAuthenticatedPrincipal: with auth on, a limit counts
// against the authenticated principal, not the address: two principals
// calling from the same address have a bucket each, so one over its limit
// leaves the other's publishes going.
func TestPublishLimitPerAuthenticatedPrincipal(t *testing.T) {
	const rate = 50
	ts := startServer(t, withAuth(t, t.TempDir(), nil), withLimits(limits.Options{PublishMessages: rate}))
	addr := ts.srv.GRPCAddr().String()
	ctx := testContext(t)
	admin := dialToken(t, addr, testTokens["admin"])
	if _, err := ferryv1.NewAdminServiceClient(admin).CreateTopic(ctx, &ferryv1.CreateTopicRequest{
		Name: "kitchen.orders", Config: &ferryv1.TopicConfig{Partitions: 1}}); err != nil {
		t.Fatal(err)
	}
	kitchen := ferryv1.NewPublisherServiceClient(dialToken(t, addr, testTokens["kitchen"]))
	adminPub := ferryv1.NewPublisherServiceClient(admin)
	if _, err := kitchen.Publish(ctx, &ferryv1.PublishRequest{Topic: "kitchen.orders", Messages: batchOf("k-a", rate)}); err != nil {
		t.Fatalf("kitchen's bucket's worth: %v", err)
	}
	_, err := kitchen.Publish(ctx, &ferryv1.PublishRequest{Topic: "kitchen.orders", Messages: batchOf("k-b", rate)})
	retryInfo(t, err, "kitchen", "messages/s")
	// admin calls from the same address: its bucket is full.
	if _, err := adminPub.Publish(ctx, &ferryv1.PublishRequest{Topic: "kitchen.orders", Messages: batchOf("a-a", rate)}); err != nil {
		t.Fatalf("another principal from the same address: %v", err)
	}
	resp, err := ferryv1.NewAdminServiceClient(admin).GetTopic(ctx, &ferryv1.GetTopicRequest{Name: "kitchen.orders"})
	if err != nil {
		t.Fatal(err)
	}
	if h := resp.GetPartitions()[0].GetHeadOffset(); h != 2*rate {
		t.Fatalf("head %d, want %d: the refused batch stored, or the other principal's refused", h, 2*rate)
	}
}
