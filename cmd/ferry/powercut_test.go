package main

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/ferrymq/ferry/internal/powerloss"
	ferryv1 "github.com/ferrymq/ferry/proto/ferry/v1"
)

// The crash tests run twice: with SIGKILL alone, which keeps the kernel's
// page cache (every write the broker made reaches the disk, synced or
// not), and with a power cut first, on internal/powerloss's filesystem,
// which keeps only what was fsynced. Only the second can tell an fsync
// that was skipped or that failed from one that succeeded. They need
// FUSE and root: they skip without, and fail with FERRY_REQUIRE_FUSE=1.

// crasher is how a crash test ends a broker, and the data dir it uses.
type crasher struct {
	dir string
	fs  *powerloss.FS // nil: SIGKILL only
}

// newCrasher returns a crasher on a new data dir: with power, the dir is
// a powerloss mount and each crash is a power cut.
func newCrasher(t *testing.T, power bool) *crasher {
	if !power {
		return &crasher{dir: t.TempDir()}
	}
	fs := powerloss.Mount(t, t.TempDir())
	return &crasher{dir: fs.Dir(), fs: fs}
}

// crash ends p. With a power cut the broker is frozen first (SIGSTOP: a
// machine that loses power answers no one after), then the cut (from then
// on nothing reaches the disk), then SIGKILL (which would otherwise flush
// the broker's mmap'd pages), then a remount (a fresh page cache). Cut
// while it ran, the broker would answer the failed writes with errors,
// which no real power cut lets a client see.
func (c *crasher) crash(t *testing.T, p *process) {
	t.Helper()
	if c.fs != nil {
		p.freeze(t)
		c.fs.PowerCut()
	}
	p.kill(t)
	if c.fs != nil {
		c.fs.Remount()
	}
}

func (c *crasher) String() string {
	if c.fs != nil {
		return "power cut + SIGKILL"
	}
	return "SIGKILL"
}

// TestPowerCutKeepsAcknowledgedMessages is TestCrashKeepsAcknowledgedMessages
// with --fsync=always and a power cut before each SIGKILL: every
// acknowledged publish must have been fsynced.
func TestPowerCutKeepsAcknowledgedMessages(t *testing.T) {
	cycles, seed := crashKnobs(t, 4)
	publishCrashCycles(t, newCrasher(t, true), "always", cycles, seed)
}

// TestPowerCutAtMostOnce is TestDeliveryCrashAtMostOnce with power cuts:
// a cursor advance must be durable before its delivery leaves.
func TestPowerCutAtMostOnce(t *testing.T) {
	seen, published := runAckCrashCycles(t, ferryv1.DeliveryGuarantee_DELIVERY_GUARANTEE_AT_MOST_ONCE, true)
	checkAtMostOnce(t, seen, published)
}

// TestPowerCutAtLeastOnce is TestDeliveryCrashAtLeastOnce with power cuts:
// every acknowledged publish is delivered.
func TestPowerCutAtLeastOnce(t *testing.T) {
	seen, published := runAckCrashCycles(t, ferryv1.DeliveryGuarantee_DELIVERY_GUARANTEE_AT_LEAST_ONCE, true)
	checkAtLeastOnce(t, seen, published)
}

// TestPowerCutEffectivelyOnceCommit is TestDeliveryCrashEffectivelyOnceCommit
// with power cuts: a Commit answered OK must be durable, acks and outputs
// alike.
func TestPowerCutEffectivelyOnceCommit(t *testing.T) {
	runEffectivelyOnceCrashCycles(t, true)
}

// TestFailedSyncIsNeverAcked makes the disk fail fsyncs with EIO under a
// broker with --fsync=always: a publish whose sync failed is answered
// with an error, never OK; the store then refuses every write
// (read-only for a disk error) even once fsyncs work again, until a
// restart; after a power cut and a restart every publish answered OK is
// there, and publishing works again.
func TestFailedSyncIsNeverAcked(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a real broker")
	}
	c, p, conn := startOnPowerLoss(t, 2)
	ctx := context.Background()
	client := ferryv1.NewPublisherServiceClient(conn)
	rng := rand.New(rand.NewPCG(1, 2))
	var acks []ack
	publish := func(name string) error {
		msgs := []*ferryv1.PublishMessage{crashMessage(rng, name+"-a", true), crashMessage(rng, name+"-b", false)}
		resp, err := client.Publish(ctx, &ferryv1.PublishRequest{Topic: "crash", Messages: msgs})
		if err == nil {
			for i, r := range resp.Results {
				acks = append(acks, ack{msg: msgs[i], partition: r.Partition, offset: r.Offset})
			}
		}
		return err
	}
	for i := range 20 {
		if err := publish("before-" + string(rune('a'+i))); err != nil {
			t.Fatalf("publish before the disk fails: %v", err)
		}
	}

	c.fs.FailSyncs(1 << 30)
	err := publish("failing")
	if err == nil {
		t.Fatal("a publish whose fsync failed with EIO was answered OK")
	}
	t.Logf("publish while fsync fails: %v", err)
	c.fs.FailSyncs(0)
	err = publish("after")
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(status.Convert(err).Message(), "read-only") {
		t.Fatalf("publish after a failed fsync, fsyncs working again: %v; want RESOURCE_EXHAUSTED, read-only until a restart", err)
	}
	t.Logf("publish after: %v", err)

	c.crash(t, p)
	p = startFerry(t, c.dir, "--fsync", "always")
	conn = p.dial(t)
	client = ferryv1.NewPublisherServiceClient(conn)
	verify(t, conn, acks)
	if err := publish("restarted"); err != nil {
		t.Fatalf("publish after a restart on a working disk: %v", err)
	}
	verify(t, conn, acks)
}

// TestPowerCutBetweenLogSyncs cuts the power at one exact point: right
// after the first fsync of a publish's sync under --fsync=always (Badger's
// DB.Sync synced the memtable WAL, then the value log; Badger's synced
// writes now sync the value log first). The publish must not be answered
// OK, and after a restart the topic must read back whole: every acked
// message, offsets dense, nothing unreadable. It failed while a payload in
// the value log could be left behind by a pointer to it synced first (see
// docs/testing.md).
func TestPowerCutBetweenLogSyncs(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a real broker")
	}
	c, p, conn := startOnPowerLoss(t, 1)
	ctx := context.Background()
	client := ferryv1.NewPublisherServiceClient(conn)
	var acks []ack
	for i := range 3 {
		m := &ferryv1.PublishMessage{Id: fmt.Sprintf("m%d", i), Payload: bytes.Repeat([]byte{byte('a' + i)}, 2000),
			Headers: map[string]string{"name": fmt.Sprintf("m%d", i)}}
		if i == 2 {
			c.fs.CutAfterSyncs(1)
		}
		resp, err := client.Publish(ctx, &ferryv1.PublishRequest{Topic: "crash", Messages: []*ferryv1.PublishMessage{m}})
		if i == 2 {
			if err == nil {
				t.Fatal("a publish whose sync the power cut interrupted was answered OK")
			}
			t.Logf("the publish the cut interrupted: %v", err)
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		acks = append(acks, ack{msg: m, partition: resp.Results[0].Partition, offset: resp.Results[0].Offset})
	}
	c.crash(t, p)
	verify(t, startFerry(t, c.dir, "--fsync", "always").dial(t), acks)
}

// startOnPowerLoss starts ferry --fsync=always on a power-loss filesystem
// (a crasher that cuts) and creates topic "crash" with parts partitions and
// a dedup window longer than any test.
func startOnPowerLoss(t *testing.T, parts uint32) (*crasher, *process, *grpc.ClientConn) {
	t.Helper()
	c := newCrasher(t, true)
	p := startFerry(t, c.dir, "--fsync", "always")
	conn := p.dial(t)
	if _, err := ferryv1.NewAdminServiceClient(conn).CreateTopic(context.Background(), &ferryv1.CreateTopicRequest{
		Name: "crash", Config: &ferryv1.TopicConfig{Partitions: parts, DedupWindow: durationpb.New(24 * time.Hour)}}); err != nil {
		t.Fatal(err)
	}
	return c, p, conn
}
