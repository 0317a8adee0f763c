package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	ferryv1 "github.com/ferrymq/ferry/proto/ferry/v1"
)

// The tests in this file drive a real `ferry serve`, SIGKILL it at seeded
// random moments while a subscription is being consumed, restart it on the
// same data dir and check the delivery guarantees of docs/design.md §2 across all
// cycles. Knobs, shared with crash_test.go:
//
//	FERRY_CRASH_CYCLES      kill cycles per test (default 3 here)
//	FERRY_CRASH_SEED        seed (default fixed, logged; set it to replay)
//	FERRY_DELIVERY_MESSAGES messages published per test (default 1500; the
//	                        effectively-once pipeline uses a third of it)

const (
	dlvCredit     = 50
	dlvConsumers  = 2 // concurrent streams on AT_MOST_ONCE and AT_LEAST_ONCE
	dlvAckTimeout = 2 * time.Second
	dlvWait       = 60 * time.Second // limit on any condition wait
)

// dlvKnobs returns the cycle count, the seed and the message count.
func dlvKnobs(t *testing.T) (cycles int, seed uint64, n int) {
	t.Helper()
	if testing.Short() {
		t.Skip("builds and kills a real broker")
	}
	cycles = envInt(t, "FERRY_CRASH_CYCLES", 3)
	seed = uint64(envInt(t, "FERRY_CRASH_SEED", 20240611))
	n = envInt(t, "FERRY_DELIVERY_MESSAGES", 1500)
	t.Logf("seed %d (FERRY_CRASH_SEED=%d replays), %d cycles, %d messages", seed, seed, cycles, n)
	return cycles, seed, n
}

// dlvMsg is where a published message was stored.
type dlvMsg struct {
	partition uint32
	offset    uint64
	payload   []byte
}

// dlvSeen is one delivery as the test received it.
type dlvSeen struct {
	id        string
	partition uint32
	offset    uint64
	attempt   uint32
	cycle     int
	at        time.Time
}

func dlvCreateTopic(t *testing.T, admin ferryv1.AdminServiceClient, name string, partitions uint32, dedup time.Duration) {
	t.Helper()
	cfg := &ferryv1.TopicConfig{Partitions: partitions}
	if dedup > 0 {
		cfg.DedupWindow = durationpb.New(dedup)
	}
	if _, err := admin.CreateTopic(context.Background(), &ferryv1.CreateTopicRequest{Name: name, Config: cfg}); err != nil {
		t.Fatalf("create topic %s: %v", name, err)
	}
}

func dlvCreateSub(t *testing.T, admin ferryv1.AdminServiceClient, topic, name string, g ferryv1.DeliveryGuarantee) {
	t.Helper()
	_, err := admin.CreateSubscription(context.Background(), &ferryv1.CreateSubscriptionRequest{Topic: topic, Name: name,
		Config: &ferryv1.SubscriptionConfig{
			Guarantee:  g,
			Type:       ferryv1.SubscriptionType_SUBSCRIPTION_TYPE_SHARED,
			Start:      &ferryv1.Position{Kind: ferryv1.PositionKind_POSITION_KIND_EARLIEST},
			AckTimeout: durationpb.New(dlvAckTimeout),
		}})
	if err != nil {
		t.Fatalf("create subscription %s/%s: %v", topic, name, err)
	}
}

// dlvPublish publishes n messages with ids prefix0..prefix(n-1) and returns
// where each was stored.
func dlvPublish(t *testing.T, conn *grpc.ClientConn, topic, prefix string, n int, rng *rand.Rand) map[string]dlvMsg {
	t.Helper()
	client := ferryv1.NewPublisherServiceClient(conn)
	out := make(map[string]dlvMsg, n)
	for i := 0; i < n; {
		req := &ferryv1.PublishRequest{Topic: topic}
		for ; i < n && len(req.Messages) < 250; i++ {
			id := fmt.Sprintf("%s%d", prefix, i)
			payload := fmt.Appendf(nil, "%s|", id)
			for range 16 + rng.IntN(200) {
				payload = append(payload, byte(rng.Uint32()))
			}
			req.Messages = append(req.Messages, &ferryv1.PublishMessage{Id: id, Payload: payload})
		}
		resp, err := client.Publish(context.Background(), req)
		if err != nil {
			t.Fatalf("publish: %v", err)
		}
		for j, r := range resp.Results {
			m := req.Messages[j]
			if r.Duplicate {
				t.Fatalf("fresh message %s answered as a duplicate", m.Id)
			}
			out[m.Id] = dlvMsg{partition: r.Partition, offset: r.Offset, payload: m.Payload}
		}
	}
	return out
}

func dlvStats(ctx context.Context, admin ferryv1.AdminServiceClient, topic, sub string) (*ferryv1.SubscriptionStats, error) {
	resp, err := admin.GetSubscription(ctx, &ferryv1.GetSubscriptionRequest{Topic: topic, Name: sub})
	if err != nil {
		return nil, err
	}
	return resp.Stats, nil
}

// dlvDrained closes the returned channel once the subscription has no
// backlog and nothing in flight, polling until ctx ends.
func dlvDrained(ctx context.Context, admin ferryv1.AdminServiceClient, topic, sub string) <-chan struct{} {
	done := make(chan struct{})
	go func() {
		for ctx.Err() == nil {
			if st, err := dlvStats(ctx, admin, topic, sub); err == nil && st.Backlog == 0 && st.InFlight == 0 {
				close(done)
				return
			}
			select {
			case <-ctx.Done():
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()
	return done
}

// dlvRestartDrained stops the broker with SIGTERM, restarts it on dir and
// checks that the subscription is still drained: a clean stop stores every
// ack the broker took.
func dlvRestartDrained(t *testing.T, p *process, dir, topic, sub string) {
	t.Helper()
	if took, err := p.stop(t, 10*time.Second); err != nil {
		t.Fatalf("SIGTERM: %v after %v", err, took)
	}
	p = startFerry(t, dir)
	st, err := dlvStats(context.Background(), ferryv1.NewAdminServiceClient(p.dial(t)), topic, sub)
	if err != nil {
		t.Fatal(err)
	}
	if st.Backlog != 0 {
		t.Errorf("after a clean stop and restart the drained subscription %s/%s has backlog %d, want 0", topic, sub, st.Backlog)
	}
}

// dlvSubscribe attaches to topic/sub with credit and hands every delivery
// to seen; ack says whether to ack each batch right after receipt. It
// returns the error that ended the stream.
func dlvSubscribe(ctx context.Context, conn *grpc.ClientConn, topic, sub string, credit int32, ack bool, seen func(*ferryv1.Delivery)) error {
	stream, err := ferryv1.NewSubscriberServiceClient(conn).Subscribe(ctx)
	if err != nil {
		return err
	}
	if err := stream.Send(&ferryv1.SubscribeRequest{Frame: &ferryv1.SubscribeRequest_Init{Init: &ferryv1.SubscribeInit{
		Topic: topic, Subscription: sub, Credit: credit}}}); err != nil {
		return err
	}
	for seq := uint64(1); ; seq++ {
		resp, err := stream.Recv()
		if err != nil {
			return err
		}
		ds := resp.GetDeliveries()
		if ds == nil {
			continue // an ack confirmation
		}
		ids := make([]string, 0, len(ds.Deliveries))
		for _, d := range ds.Deliveries {
			seen(d)
			ids = append(ids, d.DeliveryId)
		}
		if ack && len(ids) > 0 && ctx.Err() == nil {
			if err := stream.Send(&ferryv1.SubscribeRequest{Frame: &ferryv1.SubscribeRequest_Ack{Ack: &ferryv1.SubscribeAck{
				Sequence: seq, DeliveryIds: ids}}}); err != nil {
				// A failed Send says io.EOF; Recv has the stream's status.
				_, err = stream.Recv()
				return err
			}
		}
	}
}

// dlvExpectedEnd reports whether err is how a stream or call ends when the
// broker is killed or the test cancels it.
func dlvExpectedEnd(err error) bool {
	if errors.Is(err, context.Canceled) {
		return true
	}
	switch status.Code(err) {
	case codes.Unavailable, codes.Canceled:
		return true
	}
	return false
}

// dlvCheckMessage checks that a delivery carries the message published
// under its id, where it was stored.
func dlvCheckMessage(t *testing.T, published map[string]dlvMsg, d *ferryv1.Delivery) {
	m := d.GetMessage()
	want, ok := published[m.GetId()]
	switch {
	case !ok:
		t.Errorf("delivery %s carries unknown message id %q", d.DeliveryId, m.GetId())
	case m.Partition != want.partition || m.Offset != want.offset || !bytes.Equal(m.Payload, want.payload):
		t.Errorf("delivery %s of %q: partition %d offset %d (payload equal %t), published at %d/%d",
			d.DeliveryId, m.Id, m.Partition, m.Offset, bytes.Equal(m.Payload, want.payload), want.partition, want.offset)
	}
}

// TestDeliveryCrashAtMostOnce consumes an AT_MOST_ONCE subscription,
// SIGKILLing the broker (and sometimes dropping the consumer's stream)
// mid-consumption, until the backlog is 0: no message may ever be
// delivered twice; loss is allowed.
func TestDeliveryCrashAtMostOnce(t *testing.T) {
	seen, published := runAckCrashCycles(t, ferryv1.DeliveryGuarantee_DELIVERY_GUARANTEE_AT_MOST_ONCE, false)
	checkAtMostOnce(t, seen, published)
}

// checkAtMostOnce checks that no message was delivered twice.
func checkAtMostOnce(t *testing.T, seen []dlvSeen, published map[string]dlvMsg) {
	byID := map[string][]dlvSeen{}
	byPos := map[[2]uint64][]dlvSeen{}
	for _, s := range seen {
		byID[s.id] = append(byID[s.id], s)
		pos := [2]uint64{uint64(s.partition), s.offset}
		byPos[pos] = append(byPos[pos], s)
	}
	dups := 0
	for _, id := range sortedKeys(byID) {
		if ss := byID[id]; len(ss) > 1 {
			if dups++; dups <= 20 {
				t.Errorf("AT_MOST_ONCE delivered %s %d times: %s", id, len(ss), describeSeen(ss))
			}
		}
	}
	for pos, ss := range byPos {
		if len(ss) > 1 && dups == 0 {
			t.Errorf("AT_MOST_ONCE delivered partition %d offset %d %d times", pos[0], pos[1], len(ss))
		}
	}
	t.Logf("%d deliveries of %d distinct messages, %d published: %d lost, %d delivered twice or more",
		len(seen), len(byID), len(published), len(published)-len(byID), dups)
}

// TestDeliveryCrashAtLeastOnce consumes an AT_LEAST_ONCE subscription,
// acking every delivery right after receipt, SIGKILLing the broker (and
// sometimes dropping the stream) mid-consumption, then drains it: every
// published message must have been delivered at least once.
func TestDeliveryCrashAtLeastOnce(t *testing.T) {
	seen, published := runAckCrashCycles(t, ferryv1.DeliveryGuarantee_DELIVERY_GUARANTEE_AT_LEAST_ONCE, false)
	checkAtLeastOnce(t, seen, published)
}

// checkAtLeastOnce checks that every published message was delivered.
func checkAtLeastOnce(t *testing.T, seen []dlvSeen, published map[string]dlvMsg) {
	got := map[string]int{}
	for _, s := range seen {
		got[s.id]++
	}
	lost := 0
	for _, id := range sortedKeys(published) {
		if got[id] == 0 {
			if lost++; lost <= 20 {
				m := published[id]
				t.Errorf("AT_LEAST_ONCE never delivered %s (partition %d offset %d)", id, m.partition, m.offset)
			}
		}
	}
	if lost > 0 {
		t.Errorf("%d of %d messages never delivered", lost, len(published))
	}
	t.Logf("%d deliveries of %d distinct messages (%d redeliveries), %d published",
		len(seen), len(got), len(seen)-len(got), len(published))
}

// runAckCrashCycles publishes messages to a 3-partition topic, creates a
// SHARED subscription with guarantee g starting at the earliest, and
// consumes it with dlvConsumers streams that ack every batch as it
// arrives: each cycle SIGKILLs the broker after a seeded random number of
// deliveries (sometimes dropping and reopening one stream before that), then a last run drains
// the subscription to backlog 0, and a clean restart must find it still
// drained. It returns every delivery received and what was published.
// With power, each kill follows a power cut (see newCrasher).
func runAckCrashCycles(t *testing.T, g ferryv1.DeliveryGuarantee, power bool) ([]dlvSeen, map[string]dlvMsg) {
	cycles, seed, n := dlvKnobs(t)
	rng := rand.New(rand.NewPCG(seed, uint64(g)))
	c := newCrasher(t, power)
	dir := c.dir
	const topic, sub = "events", "sub"
	var (
		mu        sync.Mutex
		seen      []dlvSeen
		published map[string]dlvMsg
	)
	began := time.Now()
	for cycle := 0; cycle <= cycles; cycle++ {
		final := cycle == cycles
		p := startFerry(t, dir)
		conn := p.dial(t)
		admin := ferryv1.NewAdminServiceClient(conn)
		if cycle == 0 {
			dlvCreateTopic(t, admin, topic, 3, 0)
			published = dlvPublish(t, conn, topic, "m", n, rng)
			dlvCreateSub(t, admin, topic, sub, g)
		}
		killAt, dropAt := 1+rng.IntN(max(1, 2*n/(cycles+1))), 0
		if rng.IntN(2) == 0 {
			dropAt = 1 + rng.IntN(killAt)
		}
		jitter := time.Duration(rng.IntN(3000)) * time.Microsecond
		if final {
			killAt, dropAt = 0, 0
		}

		ctx, cancel := context.WithCancel(context.Background())
		reached := make(chan struct{})
		consumerDone := make(chan error, dlvConsumers)
		count := 0 // deliveries this cycle, under mu
		for range dlvConsumers {
			go func() {
				for {
					sctx, scancel := context.WithCancel(ctx)
					dropped := false
					err := dlvSubscribe(sctx, conn, topic, sub, dlvCredit, true, func(d *ferryv1.Delivery) {
						dlvCheckMessage(t, published, d)
						mu.Lock()
						defer mu.Unlock()
						seen = append(seen, dlvSeen{id: d.GetMessage().GetId(), partition: d.GetMessage().GetPartition(),
							offset: d.GetMessage().GetOffset(), attempt: d.Attempt, cycle: cycle, at: time.Now()})
						count++
						if count == killAt {
							close(reached)
						}
						if count == dropAt {
							dropped = true
							scancel() // this consumer goes away mid-batch
						}
					})
					scancel()
					if !dropped || ctx.Err() != nil {
						consumerDone <- err
						return
					}
				}
			}()
		}
		waitConsumers := func() (errs []error) {
			for range dlvConsumers {
				errs = append(errs, <-consumerDone)
			}
			return errs
		}

		if !final {
			select {
			case <-reached:
			case <-dlvDrained(ctx, admin, topic, sub):
			case err := <-consumerDone:
				t.Fatalf("cycle %d: the consumer stopped before the kill: %v", cycle, err)
			case <-time.After(dlvWait):
				t.Fatalf("cycle %d: not %d deliveries within %v", cycle, killAt, dlvWait)
			}
			time.Sleep(jitter) // a random moment: the streams keep consuming
			c.crash(t, p)
			for _, err := range waitConsumers() {
				if !dlvExpectedEnd(err) {
					t.Errorf("cycle %d: a stream ended with %v after SIGKILL, want UNAVAILABLE", cycle, err)
				}
			}
			cancel()
			t.Logf("cycle %d: %s after %d deliveries (target %d, a stream dropped at %d)", cycle, c, count, killAt, dropAt)
			continue
		}
		select {
		case <-dlvDrained(ctx, admin, topic, sub):
		case err := <-consumerDone:
			t.Fatalf("final drain: the consumer stopped: %v", err)
		case <-time.After(dlvWait):
			st, err := dlvStats(context.Background(), admin, topic, sub)
			t.Fatalf("final drain: not drained within %v: %v %v", dlvWait, st, err)
		}
		cancel()
		waitConsumers()
		st, _ := dlvStats(context.Background(), admin, topic, sub)
		t.Logf("final drain: %d deliveries; stats %v; %v in all", count, st, time.Since(began).Round(time.Millisecond))
		dlvRestartDrained(t, p, dir, topic, sub)
	}
	mu.Lock()
	defer mu.Unlock()
	return seen, published
}

// TestDeliveryCrashEffectivelyOnceCommit runs a consume→transform→produce
// pipeline on an EFFECTIVELY_ONCE subscription: each delivery of topic
// "in" is committed with unary Commit, acking it and publishing
// "out-"+id to topic "out" in one atomic write. The broker is SIGKILLed at
// seeded random moments, the consumer's stream is dropped and reopened at
// others, some workers stall past the ack timeout (their late commit must
// be fenced off if the message went out again), and deliveries still
// queued at a kill are committed against the restarted broker. Failed
// commits are dropped: the message comes back. Once the subscription is
// drained, "out" must hold exactly one "out-"+id per input, and no
// message whose Commit returned OK may ever be delivered again. "out" has
// the shortest dedup window the broker accepts (1ns), so topic dedup
// cannot hide a double commit; a Commit answered with duplicate=true fails
// the test anyway.
func TestDeliveryCrashEffectivelyOnceCommit(t *testing.T) {
	runEffectivelyOnceCrashCycles(t, false)
}

// runEffectivelyOnceCrashCycles is TestDeliveryCrashEffectivelyOnceCommit;
// with power, each kill follows a power cut (see newCrasher).
func runEffectivelyOnceCrashCycles(t *testing.T, power bool) {
	cycles, seed, n := dlvKnobs(t)
	n = max(1, n/3)
	rng := rand.New(rand.NewPCG(seed, 4))
	c := newCrasher(t, power)
	dir := c.dir
	const in, out, sub, workers = "in", "out", "pipe", 8
	var (
		published map[string]dlvMsg
		mu        sync.Mutex
		received  = map[string][]dlvSeen{} // by input id, in arrival order
		confirmed = map[string]uint32{}    // input id → attempt whose Commit returned OK
		failed    = map[codes.Code]int{}
		stalled   []stall // set aside by a stalled worker
		stalls    int
	)
	// violation reports a broken guarantee (safe from any goroutine).
	violation := func(format string, args ...any) { t.Errorf("EFFECTIVELY_ONCE: "+format, args...) }

	onDelivery := func(cycle int, d *ferryv1.Delivery) {
		dlvCheckMessage(t, published, d)
		id := d.GetMessage().GetId()
		now := time.Now()
		mu.Lock()
		defer mu.Unlock()
		prev := received[id]
		received[id] = append(prev, dlvSeen{id: id, partition: d.Message.Partition, offset: d.Message.Offset, attempt: d.Attempt, cycle: cycle, at: now})
		if a, ok := confirmed[id]; ok {
			violation("%s delivered again (attempt %d, cycle %d) after the Commit of attempt %d returned OK; deliveries: %s",
				id, d.Attempt, cycle, a, describeSeen(received[id]))
		}
		if len(prev) > 0 {
			last := prev[len(prev)-1]
			if d.Attempt <= last.attempt {
				violation("%s delivered with attempt %d after attempt %d: fencing tokens must increase across restarts; deliveries: %s",
					id, d.Attempt, last.attempt, describeSeen(received[id]))
			} else if gap := now.Sub(last.at); gap < dlvAckTimeout-300*time.Millisecond {
				violation("%s attempt %d delivered %v after attempt %d, before that delivery's %v deadline passed; deliveries: %s",
					id, d.Attempt, gap.Round(time.Millisecond), last.attempt, dlvAckTimeout, describeSeen(received[id]))
			}
		}
	}
	onCommit := func(d *ferryv1.Delivery, resp *ferryv1.CommitResponse, err error) {
		id := d.GetMessage().GetId()
		mu.Lock()
		defer mu.Unlock()
		if err != nil {
			failed[status.Code(err)]++
			switch status.Code(err) {
			case codes.Unavailable, codes.Canceled, codes.FailedPrecondition, codes.NotFound:
			default:
				t.Errorf("Commit of %s attempt %d: unexpected %v", id, d.Attempt, err)
			}
			return
		}
		if a, ok := confirmed[id]; ok {
			violation("%s: Commit of attempt %d returned OK after the Commit of attempt %d did", id, d.Attempt, a)
		}
		confirmed[id] = d.Attempt
		for _, s := range received[id] {
			if s.attempt > d.Attempt {
				violation("%s: Commit of superseded attempt %d returned OK (attempt %d had been delivered); deliveries: %s",
					id, d.Attempt, s.attempt, describeSeen(received[id]))
				break
			}
		}
		if r := resp.GetPublishResults(); len(r) != 1 || len(r[0].GetResults()) != 1 {
			t.Errorf("Commit of %s: publish results %v, want one", id, r)
		} else if r[0].Results[0].Duplicate {
			violation("%s: Commit of attempt %d published out-%s as a duplicate: a double commit masked by topic dedup", id, d.Attempt, id)
		}
	}

	// Deliveries waiting for a worker; what is left at a kill is committed
	// against the restarted broker.
	work := make(chan *ferryv1.Delivery, 4096)
	began := time.Now()
	for cycle := 0; cycle <= cycles; cycle++ {
		final := cycle == cycles
		p := startFerry(t, dir)
		conn := p.dial(t)
		admin := ferryv1.NewAdminServiceClient(conn)
		if cycle == 0 {
			dlvCreateTopic(t, admin, in, 2, 0)
			// The smallest window TopicConfig.Validate allows is anything
			// above 0; 1ns makes every repeat of an id a new message.
			dlvCreateTopic(t, admin, out, 2, time.Nanosecond)
			published = dlvPublish(t, conn, in, "in", n, rng)
			dlvCreateSub(t, admin, in, sub, ferryv1.DeliveryGuarantee_DELIVERY_GUARANTEE_EFFECTIVELY_ONCE)
		}
		killAt := 1 + rng.IntN(max(1, 2*n/(cycles+1)))
		jitter := time.Duration(rng.IntN(5000)) * time.Microsecond
		streamSeed := rng.Uint64()
		if final {
			killAt = 0
		}

		ctx, cancel := context.WithCancel(context.Background())
		var wg sync.WaitGroup
		client := ferryv1.NewSubscriberServiceClient(conn)
		commit := func(ctx context.Context, d *ferryv1.Delivery) {
			id := d.GetMessage().GetId()
			payload := append([]byte("out:"), d.GetMessage().GetPayload()...)
			resp, err := client.Commit(ctx, &ferryv1.CommitRequest{Topic: in, Subscription: sub, DeliveryIds: []string{d.DeliveryId},
				Publishes: []*ferryv1.CommitPublish{{Topic: out, Messages: []*ferryv1.PublishMessage{{Id: "out-" + id, Payload: payload}}}}})
			onCommit(d, resp, err)
		}
		for w := range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				wrng := rand.New(rand.NewPCG(seed, uint64(100*cycle+w)))
				for ctx.Err() == nil {
					var d *ferryv1.Delivery
					select {
					case d = <-work:
					case <-ctx.Done():
						return
					}
					if !final && wrng.IntN(30) == 0 {
						// A stalled worker: it commits once the delivery's
						// deadline has passed, maybe after a restart.
						mu.Lock()
						stalls++
						stalled = append(stalled, stall{d: d, due: time.Now().Add(dlvAckTimeout + 300*time.Millisecond)})
						mu.Unlock()
						continue
					}
					commit(ctx, d)
				}
			}()
		}
		wg.Add(1)
		go func() { // commits stalled deliveries once they are due
			defer wg.Done()
			for ctx.Err() == nil {
				mu.Lock()
				var due []*ferryv1.Delivery
				kept := stalled[:0]
				for _, s := range stalled {
					if time.Now().After(s.due) {
						due = append(due, s.d)
					} else {
						kept = append(kept, s)
					}
				}
				stalled = kept
				mu.Unlock()
				for _, d := range due {
					commit(ctx, d)
				}
				select {
				case <-ctx.Done():
				case <-time.After(20 * time.Millisecond):
				}
			}
		}()
		reached := make(chan struct{})
		consumerDone := make(chan error, 1)
		count, drops := 0, 0
		go func() {
			srng := rand.New(rand.NewPCG(streamSeed, 5))
			nextDrop := 0
			if !final {
				nextDrop = 1 + srng.IntN(n/(cycles+1)+1)
			}
			for {
				sctx, scancel := context.WithCancel(ctx)
				dropped := false
				err := dlvSubscribe(sctx, conn, in, sub, 20, false, func(d *ferryv1.Delivery) {
					onDelivery(cycle, d)
					count++
					if count == killAt {
						close(reached)
					}
					if count == nextDrop {
						dropped = true
						drops++
						nextDrop += 1 + srng.IntN(n/(cycles+1)+1)
						scancel() // reconnect: what this stream held stays outstanding until its deadline
					}
					select {
					case work <- d:
					default:
						t.Errorf("the work queue is full")
					}
				})
				scancel()
				if !dropped || ctx.Err() != nil {
					consumerDone <- err
					return
				}
			}
		}()

		if !final {
			select {
			case <-reached:
			case <-dlvDrained(ctx, admin, in, sub):
			case err := <-consumerDone:
				t.Fatalf("cycle %d: the consumer stopped before the kill: %v", cycle, err)
			case <-time.After(dlvWait):
				t.Fatalf("cycle %d: not %d deliveries within %v", cycle, killAt, dlvWait)
			}
			time.Sleep(jitter) // a random moment: commits keep going
			c.crash(t, p)
			if err := <-consumerDone; !dlvExpectedEnd(err) {
				t.Errorf("cycle %d: the stream ended with %v after SIGKILL, want UNAVAILABLE", cycle, err)
			}
			cancel()
			wg.Wait()
			mu.Lock()
			t.Logf("cycle %d: %s after %d deliveries (target %d), %d stream drops, %d confirmed commits so far, %d queued",
				cycle, c, count, killAt, drops, len(confirmed), len(work))
			mu.Unlock()
			continue
		}
		select {
		case <-dlvDrained(ctx, admin, in, sub):
		case err := <-consumerDone:
			t.Fatalf("final drain: the consumer stopped: %v", err)
		case <-time.After(dlvWait):
			st, err := dlvStats(context.Background(), admin, in, sub)
			t.Fatalf("final drain: not drained within %v: %v %v", dlvWait, st, err)
		}
		cancel()
		<-consumerDone
		wg.Wait()
		// Deliveries still set aside were all acked since: their late
		// commits must be refused and change nothing.
		mu.Lock()
		late := stalled
		stalled = nil
		mu.Unlock()
		for _, s := range late {
			commit(context.Background(), s.d)
		}
		st, _ := dlvStats(context.Background(), admin, in, sub)
		mu.Lock()
		t.Logf("final drain: %d deliveries; %d confirmed commits, failed %v, %d stalls; stats %v; %v in all",
			count, len(confirmed), failed, stalls, st, time.Since(began).Round(time.Millisecond))
		mu.Unlock()
		checkPipelineOutput(t, admin, out, published)
		dlvRestartDrained(t, p, dir, in, sub)
	}
}

// stall is a delivery a stalled worker set aside, to commit once due.
type stall struct {
	d   *ferryv1.Delivery
	due time.Time
}

// checkPipelineOutput reads every partition of topic and checks that it
// holds exactly one "out-"+id, with payload "out:"+payload, per input.
func checkPipelineOutput(t *testing.T, admin ferryv1.AdminServiceClient, topic string, published map[string]dlvMsg) {
	t.Helper()
	outs := map[string][]*ferryv1.Message{}
	total := 0
	for _, m := range dlvReadAll(t, admin, topic) {
		outs[m.Id] = append(outs[m.Id], m)
		total++
		in, ok := strings.CutPrefix(m.Id, "out-")
		want, known := published[in]
		if !ok || !known {
			t.Errorf("%s holds unexpected message %q at %d/%d", topic, m.Id, m.Partition, m.Offset)
			continue
		}
		if !bytes.Equal(m.Payload, append([]byte("out:"), want.payload...)) {
			t.Errorf("%s: %s at %d/%d has the wrong payload", topic, m.Id, m.Partition, m.Offset)
		}
	}
	dups, missing := 0, 0
	for _, id := range sortedKeys(published) {
		switch ms := outs["out-"+id]; len(ms) {
		case 1:
		case 0:
			if missing++; missing <= 20 {
				t.Errorf("%s has no out-%s: the input was acked without its output", topic, id)
			}
		default:
			if dups++; dups <= 20 {
				var at []string
				for _, m := range ms {
					at = append(at, fmt.Sprintf("%d/%d", m.Partition, m.Offset))
				}
				t.Errorf("%s holds out-%s %d times (at %s): committed more than once", topic, id, len(ms), strings.Join(at, " "))
			}
		}
	}
	if total != len(published) || dups > 0 || missing > 0 {
		t.Errorf("%s holds %d messages for %d inputs: %d committed twice or more, %d missing", topic, total, len(published), dups, missing)
	}
}

// dlvReadAll reads every retained message of every partition of topic.
func dlvReadAll(t *testing.T, admin ferryv1.AdminServiceClient, topic string) []*ferryv1.Message {
	t.Helper()
	ctx := context.Background()
	tp, err := admin.GetTopic(ctx, &ferryv1.GetTopicRequest{Name: topic})
	if err != nil {
		t.Fatal(err)
	}
	var all []*ferryv1.Message
	for _, ps := range tp.Partitions {
		for next := ps.FirstOffset; next < ps.HeadOffset; {
			resp, err := admin.ReadMessages(ctx, &ferryv1.ReadMessagesRequest{Topic: topic, Partition: ps.Partition, FromOffset: next, MaxMessages: 1000})
			if err != nil {
				t.Fatalf("read %s/%d from %d: %v", topic, ps.Partition, next, err)
			}
			if len(resp.Messages) == 0 {
				t.Fatalf("read %s/%d: nothing at %d below head %d", topic, ps.Partition, next, ps.HeadOffset)
			}
			all = append(all, resp.Messages...)
			next = resp.NextOffset
		}
	}
	return all
}

func describeSeen(ss []dlvSeen) string {
	var b strings.Builder
	t0 := ss[0].at
	for i, s := range ss {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "[%d/%d attempt %d cycle %d +%v]", s.partition, s.offset, s.attempt, s.cycle, s.at.Sub(t0).Round(time.Millisecond))
	}
	return b.String()
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
