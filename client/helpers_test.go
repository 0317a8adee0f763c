package client_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/ferrymq/ferry/broker"
	"github.com/ferrymq/ferry/client"
	"github.com/ferrymq/ferry/internal/ferrytest"
	ferryv1 "github.com/ferrymq/ferry/proto/ferry/v1"
	"github.com/ferrymq/ferry/storage"
)

// The helpers in this file run brokers the SDK tests can stop and restart
// on the same address, so one Client's connection reconnects by itself:
// in-process (openBroker, a graceful Shutdown) and as a real `ferry serve`
// (startFerry, SIGKILL).

const waitLimit = 30 * time.Second // limit on any condition wait

func TestMain(m *testing.M) { os.Exit(ferrytest.Main(m)) }

// ferryBinary builds cmd/ferry once per test binary.
func ferryBinary(tb testing.TB) string {
	tb.Helper()
	if testing.Short() {
		tb.Skip("builds and kills a real broker")
	}
	return ferrytest.Ferry(tb)
}

// freeAddr returns a loopback address with a port that was free a moment
// ago, to restart brokers on. The port is below Linux's default ephemeral
// range (32768 up), as cmd/ferry's cluster tests pick theirs: a broker
// restarted on it must not find it taken by some outgoing connection or a
// listener on port 0 meanwhile; and in 10000-19999, apart from cmd/ferry's
// 20000-31999, whose tests may run at the same time.
func freeAddr(tb testing.TB) string {
	tb.Helper()
	for range 1000 {
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", 10000+rand.IntN(10000)))
		if err != nil {
			continue
		}
		defer l.Close()
		return l.Addr().String()
	}
	tb.Fatal("no free port found below the ephemeral range")
	return ""
}

// ferryProc is a running `ferry serve`.
type ferryProc struct {
	*ferrytest.Process
	cmd  *exec.Cmd
	addr string
}

// startFerry runs `ferry serve` on dir listening on addr and waits until it
// logs that it is serving. It is SIGKILLed at the end of the test.
func startFerry(tb testing.TB, dir, addr string) *ferryProc {
	tb.Helper()
	bin := ferryBinary(tb)
	deadline := time.Now().Add(waitLimit)
	for {
		fp, err := ferrytest.Start(tb, ferrytest.Serve{Bin: bin, Dir: dir, GRPCAddr: addr, Timeout: waitLimit})
		if err == nil {
			p := &ferryProc{Process: fp, cmd: fp.Cmd, addr: fp.GRPCAddr}
			tb.Cleanup(func() {
				p.Kill()
				if tb.Failed() {
					tb.Logf("ferry serve on %s logged:\n%s", addr, p.Log())
				}
			})
			return p
		}
		// The port may still be held for a moment by the process just
		// killed; anything else persisting is a failure.
		if time.Now().After(deadline) {
			tb.Fatalf("ferry serve on %s: %v", addr, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// kill sends SIGKILL and waits until the process is gone.
func (p *ferryProc) kill() { p.Kill() }

// openBroker serves an in-process broker on addr with its data in dir. It
// is shut down at the end of the test (again, if already shut down).
func openBroker(tb testing.TB, dir, addr string) *testBroker {
	tb.Helper()
	opts := broker.DefaultOptions(dir)
	opts.GRPCAddr = addr
	opts.HTTPAddr = ""
	opts.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	opts.Storage.MemTableBytes = storage.MinMemTableBytes
	deadline := time.Now().Add(waitLimit)
	for {
		srv, err := broker.Open(opts)
		if err == nil {
			go func() { _ = srv.Serve() }()
			b := &testBroker{srv: srv, addr: srv.GRPCAddr().String()}
			tb.Cleanup(func() { b.stop(tb) })
			return b
		}
		if time.Now().After(deadline) {
			tb.Fatalf("open broker on %s: %v", addr, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// rawConn is a plain gRPC connection, for what the SDK does not offer
// (reading a topic's log, acting as a second consumer).
func rawConn(tb testing.TB, addr string) *grpc.ClientConn {
	tb.Helper()
	return ferrytest.Dial(tb, addr)
}

// readAll reads every stored message of a topic, partition by partition,
// in offset order.
func readAll(tb testing.TB, conn *grpc.ClientConn, topic string, partitions uint32) []*ferryv1.Message {
	tb.Helper()
	admin := ferryv1.NewAdminServiceClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	var all []*ferryv1.Message
	for part := range partitions {
		from := uint64(0)
		for {
			resp, err := admin.ReadMessages(ctx, &ferryv1.ReadMessagesRequest{Topic: topic, Partition: part, FromOffset: from, MaxMessages: 1000})
			if err != nil {
				tb.Fatalf("read %s/%d from %d: %v", topic, part, from, err)
			}
			all = append(all, resp.GetMessages()...)
			from = resp.GetNextOffset()
			if len(resp.GetMessages()) == 0 || from >= resp.GetHeadOffset() {
				break
			}
		}
	}
	return all
}

// waitFor polls cond until it holds, failing the test after limit.
func waitFor(tb testing.TB, limit time.Duration, what string, cond func() bool) {
	tb.Helper()
	ferrytest.Eventually(tb, limit, 10*time.Millisecond, what, cond)
}

// subStats returns a subscription's stats, or ok=false while the broker
// cannot answer.
func subStats(c *client.Client, topic, sub string) (client.SubscriptionStats, bool) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	s, err := c.GetSubscription(ctx, topic, sub)
	if err != nil {
		return client.SubscriptionStats{}, false
	}
	return s.Stats, true
}

// quietDial dials addr with a discarding logger and a short call timeout.
func quietDial(tb testing.TB, addr string, opts ...client.Option) *client.Client {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	opts = append([]client.Option{client.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))),
		client.WithCallTimeout(5 * time.Second)}, opts...)
	c, err := client.Dial(ctx, addr, opts...)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { c.Close() })
	return c
}

// mustCreate creates a topic and, if sub is not empty, a subscription on
// it.
func mustCreate(tb testing.TB, c *client.Client, topic string, tc client.TopicConfig, sub string, sc client.SubscriptionConfig) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	if _, err := c.CreateTopic(ctx, topic, tc); err != nil {
		tb.Fatalf("create topic %s: %v", topic, err)
	}
	if sub != "" {
		if _, err := c.CreateSubscription(ctx, topic, sub, sc); err != nil {
			tb.Fatalf("create subscription %s/%s: %v", topic, sub, err)
		}
	}
}

// proxy forwards TCP connections from its own address to target, and can
// cut every open connection at once: both ends see the stream break while
// the broker stays up, so requests it already took may have been stored
// with their answers lost.
type proxy struct {
	l      net.Listener
	target string
	mu     sync.Mutex
	conns  map[net.Conn]bool
}

func startProxy(tb testing.TB, target string) *proxy {
	tb.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	p := &proxy{l: l, target: target, conns: map[net.Conn]bool{}}
	go p.serve()
	tb.Cleanup(func() {
		l.Close()
		p.cut()
	})
	return p
}

func (p *proxy) addr() string { return p.l.Addr().String() }

func (p *proxy) serve() {
	for {
		in, err := p.l.Accept()
		if err != nil {
			return
		}
		out, err := net.Dial("tcp", p.target)
		if err != nil {
			in.Close()
			continue
		}
		p.mu.Lock()
		p.conns[in], p.conns[out] = true, true
		p.mu.Unlock()
		pipe := func(dst, src net.Conn) {
			_, _ = io.Copy(dst, src)
			dst.Close()
			src.Close()
			p.mu.Lock()
			delete(p.conns, dst)
			delete(p.conns, src)
			p.mu.Unlock()
		}
		go pipe(in, out)
		go pipe(out, in)
	}
}

// cut closes every open connection.
func (p *proxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		c.Close()
	}
}

// logRecorder is a slog.Handler that keeps every record, to see what the
// SDK did (reconnects, resends).
type logRecorder struct {
	mu      sync.Mutex
	records []slog.Record
}

func (r *logRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (r *logRecorder) WithAttrs([]slog.Attr) slog.Handler       { return r }
func (r *logRecorder) WithGroup(string) slog.Handler            { return r }
func (r *logRecorder) Handle(_ context.Context, rec slog.Record) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.records = append(r.records, rec.Clone())
	return nil
}

// times returns the times of the records with message msg.
func (r *logRecorder) times(msg string) []time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	var ts []time.Time
	for _, rec := range r.records {
		if rec.Message == msg {
			ts = append(ts, rec.Time)
		}
	}
	return ts
}

// sum adds up the int attribute key over the records with message msg.
func (r *logRecorder) sum(msg, key string) (records int, total int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, rec := range r.records {
		if rec.Message != msg {
			continue
		}
		records++
		rec.Attrs(func(a slog.Attr) bool {
			if a.Key == key {
				total += a.Value.Int64()
			}
			return true
		})
	}
	return records, total
}
