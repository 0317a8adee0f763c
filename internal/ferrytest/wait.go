package ferrytest

import (
	"bytes"
	"io"
	"log/slog"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// Eventually polls cond every interval until it holds, failing tb with
// what after limit.
func Eventually(tb testing.TB, limit, interval time.Duration, what string, cond func() bool) {
	tb.Helper()
	EventuallyState(tb, limit, interval, what, func() (bool, string) { return cond(), "" })
}

// EventuallyState is Eventually with a cond that also says what it saw,
// for the failure message.
func EventuallyState(tb testing.TB, limit, interval time.Duration, what string, cond func() (ok bool, state string)) {
	tb.Helper()
	deadline := time.Now().Add(limit)
	for {
		ok, state := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			if state != "" {
				tb.Fatalf("waited %v for %s; last: %s", limit, what, state)
			}
			tb.Fatalf("waited %v for %s", limit, what)
		}
		time.Sleep(interval)
	}
}

// Dial is a plain gRPC connection to addr without TLS, closed at the end
// of the test; it connects on first use and reconnects by itself.
func Dial(tb testing.TB, addr string) *grpc.ClientConn {
	tb.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { conn.Close() })
	return conn
}

// Writer writes each Write, less its trailing newlines, to tb's log.
type Writer struct{ TB testing.TB }

// Write logs p to the test.
func (w Writer) Write(p []byte) (int, error) {
	w.TB.Log(string(bytes.TrimRight(p, "\n")))
	return len(p), nil
}

var _ io.Writer = Writer{}

// Logger is a text logger writing records at level and above to tb's log.
func Logger(tb testing.TB, level slog.Level) *slog.Logger {
	return slog.New(slog.NewTextHandler(Writer{tb}, &slog.HandlerOptions{Level: level}))
}
