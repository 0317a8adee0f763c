package storage

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"

	"github.com/ferrymq/ferry/internal/clock"
)

// echoGroup is a partition's Raft group reduced to its log: every proposal
// is committed at once, at the next index, and applied back through the
// Replica in order by a goroutine of its own.
type echoGroup struct {
	rep   *Replica
	index uint64 // owned by run; set before the first proposal
	q     chan []byte
	done  chan struct{}
}

func (g *echoGroup) Propose(data []byte, _ func(error)) { g.q <- data }

func (g *echoGroup) run(tb testing.TB) {
	defer close(g.done)
	for data := range g.q {
		g.index++
		if err := g.rep.Apply(context.Background(), []Entry{{Index: g.index, Data: data}}); err != nil {
			tb.Errorf("apply %d: %v", g.index, err)
		}
	}
}

// replicateEcho makes topic's partition part replicated through an
// echoGroup that goes on from the partition's applied index.
func replicateEcho(tb testing.TB, s *Store, topic string, part uint32) *echoGroup {
	tb.Helper()
	g := newEchoGroup()
	g.start(tb, s, topic, part, g)
	return g
}

func newEchoGroup() *echoGroup {
	return &echoGroup{q: make(chan []byte, 1024), done: make(chan struct{})}
}

// start makes topic's partition part replicated through proposer (g, or
// one wrapping it) and runs g from the partition's applied index.
func (g *echoGroup) start(tb testing.TB, s *Store, topic string, part uint32, proposer Proposer) {
	tb.Helper()
	rep, err := s.Replicate(context.Background(), topic, part, proposer)
	if err != nil {
		tb.Fatal(err)
	}
	g.rep, g.index = rep, rep.Applied()
	go g.run(tb)
	tb.Cleanup(func() {
		close(g.q)
		<-g.done
	})
}

// exportChunks exports the partition in chunks of about maxBytes.
func exportChunks(tb testing.TB, rep *Replica, maxBytes int) (applied uint64, chunks [][]byte) {
	tb.Helper()
	ex, err := rep.Export(context.Background())
	if err != nil {
		tb.Fatalf("Export: %v", err)
	}
	defer ex.Close()
	for {
		c, err := ex.Next(maxBytes)
		if err == io.EOF {
			return ex.Applied(), chunks
		}
		if err != nil {
			tb.Fatalf("Next: %v", err)
		}
		chunks = append(chunks, c)
	}
}

// importChunks imports chunks, minApplied at least; it returns the first
// error, the import aborted then.
func importChunks(tb testing.TB, rep *Replica, minApplied uint64, chunks [][]byte) error {
	tb.Helper()
	im, err := rep.Import(context.Background(), minApplied)
	if err != nil {
		tb.Fatalf("Import: %v", err)
	}
	defer im.Abort()
	for _, c := range chunks {
		if err := im.Add(c); err != nil {
			return err
		}
	}
	return im.Finish()
}

// partitionDump lists the keys an export of topic tid's partition part
// covers (its meta, cursors and messages, and the topic's acked ids), with
// values and expiries, and whether the import marker is there.
func partitionDump(tb testing.TB, s *Store, tid, part uint32) (keys []string, marked bool) {
	tb.Helper()
	err := s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.DefaultIteratorOptions)
		defer it.Close()
		for _, prefix := range [][]byte{partitionKey(tid, part), topicPrefix(kindAckedID, tid),
			partitionPrefix(kindCursor, tid, part), partitionPrefix(kindMessage, tid, part)} {
			for it.Seek(prefix); it.ValidForPrefix(prefix); it.Next() {
				v, err := it.Item().ValueCopy(nil)
				if err != nil {
					return err
				}
				keys = append(keys, fmt.Sprintf("%x=%x@%d", it.Item().Key(), v, it.Item().ExpiresAt()))
			}
		}
		_, err := txn.Get(importKey(tid, part))
		marked = err == nil
		return nil
	})
	if err != nil {
		tb.Fatal(err)
	}
	return keys, marked
}

func readAll(tb testing.TB, s *Store, topic string, part uint32) []string {
	tb.Helper()
	msgs, err := s.Read(context.Background(), topic, part, 0, 1<<20, 1<<30)
	var oor *OffsetOutOfRangeError
	if errors.As(err, &oor) {
		msgs, err = s.Read(context.Background(), topic, part, oor.First, 1<<20, 1<<30)
	}
	if err != nil {
		tb.Fatalf("read: %v", err)
	}
	out := make([]string, len(msgs))
	for i, m := range msgs {
		out[i] = fmt.Sprintf("%d %s %s %s %v %v", m.Offset, m.ID, m.Key, m.Payload, m.Headers, m.PublishTime.UnixNano())
	}
	return out
}

// exportSource is a store whose orders partition 0, replicated, has
// messages (some trimmed away), cursors of two subscriptions and acked ids
// that expire; and the same topic and subscriptions on a second store,
// whose partition 0 has other messages.
func exportSource(t *testing.T) (src, dst *Store, srcG, dstG *echoGroup, dstOpts Options) {
	t.Helper()
	ctx := context.Background()
	cfg := TopicConfig{Partitions: 2, RetentionMaxMessages: 40, DedupWindow: time.Hour}
	srcOpts := testOptions(t, clock.NewFake(t0))
	src = openStore(t, srcOpts)
	mustCreate(t, src, "orders", cfg)
	audit := mustCreateSub(t, src, "orders", "audit", nil, "a0", "a1")
	mustCreateSub(t, src, "orders", "billing", nil, "b0", "b1")
	srcG = replicateEcho(t, src, "orders", 0)
	for i := range 60 {
		m := Message{ID: fmt.Sprintf("id-%d", i), Payload: []byte(fmt.Sprint("payload ", i))}
		if i%3 == 0 {
			m.Key, m.Headers = []byte("k"), map[string]string{"h": "v"}
		}
		mustAppend(t, src, "orders", 0, m, Message{Payload: []byte("no id")})
	}
	if err := src.EnforceRetention(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := src.Write(ctx, Write{Topic: "orders", Subscription: audit.ID,
		Cursors:  []CursorWrite{{Partition: 0, State: []byte("audit at 100")}},
		AckedIDs: []string{"id-1", "id-2"}, AckedIDTTL: 100000 * time.Hour}); err != nil {
		t.Fatal(err)
	}
	if _, err := src.Write(ctx, Write{Topic: "orders", Subscription: audit.ID, AckedIDs: []string{"id-3"}}); err != nil {
		t.Fatal(err)
	}

	dstOpts = testOptions(t, clock.NewFake(t0))
	dst = openStore(t, dstOpts)
	mustCreate(t, dst, "orders", cfg)
	mustCreateSub(t, dst, "orders", "audit", nil, "a0", "a1")
	mustCreateSub(t, dst, "orders", "billing", nil, "b0", "b1")
	dstG = replicateEcho(t, dst, "orders", 0)
	for i := range 70 {
		mustAppend(t, dst, "orders", 0, Message{ID: fmt.Sprintf("other-%d", i), Payload: []byte("other")})
	}
	return src, dst, srcG, dstG, dstOpts
}

// TestExportImport moves a replicated partition from one store to another
// in small chunks: the importer ends with exactly the exporter's keys,
// values and expiries (its own messages gone), the same applied index,
// the same reads (none from its old tail cache), and gives the same dedup
// answers and offsets to the next entries.
func TestExportImport(t *testing.T) {
	ctx := context.Background()
	src, dst, srcG, dstG, _ := exportSource(t)
	if len(readAll(t, dst, "orders", 0)) != 70 {
		t.Fatal("the importer's own messages are not readable before the import")
	}
	applied, chunks := exportChunks(t, srcG.rep, 300)
	if applied != srcG.rep.Applied() || applied < 60 {
		t.Fatalf("export applied %d, the partition %d", applied, srcG.rep.Applied())
	}
	if len(chunks) < 10 {
		t.Fatalf("%d chunks; want many small ones", len(chunks))
	}
	if err := importChunks(t, dstG.rep, applied, chunks); err != nil {
		t.Fatalf("import: %v", err)
	}
	want, _ := partitionDump(t, src, srcG.rep.TopicID(), 0)
	got, marked := partitionDump(t, dst, dstG.rep.TopicID(), 0)
	if !slices.Equal(got, want) || marked {
		t.Fatalf("after the import the partition differs (marker %v):\n got %d keys %q\nwant %d keys %q", marked, len(got), got, len(want), want)
	}
	if dstG.rep.Applied() != applied {
		t.Fatalf("applied %d after the import, want %d", dstG.rep.Applied(), applied)
	}
	if w, g := readAll(t, src, "orders", 0), readAll(t, dst, "orders", 0); !slices.Equal(g, w) || len(w) != 40 {
		t.Fatalf("reads differ after the import:\n got %q\nwant %q", g, w)
	}
	for _, s := range []*Store{src, dst} {
		if acked, err := s.AckedIDs("orders", 1, []string{"id-1", "id-3", "id-4"}); err != nil || !slices.Equal(acked, []bool{true, true, false}) {
			t.Fatalf("acked ids: %v, %v", acked, err)
		}
	}

	// The next entries give the same answers on both: a retry of an id
	// published before the import is a duplicate at its original offset.
	dstG.index = applied
	batch := []Message{{ID: "id-55", Payload: []byte("retry")}, {ID: "new", Payload: []byte("new")}}
	wantRes := []AppendResult{{Offset: 110, Duplicate: true}, {Offset: 120}}
	for _, s := range []*Store{src, dst} {
		res, err := s.Append(ctx, "orders", 0, batch)
		if err != nil || !equalResults(res, wantRes) {
			t.Fatalf("append after the import: %+v, %v, want %+v", res, err, wantRes)
		}
	}
	want, _ = partitionDump(t, src, srcG.rep.TopicID(), 0)
	got, _ = partitionDump(t, dst, dstG.rep.TopicID(), 0)
	if !slices.Equal(got, want) {
		t.Fatalf("the partitions differ after the same entry:\n got %q\nwant %q", got, want)
	}
}

// TestImportCutShort: an import that stops half way (an abort, or a crash:
// either way only the chunks so far are written) leaves a partition that
// claims nothing applied and reads empty, also after a reopen; a new
// import then finishes, leaving nothing of the old one.
func TestImportCutShort(t *testing.T) {
	ctx := context.Background()
	src, dst, srcG, dstG, dstOpts := exportSource(t)
	applied, chunks := exportChunks(t, srcG.rep, 300)
	im, err := dstG.rep.Import(ctx, applied)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range chunks[:len(chunks)/2] {
		if err := im.Add(c); err != nil {
			t.Fatal(err)
		}
	}
	im.Abort()
	if dstG.rep.Applied() != 0 || len(readAll(t, dst, "orders", 0)) != 0 {
		t.Fatalf("after an abort: applied %d, %d messages readable", dstG.rep.Applied(), len(readAll(t, dst, "orders", 0)))
	}

	dst = reopenStore(t, dst, dstOpts)
	if _, marked := partitionDump(t, dst, srcG.rep.TopicID(), 0); !marked {
		t.Fatal("no import marker after a cut-short import")
	}
	dstG = replicateEcho(t, dst, "orders", 0)
	if dstG.rep.Applied() != 0 {
		t.Fatalf("applied %d after reopening a cut-short import, want 0: the group must restore it", dstG.rep.Applied())
	}
	if ps, _ := dst.Partitions("orders"); ps[0].Head != 0 || len(readAll(t, dst, "orders", 0)) != 0 {
		t.Fatalf("a cut-short import reads as head %d", ps[0].Head)
	}
	if err := importChunks(t, dstG.rep, applied, chunks); err != nil {
		t.Fatalf("import again: %v", err)
	}
	want, _ := partitionDump(t, src, srcG.rep.TopicID(), 0)
	got, marked := partitionDump(t, dst, dstG.rep.TopicID(), 0)
	if !slices.Equal(got, want) || marked || dstG.rep.Applied() != applied {
		t.Fatalf("after the second import (marker %v, applied %d):\n got %q\nwant %q", marked, dstG.rep.Applied(), got, want)
	}
}

// TestImportRefusesBadExport: an export that is not exactly one partition's
// consistent state is refused with ErrInvalidExport, and the partition
// then claims nothing applied; a good export still imports afterwards.
func TestImportRefusesBadExport(t *testing.T) {
	_, dst, srcG, dstG, _ := exportSource(t)
	applied, chunks := exportChunks(t, srcG.rep, 1) // a pair per chunk
	meta, rest := chunks[0], chunks[1:]
	lastMsg := len(chunks) - 1
	otherPart, err := decodeExportChunk(chunks[lastMsg])
	if err != nil {
		t.Fatal(err)
	}
	k := slices.Clone(otherPart[0].key)
	k[8]++ // partition 1
	otherPart[0].key = k
	cases := map[string][][]byte{
		"no meta first":        rest,
		"applied too low":      append([][]byte{meta}, rest...), // with minApplied above
		"a message missing":    slices.Delete(slices.Clone(chunks), lastMsg-3, lastMsg-2),
		"the last one missing": chunks[:lastMsg],
		"out of order":         append(slices.Clone(chunks[:lastMsg-1]), chunks[lastMsg], chunks[lastMsg-1]),
		"repeated":             append(slices.Clone(chunks), chunks[lastMsg]),
		"another partition":    append(slices.Clone(chunks[:lastMsg]), encodeExportChunk(otherPart)),
		"truncated":            append(slices.Clone(chunks[:lastMsg]), chunks[lastMsg][:len(chunks[lastMsg])-1]),
		"empty chunk":          append(slices.Clone(chunks), nil),
	}
	for name, cs := range cases {
		t.Run(name, func(t *testing.T) {
			min := applied
			if name == "applied too low" {
				min = applied + 1
			}
			err := importChunks(t, dstG.rep, min, cs)
			if !errors.Is(err, ErrInvalidExport) {
				t.Fatalf("import: %v, want ErrInvalidExport", err)
			}
			if dstG.rep.Applied() != 0 || len(readAll(t, dst, "orders", 0)) != 0 {
				t.Fatalf("after a refused import: applied %d", dstG.rep.Applied())
			}
		})
	}
	if err := importChunks(t, dstG.rep, applied, chunks); err != nil || dstG.rep.Applied() != applied {
		t.Fatalf("a good import after refused ones: %v, applied %d", err, dstG.rep.Applied())
	}
}

// TestReplicaSync: Sync costs an fsync, which Apply alone does not.
func TestReplicaSync(t *testing.T) {
	s := openStore(t, testOptions(t, clock.NewFake(t0)))
	mustCreate(t, s, "orders", TopicConfig{Partitions: 1})
	g := replicateEcho(t, s, "orders", 0)
	mustAppend(t, s, "orders", 0, msg("a", "1"))
	before := s.Syncs()
	if err := g.rep.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	if s.Syncs() != before+1 {
		t.Fatalf("%d fsyncs for Sync, want 1", s.Syncs()-before)
	}
}

// leaderEcho is an echoGroup that says whether this node leads.
type leaderEcho struct {
	*echoGroup
	leads atomic.Bool
}

func (g *leaderEcho) Leads() bool { return g.leads.Load() }

// TestReplicatedRetentionOnLeaderOnly: in a replicated store (a cluster)
// only the partition's leader proposes trims, which every replica applies;
// a partition with no group yet refuses writes and has nothing to trim.
func TestReplicatedRetentionOnLeaderOnly(t *testing.T) {
	opts := testOptions(t, clock.NewFake(time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)))
	opts.Replicated = true
	s := openStore(t, opts)
	ctx := context.Background()
	if _, err := s.CreateTopic(ctx, "orders", TopicConfig{Partitions: 2, RetentionMaxMessages: 5}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Append(ctx, "orders", 1, []Message{{ID: "x", Payload: []byte("x")}}); !errors.Is(err, ErrNotReplicated) {
		t.Fatalf("append to a partition with no group: %v, want ErrNotReplicated", err)
	}
	g := &leaderEcho{echoGroup: newEchoGroup()}
	g.start(t, s, "orders", 0, g)
	for i := range 20 {
		if _, err := s.Append(ctx, "orders", 0, []Message{{ID: fmt.Sprint(i), Payload: []byte("x")}}); err != nil {
			t.Fatal(err)
		}
	}
	first := func() uint64 {
		infos, err := s.Partitions("orders")
		if err != nil {
			t.Fatal(err)
		}
		return infos[0].First
	}
	if err := s.EnforceRetention(ctx); err != nil {
		t.Fatalf("retention as a follower: %v", err)
	}
	if f := first(); f != 0 {
		t.Fatalf("a follower trimmed to %d", f)
	}
	g.leads.Store(true)
	if err := s.EnforceRetention(ctx); err != nil {
		t.Fatalf("retention as the leader: %v", err)
	}
	if f := first(); f != 15 {
		t.Fatalf("the leader trimmed to %d, want 15", f)
	}
}

// TestExportEmptyPartition: a partition that applied entries but holds no
// message yet (a subscription's cursor write, or an owner's fence: every
// subscription's first load fences each partition) exports and imports
// like any other. Its newest publish time is zero, which the stored meta
// once encoded as a time in 1754 that no longer equalled the writer's
// zero, and the export was refused as corrupt — a follower behind the
// compacted log could not catch up on it.
func TestExportEmptyPartition(t *testing.T) {
	ctx := context.Background()
	src := openStore(t, testOptions(t, clock.NewFake(t0)))
	dst := openStore(t, testOptions(t, clock.NewFake(t0)))
	var sub Subscription
	for _, s := range []*Store{src, dst} {
		mustCreate(t, s, "orders", TopicConfig{Partitions: 1})
		sub = mustCreateSub(t, s, "orders", "audit", []byte("config"), "")
	}
	srcG, dstG := replicateEcho(t, src, "orders", 0), replicateEcho(t, dst, "orders", 0)
	if _, err := src.Write(ctx, Write{Topic: "orders", Subscription: sub.ID, Cursors: []CursorWrite{{Partition: 0, State: []byte("c0")}}}); err != nil {
		t.Fatal(err)
	}
	applied, chunks := exportChunks(t, srcG.rep, 1<<20)
	if applied == 0 {
		t.Fatal("the export applied nothing")
	}
	if err := importChunks(t, dstG.rep, applied, chunks); err != nil {
		t.Fatalf("import: %v", err)
	}
	want, _ := partitionDump(t, src, srcG.rep.TopicID(), 0)
	got, _ := partitionDump(t, dst, dstG.rep.TopicID(), 0)
	if !slices.Equal(got, want) {
		t.Fatalf("after the import:\n got %q\nwant %q", got, want)
	}
	// A meta written before the fix holds the zero time's out-of-range
	// nanoseconds: it reads back as zero too.
	legacy := (&partitionMeta{applied: 1}).encode()
	binary.BigEndian.PutUint64(legacy[25:], uint64(time.Time{}.UnixNano()))
	if m, err := decodePartitionMeta(legacy); err != nil || !m.lastTime.IsZero() || !m.equal(partitionMeta{applied: 1}) {
		t.Fatalf("a legacy meta of an empty partition reads back as %+v, %v", m, err)
	}
}
