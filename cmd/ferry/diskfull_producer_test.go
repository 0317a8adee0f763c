package main

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/ferrymq/ferry/client"
	ferryv1 "github.com/ferrymq/ferry/proto/ferry/v1"
)

// retryLater is the SDK's log line when the broker ends a publish stream
// with a RetryInfo.
const retryLater = "ferry producer: the broker asked to retry later"

// TestProducerWaitsOutDiskFull publishes through the SDK's Producer to a
// ferry serve whose data dir is on a 512 MiB tmpfs with 32 MiB above its
// reserve, until the broker refuses for disk space. The refused publishes
// must not fail: the producer waits out the broker's 5 s RetryInfo (no
// resend sooner) and sends them again, with the same ids, in order. Once
// space is freed every publish succeeds, and the partition holds each
// message once, in publish order. It takes ~15 s: two refusals 5 s apart,
// then the wait after the space is freed.
func TestProducerWaitsOutDiskFull(t *testing.T) {
	mnt := mountTmpfs(t, diskFS)
	p := startDiskFerry(t, filepath.Join(mnt, "data"))
	ctx := context.Background()
	admin := ferryv1.NewAdminServiceClient(dialAddr(t, p.addr(t)))
	if _, err := admin.CreateTopic(ctx, &ferryv1.CreateTopicRequest{Name: "keep", Config: &ferryv1.TopicConfig{Partitions: 1}}); err != nil {
		t.Fatal(err)
	}
	filler := fillDisk(t, mnt)
	shrinkToFree(t, filler, mnt, 256<<20+32<<20) // the reserve and 32 MiB
	waitFor(t, 10*time.Second, "the broker to see the space left", func() bool {
		st := storageStatus(t, admin)
		return st.DiskFreeBytes < 300<<20 && !st.PublishingRefused
	})

	logs := &lineCounter{}
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	c, err := client.Dial(dctx, p.addr(t), client.WithLogger(slog.New(logs)))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	prod := c.NewProducer("keep", client.ProducerOptions{MaxInflightBytes: 4 << 20})
	defer prod.Close(context.Background())

	// Publish until the broker has refused twice: PublishAsync blocks once
	// MaxInflightBytes wait for answers.
	var (
		mu      sync.Mutex
		futures []*client.PublishFuture
	)
	stop, stopped := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(stopped)
		rng := rand.New(rand.NewPCG(3, 3))
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			m := diskMessage(rng, fmt.Sprintf("m-%06d", i))
			f := prod.PublishAsync(&client.Message{ID: m.Id, Payload: m.Payload})
			mu.Lock()
			futures = append(futures, f)
			mu.Unlock()
		}
	}()
	failed := func() error {
		mu.Lock()
		defer mu.Unlock()
		for _, f := range futures {
			select {
			case <-f.Done():
				if _, err := f.Wait(ctx); err != nil {
					return fmt.Errorf("publish %s failed on a full disk instead of waiting: %w", f.ID(), err)
				}
			default:
			}
		}
		return nil
	}
	waitFor(t, 60*time.Second, "two refusals", func() bool {
		if err := failed(); err != nil {
			t.Fatal(err)
		}
		return len(logs.at(retryLater)) >= 2
	})
	close(stop)
	if err := failed(); err != nil {
		t.Fatal(err)
	}
	refusals := logs.at(retryLater)
	mu.Lock()
	published := len(futures)
	mu.Unlock()
	t.Logf("refused twice after %d messages; %s", published, diskUse(t, mnt))
	if d := refusals[1].Sub(refusals[0]); d < 4900*time.Millisecond {
		t.Errorf("the producer was refused again %v after the first refusal; the broker asked for 5s", d)
	}
	if st := storageStatus(t, admin); !st.PublishingRefused {
		t.Fatalf("refusals, yet GetTopic says %+v", st)
	}
	mu.Lock()
	waiting := 0
	for _, f := range futures {
		select {
		case <-f.Done():
		default:
			waiting++
		}
	}
	mu.Unlock()
	if waiting == 0 {
		t.Fatal("no publish is waiting after two refusals")
	}

	// Free space: every waiting publish goes in, once, in order.
	shrinkToFree(t, filler, mnt, 256<<20+128<<20)
	freed := time.Now()
	<-stopped // its last PublishAsync had room once answers came
	wctx, wcancel := context.WithTimeout(ctx, 60*time.Second)
	defer wcancel()
	var last uint64
	for i, f := range futures {
		res, err := f.Wait(wctx)
		if err != nil {
			t.Fatalf("publish %s after space was freed: %v", f.ID(), err)
		}
		if i > 0 && res.Offset <= last {
			t.Fatalf("publish %s stored at offset %d, after %s at %d", f.ID(), res.Offset, futures[i-1].ID(), last)
		}
		last = res.Offset
	}
	t.Logf("%d publishes waited; all answered %v after space was freed", waiting, time.Since(freed).Round(time.Millisecond))
	stored := readPartition(t, admin, "keep", 0)
	if len(stored) != len(futures) {
		t.Fatalf("the partition holds %d messages, want %d (each publish once)", len(stored), len(futures))
	}
	for i, m := range stored {
		if want := futures[i].ID(); m.GetId() != want {
			t.Fatalf("offset %d holds %s, want %s", m.GetOffset(), m.GetId(), want)
		}
	}
	p.checkAlive(t)
	p.checkNoCrash(t)
}

// readPartition reads a partition from its first offset to its end.
func readPartition(t *testing.T, admin ferryv1.AdminServiceClient, topic string, part uint32) []*ferryv1.Message {
	t.Helper()
	var msgs []*ferryv1.Message
	for {
		var from uint64
		if n := len(msgs); n > 0 {
			from = msgs[n-1].GetOffset() + 1
		}
		resp, err := admin.ReadMessages(context.Background(), &ferryv1.ReadMessagesRequest{Topic: topic, Partition: part, FromOffset: from, MaxMessages: 100})
		if err != nil {
			t.Fatalf("read %s/%d from %d: %v", topic, part, from, err)
		}
		if len(resp.GetMessages()) == 0 {
			return msgs
		}
		msgs = append(msgs, resp.GetMessages()...)
	}
}

// lineCounter is a slog.Handler that keeps the time of each record by
// message.
type lineCounter struct {
	mu    sync.Mutex
	times map[string][]time.Time
}

func (l *lineCounter) Enabled(context.Context, slog.Level) bool { return true }
func (l *lineCounter) WithAttrs([]slog.Attr) slog.Handler       { return l }
func (l *lineCounter) WithGroup(string) slog.Handler            { return l }

// at returns the times of the records with message msg.
func (l *lineCounter) at(msg string) []time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]time.Time(nil), l.times[msg]...)
}

func (l *lineCounter) Handle(_ context.Context, rec slog.Record) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.times == nil {
		l.times = map[string][]time.Time{}
	}
	l.times[rec.Message] = append(l.times[rec.Message], rec.Time)
	return nil
}
