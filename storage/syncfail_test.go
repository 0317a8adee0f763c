package storage

import (
	"errors"
	"fmt"
	"syscall"
	"testing"
	"time"
)

// TestDiskGuardFailedSync: a failed sync makes the store read-only until
// a restart even when the error is text only, as Badger's DB.Sync returns
// it (y.CombineErrors), and even once space and syncs are fine again.
func TestDiskGuardFailedSync(t *testing.T) {
	g, _, clk := newTestGuard(t, 300*mib)
	flat := fmt.Errorf("%v; %v", fmt.Errorf("sync wal: %w", syscall.EIO), syscall.EIO)
	if errors.Is(flat, syscall.EIO) {
		t.Fatal("the flattened error still wraps EIO: the test tests nothing")
	}
	g.observe(flat)
	if got := refused(g); got != "---" {
		t.Fatalf("observe of a text-only error refused %q: observeSync is then not needed", got)
	}
	g.observeSync(nil)
	if got := refused(g); got != "---" {
		t.Fatalf("after a good sync refused %q", got)
	}
	g.observeSync(flat)
	clk.Advance(time.Minute)
	if got := refused(g); got != "gsf" {
		t.Fatalf("after a failed sync and a minute: refused %q, want every write until a restart", got)
	}
	if d := g.state(); !d.ReadOnly || d.Cause == "" {
		t.Fatalf("after a failed sync state %+v", d)
	}
}
