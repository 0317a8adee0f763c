package main

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"

	vfy "github.com/ferrymq/ferry/verify"
)

// A logHistory records what a test did to partition logs — every publish
// and every read of a whole partition — for a linearizability check with
// porcupine against logModel: one append-only log per partition.
//
// A publish is one message with an id no other operation publishes; its
// retries with the same id belong to it, so it runs from its first
// attempt to its last answer. It returns the acknowledged offset, or
// nothing known (failed or given up): such a publish may or may not have
// been stored, so it stays pending to the end of time and porcupine may
// place it anywhere after its call, or after everything else.
//
// A read returns the partition's whole log, from offset 0. Only reads that
// a linearizable system must get right belong here: a node's own log is
// that only when the node has applied everything committed before the
// read began, which cluster tests get by publishing a marker through the
// node and reading after its acknowledgement (see markerRead).
type logHistory struct {
	start time.Time

	mu  sync.Mutex // guards ops and ids
	ops []porcupine.Operation
	ids map[string]bool
}

// logKey names one partition; the log model and its checker live in
// verify, which `ferry verify` shares.
type logKey = vfy.LogKey

func newLogHistory() *logHistory {
	return &logHistory{start: time.Now(), ids: make(map[string]bool)}
}

// now is the history's clock, in nanoseconds since it began (monotonic).
func (h *logHistory) now() int64 { return int64(time.Since(h.start)) }

// publish records a publish of id called at call: acknowledged at offset
// when acked, else of unknown outcome. It returns now.
func (h *logHistory) publish(key logKey, id string, call int64, acked bool, offset uint64) int64 {
	op := vfy.PublishOp(key, id, call, h.now(), acked, offset)
	h.add(op)
	return op.Return
}

// read records a read of key's log called at call that returned ids.
func (h *logHistory) read(key logKey, call int64, ids []string) {
	h.add(vfy.ReadOp(key, call, h.now(), ids))
}

func (h *logHistory) add(op porcupine.Operation) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if in := op.Input.(vfy.LogInput); !in.Read {
		if h.ids[in.ID] {
			panic(fmt.Sprintf("history: id %q published by two operations", in.ID))
		}
		h.ids[in.ID] = true
	}
	op.ClientId = len(h.ops) % 64 // for the visualization only
	h.ops = append(h.ops, op)
}

// check checks the history and fails tb if it is not linearizable, or if
// porcupine cannot tell within a minute. On a failure it writes
// porcupine's visualization next to the kept node logs, if any.
func (h *logHistory) check(tb testing.TB, keepDir string) {
	tb.Helper()
	h.mu.Lock()
	ops := slices.Clone(h.ops)
	h.mu.Unlock()
	start := time.Now()
	res, pruned, info := vfy.CheckLog(ops, time.Minute)
	var reads, pending int
	for _, op := range ops {
		if op.Input.(vfy.LogInput).Read {
			reads++
		} else if op.Return == vfy.PendingReturn {
			pending++
		}
	}
	tb.Logf("history: %d operations (%d reads, %d publishes of unknown outcome, %d of them never seen and dropped): %s in %v",
		len(ops), reads, pending, pruned, res, time.Since(start).Round(time.Millisecond))
	if res == porcupine.Ok {
		return
	}
	if keepDir == "" {
		keepDir = os.TempDir()
	}
	path := filepath.Join(keepDir, "history-"+strings.ReplaceAll(tb.Name(), "/", "_")+".html")
	if err := porcupine.VisualizePath(vfy.LogModel(), info, path); err != nil {
		tb.Logf("history visualization: %v", err)
	} else {
		tb.Logf("history visualization: %s", path)
	}
	if res == porcupine.Unknown {
		tb.Fatalf("history: porcupine could not decide within its time limit")
	}
	tb.Fatalf("history is not linearizable: %s", strings.Join(vfy.ExplainLog(ops), "; "))
}

// TestLogHistoryManyUnknown: publishes of unknown outcome that no read shows
// cost nothing once a read shows every acknowledged one; without pruning,
// forty of them outstanding at once would take porcupine forever.
func TestLogHistoryManyUnknown(t *testing.T) {
	h := newLogHistory()
	k := logKey{Topic: "t"}
	var log []string
	for i := range 200 {
		call := h.now()
		if i%5 == 0 {
			h.publish(k, fmt.Sprintf("lost-%d", i), call, false, 0)
			continue
		}
		id := fmt.Sprintf("m-%d", i)
		h.publish(k, id, call, true, uint64(len(log)))
		log = append(log, id)
	}
	h.read(k, h.now(), log)
	h.check(t, t.TempDir())
}
