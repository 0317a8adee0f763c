package storage

import (
	"context"
	"errors"
	"expvar"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"

	"github.com/ferrymq/ferry/internal/clock"
)

// refHeader is the header the test groups put before a proposal's data, as
// cluster's groups put theirs: a reference must skip it.
const refHeader = 17

// startRefGroup makes orders partition 0 of s replicated through a
// one-voter Raft group 1 (bootstrapped if new) whose entries carry a
// header, has it campaign and returns it; tell says whether its proposer tells
// the log from the start.
func startRefGroup(t *testing.T, s *Store, tell bool) *raftProposer {
	t.Helper()
	l := mustRaftLog(t, s, 1)
	if last, err := l.LastIndex(); err != nil {
		t.Fatal(err)
	} else if last == 0 {
		mustSave(t, l, nil, nil, snapshotAt(1, 1, nil, 1))
	}
	p := &raftProposer{header: refHeader}
	p.tell.Store(tell)
	rp := startRaftProposerWith(t, s, "orders", 0, l, p)
	rp.campaign()
	return rp
}

// appendUntilLed appends msgs, retrying while the group has no leader yet.
func appendUntilLed(t *testing.T, s *Store, msgs ...Message) []AppendResult {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		res, err := s.Append(context.Background(), "orders", 0, msgs)
		if err == nil {
			return res
		}
		if time.Now().After(deadline) {
			t.Fatalf("append: %v", err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// storedKinds returns, per message key of orders partition 0 from offset
// from, 'r' for a reference and 'm' for a record.
func storedKinds(t *testing.T, s *Store, from uint64) string {
	t.Helper()
	h, p, err := s.partition("orders", 0)
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	err = s.db.View(func(txn *badger.Txn) error {
		opts := badger.DefaultIteratorOptions
		opts.Prefix = partitionPrefix(kindMessage, h.topic.id, p.part)
		it := txn.NewIterator(opts)
		defer it.Close()
		for it.Seek(messageSeekKey(h.topic.id, p.part, from)); it.Valid(); it.Next() {
			if err := it.Item().Value(func(v []byte) error {
				if isMessageRef(v) {
					b.WriteByte('r')
				} else {
					b.WriteByte('m')
				}
				return nil
			}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// pinOf returns orders partition 0's committed pin and synced pin.
func pinOf(t *testing.T, s *Store) (pin, pinOff, synced uint64) {
	t.Helper()
	_, p, err := s.partition("orders", 0)
	if err != nil {
		t.Fatal(err)
	}
	st, resume, err := p.hold(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	resume(st)
	return st.meta.pin, st.meta.pinOff, p.syncedPin.Load()
}

// refMessage is message i of the tests' publishes: a mix of ids, keys,
// headers and empty payloads.
func refMessage(i int) Message {
	m := Message{Payload: []byte(fmt.Sprint("payload ", i))}
	if i%2 == 0 {
		m.ID = fmt.Sprint("id-", i)
	}
	if i%3 == 0 {
		m.Key, m.Headers = []byte(fmt.Sprint("k", i)), map[string]string{"h": fmt.Sprint(i), "a": "b"}
	}
	if i%7 == 0 {
		m.Payload = nil
	}
	return m
}

// TestReplicaReferencesEntries: a replicated partition whose proposer tells
// its group's log stores applied messages as references to their entries
// (those applied before it knew stay records), and reads give back exactly
// what was published — with duplicates answered as ever; the log is never
// compacted past an entry a retained message references, and only past
// the entries retention trimmed once that trim is synced; a restart reads
// the same and keeps the bound from the start; an export resolves the
// references into records, and the importer holds only records.
func TestReplicaReferencesEntries(t *testing.T) {
	ctx := context.Background()
	opts := testOptions(t, clock.NewFake(t0))
	s := openStore(t, opts)
	mustCreate(t, s, "orders", TopicConfig{Partitions: 1, DedupWindow: time.Hour})
	rp := startRefGroup(t, s, false)

	var want []string
	publish := func(from, to int) {
		t.Helper()
		var batch []Message
		for i := from; i < to; i++ {
			batch = append(batch, refMessage(i))
		}
		batch = append(batch, refMessage(from)) // a duplicate if it has an id
		res := appendUntilLed(t, s, batch...)
		for i, r := range res {
			if i == len(batch)-1 {
				if batch[i].ID != "" && !r.Duplicate {
					t.Fatalf("a repeat of %s was stored again at %d", batch[i].ID, r.Offset)
				}
				if batch[i].ID != "" {
					break
				}
			}
			m := batch[i]
			want = append(want, fmt.Sprintf("%d %s %s %s %v", r.Offset, m.ID, m.Key, m.Payload, m.Headers))
		}
	}
	read := func(s *Store) []string {
		t.Helper()
		var got []string
		for _, line := range readAll(t, s, "orders", 0) {
			got = append(got, line[:strings.LastIndexByte(line, ' ')]) // without the time
		}
		return got
	}
	retained := func() []string {
		ps, err := s.Partitions("orders")
		if err != nil {
			t.Fatal(err)
		}
		return want[len(want)-int(ps[0].Messages):]
	}

	publish(0, 5)
	rp.tell.Store(true)
	for b := range 20 {
		publish(5+10*b, 15+10*b)
	}
	kinds := storedKinds(t, s, 0)
	if !strings.HasPrefix(kinds, "mmmmm") || strings.Count(kinds, "r") != len(want)-5 {
		t.Fatalf("stored %s: want 5 records, applied before the log was known, then references", kinds)
	}
	if got := read(s); !slices.Equal(got, want) {
		t.Fatalf("read %d messages:\n%s\nwant %d:\n%s", len(got), strings.Join(got, "\n"), len(want), strings.Join(want, "\n"))
	}

	// Compaction stops at the first referenced entry.
	pin, pinOff, _ := pinOf(t, s)
	if pin == 0 || pinOff != 5 {
		t.Fatalf("pin %d at offset %d, want the entry of offset 5", pin, pinOff)
	}
	if err := rp.rep.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	compact := func() uint64 {
		t.Helper()
		last, err := rp.l.LastIndex()
		if err != nil {
			t.Fatal(err)
		}
		if err := rp.l.Compact(last); err != nil {
			t.Fatalf("Compact(%d): %v", last, err)
		}
		first, err := rp.l.FirstIndex()
		if err != nil {
			t.Fatal(err)
		}
		return first
	}
	if first := compact(); first != pin {
		t.Fatalf("log compacted to first index %d; the pinned entry is %d", first, pin)
	}
	if got := read(s); !slices.Equal(got, want) {
		t.Fatalf("after a compaction, read %q", got)
	}

	// Retention trims past the pinned entry: the pin moves, but the log
	// is compacted past the old one only once the trim is synced.
	if _, err := s.UpdateTopic(ctx, "orders", func(c *TopicConfig) { c.RetentionMaxMessages = 57 }); err != nil {
		t.Fatal(err)
	}
	if err := s.EnforceRetention(ctx); err != nil {
		t.Fatal(err)
	}
	newPin, newOff, synced := pinOf(t, s)
	if newPin <= pin || synced != pin {
		t.Fatalf("after a trim: pin %d (was %d), synced %d", newPin, pin, synced)
	}
	if first := compact(); first != pin {
		t.Fatalf("log compacted to first index %d before the trim was synced; the synced pin is %d", first, pin)
	}
	if err := rp.rep.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if first := compact(); first != newPin {
		t.Fatalf("log compacted to first index %d after the trim was synced; the pin is %d (offset %d)", first, newPin, newOff)
	}
	if got := read(s); !slices.Equal(got, retained()) {
		t.Fatalf("after retention, read %q, want %q", got, retained())
	}

	// A restart reads the same, and bounds compaction before the
	// proposer tells the log.
	rp.close()
	s = reopenStore(t, s, opts)
	if got := read(s); !slices.Equal(got, retained()) {
		t.Fatalf("after a restart, read %q, want %q", got, retained())
	}
	rp = startRefGroup(t, s, false)
	if first := compact(); first != newPin {
		t.Fatalf("after a restart, log compacted to first index %d; the pin is %d", first, newPin)
	}
	rp.tell.Store(true)
	publish(1000, 1010)
	if got := read(s); !slices.Equal(got, retained()) {
		t.Fatalf("after a restart and a publish, read %q, want %q", got, retained())
	}

	// An export resolves references: the importer has records only.
	dst := openStore(t, testOptions(t, clock.NewFake(t0)))
	mustCreate(t, dst, "orders", TopicConfig{Partitions: 1, DedupWindow: time.Hour})
	dstG := replicateEcho(t, dst, "orders", 0)
	applied, chunks := exportChunks(t, rp.rep, 512)
	if err := importChunks(t, dstG.rep, applied, chunks); err != nil {
		t.Fatal(err)
	}
	if got := read(dst); !slices.Equal(got, retained()) {
		t.Fatalf("imported, read %q, want %q", got, retained())
	}
	if kinds := storedKinds(t, dst, 0); strings.Contains(kinds, "r") {
		t.Fatalf("the importer stored %s: references to entries its log does not have", kinds)
	}
	if pin, _, synced := pinOf(t, dst); pin != 0 || synced != 0 {
		t.Fatalf("the importer pins entry %d (synced %d)", pin, synced)
	}
}

// TestReplicaReferenceMissingEntry: a snapshot from the leader replaces
// the log, but the entries the partition's messages reference stay until
// the import it asks for replaces the partition, so reads meanwhile give
// what they gave; if a restart cuts that short (the group's load deletes
// what is outside the log), a reference whose entry is gone reads as
// ErrCorrupt, never as some other message.
func TestReplicaReferenceMissingEntry(t *testing.T) {
	ctx := context.Background()
	opts := testOptions(t, clock.NewFake(t0))
	s := openStore(t, opts)
	mustCreate(t, s, "orders", TopicConfig{Partitions: 1})
	rp := startRefGroup(t, s, true)
	appendUntilLed(t, s, refMessage(1), refMessage(2))
	last, err := rp.l.LastIndex()
	if err != nil {
		t.Fatal(err)
	}
	rp.close()
	mustSave(t, rp.l, nil, nil, snapshotAt(last+5, 3, []byte("marker"), 1))
	// An export reads Badger, not the tail cache.
	if _, chunks := exportChunks(t, rp.rep, 1<<20); len(chunks) == 0 {
		t.Fatal("no export")
	}
	s = reopenStore(t, s, opts)
	mustRaftLog(t, s, 1) // its load deletes the entries outside the log
	if _, err := s.Read(ctx, "orders", 0, 0, 10, 1<<20); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("read of references to entries a snapshot replaced, after a restart: %v, want ErrCorrupt", err)
	}
}

// TestReplicaWritesOnce: a replicated partition writes each payload once —
// in its Raft entry — not again when the entry is applied. Badger's own
// counters of bytes written to its value log and memtables (the WAL),
// for 2,000 messages of 1 KiB in entries of 50, must stay within 1.3× the
// payload bytes; a partition that stores records (its proposer does not
// tell the log) writes them twice, which the same count shows.
func TestReplicaWritesOnce(t *testing.T) {
	written := func(tell bool) float64 {
		s := openStore(t, testOptions(t, clock.NewFake(t0)))
		mustCreate(t, s, "orders", TopicConfig{Partitions: 1})
		startRefGroup(t, s, tell)
		appendUntilLed(t, s, Message{Payload: []byte("first")})
		before := badgerWritten(t)
		const n, batch, size = 2000, 50, 1024
		for b := 0; b < n/batch; b++ {
			msgs := make([]Message, batch)
			for i := range msgs {
				msgs[i] = Message{ID: fmt.Sprintf("m-%d-%d", b, i), Payload: make([]byte, size)}
			}
			appendUntilLed(t, s, msgs...)
		}
		ratio := float64(badgerWritten(t)-before) / float64(n*size)
		t.Logf("tell the log %v: %.2f bytes written per payload byte", tell, ratio)
		return ratio
	}
	if r := written(true); r < 1 || r > 1.3 {
		t.Fatalf("storing references: %.2f bytes written per payload byte, want 1 to 1.3", r)
	}
	if r := written(false); r < 1.8 {
		t.Fatalf("storing records: %.2f bytes written per payload byte; the count misses the second copy", r)
	}
}

// badgerWritten is what every Badger database of the process has written
// to value logs and memtables (their WAL), from Badger's expvar counters.
func badgerWritten(t *testing.T) int64 {
	t.Helper()
	var n int64
	for _, name := range []string{"badger_write_bytes_vlog", "badger_write_bytes_l0"} {
		v, ok := expvar.Get(name).(*expvar.Int)
		if !ok {
			t.Fatalf("badger exports no %s", name)
		}
		n += v.Value()
	}
	return n
}
