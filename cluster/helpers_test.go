package cluster

import (
	"context"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/ferrymq/ferry/storage"

	"github.com/ferrymq/ferry/internal/ferrytest"
)

// Helpers of every test in the package.

// waitLong bounds every wait for a node or the cluster to do something:
// many election timeouts, and still well under the test's own timeout.
const waitLong = 20 * time.Second

// testLogger logs to the test at warn level; FERRY_CLUSTER_LOG=debug (or
// info) shows more.
func testLogger(tb testing.TB) *slog.Logger {
	level := slog.LevelWarn
	switch os.Getenv("FERRY_CLUSTER_LOG") {
	case "debug":
		level = slog.LevelDebug
	case "info":
		level = slog.LevelInfo
	}
	return ferrytest.Logger(tb, level)
}

// newStoreForTest opens a store in a temp dir, closed at cleanup.
func newStoreForTest(tb testing.TB) *storage.Store {
	tb.Helper()
	sopts := storage.DefaultOptions(tb.TempDir())
	sopts.Logger = testLogger(tb)
	sopts.MemTableBytes = storage.MinMemTableBytes
	st, err := storage.Open(sopts)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = st.Close(context.Background()) })
	return st
}

// eventually polls cond until it holds or d passes.
func eventually(tb testing.TB, d time.Duration, what string, cond func() bool) {
	tb.Helper()
	ferrytest.Eventually(tb, d, 2*time.Millisecond, what, cond)
}
