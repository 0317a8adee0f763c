package broker

import (
	"context"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/ferrymq/ferry/cluster"
	"github.com/ferrymq/ferry/consumer"
	ferryv1 "github.com/ferrymq/ferry/proto/ferry/v1"
)

// sealedID is plain ("partition.offset.attempt.epoch") sealed as the
// subscription would seal it: a well-formed id of a delivery it may never
// have made.
func (ts *testServer) sealedID(tb testing.TB, topic, sub, plain string) string {
	tb.Helper()
	id, err := consumer.ParseDeliveryID(plain)
	if err != nil {
		tb.Fatalf("ParseDeliveryID(%q): %v", plain, err)
	}
	seal, err := ts.srv.engine.Seal(topic, sub)
	if err != nil {
		tb.Fatalf("Seal(%s/%s): %v", topic, sub, err)
	}
	return seal.Seal(id)
}

// TestDeliveryIDsBoundToSubscription: a delivery id acts only on the
// subscription (of the topic) that made it. An ack, nack, extend or commit
// on another subscription naming its id, one of another topic's
// subscription of the same name, a made-up id or an altered one is refused
// with INVALID_ARGUMENT, and changes nothing: the other subscription's
// message stays outstanding and is acked by its own id.
func TestDeliveryIDsBoundToSubscription(t *testing.T) {
	for _, g := range []ferryv1.DeliveryGuarantee{atLeast, effOnce} {
		t.Run(g.String(), func(t *testing.T) { testDeliveryIDsBound(t, g) })
	}
}

func testDeliveryIDsBound(t *testing.T, g ferryv1.DeliveryGuarantee) {
	ts, _ := startFakeServer(t)
	ts.createTopic(t, "a", nil)
	ts.createTopic(t, "b", nil)
	ts.createTopic(t, "out", nil)
	for _, s := range [][2]string{{"a", "s1"}, {"a", "s2"}, {"b", "s1"}} {
		ts.createSub(t, s[0], s[1], subConfig(g, shared))
	}
	ts.publishN(t, "a", "a", 1)
	ts.publishN(t, "b", "b", 1)
	take := func(topic, sub string) (*subStream, string) {
		s := ts.attach(t, topic, sub, 1)
		d := s.next(t)
		if d.GetMessage().GetOffset() != 0 {
			t.Fatalf("%s/%s delivered offset %d, want 0", topic, sub, d.GetMessage().GetOffset())
		}
		return s, d.GetDeliveryId()
	}
	s1, idA1 := take("a", "s1")
	s2, idA2 := take("a", "s2")
	sb, idB1 := take("b", "s1")
	if idA1 == idA2 || idA1 == idB1 {
		t.Fatalf("the same message's deliveries on three subscriptions share ids: %s %s %s", idA1, idA2, idB1)
	}
	plain := idA2[:strings.LastIndexByte(idA2, '.')] // 0.0.1.0
	check := idA2[len(plain):]                       // .xxxxxxxxxxx
	type target struct{ topic, sub, own string }
	cases := []struct {
		name string
		to   target
		id   string
	}{
		{"another subscription's id", target{"a", "s2", idA2}, idA1},
		{"another topic's subscription of the same name", target{"b", "s1", idB1}, idA1},
		{"the old unsealed form", target{"a", "s2", idA2}, plain},
		{"a made-up check value", target{"a", "s2", idA2}, plain + ".AAAAAAAAAAA"},
		{"an altered attempt", target{"a", "s2", idA2}, "0.0.2.0" + check},
		{"an altered epoch", target{"a", "s2", idA2}, "0.0.1.1" + check},
		{"an altered offset", target{"a", "s2", idA2}, "0.1.1.0" + check},
		{"an altered check", target{"a", "s2", idA2}, plain + "." + flip(check[1:])},
	}
	sub := ts.subClient()
	ctx := testContext(t)
	wantRefused := func(t *testing.T, what string, rs []*ferryv1.AckResult, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if len(rs) != 1 || codes.Code(rs[0].GetCode()) != codes.InvalidArgument {
			t.Fatalf("%s: results %v, want one INVALID_ARGUMENT", what, rs)
		}
	}
	streams := map[target]*subStream{{"a", "s2", idA2}: s2, {"b", "s1", idB1}: sb}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			to := tc.to
			r, err := sub.Ack(ctx, &ferryv1.AckRequest{Topic: to.topic, Subscription: to.sub, DeliveryIds: []string{tc.id}})
			wantRefused(t, "Ack", r.GetResults(), err)
			n, err := sub.Nack(ctx, &ferryv1.NackRequest{Topic: to.topic, Subscription: to.sub, DeliveryIds: []string{tc.id}})
			wantRefused(t, "Nack", n.GetResults(), err)
			m, err := sub.ModifyAckDeadline(ctx, &ferryv1.ModifyAckDeadlineRequest{Topic: to.topic, Subscription: to.sub,
				DeliveryIds: []string{tc.id}, AckDeadline: durationpb.New(time.Hour)})
			wantRefused(t, "ModifyAckDeadline", m.GetResults(), err)
			_, err = sub.Commit(ctx, &ferryv1.CommitRequest{Topic: to.topic, Subscription: to.sub, DeliveryIds: []string{tc.id},
				Publishes: []*ferryv1.CommitPublish{{Topic: "out", Messages: []*ferryv1.PublishMessage{{Id: "o", Payload: []byte("o")}}}}})
			wantStatus(t, err, codes.InvalidArgument, "delivery_ids[0]")
			// On the stream: nack and extend frames with a bad id are
			// skipped; an ack frame's bad id is refused in the
			// confirmation (EFFECTIVELY_ONCE) or only counted.
			s := streams[to]
			s.send(t, subNack(tc.id))
			s.send(t, subExtend(durationpb.New(time.Hour), tc.id))
			s.send(t, subAck(9, tc.id))
			if g == effOnce {
				c := s.confirmation(t)
				if len(c.GetResults()) != 1 || codes.Code(c.GetResults()[0].GetCode()) != codes.InvalidArgument {
					t.Fatalf("stream ack confirmation %v, want one INVALID_ARGUMENT", c)
				}
			}
			// Nothing changed: the target's message is still out, not
			// acked, nacked or redelivered, and the output topic is empty.
			st := ts.stats(t, to.topic, to.sub)
			if st.GetInFlight() != 1 || st.GetAcked() != 0 || st.GetNacked() != 0 || st.GetRedelivered() != 0 {
				t.Fatalf("%s/%s after the refused calls: %v, want its message in flight, untouched", to.topic, to.sub, st)
			}
			if n := sumHeads(ts.heads(t, "out")); n != 0 {
				t.Fatalf("the refused commit published %d messages", n)
			}
		})
	}
	// Each subscription's own id still acks its message, once.
	for _, own := range []struct{ topic, sub, id string }{{"a", "s1", idA1}, {"a", "s2", idA2}, {"b", "s1", idB1}} {
		r, err := sub.Ack(ctx, &ferryv1.AckRequest{Topic: own.topic, Subscription: own.sub, DeliveryIds: []string{own.id}})
		if err != nil || len(r.GetResults()) != 1 || r.GetResults()[0].GetCode() != 0 {
			t.Fatalf("%s/%s: Ack of its own id: %v, %v", own.topic, own.sub, r, err)
		}
		if st := ts.stats(t, own.topic, own.sub); st.GetAcked() != 1 || st.GetInFlight() != 0 {
			t.Fatalf("%s/%s after its own ack: %v", own.topic, own.sub, st)
		}
	}
	for _, s := range []*subStream{s1, s2, sb} {
		s.close(t)
	}
}

// flip changes a base64url string's first character, keeping it valid.
func flip(s string) string {
	c := byte('A')
	if s[0] == 'A' {
		c = 'B'
	}
	return string(c) + s[1:]
}

// TestDeliveryIDsAfterRecreate: a subscription deleted and created again
// under the same name does not take the first one's ids.
func TestDeliveryIDsAfterRecreate(t *testing.T) {
	ts, _ := startFakeServer(t)
	ts.createTopic(t, "a", nil)
	ts.createSub(t, "a", "s", subConfig(atLeast, shared))
	ts.publishN(t, "a", "a", 1)
	s := ts.attach(t, "a", "s", 1)
	old := s.next(t).GetDeliveryId()
	s.close(t)
	if _, err := ts.admin.DeleteSubscription(testContext(t), &ferryv1.DeleteSubscriptionRequest{Topic: "a", Name: "s"}); err != nil {
		t.Fatal(err)
	}
	ts.createSub(t, "a", "s", subConfig(atLeast, shared))
	s = ts.attach(t, "a", "s", 1)
	fresh := s.next(t).GetDeliveryId()
	r, err := ts.subClient().Ack(testContext(t), &ferryv1.AckRequest{Topic: "a", Subscription: "s", DeliveryIds: []string{old, fresh}})
	if err != nil {
		t.Fatal(err)
	}
	if c := codes.Code(r.GetResults()[0].GetCode()); c != codes.InvalidArgument {
		t.Errorf("the deleted subscription's id: %v, want INVALID_ARGUMENT", c)
	}
	if c := codes.Code(r.GetResults()[1].GetCode()); c != codes.OK {
		t.Errorf("the new subscription's own id: %v (%s), want OK", c, r.GetResults()[1].GetMessage())
	}
	s.close(t)
}

// TestAckResultsBounded: an ack of MaxAckIDs malformed ids, each as long
// as the request allows, gets a small answer: no id echoed whole, no
// message unbounded.
func TestAckResultsBounded(t *testing.T) {
	ts, _ := startFakeServer(t)
	ts.createTopic(t, "a", nil)
	ts.createSub(t, "a", "s", subConfig(atLeast, shared))
	long := strings.Repeat("7.", 300) // 600 bytes each: 6 MB in all
	ids := make([]string, MaxAckIDs)
	for i := range ids {
		ids[i] = long
	}
	r, err := ts.subClient().Ack(context.Background(), &ferryv1.AckRequest{Topic: "a", Subscription: "s", DeliveryIds: ids})
	if err != nil {
		t.Fatal(err)
	}
	size := 0
	for _, res := range r.GetResults() {
		if codes.Code(res.GetCode()) != codes.InvalidArgument {
			t.Fatalf("result %v, want INVALID_ARGUMENT", res)
		}
		size += len(res.GetDeliveryId()) + len(res.GetMessage())
	}
	t.Logf("%d ids of %d bytes answered in %d bytes of ids and messages", len(ids), len(long), size)
	if per := size / len(ids); per > maxEchoedID+maxResultMessage {
		t.Fatalf("%d bytes per result", per)
	}
}

// TestClusterDeliveryIDsAfterOwnerMoves: a subscription's id key travels
// with its record through the metadata group, so the node that owns the
// subscription after a leadership move verifies the ids the first owner
// handed out, and still refuses a made-up one.
func TestClusterDeliveryIDsAfterOwnerMoves(t *testing.T) {
	c := startTestCluster(t, 3)
	ctx := testContext(t)
	c[1].createTopic(t, "orders", &ferryv1.TopicConfig{Partitions: 1})
	c[2].publish(t, "orders", &ferryv1.PublishMessage{Id: "m0", Payload: []byte("x")})
	c[3].createSub(t, "orders", "kitchen", subConfig(effOnce, shared))
	part := cluster.OwnerPartition("kitchen", 1)
	owner := partitionLeader(t, c[1], "orders", part)
	s := c[owner].attach(t, "orders", "kitchen", 1)
	id := s.next(t).GetDeliveryId()

	next := owner%3 + 1
	g, err := c[owner].srv.node.PartitionGroup("orders", part)
	if err != nil {
		t.Fatal(err)
	}
	if err := g.TransferLeadership(ctx, next); err != nil {
		t.Fatalf("transfer leadership from %d to %d: %v", owner, next, err)
	}
	if err := s.end(t); status.Code(err) != codes.Unavailable {
		t.Fatalf("the stream ended with %v, want UNAVAILABLE", err)
	}
	eventuallyB(t, "every node sees the new owner", func() bool {
		for n := range c {
			if partitionLeader(t, c[n], "orders", part) != next {
				return false
			}
		}
		return true
	})
	forged := id[:strings.LastIndexByte(id, '.')] + ".AAAAAAAAAAA"
	r, err := ferryv1.NewSubscriberServiceClient(c[next].conn).Ack(ctx, &ferryv1.AckRequest{Topic: "orders", Subscription: "kitchen",
		DeliveryIds: []string{forged, id}})
	if err != nil {
		t.Fatal(err)
	}
	if code := codes.Code(r.GetResults()[0].GetCode()); code != codes.InvalidArgument {
		t.Errorf("a made-up id on the new owner: %v, want INVALID_ARGUMENT", code)
	}
	if code := codes.Code(r.GetResults()[1].GetCode()); code != codes.OK {
		t.Errorf("the first owner's id on the new owner: %v (%s), want OK", code, r.GetResults()[1].GetMessage())
	}
}
