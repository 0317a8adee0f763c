package broker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/ferrymq/ferry/internal/clock"
	ferryv1 "github.com/ferrymq/ferry/proto/ferry/v1"
)

// fakeT0 is where the fake clocks of these tests start.
var fakeT0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// startFakeServer starts a broker whose clock (the delivery engine's, the
// store's and the admin's) moves only when the test advances it.
func startFakeServer(tb testing.TB, modify ...func(*Options)) (*testServer, *clock.Fake) {
	tb.Helper()
	clk := clock.NewFake(fakeT0)
	ts := startServer(tb, append([]func(*Options){func(o *Options) { o.Clock = clk }}, modify...)...)
	return ts, clk
}

func (ts *testServer) subClient() ferryv1.SubscriberServiceClient {
	return ferryv1.NewSubscriberServiceClient(ts.conn)
}

// subConfig is a subscription config with guarantee g and type typ that
// starts at the earliest message.
func subConfig(g ferryv1.DeliveryGuarantee, typ ferryv1.SubscriptionType) *ferryv1.SubscriptionConfig {
	return &ferryv1.SubscriptionConfig{
		Guarantee: g,
		Type:      typ,
		Start:     &ferryv1.Position{Kind: ferryv1.PositionKind_POSITION_KIND_EARLIEST},
	}
}

const (
	none     = ferryv1.DeliveryGuarantee_DELIVERY_GUARANTEE_NONE
	atMost   = ferryv1.DeliveryGuarantee_DELIVERY_GUARANTEE_AT_MOST_ONCE
	atLeast  = ferryv1.DeliveryGuarantee_DELIVERY_GUARANTEE_AT_LEAST_ONCE
	effOnce  = ferryv1.DeliveryGuarantee_DELIVERY_GUARANTEE_EFFECTIVELY_ONCE
	shared   = ferryv1.SubscriptionType_SUBSCRIPTION_TYPE_SHARED
	keyShrd  = ferryv1.SubscriptionType_SUBSCRIPTION_TYPE_KEY_SHARED
	exclusiv = ferryv1.SubscriptionType_SUBSCRIPTION_TYPE_EXCLUSIVE
	failover = ferryv1.SubscriptionType_SUBSCRIPTION_TYPE_FAILOVER
)

// createSub creates a subscription and fails the test if it cannot.
func (ts *testServer) createSub(tb testing.TB, topic, name string, cfg *ferryv1.SubscriptionConfig) *ferryv1.Subscription {
	tb.Helper()
	// In a cluster the metadata group may be between leaders: retried as
	// the SDK does, and a retry that finds it made by the attempt before
	// takes it.
	var sub *ferryv1.Subscription
	attempts := 0
	err := retryUnavailable(testContext(tb), func(ctx context.Context) error {
		attempts++
		resp, err := ts.admin.CreateSubscription(ctx, &ferryv1.CreateSubscriptionRequest{Topic: topic, Name: name, Config: cfg})
		if attempts > 1 && status.Code(err) == codes.AlreadyExists {
			var got *ferryv1.GetSubscriptionResponse
			got, err = ts.admin.GetSubscription(ctx, &ferryv1.GetSubscriptionRequest{Topic: topic, Name: name})
			sub = got.GetSubscription()
			return err
		}
		sub = resp.GetSubscription()
		return err
	})
	if err != nil {
		tb.Fatalf("CreateSubscription(%q, %q): %v", topic, name, err)
	}
	return sub
}

// stats returns a subscription's stats. It is also a barrier: the engine
// answers it after every event queued before it (a timer that an Advance
// fired, an earlier unary call), so what those did shows in the stats.
func (ts *testServer) stats(tb testing.TB, topic, name string) *ferryv1.SubscriptionStats {
	tb.Helper()
	resp, err := ts.admin.GetSubscription(testContext(tb), &ferryv1.GetSubscriptionRequest{Topic: topic, Name: name})
	if err != nil {
		tb.Fatalf("GetSubscription(%q, %q): %v", topic, name, err)
	}
	return resp.GetStats()
}

// waitStats polls a subscription's stats until cond holds, failing the test
// after a deadline. Stream frames (acks, nacks, credit) have no reply, so
// this is how a test knows the broker has acted on them.
func (ts *testServer) waitStats(tb testing.TB, topic, name, what string, cond func(*ferryv1.SubscriptionStats) bool) *ferryv1.SubscriptionStats {
	tb.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := ts.admin.GetSubscription(testContext(tb), &ferryv1.GetSubscriptionRequest{Topic: topic, Name: name})
		if err != nil && status.Code(err) != codes.NotFound { // a none subscription may not exist yet
			tb.Fatalf("GetSubscription(%q, %q): %v", topic, name, err)
		}
		st := resp.GetStats()
		if err == nil && cond(st) {
			return st
		}
		if time.Now().After(deadline) {
			tb.Fatalf("subscription %q on %q: waited 10s for %s; stats are %v (%v)", name, topic, what, st, err)
		}
		time.Sleep(2 * time.Millisecond) // polling, not an assertion
	}
}

// subStream is an open Subscribe call. A goroutine reads the server's
// frames: deliveries and confirmations queue up in their channels, and the
// stream's end is kept in err.
type subStream struct {
	stream ferryv1.SubscriberService_SubscribeClient
	cancel context.CancelFunc
	dels   chan *ferryv1.Delivery
	confs  chan *ferryv1.AckConfirmation
	done   chan struct{} // closed when the stream has ended; then err is set
	err    error

	sendMu sync.Mutex
}

// subscribe opens a Subscribe stream and sends first as its first frame
// (nothing if first is nil).
func (ts *testServer) subscribe(tb testing.TB, first *ferryv1.SubscribeRequest) *subStream {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	tb.Cleanup(cancel)
	stream, err := ts.subClient().Subscribe(ctx)
	if err != nil {
		tb.Fatalf("Subscribe: %v", err)
	}
	s := &subStream{stream: stream, cancel: cancel, dels: make(chan *ferryv1.Delivery, 100000),
		confs: make(chan *ferryv1.AckConfirmation, 1000), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		for {
			resp, err := stream.Recv()
			if err != nil {
				s.err = err
				return
			}
			switch f := resp.GetFrame().(type) {
			case *ferryv1.SubscribeResponse_Deliveries:
				if len(f.Deliveries.GetDeliveries()) == 0 {
					s.err = errors.New("test: the server sent an empty Deliveries frame")
					return
				}
				for _, d := range f.Deliveries.GetDeliveries() {
					s.dels <- d
				}
			case *ferryv1.SubscribeResponse_AckConfirmation:
				s.confs <- f.AckConfirmation
			default:
				s.err = fmt.Errorf("test: the server sent an empty or unknown frame %v", resp)
				return
			}
		}
	}()
	if first != nil {
		s.send(tb, first)
	}
	return s
}

// attach opens a Subscribe stream with an init frame.
func (ts *testServer) attach(tb testing.TB, topic, name string, credit int32) *subStream {
	tb.Helper()
	return ts.subscribe(tb, subInit(topic, name, credit))
}

func subInit(topic, name string, credit int32) *ferryv1.SubscribeRequest {
	return &ferryv1.SubscribeRequest{Frame: &ferryv1.SubscribeRequest_Init{Init: &ferryv1.SubscribeInit{Topic: topic, Subscription: name, Credit: credit}}}
}

func subAck(seq uint64, ids ...string) *ferryv1.SubscribeRequest {
	return &ferryv1.SubscribeRequest{Frame: &ferryv1.SubscribeRequest_Ack{Ack: &ferryv1.SubscribeAck{Sequence: seq, DeliveryIds: ids}}}
}

func subNack(ids ...string) *ferryv1.SubscribeRequest {
	return &ferryv1.SubscribeRequest{Frame: &ferryv1.SubscribeRequest_Nack{Nack: &ferryv1.SubscribeNack{DeliveryIds: ids}}}
}

func subCredit(credit int32) *ferryv1.SubscribeRequest {
	return &ferryv1.SubscribeRequest{Frame: &ferryv1.SubscribeRequest_Credit{Credit: &ferryv1.SubscribeCredit{Credit: credit}}}
}

func subExtend(d *durationpb.Duration, ids ...string) *ferryv1.SubscribeRequest {
	return &ferryv1.SubscribeRequest{Frame: &ferryv1.SubscribeRequest_Extend{Extend: &ferryv1.SubscribeExtend{DeliveryIds: ids, AckDeadline: d}}}
}

// send sends a frame. A send on a stream the server has ended fails with
// io.EOF; that is not the test's concern here (the end shows in err).
func (s *subStream) send(tb testing.TB, req *ferryv1.SubscribeRequest) {
	tb.Helper()
	s.sendMu.Lock()
	defer s.sendMu.Unlock()
	if err := s.stream.Send(req); err != nil && !errors.Is(err, io.EOF) {
		tb.Fatalf("Subscribe Send(%v): %v", req, err)
	}
}

// next waits for the next delivery.
func (s *subStream) next(tb testing.TB) *ferryv1.Delivery {
	tb.Helper()
	select {
	case d := <-s.dels:
		return d
	case <-time.After(10 * time.Second):
	}
	// The stream may have ended with deliveries still queued.
	select {
	case d := <-s.dels:
		return d
	default:
	}
	select {
	case <-s.done:
		tb.Fatalf("waiting for a delivery: the stream ended: %v", s.err)
	default:
		tb.Fatalf("no delivery within 10s")
	}
	return nil
}

// take waits for n deliveries.
func (s *subStream) take(tb testing.TB, n int) []*ferryv1.Delivery {
	tb.Helper()
	ds := make([]*ferryv1.Delivery, n)
	for i := range ds {
		ds[i] = s.next(tb)
	}
	return ds
}

// confirmation waits for the next ack confirmation.
func (s *subStream) confirmation(tb testing.TB) *ferryv1.AckConfirmation {
	tb.Helper()
	select {
	case c := <-s.confs:
		return c
	case <-s.done:
		select {
		case c := <-s.confs:
			return c
		default:
		}
		tb.Fatalf("waiting for an ack confirmation: the stream ended: %v", s.err)
	case <-time.After(10 * time.Second):
		tb.Fatalf("no ack confirmation within 10s")
	}
	return nil
}

// queued reports the deliveries received and not yet taken.
func (s *subStream) queued() int { return len(s.dels) }

// end waits for the stream to end and returns its error (nil for a clean
// end).
func (s *subStream) end(tb testing.TB) error {
	tb.Helper()
	select {
	case <-s.done:
	case <-time.After(10 * time.Second):
		tb.Fatalf("the stream did not end within 10s")
	}
	if errors.Is(s.err, io.EOF) {
		return nil
	}
	return s.err
}

// wantEnd waits for the stream to end with a status of code whose message
// has each of words.
func (s *subStream) wantEnd(tb testing.TB, code codes.Code, words ...string) {
	tb.Helper()
	err := s.end(tb)
	if err == nil {
		tb.Fatalf("the stream ended cleanly, want %v", code)
	}
	wantStatus(tb, err, code, words...)
}

// close half-closes the stream and waits for the server to end it cleanly.
func (s *subStream) close(tb testing.TB) {
	tb.Helper()
	s.sendMu.Lock()
	err := s.stream.CloseSend()
	s.sendMu.Unlock()
	if err != nil {
		tb.Fatalf("CloseSend: %v", err)
	}
	if err := s.end(tb); err != nil {
		tb.Fatalf("the stream ended with %v after CloseSend, want a clean end", err)
	}
}

// pos is a delivery's message position, as "partition:offset".
func pos(d *ferryv1.Delivery) string {
	return fmt.Sprintf("%d:%d", d.GetMessage().GetPartition(), d.GetMessage().GetOffset())
}

func ids(ds ...*ferryv1.Delivery) []string {
	out := make([]string, len(ds))
	for i, d := range ds {
		out[i] = d.GetDeliveryId()
	}
	return out
}

// publishN publishes n messages with ids prefix-0, prefix-1, ...
func (ts *testServer) publishN(tb testing.TB, topic, prefix string, n int) []*ferryv1.PublishResult {
	tb.Helper()
	msgs := make([]*ferryv1.PublishMessage, n)
	for i := range msgs {
		id := prefix + "-" + strconv.Itoa(i)
		msgs[i] = &ferryv1.PublishMessage{Id: id, Payload: []byte("payload " + id)}
	}
	return ts.publish(tb, topic, msgs...)
}

func sumHeads(hs []uint64) uint64 {
	var n uint64
	for _, h := range hs {
		n += h
	}
	return n
}

// TestAtLeastOnceCredit: 100 messages, credit 10. The consumer never holds
// more than 10 unacked deliveries, acks everything over the stream, and
// the subscription ends with nothing in flight or in the backlog.
func TestAtLeastOnceCredit(t *testing.T) {
	ts, _ := startFakeServer(t)
	ts.createTopic(t, "in", &ferryv1.TopicConfig{Partitions: 2})
	ts.publishN(t, "in", "m", 100)
	ts.createSub(t, "in", "alo", subConfig(atLeast, shared))

	const credit = 10
	s := ts.attach(t, "in", "alo", credit)
	outstanding := map[string]*ferryv1.Delivery{}
	seen := map[string]bool{}
	acked := 0
	var seq uint64
	for acked < 100 {
		d := s.next(t)
		if seen[pos(d)] {
			t.Fatalf("message %s delivered twice (attempt %d) with the clock stopped and nothing nacked", pos(d), d.GetAttempt())
		}
		seen[pos(d)] = true
		if d.GetAttempt() != 1 {
			t.Errorf("first delivery of %s has attempt %d, want 1", pos(d), d.GetAttempt())
		}
		outstanding[d.GetDeliveryId()] = d
		if len(outstanding) > credit {
			t.Fatalf("%d unacked deliveries outstanding, credit is %d", len(outstanding), credit)
		}
		// Ack in bursts, once the credit is used up (or nothing more can
		// come), oldest first but not all, so credit frees a few at a time.
		if len(outstanding) == credit || len(seen) == 100 {
			// The broker has taken every ack sent so far (waited for
			// below), so it may hold no more than credit deliveries out.
			if st := ts.stats(t, "in", "alo"); st.GetInFlight() > credit {
				t.Fatalf("%d deliveries in flight to a consumer with credit %d", st.GetInFlight(), credit)
			}
			var batch []string
			for id := range outstanding {
				batch = append(batch, id)
				if len(batch) == 4 && len(seen) < 100 {
					break
				}
			}
			seq++
			s.send(t, subAck(seq, batch...))
			for _, id := range batch {
				delete(outstanding, id)
			}
			acked += len(batch)
			ts.waitStats(t, "in", "alo", "the acks", func(st *ferryv1.SubscriptionStats) bool { return st.GetAcked() == uint64(acked) })
		}
	}
	st := ts.waitStats(t, "in", "alo", "100 acks", func(st *ferryv1.SubscriptionStats) bool { return st.GetAcked() == 100 })
	if st.GetBacklog() != 0 || st.GetInFlight() != 0 || st.GetDelivered() != 100 || st.GetRedelivered() != 0 {
		t.Errorf("after acking all 100: %v; want backlog 0, in_flight 0, delivered 100, redelivered 0", st)
	}
	if st.GetOldestUnackedAge() != nil {
		t.Errorf("oldest_unacked_age = %v with nothing unacked", st.GetOldestUnackedAge())
	}
	if n := s.queued(); n != 0 {
		t.Errorf("%d more deliveries after every message was acked", n)
	}

	// A credit frame raises the credit: 15 go out with nothing acked.
	ts.publishN(t, "in", "more", 20)
	s.send(t, subCredit(15))
	more := s.take(t, 15)
	st = ts.stats(t, "in", "alo")
	if st.GetInFlight() != 15 || st.GetDelivered() != 115 {
		t.Errorf("after raising the credit to 15: %v, want in_flight 15, delivered 115", st)
	}
	// Lowering it holds deliveries back until enough are acked.
	s.send(t, subCredit(2))
	s.send(t, subAck(0, ids(more[:10]...)...))
	st = ts.waitStats(t, "in", "alo", "the acks", func(st *ferryv1.SubscriptionStats) bool { return st.GetAcked() == 110 })
	if st.GetInFlight() != 5 || st.GetDelivered() != 115 {
		t.Errorf("with credit 2 and 5 unacked: %v, want in_flight 5, delivered 115", st)
	}
	s.send(t, subAck(0, ids(more[10:]...)...))
	last := s.take(t, 2)
	st = ts.waitStats(t, "in", "alo", "the acks", func(st *ferryv1.SubscriptionStats) bool { return st.GetAcked() == 115 })
	if st.GetInFlight() != 2 || st.GetDelivered() != 117 {
		t.Errorf("with credit 2 and everything acked: %v, want in_flight 2, delivered 117", st)
	}
	s.send(t, subAck(0, ids(last...)...))
	s.take(t, 2)
	s.close(t)
}

// TestAtLeastOnceRedelivery: a message is delivered again after a nack
// (once its backoff has passed, not before), after its ack timeout (not
// before), and at once to another consumer when its consumer goes away.
func TestAtLeastOnceRedelivery(t *testing.T) {
	ts, clk := startFakeServer(t)
	ts.createTopic(t, "in", nil)
	ts.publishN(t, "in", "r", 3)
	ts.createSub(t, "in", "alo", subConfig(atLeast, shared)) // ack timeout 30s, backoff 1s

	a := ts.attach(t, "in", "alo", 3)
	first := a.take(t, 3)
	for i, d := range first {
		if d.GetMessage().GetOffset() != uint64(i) || d.GetAttempt() != 1 || d.GetMessage().GetId() != "r-"+strconv.Itoa(i) {
			t.Fatalf("delivery %d = %v, want offset %d id r-%d attempt 1", i, d, i, i)
		}
	}

	// Nack offset 0: due again after the 1s backoff.
	a.send(t, subNack(first[0].GetDeliveryId()))
	ts.waitStats(t, "in", "alo", "the nack", func(st *ferryv1.SubscriptionStats) bool { return st.GetNacked() == 1 })
	clk.Advance(999 * time.Millisecond)
	if st := ts.stats(t, "in", "alo"); st.GetRedelivered() != 0 {
		t.Fatalf("redelivered %d before the nack backoff passed", st.GetRedelivered())
	}
	clk.Advance(time.Millisecond)
	d := a.next(t)
	if pos(d) != pos(first[0]) || d.GetAttempt() != 2 {
		t.Fatalf("after the nack backoff got %s attempt %d, want %s attempt 2", pos(d), d.GetAttempt(), pos(first[0]))
	}
	a.send(t, subAck(1, d.GetDeliveryId()))
	ts.waitStats(t, "in", "alo", "the ack of offset 0", func(st *ferryv1.SubscriptionStats) bool { return st.GetAcked() == 1 })

	// Offsets 1 and 2 were delivered at fakeT0+0; their deadline is
	// fakeT0+30s, and the clock reads fakeT0+1s.
	clk.Advance(28*time.Second + 999*time.Millisecond)
	if st := ts.stats(t, "in", "alo"); st.GetRedelivered() != 1 {
		t.Fatalf("redelivered = %d before the ack timeout, want 1 (the nacked one)", st.GetRedelivered())
	}
	clk.Advance(time.Millisecond)
	got := a.take(t, 2)
	slices.SortFunc(got, func(x, y *ferryv1.Delivery) int {
		return int(x.GetMessage().GetOffset()) - int(y.GetMessage().GetOffset())
	})
	for i, d := range got {
		if d.GetMessage().GetOffset() != uint64(i+1) || d.GetAttempt() != 2 {
			t.Fatalf("after the ack timeout got %s attempt %d, want offset %d attempt 2", pos(d), d.GetAttempt(), i+1)
		}
	}

	// The consumer goes away holding both: another gets them at once,
	// without the clock moving.
	a.close(t)
	b := ts.attach(t, "in", "alo", 5)
	again := b.take(t, 2)
	slices.SortFunc(again, func(x, y *ferryv1.Delivery) int {
		return int(x.GetMessage().GetOffset()) - int(y.GetMessage().GetOffset())
	})
	for i, d := range again {
		if d.GetMessage().GetOffset() != uint64(i+1) || d.GetAttempt() != 3 {
			t.Fatalf("after the consumer left got %s attempt %d, want offset %d attempt 3", pos(d), d.GetAttempt(), i+1)
		}
	}
	b.send(t, subAck(1, ids(again...)...))
	st := ts.waitStats(t, "in", "alo", "all acked", func(st *ferryv1.SubscriptionStats) bool { return st.GetAcked() == 3 })
	if st.GetBacklog() != 0 || st.GetInFlight() != 0 {
		t.Errorf("after acking everything: %v", st)
	}
	b.close(t)
}

// TestAtMostOnceReconnect: what a consumer held when it left is not
// delivered again, to it or anyone.
func TestAtMostOnceReconnect(t *testing.T) {
	ts, clk := startFakeServer(t)
	ts.createTopic(t, "in", nil)
	ts.publishN(t, "in", "amo", 10)
	ts.createSub(t, "in", "amo", subConfig(atMost, shared))

	seen := map[string]bool{}
	a := ts.attach(t, "in", "amo", 3)
	for _, d := range a.take(t, 3) {
		seen[pos(d)] = true
	}
	a.close(t) // unacked: lost, as AT_MOST_ONCE allows

	b := ts.attach(t, "in", "amo", 3)
	for range 7 {
		d := b.next(t)
		if seen[pos(d)] {
			t.Fatalf("message %s delivered twice under AT_MOST_ONCE (attempt %d)", pos(d), d.GetAttempt())
		}
		seen[pos(d)] = true
		b.send(t, subAck(0, d.GetDeliveryId())) // frees credit
	}
	for off := range 10 {
		if !seen["0:"+strconv.Itoa(off)] {
			t.Errorf("offset %d never delivered", off)
		}
	}
	// Even past the ack timeout nothing comes back.
	clk.Advance(time.Minute)
	st := ts.stats(t, "in", "amo")
	if st.GetDelivered() != 10 || st.GetRedelivered() != 0 || st.GetBacklog() != 0 {
		t.Errorf("stats %v: want delivered 10, redelivered 0, backlog 0", st)
	}
	b.close(t)
	// Nor to a consumer attaching later.
	c := ts.attach(t, "in", "amo", 3)
	ts.publish(t, "in", &ferryv1.PublishMessage{Id: "amo-late", Payload: []byte("late")})
	if d := c.next(t); d.GetMessage().GetId() != "amo-late" {
		t.Errorf("a new consumer got %s (%s), want only the message published later", pos(d), d.GetMessage().GetId())
	}
	c.close(t)
}

func wantResult(tb testing.TB, r *ferryv1.AckResult, id string, code codes.Code, words ...string) {
	tb.Helper()
	if r.GetDeliveryId() != id {
		tb.Errorf("result for %q, want for %q", r.GetDeliveryId(), id)
	}
	wantCodeMessage(tb, codes.Code(r.GetCode()), r.GetMessage(), code, words...)
	if code == codes.OK && r.GetMessage() != "" {
		tb.Errorf("OK result for %q has message %q", id, r.GetMessage())
	}
}

// TestEffectivelyOnceConfirmations: one AckConfirmation per ack frame,
// with one result per id in order; a stale attempt is refused; a confirmed
// ack cannot be acked again and its message never comes back.
func TestEffectivelyOnceConfirmations(t *testing.T) {
	ts, clk := startFakeServer(t)
	ts.createTopic(t, "in", nil)
	ts.publishN(t, "in", "e", 2)
	ts.createSub(t, "in", "eo", subConfig(effOnce, shared))

	s := ts.attach(t, "in", "eo", 2)
	d := s.take(t, 2)
	slices.SortFunc(d, func(x, y *ferryv1.Delivery) int {
		return int(x.GetMessage().GetOffset()) - int(y.GetMessage().GetOffset())
	})

	s.send(t, subAck(41, d[0].GetDeliveryId()))
	c := s.confirmation(t)
	if c.GetSequence() != 41 || len(c.GetResults()) != 1 {
		t.Fatalf("confirmation = %v, want sequence 41 with 1 result", c)
	}
	wantResult(t, c.GetResults()[0], d[0].GetDeliveryId(), codes.OK)

	// Offset 1 is not acked: after its deadline it goes out again as
	// attempt 2, and attempt 1 is fenced off.
	ts.stats(t, "in", "eo") // the lease's timer is armed
	clk.Advance(30 * time.Second)
	d1b := s.next(t)
	if pos(d1b) != pos(d[1]) || d1b.GetAttempt() != 2 {
		t.Fatalf("after the ack timeout got %s attempt %d, want %s attempt 2", pos(d1b), d1b.GetAttempt(), pos(d[1]))
	}
	if pos(d1b) == pos(d[0]) {
		t.Fatalf("the confirmed message %s was delivered again", pos(d1b))
	}
	s.send(t, subAck(42, d[1].GetDeliveryId(), "not-an-id", d1b.GetDeliveryId()))
	c = s.confirmation(t)
	if c.GetSequence() != 42 || len(c.GetResults()) != 3 {
		t.Fatalf("confirmation = %v, want sequence 42 with 3 results", c)
	}
	wantResult(t, c.GetResults()[0], d[1].GetDeliveryId(), codes.FailedPrecondition, "attempt 2 is current")
	wantResult(t, c.GetResults()[1], "not-an-id", codes.InvalidArgument, "malformed")
	wantResult(t, c.GetResults()[2], d1b.GetDeliveryId(), codes.OK)

	// Unary acks of confirmed deliveries are refused, per id.
	resp, err := ts.subClient().Ack(testContext(t), &ferryv1.AckRequest{Topic: "in", Subscription: "eo",
		DeliveryIds: []string{d1b.GetDeliveryId(), d[0].GetDeliveryId()}})
	if err != nil {
		t.Fatalf("Ack: %v", err)
	}
	if len(resp.GetResults()) != 2 {
		t.Fatalf("Ack results = %v, want 2", resp.GetResults())
	}
	wantResult(t, resp.GetResults()[0], d1b.GetDeliveryId(), codes.FailedPrecondition, "acked")
	wantResult(t, resp.GetResults()[1], d[0].GetDeliveryId(), codes.FailedPrecondition, "acked")

	// Nothing confirmed comes back, even long after.
	clk.Advance(time.Hour)
	st := ts.stats(t, "in", "eo")
	if st.GetAcked() != 2 || st.GetBacklog() != 0 || st.GetInFlight() != 0 || st.GetDelivered() != 3 {
		t.Errorf("stats %v: want acked 2, backlog 0, in_flight 0, delivered 3", st)
	}
	if st.GetStaleAcks() < 3 {
		t.Errorf("stale_acks = %d, want at least 3 (one stale attempt, two already acked)", st.GetStaleAcks())
	}
	if n := s.queued(); n != 0 {
		t.Errorf("%d deliveries after both messages were confirmed", n)
	}
	s.close(t)
}

// TestAckUnknownDelivery: the proto documents AckResult.code NOT_FOUND for
// an unknown delivery, in stream confirmations and unary acks alike.
func TestAckUnknownDelivery(t *testing.T) {
	ts, _ := startFakeServer(t)
	ts.createTopic(t, "in", nil)
	ts.createSub(t, "in", "eo", subConfig(effOnce, shared))
	s := ts.attach(t, "in", "eo", 1)
	unknown := ts.sealedID(t, "in", "eo", "0.999.1.0")
	s.send(t, subAck(7, unknown))
	c := s.confirmation(t)
	if len(c.GetResults()) != 1 {
		t.Fatalf("confirmation %v, want 1 result", c)
	}
	wantResult(t, c.GetResults()[0], unknown, codes.FailedPrecondition)
	resp, err := ts.subClient().Ack(testContext(t), &ferryv1.AckRequest{Topic: "in", Subscription: "eo", DeliveryIds: []string{unknown}})
	if err != nil {
		t.Fatalf("Ack: %v", err)
	}
	wantResult(t, resp.GetResults()[0], unknown, codes.FailedPrecondition)
	s.close(t)
}

// TestNoneEphemeral: a consumer attaching with create_none gets only what
// is published after it attached, and the subscription goes with it.
func TestNoneEphemeral(t *testing.T) {
	ts := startServer(t)
	ts.createTopic(t, "live", &ferryv1.TopicConfig{Partitions: 2})
	ts.publish(t, "live", &ferryv1.PublishMessage{Id: "before", Payload: []byte("before")})

	s := ts.subscribe(t, &ferryv1.SubscribeRequest{Frame: &ferryv1.SubscribeRequest_Init{Init: &ferryv1.SubscribeInit{
		Topic: "live", Subscription: "tail", Credit: 1, CreateNone: true}}})
	ts.waitStats(t, "live", "tail", "the consumer to attach", func(st *ferryv1.SubscriptionStats) bool { return st.GetConsumers() == 1 })
	list, err := ts.admin.ListSubscriptions(testContext(t), &ferryv1.ListSubscriptionsRequest{Topic: "live"})
	if err != nil {
		t.Fatalf("ListSubscriptions: %v", err)
	}
	if len(list.GetSubscriptions()) != 1 || list.GetSubscriptions()[0].GetConfig().GetGuarantee() != none {
		t.Fatalf("ListSubscriptions = %v, want the none subscription", list.GetSubscriptions())
	}

	// Credit 1, but NONE takes no acks: all three arrive.
	ts.publishN(t, "live", "after", 3)
	got := map[string]bool{}
	for _, d := range s.take(t, 3) {
		got[d.GetMessage().GetId()] = true
	}
	for i := range 3 {
		if id := "after-" + strconv.Itoa(i); !got[id] {
			t.Errorf("missing %s; got %v", id, got)
		}
	}
	if got["before"] {
		t.Errorf("got the message published before the subscription existed")
	}
	s.close(t)

	deadline := time.Now().Add(10 * time.Second)
	for {
		list, err := ts.admin.ListSubscriptions(testContext(t), &ferryv1.ListSubscriptionsRequest{Topic: "live"})
		if err != nil {
			t.Fatalf("ListSubscriptions: %v", err)
		}
		if len(list.GetSubscriptions()) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("10s after its last consumer left, the none subscription is still listed: %v", list.GetSubscriptions())
		}
		time.Sleep(2 * time.Millisecond)
	}
	_, err = ts.admin.GetSubscription(testContext(t), &ferryv1.GetSubscriptionRequest{Topic: "live", Name: "tail"})
	wantStatus(t, err, codes.NotFound)
	// The topic can be deleted without force now.
	if _, err := ts.admin.DeleteTopic(testContext(t), &ferryv1.DeleteTopicRequest{Name: "live"}); err != nil {
		t.Errorf("DeleteTopic after the none subscription went: %v", err)
	}
}

// TestCommit: Commit acks and publishes in one step; a stale or unknown
// delivery id fails it whole; published ids already stored come back as
// duplicates.
func TestCommit(t *testing.T) {
	ts, clk := startFakeServer(t)
	ts.createTopic(t, "src", nil)
	ts.createTopic(t, "out", &ferryv1.TopicConfig{Partitions: 2})
	ts.publishN(t, "src", "s", 3)
	ts.createSub(t, "src", "pipe", subConfig(effOnce, shared))
	sub := ts.subClient()

	s := ts.attach(t, "src", "pipe", 3)
	d := s.take(t, 3)
	slices.SortFunc(d, func(x, y *ferryv1.Delivery) int {
		return int(x.GetMessage().GetOffset()) - int(y.GetMessage().GetOffset())
	})
	outMsg := func(id string) *ferryv1.PublishMessage { return &ferryv1.PublishMessage{Id: id, Payload: []byte(id)} }

	resp, err := sub.Commit(testContext(t), &ferryv1.CommitRequest{Topic: "src", Subscription: "pipe",
		DeliveryIds: ids(d[0], d[1]),
		Publishes:   []*ferryv1.CommitPublish{{Topic: "out", Messages: []*ferryv1.PublishMessage{outMsg("o-0"), outMsg("o-1")}}}})
	if err != nil {
		t.Fatalf("Commit: %v", err)
	}
	if len(resp.GetPublishResults()) != 1 || len(resp.GetPublishResults()[0].GetResults()) != 2 {
		t.Fatalf("Commit results %v, want one list of 2", resp.GetPublishResults())
	}
	orig := resp.GetPublishResults()[0].GetResults()
	for i, r := range orig {
		if r.GetDuplicate() {
			t.Errorf("result %d of the first commit is a duplicate", i)
		}
		got := ts.read(t, "out", r.GetPartition(), r.GetOffset(), 1).GetMessages()
		if len(got) != 1 || got[0].GetId() != "o-"+strconv.Itoa(i) {
			t.Errorf("out partition %d offset %d holds %v, want o-%d", r.GetPartition(), r.GetOffset(), got, i)
		}
	}
	if st := ts.stats(t, "src", "pipe"); st.GetAcked() != 2 || st.GetBacklog() != 1 {
		t.Errorf("after the commit: %v, want acked 2, backlog 1", st)
	}

	// Refused commits change nothing: not the output topic, not the acks.
	for _, tc := range []struct {
		name string
		ids  []string
	}{
		{"unknown delivery", []string{ts.sealedID(t, "src", "pipe", "0.99.1.0")}},
		{"one good, one already committed", []string{d[2].GetDeliveryId(), d[0].GetDeliveryId()}},
		{"one good, one unknown", []string{d[2].GetDeliveryId(), ts.sealedID(t, "src", "pipe", "0.3.1.0")}},
		{"the same delivery twice", []string{d[2].GetDeliveryId(), d[2].GetDeliveryId()}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := sub.Commit(testContext(t), &ferryv1.CommitRequest{Topic: "src", Subscription: "pipe", DeliveryIds: tc.ids,
				Publishes: []*ferryv1.CommitPublish{{Topic: "out", Messages: []*ferryv1.PublishMessage{outMsg("o-refused")}}}})
			wantStatus(t, err, codes.FailedPrecondition)
			if n := sumHeads(ts.heads(t, "out")); n != 2 {
				t.Errorf("after a refused commit the output topic holds %d messages, want 2", n)
			}
			if st := ts.stats(t, "src", "pipe"); st.GetAcked() != 2 || st.GetInFlight() != 1 {
				t.Errorf("after a refused commit: %v, want acked 2, in_flight 1", st)
			}
		})
	}

	// A superseded attempt is fenced off.
	clk.Advance(30 * time.Second)
	d2b := s.next(t)
	if pos(d2b) != pos(d[2]) || d2b.GetAttempt() != 2 {
		t.Fatalf("after the ack timeout got %s attempt %d, want %s attempt 2", pos(d2b), d2b.GetAttempt(), pos(d[2]))
	}
	_, err = sub.Commit(testContext(t), &ferryv1.CommitRequest{Topic: "src", Subscription: "pipe", DeliveryIds: ids(d[2]),
		Publishes: []*ferryv1.CommitPublish{{Topic: "out", Messages: []*ferryv1.PublishMessage{outMsg("o-stale")}}}})
	wantStatus(t, err, codes.FailedPrecondition, "attempt 2 is current")
	if n := sumHeads(ts.heads(t, "out")); n != 2 {
		t.Errorf("after a stale commit the output topic holds %d messages, want 2", n)
	}

	// The current attempt commits; retried outputs are duplicates.
	resp, err = sub.Commit(testContext(t), &ferryv1.CommitRequest{Topic: "src", Subscription: "pipe", DeliveryIds: ids(d2b),
		Publishes: []*ferryv1.CommitPublish{
			{Topic: "out", Messages: []*ferryv1.PublishMessage{outMsg("o-0"), outMsg("o-2"), outMsg("o-1")}},
		}})
	if err != nil {
		t.Fatalf("Commit of the current attempt: %v", err)
	}
	res := resp.GetPublishResults()[0].GetResults()
	if len(res) != 3 {
		t.Fatalf("results %v, want 3", res)
	}
	for _, c := range []struct {
		r    *ferryv1.PublishResult
		orig *ferryv1.PublishResult
	}{{res[0], orig[0]}, {res[2], orig[1]}} {
		if !c.r.GetDuplicate() || c.r.GetPartition() != c.orig.GetPartition() || c.r.GetOffset() != c.orig.GetOffset() {
			t.Errorf("retried output = %v, want a duplicate of %v", c.r, c.orig)
		}
	}
	if res[1].GetDuplicate() {
		t.Errorf("new output o-2 came back as a duplicate")
	}
	if n := sumHeads(ts.heads(t, "out")); n != 3 {
		t.Errorf("the output topic holds %d messages, want 3", n)
	}
	if st := ts.stats(t, "src", "pipe"); st.GetAcked() != 3 || st.GetBacklog() != 0 || st.GetInFlight() != 0 {
		t.Errorf("after committing everything: %v", st)
	}
	s.close(t)
}

// TestExclusive: a second consumer is refused while the first is attached.
func TestExclusive(t *testing.T) {
	ts := startServer(t)
	ts.createTopic(t, "in", nil)
	ts.createSub(t, "in", "ex", subConfig(atLeast, exclusiv))
	a := ts.attach(t, "in", "ex", 1)
	ts.waitStats(t, "in", "ex", "the first consumer", func(st *ferryv1.SubscriptionStats) bool { return st.GetConsumers() == 1 })
	b := ts.attach(t, "in", "ex", 1)
	b.wantEnd(t, codes.FailedPrecondition, "exclusive")

	ts.publishN(t, "in", "x", 1)
	if d := a.next(t); d.GetMessage().GetId() != "x-0" {
		t.Errorf("the first consumer got %v", d)
	}
	a.close(t)
	ts.waitStats(t, "in", "ex", "the first consumer to leave", func(st *ferryv1.SubscriptionStats) bool { return st.GetConsumers() == 0 })
	c := ts.attach(t, "in", "ex", 1)
	if d := c.next(t); d.GetMessage().GetId() != "x-0" || d.GetAttempt() != 2 {
		t.Errorf("the next consumer got %v, want x-0 attempt 2", d)
	}
	c.close(t)
}

// TestFailover: only the first consumer receives; when it leaves the next
// takes over, with what it held.
func TestFailover(t *testing.T) {
	ts := startServer(t)
	ts.createTopic(t, "in", nil)
	ts.createSub(t, "in", "fo", subConfig(atLeast, failover))
	a := ts.attach(t, "in", "fo", 10)
	ts.waitStats(t, "in", "fo", "the first consumer", func(st *ferryv1.SubscriptionStats) bool { return st.GetConsumers() == 1 })
	b := ts.attach(t, "in", "fo", 10)
	ts.waitStats(t, "in", "fo", "the second consumer", func(st *ferryv1.SubscriptionStats) bool { return st.GetConsumers() == 2 })

	ts.publishN(t, "in", "f", 4)
	got := a.take(t, 4)
	for i, d := range got {
		if d.GetMessage().GetOffset() != uint64(i) {
			t.Errorf("the active consumer got offset %d at position %d: failover delivers in order", d.GetMessage().GetOffset(), i)
		}
	}
	a.send(t, subAck(1, ids(got[:3]...)...))
	ts.waitStats(t, "in", "fo", "3 acks", func(st *ferryv1.SubscriptionStats) bool { return st.GetAcked() == 3 })
	if n := b.queued(); n != 0 {
		t.Fatalf("the standby consumer received %d deliveries while the first was attached", n)
	}

	a.close(t)
	d := b.next(t)
	if d.GetMessage().GetOffset() != 3 || d.GetAttempt() != 2 {
		t.Errorf("the standby took over with %s attempt %d, want offset 3 attempt 2", pos(d), d.GetAttempt())
	}
	ts.publishN(t, "in", "g", 2)
	for i, d := range b.take(t, 2) {
		if d.GetMessage().GetOffset() != uint64(4+i) {
			t.Errorf("after takeover got offset %d, want %d", d.GetMessage().GetOffset(), 4+i)
		}
	}
	b.close(t)
}

// TestKeyShared: with two consumers each key's messages arrive in order,
// each at one consumer, and both consumers get keys.
func TestKeyShared(t *testing.T) {
	ts := startServer(t)
	ts.createTopic(t, "in", nil)
	ts.createSub(t, "in", "ks", subConfig(atLeast, keyShrd))
	streams := []*subStream{ts.attach(t, "in", "ks", 4), ts.attach(t, "in", "ks", 4)}
	ts.waitStats(t, "in", "ks", "two consumers", func(st *ferryv1.SubscriptionStats) bool { return st.GetConsumers() == 2 })

	const keys, perKey = 16, 10
	var msgs []*ferryv1.PublishMessage
	for i := range keys * perKey {
		msgs = append(msgs, &ferryv1.PublishMessage{Key: []byte(fmt.Sprintf("key-%02d", i%keys)), Payload: []byte(strconv.Itoa(i / keys))})
	}
	ts.publish(t, "in", msgs...)

	owner := map[string]int{} // key → consumer
	last := map[string]int{}  // key → last sequence seen
	perConsumer := [2]int{}   // deliveries per consumer
	deadline := time.After(15 * time.Second)
	for received := 0; received < keys*perKey; received++ {
		var d *ferryv1.Delivery
		var c int
		select {
		case d = <-streams[0].dels:
		case d = <-streams[1].dels:
			c = 1
		case <-deadline:
			t.Fatalf("received %d of %d deliveries", received, keys*perKey)
		}
		key := string(d.GetMessage().GetKey())
		seq, _ := strconv.Atoi(string(d.GetMessage().GetPayload()))
		if d.GetAttempt() != 1 {
			t.Fatalf("%s (key %s) redelivered with nothing nacked or timed out", pos(d), key)
		}
		if o, ok := owner[key]; ok && o != c {
			t.Fatalf("key %s went to consumer %d and consumer %d while both stayed attached", key, o, c)
		}
		owner[key] = c
		if want := last[key] + 1; seq+1 != want {
			t.Fatalf("key %s: message %d arrived after message %d", key, seq, last[key]-1)
		}
		last[key] = seq + 1
		perConsumer[c]++
		streams[c].send(t, subAck(0, d.GetDeliveryId()))
	}
	if perConsumer[0] == 0 || perConsumer[1] == 0 {
		t.Errorf("deliveries per consumer %v: one consumer got every key", perConsumer)
	}
	t.Logf("deliveries per consumer: %v", perConsumer)
	for _, s := range streams {
		s.close(t)
	}
}

// TestDeadLetter: after max_deliveries nacked attempts the message goes to
// the dead-letter topic with headers saying where from, and is not
// delivered again.
func TestDeadLetter(t *testing.T) {
	ts, clk := startFakeServer(t)
	ts.createTopic(t, "in", &ferryv1.TopicConfig{Partitions: 2})
	ts.createTopic(t, "dlq", nil)
	cfg := subConfig(atLeast, shared)
	cfg.MaxDeliveries = 2
	cfg.DeadLetterTopic = "dlq"
	ts.createSub(t, "in", "work", cfg)
	res := ts.publish(t, "in", &ferryv1.PublishMessage{Id: "poison", Key: []byte("k"), Payload: []byte("bad"),
		Headers: map[string]string{"origin": "test"}})[0]

	s := ts.attach(t, "in", "work", 1)
	d := s.next(t)
	if d.GetAttempt() != 1 {
		t.Fatalf("first delivery has attempt %d", d.GetAttempt())
	}
	s.send(t, subNack(d.GetDeliveryId()))
	ts.waitStats(t, "in", "work", "the first nack", func(st *ferryv1.SubscriptionStats) bool { return st.GetNacked() == 1 })
	clk.Advance(time.Second) // backoff_min
	d = s.next(t)
	if d.GetAttempt() != 2 || d.GetMessage().GetId() != "poison" {
		t.Fatalf("second delivery = %v, want poison attempt 2", d)
	}
	s.send(t, subNack(d.GetDeliveryId()))
	ts.waitStats(t, "in", "work", "the second nack", func(st *ferryv1.SubscriptionStats) bool { return st.GetNacked() == 2 })
	clk.Advance(2 * time.Second) // the backoff doubled
	st := ts.waitStats(t, "in", "work", "the dead letter", func(st *ferryv1.SubscriptionStats) bool { return st.GetDeadLettered() == 1 })
	if st.GetBacklog() != 0 || st.GetInFlight() != 0 || st.GetDelivered() != 2 {
		t.Errorf("after dead-lettering: %v, want backlog 0, in_flight 0, delivered 2", st)
	}

	msgs := ts.read(t, "dlq", 0, 0, 10).GetMessages()
	if len(msgs) != 1 {
		t.Fatalf("the dead-letter topic holds %v, want one message", msgs)
	}
	m := msgs[0]
	if m.GetId() != "poison" || string(m.GetKey()) != "k" || string(m.GetPayload()) != "bad" {
		t.Errorf("dead letter = %v, want the original id, key and payload", m)
	}
	for k, v := range map[string]string{
		"origin":                         "test",
		"ferry-dead-letter-topic":        "in",
		"ferry-dead-letter-partition":    strconv.Itoa(int(res.GetPartition())),
		"ferry-dead-letter-offset":       strconv.FormatUint(res.GetOffset(), 10),
		"ferry-dead-letter-subscription": "work",
		"ferry-dead-letter-attempts":     "2",
	} {
		if got := m.GetHeaders()[k]; got != v {
			t.Errorf("dead letter header %s = %q, want %q", k, got, v)
		}
	}

	// Not delivered again, however long we wait.
	clk.Advance(10 * time.Minute)
	if st := ts.stats(t, "in", "work"); st.GetDelivered() != 2 || st.GetDeadLettered() != 1 {
		t.Errorf("after dead-lettering and an hour: %v", st)
	}
	ts.publish(t, "in", &ferryv1.PublishMessage{Id: "fine", Key: []byte("k"), Payload: []byte("ok")})
	if d := s.next(t); d.GetMessage().GetId() != "fine" {
		t.Errorf("after the dead letter the consumer got %v, want the next message", d)
	}
	if n := len(ts.read(t, "dlq", 0, 0, 10).GetMessages()); n != 1 {
		t.Errorf("the dead-letter topic holds %d messages, want 1", n)
	}
	s.close(t)
}

// TestSeek: seeking to earliest delivers everything again and fences off
// earlier deliveries; a bad position is refused and changes nothing.
func TestSeek(t *testing.T) {
	ts := startServer(t)
	ts.createTopic(t, "in", nil)
	ts.publishN(t, "in", "k", 5)
	ts.createSub(t, "in", "sk", subConfig(atLeast, shared))
	sub := ts.subClient()

	s := ts.attach(t, "in", "sk", 10)
	first := s.take(t, 5)
	s.send(t, subAck(0, ids(first[:4]...)...))
	ts.waitStats(t, "in", "sk", "4 acks", func(st *ferryv1.SubscriptionStats) bool { return st.GetAcked() == 4 })

	for _, tc := range []struct {
		name  string
		pos   *ferryv1.Position
		code  codes.Code
		words []string
	}{
		{"offset past the head", &ferryv1.Position{Kind: ferryv1.PositionKind_POSITION_KIND_OFFSET, Offset: 6}, codes.OutOfRange, []string{"6"}},
		{"unspecified", &ferryv1.Position{}, codes.InvalidArgument, []string{"position"}},
		{"no position", nil, codes.InvalidArgument, []string{"position"}},
		{"bad kind", &ferryv1.Position{Kind: 99}, codes.InvalidArgument, []string{"position"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := sub.Seek(testContext(t), &ferryv1.SeekRequest{Topic: "in", Subscription: "sk", Position: tc.pos})
			wantStatus(t, err, tc.code, tc.words...)
			if st := ts.stats(t, "in", "sk"); st.GetBacklog() != 1 || st.GetInFlight() != 1 {
				t.Errorf("after a refused seek: %v, want backlog 1, in_flight 1", st)
			}
		})
	}

	if _, err := sub.Seek(testContext(t), &ferryv1.SeekRequest{Topic: "in", Subscription: "sk",
		Position: &ferryv1.Position{Kind: ferryv1.PositionKind_POSITION_KIND_EARLIEST}}); err != nil {
		t.Fatalf("Seek earliest: %v", err)
	}
	got := map[uint64]bool{}
	var again []*ferryv1.Delivery
	for range 5 {
		d := s.next(t)
		got[d.GetMessage().GetOffset()] = true
		again = append(again, d)
	}
	for off := range uint64(5) {
		if !got[off] {
			t.Errorf("offset %d not delivered again after seeking to earliest", off)
		}
	}
	// A delivery from before the seek cannot be acked.
	resp, err := sub.Ack(testContext(t), &ferryv1.AckRequest{Topic: "in", Subscription: "sk", DeliveryIds: ids(first[4])})
	if err != nil {
		t.Fatalf("Ack: %v", err)
	}
	wantResult(t, resp.GetResults()[0], first[4].GetDeliveryId(), codes.FailedPrecondition)
	resp, err = sub.Ack(testContext(t), &ferryv1.AckRequest{Topic: "in", Subscription: "sk", DeliveryIds: ids(again...)})
	if err != nil {
		t.Fatalf("Ack: %v", err)
	}
	for i, r := range resp.GetResults() {
		wantResult(t, r, again[i].GetDeliveryId(), codes.OK)
	}
	if st := ts.stats(t, "in", "sk"); st.GetBacklog() != 0 || st.GetInFlight() != 0 {
		t.Errorf("after acking everything again: %v", st)
	}

	// Seek to an offset: from there on.
	if _, err := sub.Seek(testContext(t), &ferryv1.SeekRequest{Topic: "in", Subscription: "sk",
		Position: &ferryv1.Position{Kind: ferryv1.PositionKind_POSITION_KIND_OFFSET, Offset: 3}}); err != nil {
		t.Fatalf("Seek offset 3: %v", err)
	}
	for _, d := range s.take(t, 2) {
		if off := d.GetMessage().GetOffset(); off < 3 {
			t.Errorf("after seeking to offset 3 got offset %d", off)
		}
	}
	s.close(t)
}

// TestShutdownEndsSubscribe: Shutdown ends an open Subscribe stream with
// UNAVAILABLE, without waiting for ShutdownTimeout.
func TestShutdownEndsSubscribe(t *testing.T) {
	const timeout = 5 * time.Second
	ts := startServer(t, func(o *Options) { o.ShutdownTimeout = timeout })
	ts.createTopic(t, "in", nil)
	ts.createSub(t, "in", "s", subConfig(atLeast, shared))
	s := ts.attach(t, "in", "s", 1)
	ts.publishN(t, "in", "z", 1)
	s.next(t)

	start := time.Now()
	ts.shutdown(t)
	took := time.Since(start)
	s.wantEnd(t, codes.Unavailable, "shutting down")
	t.Logf("Shutdown took %v with a Subscribe stream open", took)
	if took >= timeout {
		t.Errorf("Shutdown took %v: the Subscribe stream held it until ShutdownTimeout (%v)", took, timeout)
	}
}

// TestCommitOnlyPublishes: a Commit that names no delivery, only messages
// to publish, is answered with their results (it used to wait for ever).
func TestCommitOnlyPublishes(t *testing.T) {
	ts := startServer(t)
	ts.createTopic(t, "in", &ferryv1.TopicConfig{Partitions: 1})
	ts.createTopic(t, "out", &ferryv1.TopicConfig{Partitions: 2})
	ts.createSub(t, "in", "proc", subConfig(effOnce, shared))
	var ms []*ferryv1.PublishMessage
	for i := range 4 {
		ms = append(ms, &ferryv1.PublishMessage{Id: fmt.Sprintf("o%d", i), Key: []byte(fmt.Sprint(i)), Payload: []byte("out")})
	}
	ctx, cancel := context.WithTimeout(testContext(t), 5*time.Second)
	defer cancel()
	resp, err := ferryv1.NewSubscriberServiceClient(ts.conn).Commit(ctx, &ferryv1.CommitRequest{Topic: "in", Subscription: "proc",
		Publishes: []*ferryv1.CommitPublish{{Topic: "out", Messages: ms}}})
	if err != nil {
		t.Fatalf("Commit: %v", err)
	}
	if n := len(resp.GetPublishResults()[0].GetResults()); n != 4 {
		t.Fatalf("%d results, want 4", n)
	}
}
