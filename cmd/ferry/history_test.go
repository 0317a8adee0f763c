package main

import (
	"cmp"
	"fmt"
	"hash/fnv"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
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

// logKey names one partition's log.
type logKey struct {
	topic     string
	partition uint32
}

func (k logKey) String() string { return fmt.Sprintf("%s/%d", k.topic, k.partition) }

// logInput is an operation on one partition: a publish of id, or a read.
type logInput struct {
	key  logKey
	read bool
	id   string
}

// logOutput is what an operation returned: for a publish, whether it was
// acknowledged and at which offset; for a read, the ids at offsets 0, 1,
// … and their logHash.
type logOutput struct {
	acked  bool
	offset uint64
	ids    []string
	hash   uint64
}

// pendingReturn is the return time of an operation whose outcome is
// unknown: the end of time.
const pendingReturn = math.MaxInt64

func newLogHistory() *logHistory {
	return &logHistory{start: time.Now(), ids: make(map[string]bool)}
}

// now is the history's clock, in nanoseconds since it began (monotonic).
func (h *logHistory) now() int64 { return int64(time.Since(h.start)) }

// publish records a publish of id called at call: acknowledged at offset
// when acked, else of unknown outcome. It returns now.
func (h *logHistory) publish(key logKey, id string, call int64, acked bool, offset uint64) int64 {
	ret := h.now()
	out := logOutput{acked: acked, offset: offset}
	if !acked {
		ret = pendingReturn
	}
	h.add(porcupine.Operation{Input: logInput{key: key, id: id}, Call: call, Output: out, Return: ret})
	return ret
}

// read records a read of key's log called at call that returned ids.
func (h *logHistory) read(key logKey, call int64, ids []string) {
	h.add(porcupine.Operation{Input: logInput{key: key, read: true}, Call: call,
		Output: logOutput{ids: ids, hash: logHash(ids)}, Return: h.now()})
}

func (h *logHistory) add(op porcupine.Operation) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if in := op.Input.(logInput); !in.read {
		if h.ids[in.id] {
			panic(fmt.Sprintf("history: id %q published by two operations", in.id))
		}
		h.ids[in.id] = true
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
	res, pruned, info := checkLogHistory(ops, time.Minute)
	var reads, pending int
	for _, op := range ops {
		if op.Input.(logInput).read {
			reads++
		} else if op.Return == pendingReturn {
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
	if err := porcupine.VisualizePath(logModel(), info, path); err != nil {
		tb.Logf("history visualization: %v", err)
	} else {
		tb.Logf("history visualization: %s", path)
	}
	if res == porcupine.Unknown {
		tb.Fatalf("history: porcupine could not decide within its time limit")
	}
	tb.Fatalf("history is not linearizable: %s", explainLogHistory(ops))
}

// checkLogHistory checks ops against logModel, after dropping the pending
// publishes that cannot matter (pruneUnseen), and says how many it dropped.
func checkLogHistory(ops []porcupine.Operation, timeout time.Duration) (porcupine.CheckResult, int, porcupine.LinearizationInfo) {
	kept := pruneUnseen(ops)
	res, info := porcupine.CheckOperationsVerbose(logModel(), kept, timeout)
	return res, len(ops) - len(kept), info
}

// pruneUnseen drops the pending publishes no read shows, on the partitions
// where one read shows every acknowledged publish. That changes nothing:
// such a read F follows every acknowledged publish in any linearization
// (each id is stored by one operation, and F shows them all), and a
// pending publish P that F does not show comes after F. After P there can
// only be pending publishes, whose outputs say nothing, and no read (none
// shows P), so P can be moved to the end and then removed. Without this,
// porcupine tries every order of the pending publishes at every step:
// exponential in how many are outstanding.
func pruneUnseen(ops []porcupine.Operation) []porcupine.Operation {
	type partInfo struct {
		seen  map[string]bool
		acked []string
		reads [][]string
	}
	parts := map[logKey]*partInfo{}
	get := func(k logKey) *partInfo {
		if parts[k] == nil {
			parts[k] = &partInfo{seen: map[string]bool{}}
		}
		return parts[k]
	}
	for _, op := range ops {
		in, out := op.Input.(logInput), op.Output.(logOutput)
		p := get(in.key)
		switch {
		case in.read:
			p.reads = append(p.reads, out.ids)
			for _, id := range out.ids {
				p.seen[id] = true
			}
		case out.acked:
			p.acked = append(p.acked, in.id)
		}
	}
	prunable := map[logKey]bool{}
	for k, p := range parts {
		for _, r := range p.reads {
			all := make(map[string]bool, len(r))
			for _, id := range r {
				all[id] = true
			}
			if !slices.ContainsFunc(p.acked, func(id string) bool { return !all[id] }) {
				prunable[k] = true
				break
			}
		}
	}
	var kept []porcupine.Operation
	for _, op := range ops {
		in := op.Input.(logInput)
		if !in.read && op.Return == pendingReturn && prunable[in.key] && !parts[in.key].seen[in.id] {
			continue
		}
		kept = append(kept, op)
	}
	return kept
}

// logState is a partition's log in the model: an immutable list, newest
// first, so a step shares its predecessor. nil is the empty log.
type logState struct {
	prev *logState
	id   string
	n    int    // length of the log
	hash uint64 // logHash of the log
}

func (s *logState) len() int {
	if s == nil {
		return 0
	}
	return s.n
}

func (s *logState) sum() uint64 {
	if s == nil {
		return logHashSeed
	}
	return s.hash
}

func (s *logState) push(id string) *logState {
	return &logState{prev: s, id: id, n: s.len() + 1, hash: logHashStep(s.sum(), id)}
}

// ids returns the log, oldest first.
func (s *logState) ids() []string {
	ids := make([]string, s.len())
	for ; s != nil; s = s.prev {
		ids[s.n-1] = s.id
	}
	return ids
}

// equalIDs reports whether the log is ids.
func (s *logState) equalIDs(ids []string) bool {
	if s.len() != len(ids) {
		return false
	}
	for ; s != nil; s = s.prev {
		if ids[s.n-1] != s.id {
			return false
		}
	}
	return true
}

func (s *logState) equal(o *logState) bool {
	for ; s != o; s, o = s.prev, o.prev {
		if s.len() != o.len() || s.sum() != o.sum() || s.id != o.id {
			return false
		}
	}
	return true
}

const logHashSeed = 14695981039346656037

// logHashStep extends a log's hash with one more id: a polynomial hash
// over the ids' FNV-1a hashes, so order matters.
func logHashStep(h uint64, id string) uint64 {
	f := fnv.New64a()
	f.Write([]byte(id))
	return h*1099511628211 + f.Sum64()
}

func logHash(ids []string) uint64 {
	h := uint64(logHashSeed)
	for _, id := range ids {
		h = logHashStep(h, id)
	}
	return h
}

// logModel is one append-only log per partition. A publish appends its id
// and, if acknowledged, must have got the offset it was appended at; a
// read returns the whole log. The model does not deduplicate: each id is
// published by one operation, and a log holding an id twice is wrong.
func logModel() porcupine.Model {
	return porcupine.Model{
		Partition: func(ops []porcupine.Operation) [][]porcupine.Operation {
			byKey := map[logKey][]porcupine.Operation{}
			for _, op := range ops {
				k := op.Input.(logInput).key
				byKey[k] = append(byKey[k], op)
			}
			keys := slices.SortedFunc(func(yield func(logKey) bool) {
				for k := range byKey {
					if !yield(k) {
						return
					}
				}
			}, func(a, b logKey) int {
				return cmp.Or(cmp.Compare(a.topic, b.topic), cmp.Compare(a.partition, b.partition))
			})
			var parts [][]porcupine.Operation
			for _, k := range keys {
				parts = append(parts, byKey[k])
			}
			return parts
		},
		Init: func() any { return (*logState)(nil) },
		Step: func(state, input, output any) (bool, any) {
			s, in, out := state.(*logState), input.(logInput), output.(logOutput)
			if in.read {
				return out.hash == s.sum() && s.equalIDs(out.ids), s
			}
			if out.acked && out.offset != uint64(s.len()) {
				return false, s
			}
			return true, s.push(in.id)
		},
		Equal: func(a, b any) bool { return a.(*logState).equal(b.(*logState)) },
		Hash:  func(s any) uint64 { return s.(*logState).sum() },
		DescribeOperation: func(input, output any) string {
			in, out := input.(logInput), output.(logOutput)
			switch {
			case in.read:
				return fmt.Sprintf("read %s → %d messages %s", in.key, len(out.ids), shortIDs(out.ids))
			case out.acked:
				return fmt.Sprintf("publish %s %s → offset %d", in.key, in.id, out.offset)
			}
			return fmt.Sprintf("publish %s %s → unknown", in.key, in.id)
		},
		DescribeState: func(state any) string {
			s := state.(*logState)
			return fmt.Sprintf("%d messages %s", s.len(), shortIDs(s.ids()))
		},
	}
}

// shortIDs shows the last few of ids.
func shortIDs(ids []string) string {
	if len(ids) > 4 {
		return fmt.Sprintf("[… %s]", strings.Join(ids[len(ids)-4:], " "))
	}
	return fmt.Sprintf("%v", ids)
}

// explainLogHistory looks for the plainest reasons a history is not
// linearizable, to say more than porcupine's verdict: two acknowledged
// publishes at one offset, a read holding an id twice or missing one
// acknowledged before it began, an acknowledged offset that a later read
// shows holding another id, two reads that are not prefixes of each other.
func explainLogHistory(ops []porcupine.Operation) string {
	var why []string
	type where struct {
		key    logKey
		offset uint64
	}
	ackedAt := map[where]string{}
	for _, op := range ops {
		in, out := op.Input.(logInput), op.Output.(logOutput)
		if in.read || !out.acked {
			continue
		}
		w := where{in.key, out.offset}
		if other, ok := ackedAt[w]; ok {
			why = append(why, fmt.Sprintf("%s and %s both acknowledged at %s offset %d", other, in.id, in.key, out.offset))
		}
		ackedAt[w] = in.id
	}
	longest := map[logKey][]string{}
	for _, r := range ops {
		in, out := r.Input.(logInput), r.Output.(logOutput)
		if !in.read {
			continue
		}
		at := map[string]int{}
		for i, id := range out.ids {
			if j, dup := at[id]; dup {
				why = append(why, fmt.Sprintf("a read of %s holds %s at offsets %d and %d", in.key, id, j, i))
			}
			at[id] = i
		}
		for _, p := range ops {
			pin, pout := p.Input.(logInput), p.Output.(logOutput)
			if pin.read || pin.key != in.key || !pout.acked {
				continue
			}
			i, ok := at[pin.id]
			switch {
			case !ok && p.Return < r.Call:
				why = append(why, fmt.Sprintf("a read of %s misses %s, acknowledged at offset %d before the read began", in.key, pin.id, pout.offset))
			case ok && uint64(i) != pout.offset:
				why = append(why, fmt.Sprintf("a read of %s shows %s at offset %d, acknowledged at %d", in.key, pin.id, i, pout.offset))
			}
		}
		l := longest[in.key]
		short, long := out.ids, l
		if len(short) > len(long) {
			short, long = long, short
		}
		if !slices.Equal(short, long[:len(short)]) {
			why = append(why, fmt.Sprintf("two reads of %s disagree: neither is a prefix of the other", in.key))
		}
		if len(out.ids) > len(l) {
			longest[in.key] = out.ids
		}
	}
	if len(why) == 0 {
		return "no single pair of operations explains it; see the visualization"
	}
	slices.Sort(why)
	why = slices.Compact(why)
	if len(why) > 10 {
		why = append(why[:10], fmt.Sprintf("and %d more", len(why)-10))
	}
	return strings.Join(why, "; ")
}

// TestLogHistoryCheck feeds the checker hand-made histories: the broken
// ones must be rejected, the correct ones (concurrency, publishes of
// unknown outcome stored or not) accepted.
func TestLogHistoryCheck(t *testing.T) {
	k := logKey{"t", 0}
	pub := func(id string, call, ret int64, offset uint64) porcupine.Operation {
		return porcupine.Operation{Input: logInput{key: k, id: id}, Call: call, Output: logOutput{acked: true, offset: offset}, Return: ret}
	}
	unknown := func(id string, call int64) porcupine.Operation {
		return porcupine.Operation{Input: logInput{key: k, id: id}, Call: call, Output: logOutput{}, Return: pendingReturn}
	}
	read := func(call, ret int64, ids ...string) porcupine.Operation {
		return porcupine.Operation{Input: logInput{key: k, read: true}, Call: call, Output: logOutput{ids: ids, hash: logHash(ids)}, Return: ret}
	}
	other := func(op porcupine.Operation) porcupine.Operation {
		in := op.Input.(logInput)
		in.key = logKey{"t", 1}
		op.Input = in
		return op
	}
	tests := []struct {
		name string
		ops  []porcupine.Operation
		ok   bool
	}{
		{"sequential", []porcupine.Operation{pub("a", 0, 10, 0), pub("b", 20, 30, 1), read(40, 50, "a", "b")}, true},
		{"concurrent publishes in either order", []porcupine.Operation{pub("a", 0, 30, 1), pub("b", 10, 20, 0), read(40, 50, "b", "a")}, true},
		{"read concurrent with a publish may miss it", []porcupine.Operation{pub("a", 0, 10, 0), pub("b", 20, 40, 1), read(25, 30, "a")}, true},
		{"read concurrent with a publish may see it", []porcupine.Operation{pub("a", 0, 10, 0), pub("b", 20, 40, 1), read(25, 30, "a", "b")}, true},
		{"unknown publish stored", []porcupine.Operation{pub("a", 0, 10, 0), unknown("x", 5), pub("b", 20, 30, 2), read(40, 50, "a", "x", "b")}, true},
		{"unknown publish stored after the last read", []porcupine.Operation{pub("a", 0, 10, 0), unknown("x", 5), read(40, 50, "a")}, true},
		{"unknown publish never stored", []porcupine.Operation{pub("a", 0, 10, 0), unknown("x", 5), pub("b", 20, 30, 1), read(40, 50, "a", "b")}, true},
		{"partitions are separate logs", []porcupine.Operation{pub("a", 0, 10, 0), other(pub("b", 0, 10, 0)), read(20, 30, "a"), other(read(20, 30, "b"))}, true},

		{"two acknowledged publishes at one offset", []porcupine.Operation{pub("a", 0, 10, 0), pub("b", 20, 30, 0)}, false},
		{"two concurrent acknowledged publishes at one offset", []porcupine.Operation{pub("a", 0, 30, 0), pub("b", 10, 20, 0)}, false},
		{"an offset skipped", []porcupine.Operation{pub("a", 0, 10, 0), pub("b", 20, 30, 2), read(40, 50, "a", "b")}, false},
		{"a read misses an acknowledged publish", []porcupine.Operation{pub("a", 0, 10, 0), pub("b", 20, 30, 1), read(40, 50, "a")}, false},
		{"a read shows an id twice", []porcupine.Operation{pub("a", 0, 10, 0), read(20, 30, "a", "a")}, false},
		{"a read shows another order", []porcupine.Operation{pub("a", 0, 10, 0), pub("b", 20, 30, 1), read(40, 50, "b", "a")}, false},
		{"a read shows a message nobody published", []porcupine.Operation{pub("a", 0, 10, 0), read(20, 30, "a", "z")}, false},
		{"an unknown publish seen, then gone", []porcupine.Operation{pub("a", 0, 10, 0), unknown("x", 5), read(20, 30, "a", "x"), read(40, 50, "a")}, false},
		{"an acknowledged publish seen, then gone", []porcupine.Operation{pub("a", 0, 10, 0), read(20, 30, "a"), read(40, 50)}, false},
		{"a read of the other partition's message", []porcupine.Operation{pub("a", 0, 10, 0), other(pub("b", 0, 10, 0)), read(20, 30, "a", "b")}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			res, _, _ := checkLogHistory(tc.ops, 10*time.Second)
			if got := res == porcupine.Ok; got != tc.ok {
				t.Fatalf("check = %s, want linearizable %t; explained: %s", res, tc.ok, explainLogHistory(tc.ops))
			}
		})
	}
}

// TestLogHistoryManyUnknown: publishes of unknown outcome that no read shows
// cost nothing once a read shows every acknowledged one; without pruning,
// forty of them outstanding at once would take porcupine forever.
func TestLogHistoryManyUnknown(t *testing.T) {
	h := newLogHistory()
	k := logKey{"t", 0}
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
