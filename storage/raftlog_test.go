package storage

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/dgraph-io/badger/v4"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"

	"github.com/ferrymq/ferry/internal/clock"

	"github.com/ferrymq/ferry/internal/ferrytest"
)

// ent is the entry at index of term with data (nil if none given).
func ent(index, term uint64, data ...string) *raftpb.Entry {
	e := &raftpb.Entry{Index: new(index), Term: new(term), Type: raftpb.EntryNormal.Enum()}
	if len(data) > 0 {
		e.Data = []byte(strings.Join(data, ""))
	}
	return e
}

// ents is consecutive entries from index from with the given terms.
func ents(from uint64, terms ...uint64) []*raftpb.Entry {
	es := make([]*raftpb.Entry, len(terms))
	for i, t := range terms {
		es[i] = ent(from+uint64(i), t)
	}
	return es
}

func hardState(term, vote, commit uint64) *raftpb.HardState {
	return &raftpb.HardState{Term: new(term), Vote: new(vote), Commit: new(commit)}
}

func snapshotAt(index, term uint64, data []byte, voters ...uint64) *raftpb.Snapshot {
	return &raftpb.Snapshot{
		Metadata: &raftpb.SnapshotMetadata{Index: new(index), Term: new(term), ConfState: &raftpb.ConfState{Voters: voters}},
		Data:     data,
	}
}

// forEachTail runs fn with the tail cache big enough for every entry and
// turned off, so both the cached and the Badger read paths are tested.
func forEachTail(t *testing.T, fn func(t *testing.T, opts Options)) {
	for _, tail := range []int{1 << 20, 0} {
		t.Run(fmt.Sprintf("tail=%d", tail), func(t *testing.T) {
			opts := testOptions(t, clock.NewFake(t0))
			opts.TailCacheBytes = tail
			fn(t, opts)
		})
	}
}

func mustRaftLog(tb testing.TB, s *Store, group uint64) *RaftLog {
	tb.Helper()
	l, err := s.RaftLog(group)
	if err != nil {
		tb.Fatalf("RaftLog(%d): %v", group, err)
	}
	return l
}

func mustSave(tb testing.TB, l *RaftLog, hs *raftpb.HardState, es []*raftpb.Entry, snap *raftpb.Snapshot) {
	tb.Helper()
	if err := l.Save(hs, es, snap); err != nil {
		tb.Fatalf("Save: %v", err)
	}
}

// compactedLog returns group 1's log as raft's MemoryStorage tests start:
// the entry before the first at index 3 and term 3, then entries 4 and 5
// of terms 4 and 5, and no snapshot.
func compactedLog(tb testing.TB, s *Store) *RaftLog {
	tb.Helper()
	l := mustRaftLog(tb, s, 1)
	mustSave(tb, l, nil, ents(1, 1, 2, 3, 4, 5), nil)
	if err := l.Compact(3); err != nil {
		tb.Fatalf("Compact(3): %v", err)
	}
	return l
}

// dumpStorage renders everything a raft.Storage says about itself, so two
// storages can be compared as text. It asks only what MemoryStorage
// answers without panicking.
func dumpStorage(tb testing.TB, st raft.Storage) string {
	tb.Helper()
	var b strings.Builder
	first, err1 := st.FirstIndex()
	last, err2 := st.LastIndex()
	if err := errors.Join(err1, err2); err != nil {
		tb.Fatalf("bounds: %v", err)
	}
	fmt.Fprintf(&b, "first=%d last=%d\n", first, last)
	from := first - 1
	if from > 0 {
		from--
	}
	for i := from; i <= last+1; i++ {
		t, err := st.Term(i)
		fmt.Fprintf(&b, "term(%d)=%d %v\n", i, t, err)
	}
	es, err := st.Entries(first, last+1, math.MaxUint64)
	fmt.Fprintf(&b, "entries(%d, %d): %v\n", first, last+1, err)
	for _, e := range es {
		b.WriteString(fmtEntry(e) + "\n")
	}
	hs, cs, err := st.InitialState()
	fmt.Fprintf(&b, "hard state %s, conf state %s, %v\n", fmtHardState(hs), fmtConfState(cs), err)
	snap, err := st.Snapshot()
	fmt.Fprintf(&b, "snapshot %s, %v\n", fmtSnapshot(snap), err)
	return b.String()
}

func fmtEntry(e *raftpb.Entry) string {
	return fmt.Sprintf("%d/%d %v %q", e.GetIndex(), e.GetTerm(), e.GetType(), e.GetData())
}

// traceEntries renders entries for a property test's trace: data by length.
func traceEntries(es []*raftpb.Entry) string {
	s := make([]string, len(es))
	for i, e := range es {
		s[i] = fmt.Sprintf("%d/%d/%d", e.GetIndex(), e.GetTerm(), len(e.GetData()))
	}
	return "[" + strings.Join(s, " ") + "]"
}

func fmtEntries(es []*raftpb.Entry) string {
	s := make([]string, len(es))
	for i, e := range es {
		s[i] = fmtEntry(e)
	}
	return "[" + strings.Join(s, " ") + "]"
}

func fmtHardState(hs *raftpb.HardState) string {
	if hs == nil {
		return "nil"
	}
	return fmt.Sprintf("{term %d vote %d commit %d}", hs.GetTerm(), hs.GetVote(), hs.GetCommit())
}

func fmtConfState(cs *raftpb.ConfState) string {
	return fmt.Sprintf("{voters %v learners %v outgoing %v next %v auto %v}",
		cs.GetVoters(), cs.GetLearners(), cs.GetVotersOutgoing(), cs.GetLearnersNext(), cs.GetAutoLeave())
}

func fmtSnapshot(s *raftpb.Snapshot) string {
	m := s.GetMetadata()
	return fmt.Sprintf("{index %d term %d conf %s data %q nil=%v}", m.GetIndex(), m.GetTerm(), fmtConfState(m.GetConfState()), s.GetData(), s.GetData() == nil)
}

func TestRaftLogEmpty(t *testing.T) {
	s := openStore(t, testOptions(t, clock.NewFake(t0)))
	l := mustRaftLog(t, s, 1)
	if got, want := dumpStorage(t, l), dumpStorage(t, raft.NewMemoryStorage()); got != want {
		t.Fatalf("empty log:\n%s\nMemoryStorage:\n%s", got, want)
	}
	if l2 := mustRaftLog(t, s, 1); l2 != l {
		t.Fatal("RaftLog(1) twice gave two logs")
	}
}

func TestRaftLogTerm(t *testing.T) {
	forEachTail(t, func(t *testing.T, opts Options) {
		l := compactedLog(t, openStore(t, opts))
		for _, tc := range []struct {
			i    uint64
			want uint64
			err  error
		}{
			{2, 0, raft.ErrCompacted},
			{3, 3, nil},
			{4, 4, nil},
			{5, 5, nil},
			{6, 0, raft.ErrUnavailable},
		} {
			got, err := l.Term(tc.i)
			if err != tc.err || got != tc.want {
				t.Errorf("Term(%d) = %d, %v; want %d, %v", tc.i, got, err, tc.want, tc.err)
			}
		}
	})
}

func TestRaftLogEntries(t *testing.T) {
	forEachTail(t, func(t *testing.T, opts Options) {
		s := openStore(t, opts)
		l := compactedLog(t, s)
		mustSave(t, l, nil, ents(6, 6), nil)
		size := uint64(proto.Size(ent(4, 4)))
		for _, tc := range []struct {
			lo, hi, max uint64
			want        string
			err         error
		}{
			{2, 6, math.MaxUint64, "", raft.ErrCompacted},
			{3, 4, math.MaxUint64, "", raft.ErrCompacted},
			{4, 5, math.MaxUint64, "[4/4 EntryNormal \"\"]", nil},
			{4, 6, math.MaxUint64, "[4/4 EntryNormal \"\" 5/5 EntryNormal \"\"]", nil},
			{4, 7, math.MaxUint64, "[4/4 EntryNormal \"\" 5/5 EntryNormal \"\" 6/6 EntryNormal \"\"]", nil},
			// at least one entry, even over maxSize
			{4, 7, 0, "[4/4 EntryNormal \"\"]", nil},
			{4, 7, size, "[4/4 EntryNormal \"\"]", nil},
			{4, 7, 2 * size, "[4/4 EntryNormal \"\" 5/5 EntryNormal \"\"]", nil},
			{4, 7, 3*size - 1, "[4/4 EntryNormal \"\" 5/5 EntryNormal \"\"]", nil},
			{4, 7, 3 * size, "[4/4 EntryNormal \"\" 5/5 EntryNormal \"\" 6/6 EntryNormal \"\"]", nil},
			{5, 5, math.MaxUint64, "[]", nil},
		} {
			es, err := l.Entries(tc.lo, tc.hi, tc.max)
			if err != tc.err || (err == nil && fmtEntries(es) != tc.want) {
				t.Errorf("Entries(%d, %d, %d) = %s, %v; want %s, %v", tc.lo, tc.hi, tc.max, fmtEntries(es), err, tc.want, tc.err)
			}
			// MemoryStorage, set up alike, agrees.
			ms := raft.NewMemoryStorage()
			_ = ms.Append(ents(1, 1, 2, 3, 4, 5, 6))
			_ = ms.Compact(3)
			mes, merr := ms.Entries(tc.lo, tc.hi, tc.max)
			if merr != err || fmtEntries(mes) != fmtEntries(es) {
				t.Errorf("Entries(%d, %d, %d): MemoryStorage gives %s, %v", tc.lo, tc.hi, tc.max, fmtEntries(mes), merr)
			}
		}
		// Where MemoryStorage panics, RaftLog returns an error.
		if _, err := l.Entries(4, 8, math.MaxUint64); !errors.Is(err, raft.ErrUnavailable) {
			t.Errorf("Entries beyond the last index: %v, want ErrUnavailable", err)
		}
		if _, err := l.Entries(6, 5, math.MaxUint64); !errors.Is(err, ErrInvalidRaftRequest) {
			t.Errorf("Entries(6, 5): %v, want ErrInvalidRaftRequest", err)
		}
		// The caller owns the slice: appending to it changes nothing.
		es, _ := l.Entries(4, 5, math.MaxUint64)
		_ = append(es, ent(99, 99))
		if es, _ := l.Entries(4, 7, math.MaxUint64); len(es) != 3 || es[1].GetIndex() != 5 {
			t.Errorf("after an append to a returned slice: %s", fmtEntries(es))
		}
	})
}

func TestRaftLogFirstLastIndex(t *testing.T) {
	forEachTail(t, func(t *testing.T, opts Options) {
		l := compactedLog(t, openStore(t, opts))
		check := func(first, last uint64) {
			t.Helper()
			f, err1 := l.FirstIndex()
			la, err2 := l.LastIndex()
			if f != first || la != last || err1 != nil || err2 != nil {
				t.Fatalf("first, last = %d, %d (%v, %v); want %d, %d", f, la, err1, err2, first, last)
			}
		}
		check(4, 5)
		mustSave(t, l, nil, ents(6, 5), nil)
		check(4, 6)
		if err := l.Compact(4); err != nil {
			t.Fatal(err)
		}
		check(5, 6)
		if err := l.Compact(6); err != nil {
			t.Fatal(err)
		}
		check(7, 6) // nothing left but the term of 6
		if tm, err := l.Term(6); tm != 5 || err != nil {
			t.Fatalf("Term(6) = %d, %v after compacting everything", tm, err)
		}
	})
}

func TestRaftLogCompact(t *testing.T) {
	forEachTail(t, func(t *testing.T, opts Options) {
		for _, tc := range []struct {
			i                uint64
			err              error
			prev, prevTerm   uint64
			entriesRemaining int
		}{
			{2, raft.ErrCompacted, 3, 3, 2},
			{3, raft.ErrCompacted, 3, 3, 2},
			{4, nil, 4, 4, 1},
			{5, nil, 5, 5, 0},
			{6, raft.ErrUnavailable, 3, 3, 2}, // MemoryStorage panics
		} {
			t.Run(fmt.Sprint(tc.i), func(t *testing.T) {
				opts := opts
				opts.Dir = t.TempDir()
				s := openStore(t, opts)
				l := compactedLog(t, s)
				if err := l.Compact(tc.i); !errors.Is(err, tc.err) {
					t.Fatalf("Compact(%d) = %v, want %v", tc.i, err, tc.err)
				}
				first, _ := l.FirstIndex()
				term, err := l.Term(tc.prev)
				if first != tc.prev+1 || term != tc.prevTerm || err != nil {
					t.Fatalf("first %d, term(%d) = %d, %v; want first %d, term %d", first, tc.prev, term, err, tc.prev+1, tc.prevTerm)
				}
				if n := countKeys(t, s, kindRaft) - 1; n != tc.entriesRemaining { // less the bounds key
					t.Fatalf("%d entry keys in Badger, want %d", n, tc.entriesRemaining)
				}
			})
		}
	})
}

func TestRaftLogCreateSnapshot(t *testing.T) {
	forEachTail(t, func(t *testing.T, opts Options) {
		cs := &raftpb.ConfState{Voters: []uint64{1, 2, 3}}
		data := []byte("data")
		for _, tc := range []struct {
			i    uint64
			err  error
			want string
		}{
			{2, raft.ErrCompacted, ""}, // MemoryStorage panics
			{3, nil, `{index 3 term 3 conf {voters [1 2 3] learners [] outgoing [] next [] auto false} data "data" nil=false}`},
			{4, nil, `{index 4 term 4 conf {voters [1 2 3] learners [] outgoing [] next [] auto false} data "data" nil=false}`},
			{5, nil, `{index 5 term 5 conf {voters [1 2 3] learners [] outgoing [] next [] auto false} data "data" nil=false}`},
			{6, raft.ErrUnavailable, ""}, // MemoryStorage panics
		} {
			t.Run(fmt.Sprint(tc.i), func(t *testing.T) {
				opts := opts
				opts.Dir = t.TempDir()
				l := compactedLog(t, openStore(t, opts))
				snap, err := l.CreateSnapshot(tc.i, cs, data)
				if !errors.Is(err, tc.err) {
					t.Fatalf("CreateSnapshot(%d) = %v, want %v", tc.i, err, tc.err)
				}
				if err != nil {
					return
				}
				got, _ := l.Snapshot()
				if fmtSnapshot(snap) != tc.want || fmtSnapshot(got) != tc.want {
					t.Fatalf("CreateSnapshot(%d) = %s, Snapshot() = %s; want %s", tc.i, fmtSnapshot(snap), fmtSnapshot(got), tc.want)
				}
				if _, err := l.CreateSnapshot(tc.i, cs, data); err != raft.ErrSnapOutOfDate {
					t.Fatalf("the same snapshot again: %v, want ErrSnapOutOfDate", err)
				}
				if tc.i < 5 {
					// nil ConfState keeps the previous one; nil data is nil.
					snap, err := l.CreateSnapshot(5, nil, nil)
					if err != nil || fmtConfState(snap.GetMetadata().GetConfState()) != fmtConfState(cs) || snap.GetData() != nil {
						t.Fatalf("CreateSnapshot(5, nil, nil) = %s, %v", fmtSnapshot(snap), err)
					}
					if got, _ := l.Snapshot(); fmtSnapshot(got) != fmtSnapshot(snap) {
						t.Fatalf("Snapshot() = %s, want %s", fmtSnapshot(got), fmtSnapshot(snap))
					}
				}
				// Creating a snapshot removes no entry.
				if first, _ := l.FirstIndex(); first != 4 {
					t.Fatalf("first index %d after CreateSnapshot, want 4", first)
				}
			})
		}
	})
}

func TestRaftLogSaveAppend(t *testing.T) {
	forEachTail(t, func(t *testing.T, opts Options) {
		for _, tc := range []struct {
			name   string
			append []*raftpb.Entry
			err    error
			want   string // entries from the first index
		}{
			{"same", ents(3, 3, 4, 5), nil, "[4/4 5/5]"},
			{"replace all", ents(3, 3, 6, 6), nil, "[4/6 5/6]"},
			{"extend", ents(3, 3, 4, 5, 5), nil, "[4/4 5/5 6/5]"},
			{"compacted part ignored, suffix replaced", ents(2, 3, 3, 5), nil, "[4/5]"},
			{"truncate", ents(4, 5), nil, "[4/5]"},
			{"replace the last", ents(5, 6), nil, "[4/4 5/6]"},
			{"append", ents(6, 5), nil, "[4/4 5/5 6/5]"},
			{"all compacted", ents(1, 1, 2), nil, "[4/4 5/5]"},
			{"gap", ents(7, 5), ErrInvalidRaftRequest, "[4/4 5/5]"},
			{"not consecutive", []*raftpb.Entry{ent(6, 5), ent(8, 5)}, ErrInvalidRaftRequest, "[4/4 5/5]"},
			{"term goes down", ents(6, 6, 5), ErrInvalidRaftRequest, "[4/4 5/5]"},
			{"nil entry", []*raftpb.Entry{ent(6, 5), nil}, ErrInvalidRaftRequest, "[4/4 5/5]"},
			{"index overflow", ents(math.MaxUint64, 5, 5), ErrInvalidRaftRequest, "[4/4 5/5]"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				opts := opts
				opts.Dir = t.TempDir()
				s := openStore(t, opts)
				l := compactedLog(t, s)
				if err := l.Save(nil, tc.append, nil); !errors.Is(err, tc.err) {
					t.Fatalf("Save(%s) = %v, want %v", fmtEntries(tc.append), err, tc.err)
				}
				check := func(when string) {
					t.Helper()
					if got := shortEntries(t, l); got != tc.want {
						t.Fatalf("%s: entries %s, want %s", when, got, tc.want)
					}
					// Replaced entries are deleted, not left in Badger.
					last, _ := l.LastIndex()
					if n := countKeys(t, s, kindRaft) - 1; n != int(last-3) {
						t.Fatalf("%s: %d entry keys in Badger, want %d", when, n, last-3)
					}
				}
				check("after Save")
				if err := s.Close(context.Background()); err != nil {
					t.Fatal(err)
				}
				s = openStore(t, opts)
				l = mustRaftLog(t, s, 1)
				check("after reopen")
			})
		}
	})
}

// shortEntries renders a log's entries as index/term.
func shortEntries(tb testing.TB, l *RaftLog) string {
	tb.Helper()
	first, _ := l.FirstIndex()
	last, _ := l.LastIndex()
	es, err := l.Entries(first, last+1, math.MaxUint64)
	if err != nil && !(err == raft.ErrUnavailable && last < first) {
		tb.Fatalf("Entries(%d, %d): %v", first, last+1, err)
	}
	s := make([]string, len(es))
	for i, e := range es {
		s[i] = fmt.Sprintf("%d/%d", e.GetIndex(), e.GetTerm())
	}
	return "[" + strings.Join(s, " ") + "]"
}

func TestRaftLogSaveSnapshot(t *testing.T) {
	forEachTail(t, func(t *testing.T, opts Options) {
		s := openStore(t, opts)
		l := mustRaftLog(t, s, 1)
		mustSave(t, l, hardState(1, 1, 0), nil, snapshotAt(4, 4, []byte("four"), 1, 2))
		if first, last := bounds(l); first != 5 || last != 4 {
			t.Fatalf("after a snapshot at 4: first %d last %d, want 5 4", first, last)
		}
		if _, err := l.Entries(5, 5, math.MaxUint64); err != raft.ErrUnavailable {
			t.Fatalf("Entries with only the snapshot: %v, want ErrUnavailable", err)
		}
		if err := l.Save(nil, nil, snapshotAt(3, 3, nil)); err != raft.ErrSnapOutOfDate {
			t.Fatalf("an older snapshot: %v, want ErrSnapOutOfDate", err)
		}
		if err := l.Save(nil, nil, snapshotAt(4, 4, nil)); err != raft.ErrSnapOutOfDate {
			t.Fatalf("the same snapshot: %v, want ErrSnapOutOfDate", err)
		}
		// Snapshot, entries after it and the hard state in one Save.
		mustSave(t, l, hardState(6, 2, 8), ents(6, 6, 6, 6), snapshotAt(6, 6, []byte("six"), 1, 2, 3))
		if got := shortEntries(t, l); got != "[7/6 8/6]" {
			t.Fatalf("entries %s, want [7/6 8/6]", got)
		}
		hs, cs, _ := l.InitialState()
		snap, _ := l.Snapshot()
		if fmtHardState(hs) != "{term 6 vote 2 commit 8}" || fmt.Sprint(cs.GetVoters()) != "[1 2 3]" || string(snap.GetData()) != "six" {
			t.Fatalf("hard state %s, conf state %s, snapshot %s", fmtHardState(hs), fmtConfState(cs), fmtSnapshot(snap))
		}
		// A snapshot inside the log replaces it all, as in MemoryStorage.
		mustSave(t, l, nil, ents(9, 6, 6, 7), nil)
		mustSave(t, l, nil, nil, snapshotAt(9, 6, []byte{}))
		if first, last := bounds(l); first != 10 || last != 9 {
			t.Fatalf("after a snapshot inside the log: first %d last %d, want 10 9", first, last)
		}
		if n := countKeys(t, s, kindRaft); n != 4 { // b, h, s, d: no entry
			t.Fatalf("%d raft keys, want 4", n)
		}
		if snap, _ := l.Snapshot(); snap.GetData() == nil || len(snap.GetData()) != 0 {
			t.Fatalf("empty snapshot data came back as %q (nil %v)", snap.GetData(), snap.GetData() == nil)
		}
		// A hard state committing past the log is refused.
		if err := l.Save(hardState(7, 0, 10), nil, nil); !errors.Is(err, ErrInvalidRaftRequest) {
			t.Fatalf("commit beyond the last index: %v, want ErrInvalidRaftRequest", err)
		}
		if hs, _, _ := l.InitialState(); fmtHardState(hs) != "{term 6 vote 2 commit 8}" {
			t.Fatalf("refused hard state was stored: %s", fmtHardState(hs))
		}
	})
}

func bounds(l *RaftLog) (first, last uint64) {
	first, _ = l.FirstIndex()
	last, _ = l.LastIndex()
	return first, last
}

// An empty Save writes nothing and waits for no fsync.
func TestRaftLogEmptySaveSyncsNothing(t *testing.T) {
	s := openStore(t, testOptions(t, clock.NewFake(t0)))
	l := mustRaftLog(t, s, 1)
	mustSave(t, l, nil, ents(1, 1), nil)
	before := s.Syncs()
	mustSave(t, l, nil, nil, nil)
	mustSave(t, l, &raftpb.HardState{}, []*raftpb.Entry{}, &raftpb.Snapshot{})
	if n := s.Syncs() - before; n != 0 {
		t.Fatalf("empty saves did %d fsyncs", n)
	}
	mustSave(t, l, hardState(1, 1, 1), nil, nil)
	if n := s.Syncs() - before; n != 1 {
		t.Fatalf("a hard state save did %d fsyncs, want 1", n)
	}
}

func TestRaftLogGroupZero(t *testing.T) {
	s := openStore(t, testOptions(t, clock.NewFake(t0)))
	if _, err := s.RaftLog(0); !errors.Is(err, ErrInvalidRaftRequest) {
		t.Fatalf("RaftLog(0): %v", err)
	}
	if err := s.DropRaftLog(0); !errors.Is(err, ErrInvalidRaftRequest) {
		t.Fatalf("DropRaftLog(0): %v", err)
	}
}

func TestRaftLogPersists(t *testing.T) {
	forEachTail(t, func(t *testing.T, opts Options) {
		s := openStore(t, opts)
		// Neighbouring and far apart ids: every byte of the id matters.
		groups := []uint64{1, 2, 256, 1 << 56, math.MaxUint64}
		for n, g := range groups {
			l := mustRaftLog(t, s, g)
			mustSave(t, l, nil, nil, snapshotAt(10, 2, []byte(fmt.Sprint("snap-", g)), g))
			var es []*raftpb.Entry
			for i := range uint64(20 + n) {
				es = append(es, ent(11+i, 3, fmt.Sprintf("g%d-%d", g, 11+i)))
			}
			mustSave(t, l, hardState(3, 1, 25), es, nil)
			if _, err := l.CreateSnapshot(20, &raftpb.ConfState{Voters: []uint64{g, 7}}, []byte("at 20")); err != nil {
				t.Fatal(err)
			}
			if err := l.Compact(15); err != nil {
				t.Fatal(err)
			}
		}
		dumps := map[uint64]string{}
		for _, g := range groups {
			dumps[g] = dumpStorage(t, mustRaftLog(t, s, g))
			for _, o := range groups {
				if has := strings.Contains(dumps[g], fmt.Sprintf(`"g%d-`, o)); has != (o == g) {
					t.Fatalf("group %d holds entries of group %d: %v\n%s", g, o, has, dumps[g])
				}
			}
		}
		if err := s.Close(context.Background()); err != nil {
			t.Fatal(err)
		}
		if _, err := s.RaftLog(1); !errors.Is(err, ErrClosed) {
			t.Fatalf("RaftLog after Close: %v", err)
		}
		s = openStore(t, opts)
		for _, g := range groups {
			if got := dumpStorage(t, mustRaftLog(t, s, g)); got != dumps[g] {
				t.Fatalf("group %d after reopen:\n%s\nbefore:\n%s", g, got, dumps[g])
			}
		}
	})
}

func TestDropRaftLog(t *testing.T) {
	forEachTail(t, func(t *testing.T, opts Options) {
		s := openStore(t, opts)
		l1, l2 := mustRaftLog(t, s, 1), mustRaftLog(t, s, 2)
		for _, l := range []*RaftLog{l1, l2} {
			mustSave(t, l, hardState(2, 1, 3), ents(1, 1, 1, 2, 2), nil)
			if _, err := l.CreateSnapshot(2, &raftpb.ConfState{Voters: []uint64{1}}, []byte("s")); err != nil {
				t.Fatal(err)
			}
		}
		keep := dumpStorage(t, l2)
		if err := s.DropRaftLog(1); err != nil {
			t.Fatal(err)
		}
		if _, err := l1.Term(1); !errors.Is(err, ErrClosed) {
			t.Fatalf("Term on a dropped log: %v, want ErrClosed", err)
		}
		if err := l1.Save(nil, ents(5, 2), nil); !errors.Is(err, ErrClosed) {
			t.Fatalf("Save on a dropped log: %v, want ErrClosed", err)
		}
		countGroup := func(g uint64) int {
			n := 0
			_ = s.db.View(func(txn *badger.Txn) error {
				opts := badger.DefaultIteratorOptions
				opts.Prefix = raftGroupPrefix(g)
				it := txn.NewIterator(opts)
				defer it.Close()
				for it.Rewind(); it.Valid(); it.Next() {
					n++
				}
				return nil
			})
			return n
		}
		if n := countGroup(1); n != 0 {
			t.Fatalf("%d keys of the dropped group left", n)
		}
		if got := dumpStorage(t, l2); got != keep {
			t.Fatalf("the other group changed:\n%s\nwas:\n%s", got, keep)
		}
		// Dropping a group never loaded works too, and so does dropping
		// nothing.
		if err := s.DropRaftLog(3); err != nil {
			t.Fatal(err)
		}
		if err := s.Close(context.Background()); err != nil {
			t.Fatal(err)
		}
		s = openStore(t, opts)
		if err := s.DropRaftLog(2); err != nil {
			t.Fatal(err)
		}
		if n := countGroup(2); n != 0 {
			t.Fatalf("%d keys of group 2 left after dropping it unloaded", n)
		}
		fresh := mustRaftLog(t, s, 1)
		if got, want := dumpStorage(t, fresh), dumpStorage(t, raft.NewMemoryStorage()); got != want {
			t.Fatalf("group 1 after the drop:\n%s\nwant empty:\n%s", got, want)
		}
	})
}

func TestDeleteTopicKeepsRaftLogs(t *testing.T) {
	ctx := context.Background()
	opts := testOptions(t, clock.NewFake(t0))
	s := openStore(t, opts)
	mustCreate(t, s, "a", TopicConfig{Partitions: 2})
	mustAppend(t, s, "a", 1, msg("i", "x"))
	// Group 1 shares its number with topic a's id.
	l := mustRaftLog(t, s, 1)
	mustSave(t, l, hardState(1, 1, 3), ents(1, 1, 1, 1), nil)
	want := dumpStorage(t, l)
	if err := s.DeleteTopic(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	s.bg.Wait()
	if n := countKeys(t, s, kindMessage); n != 0 {
		t.Fatalf("%d message keys left", n)
	}
	if got := dumpStorage(t, l); got != want {
		t.Fatalf("raft log after the topic drop:\n%s\nwant:\n%s", got, want)
	}
	if err := s.Close(ctx); err != nil {
		t.Fatal(err)
	}
	s = openStore(t, opts)
	if got := dumpStorage(t, mustRaftLog(t, s, 1)); got != want {
		t.Fatalf("raft log after reopen:\n%s\nwant:\n%s", got, want)
	}
}

// Entries outside the bounds, as a crash between a Save and its deletions
// leaves them, are never read and go at the next load.
func TestRaftLogStaleEntriesDeletedAtLoad(t *testing.T) {
	opts := testOptions(t, clock.NewFake(t0))
	s := openStore(t, opts)
	l := mustRaftLog(t, s, 1)
	mustSave(t, l, nil, ents(1, 1, 1, 1, 1, 1), nil)
	if err := l.Compact(2); err != nil {
		t.Fatal(err)
	}
	want := dumpStorage(t, l)
	err := s.db.Update(func(txn *badger.Txn) error {
		for _, i := range []uint64{0, 1, 2, 6, 7, 1000} {
			v, _ := proto.Marshal(ent(i, 9, "stale"))
			if err := txn.Set(raftEntryKey(1, i), v); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	s = openStore(t, opts)
	if got := dumpStorage(t, mustRaftLog(t, s, 1)); got != want {
		t.Fatalf("after load:\n%s\nwant:\n%s", got, want)
	}
	if n := countKeys(t, s, kindRaft); n != 4 { // b and entries 3, 4, 5
		t.Fatalf("%d raft keys after load, want 4", n)
	}
}

func TestRaftLogCorruptBounds(t *testing.T) {
	opts := testOptions(t, clock.NewFake(t0))
	s := openStore(t, opts)
	if err := s.db.Update(func(txn *badger.Txn) error {
		return txn.Set(raftKey(7, raftKeyBounds), []byte{recordVersion, 1})
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.RaftLog(7); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("RaftLog over corrupt bounds: %v, want ErrCorrupt", err)
	}
	// An entry the bounds promise but Badger lacks.
	if err := s.db.Update(func(txn *badger.Txn) error {
		return txn.Set(raftKey(8, raftKeyBounds), raftBounds{last: 3}.encode())
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.RaftLog(8); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("RaftLog with a missing entry: %v, want ErrCorrupt", err)
	}
}

func TestRaftLogClosedStore(t *testing.T) {
	s := openStore(t, testOptions(t, clock.NewFake(t0)))
	l := mustRaftLog(t, s, 1)
	mustSave(t, l, nil, ents(1, 1, 1), nil)
	if err := s.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	for name, err := range map[string]error{
		"Save":        l.Save(nil, ents(3, 1), nil),
		"Compact":     l.Compact(1),
		"Entries":     second(l.Entries(1, 2, 100)),
		"Term":        second(l.Term(1)),
		"FirstIndex":  second(l.FirstIndex()),
		"LastIndex":   second(l.LastIndex()),
		"Snapshot":    second(l.Snapshot()),
		"Create":      second(l.CreateSnapshot(1, nil, nil)),
		"DropRaftLog": s.DropRaftLog(1),
	} {
		if !errors.Is(err, ErrClosed) {
			t.Errorf("%s after Close: %v, want ErrClosed", name, err)
		}
	}
	if _, _, err := l.InitialState(); !errors.Is(err, ErrClosed) {
		t.Errorf("InitialState after Close: %v, want ErrClosed", err)
	}
}

func second[T any](_ T, err error) error { return err }

// Raft reads from its goroutine while the application saves, compacts and
// snapshots from another; run with -race.
func TestRaftLogConcurrentUse(t *testing.T) {
	opts := testOptions(t, clock.NewFake(t0))
	opts.Fsync = FsyncNever
	opts.TailCacheBytes = 2000 // part of the log in the cache, part not
	s := openStore(t, opts)
	l := mustRaftLog(t, s, 1)
	const total = 600
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := uint64(1); i <= total; i += 3 {
			if err := l.Save(hardState(1, 1, i-1), ents(i, 1, 1, 1), nil); err != nil {
				t.Error(err)
				return
			}
			if i%60 == 1 && i > 100 {
				if _, err := l.CreateSnapshot(i-50, nil, []byte("s")); err != nil {
					t.Error(err)
					return
				}
				if err := l.Compact(i - 50); err != nil {
					t.Error(err)
					return
				}
			}
		}
	})
	wg.Go(func() {
		for {
			first, _ := l.FirstIndex()
			last, _ := l.LastIndex()
			if last >= first {
				es, err := l.Entries(first, last+1, 4096)
				if err != nil && err != raft.ErrCompacted {
					t.Error(err)
					return
				}
				for i, e := range es {
					if e.GetIndex() != first+uint64(i) {
						t.Errorf("Entries(%d, ...)[%d] has index %d", first, i, e.GetIndex())
						return
					}
				}
			}
			if _, err := l.Term(last); err != nil && err != raft.ErrCompacted {
				t.Error(err)
				return
			}
			if last >= total {
				return
			}
		}
	})
	wg.Wait()
}

// TestRaftLogRawNode drives a single-node raft.RawNode on a RaftLog:
// bootstrap from a snapshot, campaign, propose, persist every Ready with
// Save, apply what commits, snapshot and compact; then restart on the
// reopened store and go on from where it was.
func TestRaftLogRawNode(t *testing.T) {
	opts := testOptions(t, clock.NewFake(t0))
	s := openStore(t, opts)
	l := mustRaftLog(t, s, 9)
	cs := &raftpb.ConfState{Voters: []uint64{1}}
	mustSave(t, l, nil, nil, snapshotAt(1, 1, nil, 1)) // bootstrap: first index 2

	n := newTestNode(t, l, 0)
	if err := n.rn.Campaign(); err != nil {
		t.Fatal(err)
	}
	n.drive()
	if st := n.rn.Status(); st.RaftState != raft.StateLeader {
		t.Fatalf("state %v after campaigning alone, want leader", st.RaftState)
	}
	for i := range 100 {
		if err := n.rn.Propose([]byte(fmt.Sprintf("p%d", i))); err != nil {
			t.Fatal(err)
		}
		if i%7 == 0 {
			n.drive() // some Readies carry one entry, some several
		}
		if i == 60 {
			n.drive()
			snap, err := l.CreateSnapshot(n.applied, cs, []byte(fmt.Sprint("applied ", len(n.data))))
			if err != nil {
				t.Fatal(err)
			}
			if err := l.Compact(snap.GetMetadata().GetIndex() - 5); err != nil {
				t.Fatal(err)
			}
		}
	}
	n.drive()
	if len(n.data) != 100 || n.data[0] != "p0" || n.data[99] != "p99" {
		t.Fatalf("applied %d proposals: %v", len(n.data), n.data)
	}
	hs := n.rn.Status().HardState
	last, _ := l.LastIndex()
	if hs.GetCommit() != last || n.applied != last {
		t.Fatalf("commit %d, applied %d, last index %d", hs.GetCommit(), n.applied, last)
	}
	want := dumpStorage(t, l)

	if err := s.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	s = openStore(t, opts)
	l = mustRaftLog(t, s, 9)
	if got := dumpStorage(t, l); got != want {
		t.Fatalf("log after reopen:\n%s\nbefore:\n%s", got, want)
	}
	applied := n.applied
	n = newTestNode(t, l, applied)
	if got := n.rn.Status().HardState; fmtHardState(got) != fmtHardState(hs) {
		t.Fatalf("restarted with hard state %s, want %s", fmtHardState(got), fmtHardState(hs))
	}
	if err := n.rn.Campaign(); err != nil {
		t.Fatal(err)
	}
	n.drive()
	for i := range 10 {
		if err := n.rn.Propose([]byte(fmt.Sprintf("q%d", i))); err != nil {
			t.Fatal(err)
		}
	}
	n.drive()
	// Nothing applied before the restart is applied again.
	if len(n.data) != 10 || n.data[0] != "q0" || n.data[9] != "q9" {
		t.Fatalf("applied after restart: %v", n.data)
	}
	if st := n.rn.Status(); st.GetTerm() != hs.GetTerm()+1 {
		t.Fatalf("term %d after the restart's election, want %d", st.GetTerm(), hs.GetTerm()+1)
	}
}

// testNode is a RawNode whose Readies are persisted to a RaftLog.
type testNode struct {
	t       *testing.T
	rn      *raft.RawNode
	l       *RaftLog
	applied uint64
	data    []string // the normal entries' data, as applied
}

func newTestNode(t *testing.T, l *RaftLog, applied uint64) *testNode {
	t.Helper()
	rn, err := raft.NewRawNode(&raft.Config{
		ID:              1,
		ElectionTick:    10,
		HeartbeatTick:   1,
		Storage:         l,
		Applied:         applied,
		MaxSizePerMsg:   1 << 20,
		MaxInflightMsgs: 256,
		Logger:          &raft.DefaultLogger{Logger: log.New(ferrytest.Writer{TB: t}, "raft ", 0)},
	})
	if err != nil {
		t.Fatal(err)
	}
	return &testNode{t: t, rn: rn, l: l, applied: rn.Status().Applied}
}

// drive handles Readies until there are none.
func (n *testNode) drive() {
	n.t.Helper()
	for n.rn.HasReady() {
		rd := n.rn.Ready()
		if err := n.l.Save(rd.HardState, rd.Entries, rd.Snapshot); err != nil {
			n.t.Fatalf("Save: %v", err)
		}
		if len(rd.Messages) > 0 {
			n.t.Fatalf("a single node sent %d messages", len(rd.Messages))
		}
		for _, e := range rd.CommittedEntries {
			if e.GetIndex() != n.applied+1 {
				n.t.Fatalf("applying %d after %d", e.GetIndex(), n.applied)
			}
			n.applied = e.GetIndex()
			if e.GetType() == raftpb.EntryNormal && len(e.GetData()) > 0 {
				n.data = append(n.data, string(e.GetData()))
			}
		}
		n.rn.Advance(rd)
	}
}

// TestRaftLogSurvivesKill is the durability claim with a real process: a
// child (this test binary again) saves batches in a loop and prints each
// last index once Save returned; the parent SIGKILLs it at a random moment
// and checks that every entry and hard state acknowledged is there, for
// both fsync policies. The child goes on from the log it finds, for a few
// cycles.
func TestRaftLogSurvivesKill(t *testing.T) {
	if testing.Short() {
		t.Skip("runs and kills a child process")
	}
	for _, fsync := range []FsyncPolicy{FsyncAlways, FsyncNever} {
		t.Run("fsync="+fsync.String(), func(t *testing.T) {
			dir := t.TempDir()
			rng := rand.New(rand.NewPCG(uint64(fsync), 11))
			var acked uint64
			for cycle := range 3 {
				cmd := exec.Command(os.Args[0], "-test.run=^TestRaftLogKillChild$", "-test.v")
				cmd.Env = append(os.Environ(), "FERRY_RAFTLOG_CHILD_DIR="+dir, "FERRY_RAFTLOG_CHILD_FSYNC="+fsync.String())
				cmd.Stderr = ferrytest.Writer{TB: t}
				out, err := cmd.StdoutPipe()
				if err != nil {
					t.Fatal(err)
				}
				if err := cmd.Start(); err != nil {
					t.Fatal(err)
				}
				killAt := 20 + rng.IntN(200) // acks before the kill
				sc := bufio.NewScanner(out)
				n := 0
				for sc.Scan() {
					last, ok := strings.CutPrefix(sc.Text(), "acked ")
					if !ok {
						continue
					}
					if acked, err = strconv.ParseUint(last, 10, 64); err != nil {
						t.Fatal(err)
					}
					if n++; n == killAt {
						break
					}
				}
				if err := cmd.Process.Kill(); err != nil {
					t.Fatal(err)
				}
				_ = cmd.Wait()
				if n < killAt {
					t.Fatalf("cycle %d: the child stopped after %d acks", cycle, n)
				}
				t.Logf("cycle %d: SIGKILL after %d saves, last acked index %d", cycle, n, acked)

				opts := testOptions(t, clock.Real())
				opts.Dir = dir
				s := openStore(t, opts)
				l := mustRaftLog(t, s, 1)
				if last, _ := l.LastIndex(); last < acked {
					t.Fatalf("cycle %d: last index %d, but %d was acknowledged", cycle, last, acked)
				}
				es, err := l.Entries(1, acked+1, math.MaxUint64)
				if err != nil {
					t.Fatal(err)
				}
				for _, e := range es {
					if want := killChildData(e.GetIndex()); string(e.GetData()) != want {
						t.Fatalf("entry %d holds %q, want %q", e.GetIndex(), e.GetData(), want)
					}
				}
				if hs, _, _ := l.InitialState(); hs.GetCommit() < acked {
					t.Fatalf("cycle %d: hard state %s, but commit %d was acknowledged", cycle, fmtHardState(hs), acked)
				}
				if err := s.Close(context.Background()); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}

func killChildData(index uint64) string {
	return fmt.Sprintf("entry %d ", index) + strings.Repeat("x", int(index%300))
}

// TestRaftLogKillChild is TestRaftLogSurvivesKill's child: it appends to
// group 1 until it is killed.
func TestRaftLogKillChild(t *testing.T) {
	dir := os.Getenv("FERRY_RAFTLOG_CHILD_DIR")
	if dir == "" {
		t.Skip("the child process of TestRaftLogSurvivesKill")
	}
	opts := DefaultOptions(dir)
	opts.Logger = benchLogger()
	fsync, err := ParseFsyncPolicy(os.Getenv("FERRY_RAFTLOG_CHILD_FSYNC"))
	if err != nil {
		t.Fatal(err)
	}
	opts.Fsync = fsync
	s, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	l := mustRaftLog(t, s, 1)
	last, _ := l.LastIndex()
	rng := rand.New(rand.NewPCG(last, 3))
	for {
		es := make([]*raftpb.Entry, 1+rng.IntN(8))
		for i := range es {
			idx := last + 1 + uint64(i)
			es[i] = &raftpb.Entry{Index: new(idx), Term: new(uint64(1)), Data: []byte(killChildData(idx))}
		}
		last += uint64(len(es))
		if err := l.Save(hardState(1, 1, last), es, nil); err != nil {
			t.Fatal(err)
		}
		fmt.Printf("acked %d\n", last)
	}
}

// The differential test drives a RaftLog and raft.MemoryStorage, per
// group, with the same random Saves, compactions, snapshots and reopens
// and compares everything each says after every step. Replay a failure
// with the seed its message names:
//
//	FERRY_PROPERTY_SEED=12 FERRY_PROPERTY_ITERS=1 go test -run TestPropertyRaftLogMatchesMemoryStorage -v ./storage
//
// FERRY_PROPERTY_SEED sets the first sequence's seed (sequence i uses
// seed+i) and FERRY_PROPERTY_ITERS the number of sequences.
const (
	raftPropSequences = 10
	raftPropSteps     = 150
)

func TestPropertyRaftLogMatchesMemoryStorage(t *testing.T) {
	forEachSeed(t, raftPropSequences, raftPropSteps, func(t *testing.T, seed uint64) {
		r := &raftPropRun{t: t, seed: seed, rng: rand.New(rand.NewPCG(seed, seed^0x5eed))}
		r.run()
	})
}

// raftPropRun is one random sequence over two groups.
type raftPropRun struct {
	t     *testing.T
	seed  uint64
	rng   *rand.Rand
	opts  Options
	s     *Store
	ms    [2]*raft.MemoryStorage
	logs  [2]*RaftLog
	terms [2]uint64 // the highest term each group has seen
	trace []string
}

var raftPropGroups = [2]uint64{1, 2}

// raftPropTails are the tail cache sizes a run opens the store with: none,
// a few entries, all of them.
var raftPropTails = []int{0, 600, 1 << 20}

func (r *raftPropRun) run() {
	r.opts = testOptions(r.t, clock.NewFake(t0))
	r.opts.Fsync = FsyncNever // durability is tested elsewhere; this is about semantics
	r.reopen()
	for g := range r.ms {
		r.ms[g] = raft.NewMemoryStorage()
		r.terms[g] = 1
	}
	for step := range raftPropSteps {
		r.step()
		for g := range r.ms {
			if got, want := dumpStorage(r.t, r.logs[g]), dumpStorage(r.t, r.ms[g]); got != want {
				r.fail("step %d, group %d:\nRaftLog:\n%s\nMemoryStorage:\n%s", step, raftPropGroups[g], got, want)
			}
			r.compareEntries(g)
		}
	}
}

func (r *raftPropRun) fail(format string, args ...any) {
	r.t.Helper()
	r.t.Logf("replay with FERRY_PROPERTY_SEED=%d FERRY_PROPERTY_ITERS=1; steps:\n%s", r.seed, strings.Join(r.trace, "\n"))
	r.t.Fatalf(format, args...)
}

func (r *raftPropRun) log(format string, args ...any) {
	r.trace = append(r.trace, fmt.Sprintf(format, args...))
}

// reopen closes the store (if open) and opens it with a random tail size.
func (r *raftPropRun) reopen() {
	if r.s != nil {
		if err := r.s.Close(context.Background()); err != nil {
			r.fail("close: %v", err)
		}
	}
	r.opts.TailCacheBytes = raftPropTails[r.rng.IntN(len(raftPropTails))]
	r.log("reopen tail=%d", r.opts.TailCacheBytes)
	r.s = openStore(r.t, r.opts)
	for g, id := range raftPropGroups {
		r.logs[g] = mustRaftLog(r.t, r.s, id)
	}
}

// compareEntries asks both storages for random ranges with random limits.
func (r *raftPropRun) compareEntries(g int) {
	ms, l := r.ms[g], r.logs[g]
	first, _ := ms.FirstIndex()
	last, _ := ms.LastIndex()
	for range 3 {
		lo := first - 1 + r.rng.Uint64N(last-first+3) // first-1 to last+1
		if lo == 0 {
			lo = 1
		}
		hi := lo + r.rng.Uint64N(last+2-min(lo, last+1))
		hi = min(hi, last+1)
		var max uint64
		switch r.rng.IntN(3) {
		case 0:
			max = 0
		case 1:
			max = r.rng.Uint64N(800)
		default:
			max = math.MaxUint64
		}
		want, werr := ms.Entries(lo, hi, max)
		got, gerr := l.Entries(lo, hi, max)
		if werr != gerr || fmtEntries(got) != fmtEntries(want) {
			r.fail("group %d Entries(%d, %d, %d) = %s, %v; MemoryStorage %s, %v", raftPropGroups[g], lo, hi, max, fmtEntries(got), gerr, fmtEntries(want), werr)
		}
	}
}

func (r *raftPropRun) data() []byte {
	switch r.rng.IntN(6) {
	case 0:
		return nil
	case 1:
		return []byte{}
	}
	b := make([]byte, r.rng.IntN(200))
	for i := range b {
		b[i] = byte(r.rng.Uint32())
	}
	return b
}

// entries makes n entries from index from at group g's current term,
// which a conflicting append first raises, as a new leader would.
func (r *raftPropRun) entries(g int, from uint64, n int, conflict bool) []*raftpb.Entry {
	if conflict || r.rng.IntN(10) == 0 {
		r.terms[g]++
	}
	es := make([]*raftpb.Entry, n)
	for i := range es {
		typ := raftpb.EntryNormal
		if r.rng.IntN(8) == 0 {
			typ = raftpb.EntryConfChange
		}
		es[i] = &raftpb.Entry{Index: new(from + uint64(i)), Term: new(r.terms[g]), Type: typ.Enum(), Data: r.data()}
	}
	return es
}

// hardState returns a random hard state committing at most up to last, or
// nil.
func (r *raftPropRun) hardState(g int, last uint64) *raftpb.HardState {
	if r.rng.IntN(2) == 0 {
		return nil
	}
	return hardState(r.terms[g], r.rng.Uint64N(4), r.rng.Uint64N(last+1))
}

func (r *raftPropRun) step() {
	g := r.rng.IntN(2)
	ms, l := r.ms[g], r.logs[g]
	first, _ := ms.FirstIndex()
	last, _ := ms.LastIndex()
	snap, _ := ms.Snapshot()
	snapIndex := snap.GetMetadata().GetIndex()
	group := raftPropGroups[g]

	switch op := r.rng.IntN(100); {
	case op < 45: // append, maybe with a hard state
		lo := max(first, 3) - 2
		from := lo + r.rng.Uint64N(last+2-lo) // first-2 to last+1
		es := r.entries(g, from, 1+r.rng.IntN(6), from <= last)
		newLast := last
		if end := from + uint64(len(es)) - 1; end >= first {
			newLast = end
		}
		hs := r.hardState(g, newLast)
		r.log("group %d save hs=%s entries=%s", group, fmtHardState(hs), traceEntries(es))
		if err := l.Save(hs, es, nil); err != nil {
			r.fail("Save: %v", err)
		}
		_ = ms.Append(es)
		if !raft.IsEmptyHardState(hs) {
			_ = ms.SetHardState(hs)
		}
	case op < 55: // a snapshot, maybe with entries after it
		index := snapIndex + 1 + r.rng.Uint64N(max(last, snapIndex)+4-snapIndex)
		if snapIndex > 0 && r.rng.IntN(5) == 0 {
			index = 1 + r.rng.Uint64N(snapIndex) // out of date
		}
		term := r.terms[g]
		if t, err := ms.Term(index); err == nil {
			term = t
		}
		var voters []uint64
		for id := range uint64(4) {
			if r.rng.IntN(2) == 0 {
				voters = append(voters, id+1)
			}
		}
		sn := snapshotAt(index, term, r.data(), voters...)
		var es []*raftpb.Entry
		if r.rng.IntN(2) == 0 {
			es = r.entries(g, index+1, 1+r.rng.IntN(4), false)
		}
		hs := r.hardState(g, index+uint64(len(es)))
		r.log("group %d save snapshot=%d/%d voters=%v data=%d hs=%s entries=%s", group, index, term, voters, len(sn.GetData()), fmtHardState(hs), traceEntries(es))
		err := l.Save(hs, es, sn)
		if merr := ms.ApplySnapshot(sn); merr != nil {
			if err != merr {
				r.fail("Save = %v, MemoryStorage's ApplySnapshot = %v", err, merr)
			}
			return
		}
		if err != nil {
			r.fail("Save: %v", err)
		}
		_ = ms.Append(es)
		if !raft.IsEmptyHardState(hs) {
			_ = ms.SetHardState(hs)
		}
	case op < 67: // compact
		ci := max(first, 2) - 2 + r.rng.Uint64N(last+4-max(first, 2)) // first-2 to last+1
		r.log("group %d compact %d", group, ci)
		err := l.Compact(ci)
		if ci > last {
			if !errors.Is(err, raft.ErrUnavailable) {
				r.fail("Compact(%d) beyond the last index %d: %v", ci, last, err)
			}
			return
		}
		if merr := ms.Compact(ci); err != merr {
			r.fail("Compact(%d) = %v, MemoryStorage's = %v", ci, err, merr)
		}
	case op < 79: // create a snapshot
		i := max(first, 2) - 2 + r.rng.Uint64N(last+4-max(first, 2))
		var cs *raftpb.ConfState
		if r.rng.IntN(3) > 0 {
			cs = &raftpb.ConfState{Voters: []uint64{1 + r.rng.Uint64N(5)}, Learners: []uint64{7}}
		}
		data := r.data()
		r.log("group %d create snapshot %d cs=%v data=%d", group, i, cs != nil, len(data))
		got, err := l.CreateSnapshot(i, cs, data)
		switch {
		case i <= snapIndex: // MemoryStorage checks this first too
		case i > last:
			if !errors.Is(err, raft.ErrUnavailable) {
				r.fail("CreateSnapshot(%d) beyond the last index %d: %v", i, last, err)
			}
			return
		case i+1 < first && i > snapIndex:
			if err != raft.ErrCompacted {
				r.fail("CreateSnapshot(%d) below the first index %d: %v", i, first, err)
			}
			return
		}
		want, merr := ms.CreateSnapshot(i, cs, data)
		if err != merr || fmtSnapshot(got) != fmtSnapshot(want) {
			r.fail("CreateSnapshot(%d) = %s, %v; MemoryStorage %s, %v", i, fmtSnapshot(got), err, fmtSnapshot(want), merr)
		}
	case op < 87: // refused: a gap, or a commit past the end
		before := dumpStorage(r.t, l)
		es := r.entries(g, last+2+r.rng.Uint64N(3), 2, false)
		hs := hardState(r.terms[g], 1, last+1)
		if r.rng.IntN(2) == 0 {
			es = nil
		}
		r.log("group %d refused save hs=%s entries=%s", group, fmtHardState(hs), traceEntries(es))
		if err := l.Save(hs, es, nil); !errors.Is(err, ErrInvalidRaftRequest) {
			r.fail("Save with a gap or commit %d past %d: %v, want ErrInvalidRaftRequest", last+1, last, err)
		}
		if after := dumpStorage(r.t, l); after != before {
			r.fail("a refused Save changed the log:\n%s\nwas:\n%s", after, before)
		}
	case op < 92:
		r.reopen()
	default: // a hard state alone
		hs := hardState(r.terms[g], r.rng.Uint64N(4), r.rng.Uint64N(last+1))
		r.log("group %d save hs=%s", group, fmtHardState(hs))
		if err := l.Save(hs, nil, nil); err != nil {
			r.fail("Save: %v", err)
		}
		if !raft.IsEmptyHardState(hs) {
			_ = ms.SetHardState(hs)
		}
	}
}

// BenchmarkRaftLogSave saves batches of 1 KiB entries with a hard state,
// as a leader persisting each Ready does, fsync=always: entries/s and
// fsyncs per Save. groups=64 has 64 groups save at once, one goroutine
// each, to show their fsyncs shared through the store's group commit.
//
//	go test -run '^$' -bench RaftLogSave -benchtime 2s ./storage
func BenchmarkRaftLogSave(b *testing.B) {
	const payload = 1024
	for _, groups := range []int{1, 64} {
		for _, batch := range []int{1, 64} {
			b.Run(fmt.Sprintf("fsync=always/payload=%d/batch=%d/groups=%d", payload, batch, groups), func(b *testing.B) {
				opts := DefaultOptions(b.TempDir())
				opts.Logger = benchLogger()
				s := openStore(b, opts)
				logs := make([]*RaftLog, groups)
				for g := range logs {
					logs[g] = mustRaftLog(b, s, uint64(g+1))
				}
				body := benchPayload(payload)
				var next atomic.Int64
				syncs := s.Syncs()
				b.SetBytes(int64(batch * payload))
				b.ResetTimer()
				var wg sync.WaitGroup
				for _, l := range logs {
					wg.Go(func() {
						last := uint64(0)
						for next.Add(1) <= int64(b.N) {
							es := make([]*raftpb.Entry, batch)
							for i := range es {
								es[i] = &raftpb.Entry{Index: new(last + 1 + uint64(i)), Term: new(uint64(1)), Type: raftpb.EntryNormal.Enum(), Data: body}
							}
							if err := l.Save(hardState(1, 1, last), es, nil); err != nil {
								b.Error(err)
								return
							}
							last += uint64(batch)
						}
					})
				}
				wg.Wait()
				b.StopTimer()
				b.ReportMetric(float64(b.N*batch)/b.Elapsed().Seconds(), "entries/s")
				b.ReportMetric(float64(s.Syncs()-syncs)/float64(b.N), "fsyncs/op")
			})
		}
	}
}
