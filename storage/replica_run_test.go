package storage

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ferrymq/ferry/internal/clock"
)

// idleProposer proposes nothing: the test hands the partition its entries.
type idleProposer struct{}

func (idleProposer) Propose([]byte, func(error)) {}

// durableCommits is how many durable commits (fsync=always) the store of
// reg has made.
func durableCommits(t *testing.T, reg *prometheus.Registry) uint64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "ferry_storage_fsync_duration_seconds" {
			return mf.GetMetric()[0].GetHistogram().GetSampleCount()
		}
	}
	t.Fatal("no ferry_storage_fsync_duration_seconds")
	return 0
}

// runEntries encodes one entry per command list, at indexes from first on.
func runEntries(t *testing.T, first uint64, at time.Time, cmds ...[]*command) []Entry {
	t.Helper()
	var ents []Entry
	for i, c := range cmds {
		data, err := encodeEntry(at, first+uint64(i), c)
		if err != nil {
			t.Fatal(err)
		}
		ents = append(ents, Entry{Index: first + uint64(i), Data: data})
	}
	return ents
}

func appendCmd(ids ...string) []*command {
	c := &command{kind: cmdAppend, dedupWindow: time.Hour}
	for _, id := range ids {
		c.msgs = append(c.msgs, Message{ID: id, Payload: []byte("payload of " + id)})
	}
	return []*command{c}
}

// TestReplicaAppliesRunsInOneCommit hands a replicated partition runs of
// committed entries, as its group's applier does, and checks what a run
// promises: under fsync=always a run is one durable commit, not one per
// entry (each would be an fsync, serially per partition: what held a
// three-node cluster to a third of one node); each entry of a run sees
// the ones before it, not committed yet — an id stored by one is a
// duplicate in the next, a fence raised by one refuses a stale write in
// the next; a malformed entry in a run is skipped alone; a run too big
// for one transaction is applied in parts; and entries already applied
// are skipped.
func TestReplicaAppliesRunsInOneCommit(t *testing.T) {
	ctx := context.Background()
	reg := prometheus.NewRegistry()
	opts := testOptions(t, clock.NewFake(t0))
	opts.Metrics = NewMetrics(reg)
	s := openStore(t, opts)
	mustCreate(t, s, "orders", TopicConfig{Partitions: 1})
	sub := mustCreateSub(t, s, "orders", "audit", []byte("config"), "")
	rep, err := s.Replicate(ctx, "orders", 0, idleProposer{})
	if err != nil {
		t.Fatal(err)
	}
	head := func() uint64 {
		t.Helper()
		ps, err := s.Partitions("orders")
		if err != nil {
			t.Fatal(err)
		}
		return ps[0].Head
	}

	// One run: five entries, one commit. "a" again in the second entry is
	// a duplicate of the first's; the fence in the third refuses the
	// fourth's write at the old epoch (its message and cursor); the fifth,
	// at the new epoch, goes.
	write := func(epoch uint64, id, cursor string) []*command {
		return []*command{{kind: cmdAppend, epoch: epoch, dedupWindow: time.Hour, sid: sub.ID,
			msgs:    []Message{{ID: id, Payload: []byte(id)}},
			cursors: []cursorWrite{{sid: sub.ID, state: []byte(cursor)}}}}
	}
	run := runEntries(t, 1, t0,
		appendCmd("a", "b"),
		appendCmd("a", "c"),
		[]*command{{kind: cmdFence, sid: sub.ID, epoch: 4}},
		write(3, "stale", "stale cursor"),
		write(4, "fresh", "fresh cursor"))
	before := durableCommits(t, reg)
	if err := rep.Apply(ctx, run); err != nil {
		t.Fatal(err)
	}
	if n := durableCommits(t, reg) - before; n != 1 {
		t.Fatalf("a run of %d entries made %d durable commits, want 1", len(run), n)
	}
	if rep.Applied() != 5 {
		t.Fatalf("applied %d after the run, want 5", rep.Applied())
	}
	msgs, err := s.Read(ctx, "orders", 0, 0, 10, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, m := range msgs {
		ids = append(ids, m.ID)
	}
	if fmt.Sprint(ids) != "[a b c fresh]" {
		t.Fatalf("stored %v, want [a b c fresh]: a duplicate across entries or the fenced write stored", ids)
	}
	if cs, err := s.Cursors("orders", sub.ID); err != nil || string(cs[0]) != "fresh cursor" {
		t.Fatalf("cursor %q, %v: want the new owner's", cs, err)
	}

	// Entries applied already are skipped; a malformed entry amid a run
	// is skipped alone, the others applied around it.
	run = append(runEntries(t, 4, t0, appendCmd("x"), appendCmd("y")), Entry{Index: 6, Data: []byte("not an entry")})
	run = append(run, runEntries(t, 7, t0, appendCmd("z"))...)
	if err := rep.Apply(ctx, run); err != nil {
		t.Fatal(err)
	}
	if rep.Applied() != 7 || head() != 5 {
		t.Fatalf("applied %d, head %d after replayed, malformed and new entries: want 7 and 5", rep.Applied(), head())
	}

	// A run over what one transaction takes (the bound let through on
	// purpose) is applied in parts, all of it.
	s.sync.commits.maxBytes = 1 << 40
	// 64 entries of 200 messages of 400 bytes, kept inline by Badger
	// (under ValueThreshold): 5 MiB of records, over the 4.8 MiB a
	// transaction of a 32 MiB memtable takes.
	var big [][]*command
	payload := make([]byte, 400)
	for i := range 64 {
		c := &command{kind: cmdAppend}
		for j := range 200 {
			c.msgs = append(c.msgs, Message{ID: fmt.Sprint("big-", i, "-", j), Payload: payload})
		}
		big = append(big, []*command{c})
	}
	before = durableCommits(t, reg)
	if err := rep.Apply(ctx, runEntries(t, 8, t0, big...)); err != nil {
		t.Fatalf("a run of %d entries of 80 KiB: %v", len(big), err)
	}
	if head() != 5+64*200 || rep.Applied() != 7+64 {
		t.Fatalf("head %d, applied %d after the big run, want %d and %d", head(), rep.Applied(), 5+64*200, 7+64)
	}
	if n := durableCommits(t, reg) - before; n < 2 {
		t.Fatalf("%d durable commits for 5 MiB of records, want it split", n)
	}
}
