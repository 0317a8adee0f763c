package main

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/durationpb"

	ferryv1 "github.com/ferrymq/ferry/proto/ferry/v1"
)

// ack is a message the broker acknowledged, and where it said it is.
type ack struct {
	msg       *ferryv1.PublishMessage
	partition uint32
	offset    uint64
}

// TestCrashKeepsAcknowledgedMessages runs a real `ferry serve`, publishes
// from concurrent clients (unary with and without ids, and a pipelined
// stream), SIGKILLs the broker at a random moment, restarts it and checks
// every acknowledged message: readable at its acked partition and offset
// with identical bytes, offsets dense, and a republish of an acked id
// answered as a duplicate of the original. FERRY_CRASH_CYCLES raises the
// number of kill cycles (default 5) for a soak; FERRY_CRASH_SEED replays a
// run.
func TestCrashKeepsAcknowledgedMessages(t *testing.T) {
	cycles, seed := crashKnobs(t, 5)
	for _, fsync := range []string{"always", "never"} {
		t.Run("fsync="+fsync, func(t *testing.T) { publishCrashCycles(t, newCrasher(t, false), fsync, cycles, seed) })
	}
}

// crashKnobs skips a short run and returns the cycle count (def unless
// FERRY_CRASH_CYCLES says) and the seed (FERRY_CRASH_SEED, else random).
func crashKnobs(t *testing.T, def int) (cycles int, seed uint64) {
	t.Helper()
	if testing.Short() {
		t.Skip("builds and kills a real broker")
	}
	cycles = envInt(t, "FERRY_CRASH_CYCLES", def)
	seed = uint64(envInt(t, "FERRY_CRASH_SEED", int(time.Now().UnixNano()%1e9)))
	t.Logf("seed %d (FERRY_CRASH_SEED=%d replays), %d cycles", seed, seed, cycles)
	return cycles, seed
}

// publishCrashCycles is TestCrashKeepsAcknowledgedMessages's run with
// --fsync fsync, its crashes made by c.
func publishCrashCycles(t *testing.T, c *crasher, fsync string, cycles int, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, 7))
	dir := c.dir
	var acks []ack
	for cycle := range cycles {
		p := startFerry(t, dir, "--fsync", fsync)
		conn := p.dial(t)
		if cycle == 0 {
			_, err := ferryv1.NewAdminServiceClient(conn).CreateTopic(context.Background(), &ferryv1.CreateTopicRequest{
				// A dedup window longer than any soak: verify expects every
				// acked id, however old, to come back as a duplicate.
				Name: "crash", Config: &ferryv1.TopicConfig{Partitions: 3, DedupWindow: durationpb.New(24 * time.Hour)}})
			if err != nil {
				t.Fatal(err)
			}
		}
		verify(t, conn, acks)
		killAfter := time.Duration(50+rng.IntN(400)) * time.Millisecond
		got := publishUntil(t, conn, cycle, rng.Uint64(), killAfter, func() { c.crash(t, p) })
		t.Logf("cycle %d: %d acks before %s at %v", cycle, len(got), c, killAfter)
		acks = append(acks, got...)
	}
	p := startFerry(t, dir, "--fsync", fsync)
	conn := p.dial(t)
	verify(t, conn, acks)
	if took, err := p.stop(t, 10*time.Second); err != nil {
		t.Fatalf("SIGTERM: %v after %v", err, took)
	}
}

// TestSigtermUnderLoad stops a broker with SIGTERM while unary publishers
// and a stream are busy: it must exit 0 within 10 s, and every publish it
// acknowledged must be there after a restart.
func TestSigtermUnderLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a real broker")
	}
	dir := t.TempDir()
	p := startFerry(t, dir)
	conn := p.dial(t)
	_, err := ferryv1.NewAdminServiceClient(conn).CreateTopic(context.Background(), &ferryv1.CreateTopicRequest{
		Name: "crash", Config: &ferryv1.TopicConfig{Partitions: 3, DedupWindow: durationpb.New(24 * time.Hour)}})
	if err != nil {
		t.Fatal(err)
	}
	var took time.Duration
	var stopErr error
	acks := publishUntil(t, conn, 0, 11, 300*time.Millisecond, func() { took, stopErr = p.stop(t, 10*time.Second) })
	if stopErr != nil {
		t.Fatalf("SIGTERM under load: %v after %v", stopErr, took)
	}
	t.Logf("%d acks; exited 0 %v after SIGTERM", len(acks), took.Round(time.Millisecond))
	verify(t, startFerry(t, dir).dial(t), acks)
}

// publishUntil runs publishers until stop (which ends the broker) is called
// after stopAfter, and returns what was acknowledged.
// TestCrashRightAfterAnswer kills the broker the moment a publish is
// answered, in a window a broker that answered early would leave open: it
// is built with the ferry_failpoints tag and every partition writer stalls
// 300 ms between applying a group and committing it
// (partition-before-commit). A publish answered before its transaction
// commits is answered inside that stall, the SIGKILL lands in it, and the
// message is gone after the restart — in every cycle, not by chance. A
// broker that answers after the commit and its fsync loses nothing.
func TestCrashRightAfterAnswer(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and kills a real broker")
	}
	run := ferryRun{tags: "ferry_failpoints", env: []string{"FERRY_FAILPOINT=partition-before-commit", "FERRY_FAILPOINT_ACTION=sleep:300ms"}}
	dir := t.TempDir()
	rng := rand.New(rand.NewPCG(1, 2))
	var acks []ack
	for cycle := range 3 {
		p := startFerryRun(t, run, dir)
		conn := p.dial(t)
		ctx := context.Background()
		if cycle == 0 {
			if _, err := ferryv1.NewAdminServiceClient(conn).CreateTopic(ctx, &ferryv1.CreateTopicRequest{Name: "crash", Config: &ferryv1.TopicConfig{Partitions: 1}}); err != nil {
				t.Fatal(err)
			}
		}
		verify(t, conn, acks)
		msg := crashMessage(rng, fmt.Sprintf("answered-%d", cycle), true)
		resp, err := ferryv1.NewPublisherServiceClient(conn).Publish(ctx, &ferryv1.PublishRequest{Topic: "crash", Messages: []*ferryv1.PublishMessage{msg}})
		p.kill(t) // right after the answer: inside the stall, had it come early
		if err != nil {
			t.Fatalf("cycle %d: publish: %v", cycle, err)
		}
		acks = append(acks, ack{msg: msg, partition: resp.Results[0].Partition, offset: resp.Results[0].Offset})
	}
	verify(t, startFerryRun(t, run, dir).dial(t), acks)
}

func publishUntil(t *testing.T, conn *grpc.ClientConn, cycle int, seed uint64, stopAfter time.Duration, stop func()) []ack {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	client := ferryv1.NewPublisherServiceClient(conn)
	var (
		mu   sync.Mutex
		acks []ack
		wg   sync.WaitGroup
	)
	record := func(msgs []*ferryv1.PublishMessage, results []*ferryv1.PublishResult) {
		mu.Lock()
		defer mu.Unlock()
		for i, r := range results {
			if r.Duplicate {
				t.Errorf("fresh message %q answered as a duplicate", msgs[i].Id)
			}
			acks = append(acks, ack{msg: msgs[i], partition: r.Partition, offset: r.Offset})
		}
	}
	const unary = 6
	for w := range unary {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(seed, uint64(w)))
			for i := 0; ctx.Err() == nil; i++ {
				msgs := make([]*ferryv1.PublishMessage, 1+rng.IntN(5))
				for j := range msgs {
					msgs[j] = crashMessage(rng, fmt.Sprintf("c%d-w%d-%d-%d", cycle, w, i, j), w%2 == 0)
				}
				resp, err := client.Publish(ctx, &ferryv1.PublishRequest{Topic: "crash", Messages: msgs})
				if err != nil {
					return // the broker is gone
				}
				record(msgs, resp.Results)
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		rng := rand.New(rand.NewPCG(seed, 99))
		stream, err := client.PublishStream(ctx)
		if err != nil {
			return
		}
		sent := make(chan []*ferryv1.PublishMessage, 64)
		go func() {
			defer close(sent)
			for seq := uint64(0); ctx.Err() == nil; seq++ {
				msgs := make([]*ferryv1.PublishMessage, 10)
				for j := range msgs {
					msgs[j] = crashMessage(rng, fmt.Sprintf("c%d-s-%d-%d", cycle, seq, j), true)
				}
				select {
				case sent <- msgs:
				case <-ctx.Done():
					return
				}
				if stream.Send(&ferryv1.PublishStreamRequest{Sequence: seq, Topic: "crash", Messages: msgs}) != nil {
					return
				}
			}
		}()
		for msgs := range sent {
			resp, err := stream.Recv()
			if err != nil {
				cancel()
				for range sent {
				}
				return
			}
			if resp.Error != nil {
				t.Errorf("stream request %d: %v", resp.Sequence, resp.Error)
				return
			}
			record(msgs, resp.Results)
		}
	}()
	time.Sleep(stopAfter)
	stop()
	cancel()
	wg.Wait()
	return acks
}

// crashMessage makes a message with a payload unique to name, with or
// without an id.
func crashMessage(rng *rand.Rand, name string, withID bool) *ferryv1.PublishMessage {
	payload := make([]byte, 16+rng.IntN(2000))
	for i := range payload {
		payload[i] = byte(rng.Uint32())
	}
	payload = append([]byte(name+"|"), payload...)
	m := &ferryv1.PublishMessage{Payload: payload, Headers: map[string]string{"name": name}}
	if withID {
		m.Id = name
	}
	if rng.IntN(3) == 0 {
		m.Key = []byte(fmt.Sprintf("key-%d", rng.IntN(10)))
	}
	return m
}

// verify checks that every ack is stored as acknowledged, that offsets are
// dense from 0, and that republishing acked ids gives back the originals.
func verify(t *testing.T, conn *grpc.ClientConn, acks []ack) {
	t.Helper()
	ctx := context.Background()
	admin := ferryv1.NewAdminServiceClient(conn)
	topic, err := admin.GetTopic(ctx, &ferryv1.GetTopicRequest{Name: "crash"})
	if err != nil {
		t.Fatal(err)
	}
	stored := map[uint32]map[uint64]*ferryv1.Message{}
	for _, ps := range topic.Partitions {
		part := ps.Partition
		stored[part] = map[uint64]*ferryv1.Message{}
		next := uint64(0)
		for next < ps.HeadOffset {
			resp, err := admin.ReadMessages(ctx, &ferryv1.ReadMessagesRequest{Topic: "crash", Partition: part, FromOffset: next, MaxMessages: 1000})
			if err != nil {
				t.Fatalf("read partition %d from %d: %v", part, next, err)
			}
			if len(resp.Messages) == 0 {
				t.Fatalf("partition %d: no message at %d below head %d", part, next, ps.HeadOffset)
			}
			for _, m := range resp.Messages {
				if m.Offset != next {
					t.Fatalf("partition %d: offset %d follows %d: not dense", part, m.Offset, next-1)
				}
				stored[part][m.Offset] = m
				next++
			}
		}
	}
	var republish []ack
	for _, a := range acks {
		m := stored[a.partition][a.offset]
		if m == nil {
			t.Fatalf("acknowledged message %q at partition %d offset %d is lost", a.msg.Headers["name"], a.partition, a.offset)
		}
		if m.Id != a.msg.Id || !bytes.Equal(m.Payload, a.msg.Payload) || !bytes.Equal(m.Key, a.msg.Key) || m.Headers["name"] != a.msg.Headers["name"] {
			t.Fatalf("partition %d offset %d holds %q, acknowledged %q", a.partition, a.offset, m.Headers["name"], a.msg.Headers["name"])
		}
		if a.msg.Id != "" && len(republish) < 500 {
			republish = append(republish, a)
		}
	}
	client := ferryv1.NewPublisherServiceClient(conn)
	for len(republish) > 0 {
		n := min(len(republish), 100)
		batch := republish[:n]
		republish = republish[n:]
		req := &ferryv1.PublishRequest{Topic: "crash"}
		for _, a := range batch {
			req.Messages = append(req.Messages, a.msg)
		}
		resp, err := client.Publish(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		for i, r := range resp.Results {
			a := batch[i]
			if !r.Duplicate || r.Partition != a.partition || r.Offset != a.offset {
				t.Fatalf("republished %q: got partition %d offset %d duplicate %t, want duplicate of %d/%d",
					a.msg.Id, r.Partition, r.Offset, r.Duplicate, a.partition, a.offset)
			}
		}
	}
}

func envInt(tb testing.TB, name string, def int) int {
	tb.Helper()
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		tb.Fatalf("%s=%q: %v", name, v, err)
	}
	return n
}

// TestShutdownReadinessFirst: on SIGTERM the broker first reports not
// ready while it still serves (for --shutdown-delay), then stops taking
// requests and exits 0 within its grace period, keeping every ack.
func TestShutdownReadinessFirst(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a real broker")
	}
	dir := t.TempDir()
	p := startFerry(t, dir, "--http-addr", "127.0.0.1:0", "--shutdown-delay", "1s", "--shutdown-timeout", "5s")
	conn := p.dial(t)
	if _, err := ferryv1.NewAdminServiceClient(conn).CreateTopic(context.Background(), &ferryv1.CreateTopicRequest{
		Name: "crash", Config: &ferryv1.TopicConfig{Partitions: 3, DedupWindow: durationpb.New(24 * time.Hour)}}); err != nil {
		t.Fatal(err)
	}
	readyz := func() int {
		resp, err := http.Get("http://" + p.httpAddr + "/readyz")
		if err != nil {
			return 0
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := readyz(); code != http.StatusOK {
		t.Fatalf("/readyz = %d before shutdown, want 200", code)
	}
	var took time.Duration
	var stopErr error
	acks := publishUntil(t, conn, 0, 12, 300*time.Millisecond, func() {
		start := time.Now()
		if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		for readyz() != http.StatusServiceUnavailable {
			if time.Since(start) > 5*time.Second {
				t.Fatal("/readyz did not turn 503 within 5s of SIGTERM")
			}
			time.Sleep(5 * time.Millisecond)
		}
		// Not ready, and still serving: the listener is open.
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := ferryv1.NewAdminServiceClient(conn).ListTopics(ctx, &ferryv1.ListTopicsRequest{})
		cancel()
		if err != nil {
			t.Errorf("right after /readyz turned 503 the broker refused a call: %v", err)
		}
		select {
		case <-p.exited:
			took = time.Since(start)
			stopErr = p.exitErr()
		case <-time.After(10 * time.Second):
			p.kill(t)
			t.Fatal("no exit within 10s of SIGTERM")
		}
	})
	if stopErr != nil {
		t.Fatalf("SIGTERM: exit %v after %v", stopErr, took)
	}
	if took > 1*time.Second+5*time.Second+2*time.Second {
		t.Errorf("exited %v after SIGTERM: over delay + grace", took)
	}
	verify(t, startFerry(t, dir).dial(t), acks)
}
