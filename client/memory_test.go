package client_test

import (
	"context"
	"io"
	"log/slog"
	"runtime"
	"testing"
	"time"

	"github.com/ferrymq/ferry/broker"
	"github.com/ferrymq/ferry/client"
	"github.com/ferrymq/ferry/storage"
)

// TestProducerWaitsOutMemoryRefusal runs a broker (in this process) with
// a 128 MiB memory limit and holds 110 MiB of live heap in the process, so
// the broker refuses publishes with RESOURCE_EXHAUSTED and a RetryInfo of
// 250ms. A PublishAsync must neither fail nor retry before the delay: each
// refusal comes at least the delay after the one before. Once the memory is
// freed the publish is stored, once.
func TestProducerWaitsOutMemoryRefusal(t *testing.T) {
	opts := broker.DefaultOptions(t.TempDir())
	opts.GRPCAddr, opts.HTTPAddr = "127.0.0.1:0", ""
	opts.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	opts.MemoryLimit = broker.MinMemoryLimit
	opts.Storage.MemTableBytes = storage.MinMemTableBytes
	srv, err := broker.Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve() }()
	t.Cleanup(func() { _ = srv.Shutdown(context.Background()) })
	addr := srv.GRPCAddr().String()

	logs := &logRecorder{}
	c := quietDial(t, addr, client.WithLogger(slog.New(logs)))
	mustCreate(t, c, "mem", client.TopicConfig{}, "", client.SubscriptionConfig{})

	ballast := make([]byte, 110<<20)
	for i := 0; i < len(ballast); i += 4096 {
		ballast[i] = 1
	}
	runtime.GC() // the live heap the broker sees now holds the ballast
	p := c.NewProducer("mem", client.ProducerOptions{})
	defer p.Close(context.Background())
	f := p.PublishAsync(&client.Message{ID: "m-1", Payload: []byte("hello")})

	const retryAfter = "ferry producer: the broker asked to retry later"
	waitFor(t, waitLimit, "three refusals", func() bool { n, _ := logs.sum(retryAfter, ""); return n >= 3 })
	select {
	case <-f.Done():
		_, err := f.Wait(context.Background())
		t.Fatalf("the publish was answered while the broker refused it: %v", err)
	default:
	}
	var last time.Time
	for _, at := range logs.times(retryAfter) {
		if !last.IsZero() && at.Sub(last) < 240*time.Millisecond {
			t.Errorf("refused again %v after the last refusal; the broker asked for 250ms", at.Sub(last))
		}
		last = at
	}
	runtime.KeepAlive(ballast)
	ballast = nil
	runtime.GC()
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	res, err := f.Wait(ctx)
	if err != nil {
		t.Fatalf("publish after the memory was freed: %v", err)
	}
	if res.Offset != 0 || res.Duplicate {
		t.Errorf("publish result %+v, want offset 0, not a duplicate", res)
	}
	if msgs := readAll(t, rawConn(t, addr), "mem", 1); len(msgs) != 1 {
		t.Errorf("the topic holds %d messages, want 1", len(msgs))
	}
}
