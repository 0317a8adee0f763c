package broker

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	"github.com/ferrymq/ferry/internal/limits"
	ferryv1 "github.com/ferrymq/ferry/proto/ferry/v1"
)

// A principal holding its limit of connections is refused a call on
// another (and changes nothing), its counted connections keep working,
// another principal's connections and calls work, and a connection closed
// frees its slot.
func TestConnectionLimit(t *testing.T) {
	ts := startServer(t, withLimits(limits.Options{Connections: 2}))
	ts.createTopic(t, "orders", nil) // ts.conn: one of 127.0.0.1's two
	addr := ts.srv.GRPCAddr().String()
	ctx := testContext(t)
	publish := func(conn ferryv1.PublisherServiceClient, id string) error {
		_, err := conn.Publish(ctx, &ferryv1.PublishRequest{Topic: "orders", Messages: batchOf(id, 1)})
		return err
	}
	first := dialFrom(t, addr, "127.0.0.2")
	noisy := []ferryv1.PublisherServiceClient{ferryv1.NewPublisherServiceClient(first), ferryv1.NewPublisherServiceClient(dialFrom(t, addr, "127.0.0.2"))}
	for i, pub := range noisy {
		if err := publish(pub, fmt.Sprintf("n%d", i)); err != nil {
			t.Fatalf("connection %d of 2: %v", i, err)
		}
	}
	third := ferryv1.NewPublisherServiceClient(dialFrom(t, addr, "127.0.0.2"))
	err := publish(third, "n2")
	if d := retryInfo(t, err, `"127.0.0.2"`, "2 connections", "--limit-connections"); d != limits.ConnectionRetry {
		t.Fatalf("RetryInfo %v, want %v", d, limits.ConnectionRetry)
	}
	// A stream on it is refused too, and neither stored anything.
	s, err := third.PublishStream(ctx)
	if err == nil {
		_, err = s.Recv()
	}
	retryInfo(t, err, "--limit-connections")
	if h := ts.heads(t, "orders"); h[0] != 2 {
		t.Fatalf("head %d, want 2: a refused call stored", h[0])
	}
	if n := ts.refusals(t, limits.Connections); n != 2 {
		t.Fatalf("ferry_limits_refusals_total{limit=connections} %v, want 2", n)
	}
	// The connections counted go on; so does another principal, on a
	// second connection of its own.
	for i, pub := range noisy {
		if err := publish(pub, fmt.Sprintf("n%d-again", i)); err != nil {
			t.Fatalf("counted connection %d: %v", i, err)
		}
	}
	if err := publish(ferryv1.NewPublisherServiceClient(dialFrom(t, addr, "127.0.0.1")), "q0"); err != nil {
		t.Fatalf("another principal's second connection: %v", err)
	}
	// Closed, a connection frees its slot: the refused one gets it.
	_ = first.Close()
	eventuallyB(t, "a closed connection frees its slot", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err := third.Publish(ctx, &ferryv1.PublishRequest{Topic: "orders", Messages: batchOf("n2", 1)})
		if err != nil && status.Code(err) != codes.ResourceExhausted {
			t.Fatal(err)
		}
		return err == nil
	})
	// It holds two again: a fourth is refused.
	retryInfo(t, publish(ferryv1.NewPublisherServiceClient(dialFrom(t, addr, "127.0.0.2")), "n3"), "--limit-connections")
}

// With auth on, connections count against the authenticated principal:
// kitchen at its limit is refused another, while admin, calling from the
// same address, is not.
func TestConnectionLimitPerAuthenticatedPrincipal(t *testing.T) {
	ts := startServer(t, withAuth(t, t.TempDir(), nil), withLimits(limits.Options{Connections: 1}))
	addr := ts.srv.GRPCAddr().String()
	ctx := testContext(t)
	getTopic := func(tok string) error {
		_, err := ferryv1.NewAdminServiceClient(dialToken(t, addr, tok)).GetTopic(ctx, &ferryv1.GetTopicRequest{Name: "kitchen.orders"})
		if status.Code(err) == codes.NotFound {
			return nil
		}
		return err
	}
	if err := getTopic(testTokens["kitchen"]); err != nil {
		t.Fatal(err)
	}
	retryInfo(t, getTopic(testTokens["kitchen"]), `"kitchen"`, "--limit-connections")
	if err := getTopic(testTokens["admin"]); err != nil {
		t.Fatalf("another principal from the same address: %v", err)
	}
}

// A topic holding its quota of bytes refuses publishes — Publish, a
// PublishStream request, a Commit's outputs — and stores nothing; another
// topic takes them, reads go on, and once retention, or a delete, brings
// the topic under, it takes publishes again.
func TestTopicBytesQuota(t *testing.T) {
	const quota = 4000
	ts := startServer(t, withLimits(limits.Options{TopicBytes: quota}))
	ts.createTopic(t, "full", nil)
	ts.createTopic(t, "other", nil)
	ctx := testContext(t)
	kib := func(id string) []*ferryv1.PublishMessage {
		return []*ferryv1.PublishMessage{{Id: id, Payload: make([]byte, 1000)}}
	}
	publish := func(topic, id string) error {
		_, err := ts.pub.Publish(ctx, &ferryv1.PublishRequest{Topic: topic, Messages: kib(id)})
		return err
	}
	// fill publishes 1000-byte messages until one is refused; each
	// publish before was taken.
	fill := func(prefix string) (taken int, refusal error) {
		for i := range 10 {
			if err := publish("full", fmt.Sprintf("%s%d", prefix, i)); err != nil {
				return i, err
			}
		}
		t.Fatalf("10 KB published into a topic of a %d-byte quota", quota)
		return 0, nil
	}
	taken, err := fill("a")
	d := retryInfo(t, err, `topic "full"`, "3.9 KiB", "--limit-topic-bytes")
	if d != ts.srv.opts.Storage.RetentionInterval {
		t.Fatalf("RetryInfo %v, want the retention interval %v", d, ts.srv.opts.Storage.RetentionInterval)
	}
	stored := topicBytes(t, ts, "full")
	// Each message's record is its 1000 bytes and a little: refused at
	// the first publish after the count reached the quota.
	if taken != 4 || stored < quota || stored >= quota+1100 {
		t.Fatalf("%d publishes taken, %d bytes stored, for a quota of %d", taken, stored, quota)
	}
	s, err := ts.pub.PublishStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_ = s.Send(&ferryv1.PublishStreamRequest{Sequence: 1, Topic: "full", Messages: kib("s0")})
	_, err = s.Recv()
	retryInfo(t, err, "--limit-topic-bytes")
	ts.createSub(t, "other", "proc", subConfig(effOnce, shared))
	_, err = ts.subClient().Commit(ctx, &ferryv1.CommitRequest{Topic: "other", Subscription: "proc",
		Publishes: []*ferryv1.CommitPublish{{Topic: "full", Messages: kib("c0")}}})
	retryInfo(t, err, `topic "full"`, "--limit-topic-bytes")
	if h := ts.heads(t, "full"); h[0] != uint64(taken) {
		t.Fatalf("head %d, want %d: a refused publish stored", h[0], taken)
	}
	if n := ts.refusals(t, limits.TopicBytes); n != 3 {
		t.Fatalf("ferry_limits_refusals_total{limit=topic_bytes} %v, want 3", n)
	}
	// Another topic takes publishes; the full one is read as before.
	for i := range 3 {
		if err := publish("other", fmt.Sprint(i)); err != nil {
			t.Fatalf("another topic: %v", err)
		}
	}
	if got := ts.read(t, "full", 0, 0, 10).GetMessages(); len(got) != taken {
		t.Fatalf("read %d messages of the full topic, want %d", len(got), taken)
	}

	// Retention by bytes (per partition, as the topic says) deletes its
	// oldest messages: under the quota again, it takes publishes.
	if _, err := ts.admin.UpdateTopic(ctx, &ferryv1.UpdateTopicRequest{Name: "full", Config: &ferryv1.TopicConfig{RetentionMaxBytes: 2000},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"retention_max_bytes"}}}); err != nil {
		t.Fatal(err)
	}
	if err := ts.srv.store.EnforceRetention(ctx); err != nil {
		t.Fatal(err)
	}
	if err := publish("full", "after-retention"); err != nil {
		t.Fatalf("after retention brought the topic under its quota (%d bytes): %v", topicBytes(t, ts, "full"), err)
	}

	// Deleted and made again, the topic starts empty.
	if _, err := fill("b"); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("filled again: %v", err)
	}
	if _, err := ts.admin.DeleteTopic(ctx, &ferryv1.DeleteTopicRequest{Name: "full"}); err != nil {
		t.Fatal(err)
	}
	ts.createTopic(t, "full", nil)
	if err := publish("full", "after-delete"); err != nil {
		t.Fatalf("after the topic was deleted: %v", err)
	}
}

// topicBytes is the bytes the store counts in topic.
func topicBytes(tb testing.TB, ts *testServer, topic string) uint64 {
	tb.Helper()
	parts, err := ts.srv.store.Partitions(topic)
	if err != nil {
		tb.Fatal(err)
	}
	var n uint64
	for _, p := range parts {
		n += p.Bytes
	}
	return n
}

// The connection and topic limits are off by default.
func TestConnectionAndTopicLimitsOff(t *testing.T) {
	o := DefaultOptions(t.TempDir())
	if o.Limits.Connections != 0 || o.Limits.TopicBytes != 0 || o.Limits.Enabled() {
		t.Fatalf("default limits %+v, want all off", o.Limits)
	}
	o.Limits.Connections = -1
	if err := o.Validate(); err == nil || !strings.Contains(err.Error(), "Connections -1 is negative") {
		t.Fatalf("Validate with Connections -1: %v", err)
	}
}

// Publishers racing into a topic overshoot its quota by at most the
// batches in flight when it filled: each was checked while the topic was
// under it.
func TestTopicBytesQuotaOvershoot(t *testing.T) {
	const (
		quota      = 1 << 20
		publishers = 8
		batch      = 50 // messages of 1000 bytes: ~50 KB a batch
	)
	ts := startServer(t, withLimits(limits.Options{TopicBytes: quota}))
	ts.createTopic(t, "t", &ferryv1.TopicConfig{Partitions: 4})
	ctx := testContext(t)
	var g errgroup.Group
	for p := range publishers {
		pub := ferryv1.NewPublisherServiceClient(dialFrom(t, ts.srv.GRPCAddr().String(), "127.0.0.1"))
		g.Go(func() error {
			for i := 0; ; i++ {
				msgs := make([]*ferryv1.PublishMessage, batch)
				for j := range msgs {
					msgs[j] = &ferryv1.PublishMessage{Id: fmt.Sprintf("%d-%d-%d", p, i, j), Payload: make([]byte, 1000)}
				}
				_, err := pub.Publish(ctx, &ferryv1.PublishRequest{Topic: "t", Messages: msgs})
				if status.Code(err) == codes.ResourceExhausted {
					return nil
				}
				if err != nil {
					return err
				}
			}
		})
	}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	stored := topicBytes(t, ts, "t")
	over := int64(stored) - quota
	t.Logf("%d bytes stored for a quota of %d: %d over, %.1f batches of %d publishers", stored, quota, over, float64(over)/(batch*1000), publishers)
	if stored < quota || over > publishers*batch*1100 {
		t.Fatalf("%d bytes stored for a quota of %d, want within [quota, quota + %d batches]", stored, quota, publishers)
	}
}
