// Package quickstart_test runs the quickstart programs against a broker on
// loopback, so their docs cannot go stale.
package quickstart_test

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"testing"
	"time"

	"github.com/ferrymq/ferry/broker"
	"github.com/ferrymq/ferry/internal/ferrytest"
	"github.com/ferrymq/ferry/storage"
)

// TestQuickstart builds the producer and the consumer, publishes with the
// first and checks that the second prints every message published, once.
// A second consumer run then finds nothing left: each message was acked.
func TestQuickstart(t *testing.T) {
	producer, consumer := ferrytest.Build(t, "./producer", ""), ferrytest.Build(t, "./consumer", "")
	addr := startBroker(t)

	const count = 25
	published := lines(t, run(t, producer, "--server", addr, "--count", "25"), "published")
	if len(published) != count {
		t.Fatalf("the producer printed %d messages, want %d", len(published), count)
	}
	received := lines(t, run(t, consumer, "--server", addr, "--count", "25", "--timeout", "10s"), "received")
	slices.Sort(published)
	slices.Sort(received)
	if !slices.Equal(published, received) {
		t.Fatalf("published:\n%q\nreceived:\n%q", published, received)
	}

	// Everything was acked: a consumer now waits in vain, and says so.
	cmd := exec.Command(consumer, "--count", "1", "--timeout", "500ms")
	cmd.Env = append(cmd.Environ(), "FERRY_SERVER="+addr) // the flag's default
	out, err := cmd.CombinedOutput()
	if err == nil || !bytes.Contains(out, []byte("received 0 of 1")) {
		t.Fatalf("a consumer of an empty subscription: err %v, output:\n%s", err, out)
	}
}

// TestMain removes the programs the test built.
func TestMain(m *testing.M) { os.Exit(ferrytest.Main(m)) }

// line is what both programs print about a message: its id, partition,
// offset and payload.
var line = regexp.MustCompile(`^(published|received) (id=\S+ partition=\d+ offset=\d+) .*(payload=".*")$`)

// lines returns, of the output's lines starting with verb, each message's
// id, partition, offset and payload.
func lines(t *testing.T, out []byte, verb string) []string {
	t.Helper()
	var msgs []string
	for _, l := range bytes.Split(bytes.TrimSpace(out), []byte("\n")) {
		m := line.FindSubmatch(l)
		if m == nil || string(m[1]) != verb {
			t.Fatalf("unexpected line %q in:\n%s", l, out)
		}
		msgs = append(msgs, string(m[2])+" "+string(m[3]))
	}
	return msgs
}

// run runs a program and returns its output; it fails the test if the
// program fails or takes more than 15s.
func run(t *testing.T, name string, args ...string) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %q: %v\nstdout:\n%s\nstderr:\n%s", filepath.Base(name), args, err, out, stderr.Bytes())
	}
	return out
}

// startBroker serves a broker on a free loopback port with its data in a
// temp dir, until the test ends, and returns its address.
func startBroker(t *testing.T) string {
	t.Helper()
	opts := broker.DefaultOptions(t.TempDir())
	opts.GRPCAddr = "127.0.0.1:0"
	opts.HTTPAddr = ""
	opts.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	opts.Storage.MemTableBytes = storage.MinMemTableBytes
	srv, err := broker.Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve() }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	})
	return srv.GRPCAddr().String()
}
