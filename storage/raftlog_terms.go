package storage

import (
	"sort"

	"go.etcd.io/raft/v3/raftpb"
)

// termRuns are the terms of a Raft log's entries, in memory, as runs of
// one term: run k covers the indexes from runs[k].first to the next run's
// first minus one, the last run up to the log's last index. Terms never go
// down along a log, so a log has as many runs as terms it spans, however
// many entries: a handful, for a few words each. Raft asks the term of
// entries behind the tail cache at every append it sends or acknowledges
// (the previous entry's, to match), and reading it from Badger decoded the
// whole entry — its messages — for one number.
//
// The runs cover the entries saved since the log was loaded (or since its
// last snapshot); the term of an older entry is read from Badger, as
// before.
type termRuns struct {
	runs []termRun
}

type termRun struct{ first, term uint64 }

// term returns the term of entry i, if the runs cover it. The caller
// checks that i is within the log's bounds.
func (t *termRuns) term(i uint64) (uint64, bool) {
	if len(t.runs) == 0 || i < t.runs[0].first {
		return 0, false
	}
	k := sort.Search(len(t.runs), func(k int) bool { return t.runs[k].first > i }) - 1
	return t.runs[k].term, true
}

// append records entries saved from their first index on, which replace
// any from that index on (a conflicting suffix). They are consecutive and
// start at most one past the log's last index (Save checked).
func (t *termRuns) append(entries []*raftpb.Entry) {
	if len(entries) == 0 {
		return
	}
	first := entries[0].GetIndex()
	k := sort.Search(len(t.runs), func(k int) bool { return t.runs[k].first >= first })
	t.runs = t.runs[:k]
	for _, e := range entries {
		if n := len(t.runs); n == 0 || t.runs[n-1].term != e.GetTerm() {
			t.runs = append(t.runs, termRun{first: e.GetIndex(), term: e.GetTerm()})
		}
	}
}

// reset forgets every run: the log was replaced by a snapshot.
func (t *termRuns) reset() { t.runs = nil }

// compact drops the runs wholly at or below index (the log's new
// compaction point).
func (t *termRuns) compact(index uint64) {
	k := 0
	for k+1 < len(t.runs) && t.runs[k+1].first <= index+1 {
		k++
	}
	t.runs = t.runs[k:]
}
