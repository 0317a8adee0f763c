package storage

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/ferrymq/ferry/internal/clock"
)

func mustCreateSub(tb testing.TB, s *Store, topic, name string, config []byte, cursors ...string) Subscription {
	tb.Helper()
	states := make([][]byte, len(cursors))
	for i, c := range cursors {
		states[i] = []byte(c)
	}
	sub, err := s.CreateSubscription(context.Background(), topic, name, config, states)
	if err != nil {
		tb.Fatalf("CreateSubscription(%q, %q): %v", topic, name, err)
	}
	return sub
}

func mustWrite(tb testing.TB, s *Store, w Write) [][]AppendResult {
	tb.Helper()
	res, err := s.Write(context.Background(), w)
	if err != nil {
		tb.Fatalf("Write: %v", err)
	}
	return res
}

// wantCursors checks a subscription's cursor states.
func wantCursors(tb testing.TB, s *Store, topic string, sid uint32, want ...string) {
	tb.Helper()
	states, err := s.Cursors(topic, sid)
	got := make([]string, len(states))
	for i, st := range states {
		got[i] = string(st)
	}
	if err != nil || !slices.Equal(got, want) {
		tb.Fatalf("Cursors(%q, %d) = %q, %v; want %q", topic, sid, got, err, want)
	}
}

// wantAcked checks that AckedIDs reports acked and not notAcked.
func wantAcked(tb testing.TB, s *Store, topic string, sid uint32, acked, notAcked []string) {
	tb.Helper()
	got, err := s.AckedIDs(topic, sid, append(slices.Clone(acked), notAcked...))
	want := append(slices.Repeat([]bool{true}, len(acked)), make([]bool, len(notAcked))...)
	if err != nil || !slices.Equal(got, want) {
		tb.Fatalf("AckedIDs(%q, %d, %q) = %v, %v; want %v", topic, sid, append(acked, notAcked...), got, err, want)
	}
}

// heads returns the head of every partition of the topics, in order.
func heads(tb testing.TB, s *Store, topics ...string) []uint64 {
	tb.Helper()
	var hs []uint64
	for _, topic := range topics {
		infos, err := s.Partitions(topic)
		if err != nil {
			tb.Fatalf("Partitions(%q): %v", topic, err)
		}
		for _, in := range infos {
			hs = append(hs, in.Head)
		}
	}
	return hs
}

func wantHeads(tb testing.TB, s *Store, want []uint64, topics ...string) {
	tb.Helper()
	if got := heads(tb, s, topics...); !slices.Equal(got, want) {
		tb.Fatalf("heads of %v = %v, want %v", topics, got, want)
	}
}

// reopenStore closes s and opens its dir again, then waits for the drops
// that Close cut short and Open resumed.
func reopenStore(tb testing.TB, s *Store, opts Options) *Store {
	tb.Helper()
	if err := s.Close(context.Background()); err != nil {
		tb.Fatalf("Close: %v", err)
	}
	s = openStore(tb, opts)
	s.bg.Wait()
	return s
}

func sameSub(a, b Subscription) bool {
	return a.Topic == b.Topic && a.Name == b.Name && a.ID == b.ID && bytes.Equal(a.Config, b.Config) && a.CreateTime.Equal(b.CreateTime)
}

func TestCreateUpdateSubscription(t *testing.T) {
	ctx := context.Background()
	opts := testOptions(t, clock.NewFake(t0))
	s := openStore(t, opts)
	mustCreate(t, s, "src", TopicConfig{Partitions: 2})
	mustCreate(t, s, "other", TopicConfig{})
	b := mustCreateSub(t, s, "src", "b", []byte("cfg-b"), "\x00\xff\x01", "")
	a := mustCreateSub(t, s, "src", "a", nil, "a0", "a1")
	if a.ID == b.ID || b.Topic != "src" || b.Name != "b" || string(b.Config) != "cfg-b" || !b.CreateTime.Equal(t0) {
		t.Fatalf("created %+v and %+v", a, b)
	}
	tests := []struct {
		name, topic, sub string
		cursors          int
		want             error
	}{
		{"exists", "src", "b", 2, ErrSubscriptionExists},
		{"bad name", "src", "bad name!", 2, ErrInvalidConfig},
		{"empty name", "src", "", 2, ErrInvalidConfig},
		{"unknown topic", "nope", "c", 2, ErrTopicNotFound},
		{"too few cursors", "src", "c", 1, ErrInvalidConfig},
		{"too many cursors", "src", "c", 3, ErrInvalidConfig},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := s.CreateSubscription(ctx, tc.topic, tc.sub, []byte("other cfg"), make([][]byte, tc.cursors))
			if !errors.Is(err, tc.want) {
				t.Fatalf("create: %v, want %v", err, tc.want)
			}
			if tc.want == ErrSubscriptionExists && !sameSub(got, b) {
				t.Fatalf("create of a taken name returned %+v, want the existing %+v", got, b)
			}
		})
	}
	up, err := s.UpdateSubscription(ctx, "src", "b", []byte("cfg-b2"))
	if b.Config = []byte("cfg-b2"); err != nil || !sameSub(up, b) {
		t.Fatalf("update = %+v, %v; want %+v", up, err, b)
	}
	if _, err := s.UpdateSubscription(ctx, "src", "c", nil); !errors.Is(err, ErrSubscriptionNotFound) {
		t.Fatalf("update of an unknown subscription: %v", err)
	}
	check := func(t *testing.T, s *Store) {
		t.Helper()
		if subs, err := s.Subscriptions("src"); err != nil || len(subs) != 2 || !sameSub(subs[0], a) || !sameSub(subs[1], b) {
			t.Fatalf("Subscriptions = %+v, %v; want a, b", subs, err)
		}
		if got, err := s.Subscription("src", "b"); err != nil || !sameSub(got, b) {
			t.Fatalf("Subscription(b) = %+v, %v", got, err)
		}
		if _, err := s.Subscription("src", "c"); !errors.Is(err, ErrSubscriptionNotFound) {
			t.Fatalf("Subscription(c): %v, want ErrSubscriptionNotFound", err)
		}
		if subs, err := s.Subscriptions("other"); err != nil || len(subs) != 0 {
			t.Fatalf("Subscriptions(other) = %+v, %v", subs, err)
		}
		wantCursors(t, s, "src", b.ID, "\x00\xff\x01", "")
		wantCursors(t, s, "src", a.ID, "a0", "a1")
		if n, c := countKeys(t, s, kindSub), countKeys(t, s, kindCursor); n != 2 || c != 4 {
			t.Fatalf("%d subscription keys and %d cursor keys, want 2 and 4: a refused create wrote", n, c)
		}
	}
	check(t, s)
	s = reopenStore(t, s, opts)
	check(t, s)

	// Ids are never reused, not after a delete, not after a reopen.
	seen := map[uint32]bool{a.ID: true, b.ID: true}
	fresh := func(sub Subscription) {
		t.Helper()
		if seen[sub.ID] {
			t.Fatalf("subscription %q reuses id %d", sub.Name, sub.ID)
		}
		seen[sub.ID] = true
	}
	if err := s.DeleteSubscription(ctx, "src", "a"); err != nil {
		t.Fatal(err)
	}
	fresh(mustCreateSub(t, s, "src", "a", nil, "x", "y"))
	s = reopenStore(t, s, opts)
	fresh(mustCreateSub(t, s, "src", "c", nil, "x", "y"))
	fresh(mustCreateSub(t, s, "other", "a", nil, "x"))
}

func TestWriteSinglePartition(t *testing.T) {
	opts := testOptions(t, clock.NewFake(t0))
	s := openStore(t, opts)
	mustCreate(t, s, "src", TopicConfig{Partitions: 2})
	sub := mustCreateSub(t, s, "src", "s", nil, "c0", "c1")
	other := mustCreateSub(t, s, "src", "o", nil, "o0", "o1")
	if res := mustWrite(t, s, Write{Topic: "src", Subscription: sub.ID, Cursors: []CursorWrite{{0, []byte("c0-2")}}, AckedIDs: []string{"a", "b"}}); res != nil {
		t.Fatalf("results %v for a write without appends", res)
	}
	// A cursor and messages in the same partition.
	res := mustWrite(t, s, Write{Topic: "src", Subscription: sub.ID, Cursors: []CursorWrite{{1, []byte("c1-2")}},
		Appends: []AppendBatch{{Topic: "src", Partition: 1, Messages: []Message{msg("m", "x"), msg("m", "again")}}}})
	if want := "[[{0 false} {0 true}]]"; fmt.Sprint(res) != want {
		t.Fatalf("results = %v, want %s", res, want)
	}
	check := func(t *testing.T, s *Store) {
		t.Helper()
		wantCursors(t, s, "src", sub.ID, "c0-2", "c1-2")
		wantCursors(t, s, "src", other.ID, "o0", "o1")
		wantAcked(t, s, "src", sub.ID, []string{"a", "b"}, []string{"x", ""})
		wantAcked(t, s, "src", other.ID, nil, []string{"a", "b"})
		wantHeads(t, s, []uint64{0, 1}, "src")
		if m := mustRead(t, s, "src", 1, 0, 10); len(m) != 1 || m[0].ID != "m" || string(m[0].Payload) != "x" {
			t.Fatalf("read %+v", m)
		}
	}
	check(t, s)
	s = reopenStore(t, s, opts)
	check(t, s)
}

// TestWriteAckedIDsWithoutCursors acks ids with appends to another topic
// and no cursor (dead-lettering): the ids are the subscription's all the same.
func TestWriteAckedIDsWithoutCursors(t *testing.T) {
	s := openStore(t, testOptions(t, clock.NewFake(t0)))
	mustCreate(t, s, "src", TopicConfig{})
	mustCreate(t, s, "dlq", TopicConfig{Partitions: 2})
	sub := mustCreateSub(t, s, "src", "s", nil, "c")
	for _, parts := range [][]uint32{{1}, {0, 1}} {
		t.Run(fmt.Sprintf("%d partitions", len(parts)), func(t *testing.T) {
			id := fmt.Sprint("acked-", len(parts))
			w := Write{Topic: "src", Subscription: sub.ID, AckedIDs: []string{id}}
			for _, p := range parts {
				w.Appends = append(w.Appends, AppendBatch{Topic: "dlq", Partition: p, Messages: []Message{msg(id, "dead")}})
			}
			mustWrite(t, s, w)
			wantAcked(t, s, "src", sub.ID, []string{id}, nil)
		})
	}
}

func TestWriteAckedIDTTL(t *testing.T) {
	// Badger stamps ExpiresAt from the store clock but compares it with the
	// wall clock: with the fake clock at t0, months ago, an hour's TTL is
	// already over; with it at the wall clock's now, it is not.
	tests := []struct {
		name       string
		now        time.Time
		ttl        time.Duration
		partitions uint32 // a cursor in each: 2 takes the multi-partition path
		want       bool
	}{
		{"ttl over", t0, time.Hour, 1, false},
		{"ttl over multi-partition", t0, time.Hour, 2, false},
		{"ttl running", time.Now(), time.Hour, 1, true},
		{"ttl running multi-partition", time.Now(), time.Hour, 2, true},
		{"no ttl", t0, 0, 1, true},
		{"no ttl multi-partition", t0, 0, 2, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := openStore(t, testOptions(t, clock.NewFake(tc.now)))
			mustCreate(t, s, "src", TopicConfig{Partitions: tc.partitions})
			w := Write{Topic: "src", AckedIDs: []string{"a"}, AckedIDTTL: tc.ttl}
			var initial, want []string
			for p := range tc.partitions {
				initial, want = append(initial, "old"), append(want, "new")
				w.Cursors = append(w.Cursors, CursorWrite{p, []byte("new")})
			}
			w.Subscription = mustCreateSub(t, s, "src", "s", nil, initial...).ID
			mustWrite(t, s, w)
			if got, err := s.AckedIDs("src", w.Subscription, []string{"a"}); err != nil || got[0] != tc.want {
				t.Fatalf("acked = %v, %v; want %v", got, err, tc.want)
			}
			wantCursors(t, s, "src", w.Subscription, want...)
		})
	}
}

func TestWriteMultiPartition(t *testing.T) {
	opts := testOptions(t, clock.NewFake(t0))
	s := openStore(t, opts)
	mustCreate(t, s, "src", TopicConfig{Partitions: 2})
	mustCreate(t, s, "out", TopicConfig{Partitions: 2})
	sub := mustCreateSub(t, s, "src", "s", nil, "s0", "s1")
	mustAppend(t, s, "out", 0, msg("pre", "p"))
	write := func(gen string) string {
		t.Helper()
		return fmt.Sprint(mustWrite(t, s, Write{Topic: "src", Subscription: sub.ID,
			Cursors:  []CursorWrite{{1, []byte("s1-" + gen)}, {0, []byte("s0-" + gen)}},
			AckedIDs: []string{"in-" + gen},
			Appends: []AppendBatch{
				{Topic: "out", Partition: 1, Messages: []Message{msg("x1", "a"), msg("x2", "b")}},
				{Topic: "out", Partition: 0, Messages: []Message{msg("y1", "c")}},
				{Topic: "out", Partition: 1, Messages: []Message{msg("x3", "d")}},
			}}))
	}
	if got, want := write("1"), "[[{0 false} {1 false}] [{1 false}] [{2 false}]]"; got != want {
		t.Fatalf("results = %s, want %s", got, want)
	}
	check := func(t *testing.T, s *Store, gen string) {
		t.Helper()
		wantHeads(t, s, []uint64{0, 0, 2, 3}, "src", "out")
		for part, want := range []string{"pre:p y1:c", "x1:a x2:b x3:d"} {
			var got []string
			for _, m := range mustRead(t, s, "out", uint32(part), 0, 10) {
				got = append(got, m.ID+":"+string(m.Payload))
				if m.Partition != uint32(part) || !m.PublishTime.Equal(t0) {
					t.Errorf("message %+v", m)
				}
			}
			if strings.Join(got, " ") != want {
				t.Fatalf("out/%d holds %q, want %s", part, got, want)
			}
		}
		wantCursors(t, s, "src", sub.ID, "s0-"+gen, "s1-"+gen)
		wantAcked(t, s, "src", sub.ID, []string{"in-1", "in-" + gen}, []string{"x1"})
	}
	check(t, s, "1")
	// A retry is answered with the original offsets, stores no message, and
	// still moves the cursors; after a reopen too.
	want := "[[{0 true} {1 true}] [{1 true}] [{2 true}]]"
	if got := write("2"); got != want {
		t.Fatalf("retry results = %s, want %s", got, want)
	}
	check(t, s, "2")
	s = reopenStore(t, s, opts)
	check(t, s, "2")
	if got := write("3"); got != want {
		t.Fatalf("retry after reopen = %s, want %s", got, want)
	}
	check(t, s, "3")
}

// TestWriteIsOneTransaction checks that a Write across partitions and
// topics — what a Commit stores: the input's cursors and acked id, the
// outputs — is one Badger transaction: every key it wrote carries the same
// commit version, which no earlier key has. A Write split into one
// transaction per partition (a crash between them would leave outputs
// without the input's ack, or the reverse) gives them different versions.
func TestWriteIsOneTransaction(t *testing.T) {
	s := openStore(t, testOptions(t, clock.NewFake(t0)))
	mustCreate(t, s, "src", TopicConfig{Partitions: 2})
	mustCreate(t, s, "out", TopicConfig{Partitions: 2})
	sub := mustCreateSub(t, s, "src", "s", nil, "s0", "s1")
	mustAppend(t, s, "out", 0, msg("pre", "p"))
	mustWrite(t, s, Write{Topic: "src", Subscription: sub.ID,
		Cursors:  []CursorWrite{{0, []byte("s0-1")}, {1, []byte("s1-1")}},
		AckedIDs: []string{"in-1"},
		Appends: []AppendBatch{
			{Topic: "out", Partition: 0, Messages: []Message{msg("y1", "c")}},
			{Topic: "out", Partition: 1, Messages: []Message{msg("x1", "a"), msg("x2", "b")}},
		}})
	src, out := topicID(t, s, "src"), topicID(t, s, "out")
	keys := map[string][]byte{
		"cursor src/0": cursorKey(src, 0, sub.ID),
		"cursor src/1": cursorKey(src, 1, sub.ID),
		"acked in-1":   ackedIDKey(src, sub.ID, "in-1"),
	}
	versions := keyVersions(t, s)
	for name, k := range keys {
		if _, ok := versions[string(k)]; !ok {
			t.Fatalf("%s: key %x not found", name, k)
		}
	}
	messages := map[string]uint64{} // message id: version
	for k, v := range versions {
		for part := range uint32(2) {
			if prefix := partitionPrefix(kindMessage, out, part); strings.HasPrefix(k, string(prefix)) {
				info, err := decodeMessageKey([]byte(k))
				if err != nil {
					t.Fatal(err)
				}
				messages[fmt.Sprint(part, ".", info.offset)] = v
			}
		}
	}
	want := versions[string(keys["acked in-1"])]
	for name, k := range keys {
		if v := versions[string(k)]; v != want {
			t.Errorf("%s has version %d, the acked id %d: not one transaction", name, v, want)
		}
	}
	for _, off := range []string{"0.1", "1.0", "1.1"} {
		if v, ok := messages[off]; !ok || v != want {
			t.Errorf("output message out/%s has version %d (found %v), the acked id %d: not one transaction", off, v, ok, want)
		}
	}
	if v := messages["0.0"]; v == want {
		t.Errorf("the message appended before has the Write's version %d too", v)
	}
}

// topicID is the id the store gave topic name.
func topicID(tb testing.TB, s *Store, name string) uint32 {
	tb.Helper()
	h, err := s.handle(name)
	if err != nil {
		tb.Fatal(err)
	}
	return h.topic.id
}

// keyVersions maps every key in s's Badger to its newest version.
func keyVersions(tb testing.TB, s *Store) map[string]uint64 {
	tb.Helper()
	versions := map[string]uint64{}
	err := s.db.View(func(txn *badger.Txn) error {
		opts := badger.DefaultIteratorOptions
		opts.PrefetchValues = false
		it := txn.NewIterator(opts)
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			versions[string(it.Item().Key())] = it.Item().Version()
		}
		return nil
	})
	if err != nil {
		tb.Fatal(err)
	}
	return versions
}

func TestWriteTooLargeChangesNothing(t *testing.T) {
	// Badger caps a transaction at 15% of the tests' 32 MiB memtable,
	// 4.8 MiB; values inline (under the value threshold, 1 MiB here) count
	// in full.
	big := func(prefix string, n int) []Message {
		payload := bytes.Repeat([]byte("b"), 2000)
		msgs := make([]Message, n)
		for i := range msgs {
			msgs[i] = Message{ID: fmt.Sprint(prefix, i), Payload: payload}
		}
		return msgs
	}
	tests := []struct {
		name    string
		appends []AppendBatch
	}{
		{"one partition", []AppendBatch{{Topic: "src", Partition: 0, Messages: big("s", 4000)}}},
		// 4.2 MB fits in a transaction, twice that does not.
		{"two partitions", []AppendBatch{{Topic: "out", Partition: 0, Messages: big("o", 2000)}, {Topic: "out", Partition: 1, Messages: big("p", 2000)}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			opts := testOptions(t, clock.NewFake(t0))
			opts.ValueThreshold = 1 << 20
			s := openStore(t, opts)
			mustCreate(t, s, "src", TopicConfig{Partitions: 2})
			mustCreate(t, s, "out", TopicConfig{Partitions: 2})
			sub := mustCreateSub(t, s, "src", "s", nil, "c0", "c1")
			mustAppend(t, s, "src", 0, msg("seed", "x"))
			mustAppend(t, s, "out", 1, msg("seed", "x"))
			before, keys := heads(t, s, "src", "out"), countKeys(t, s, kindMessage)
			_, err := s.Write(context.Background(), Write{Topic: "src", Subscription: sub.ID,
				Cursors: []CursorWrite{{0, []byte("moved")}}, AckedIDs: []string{"big"}, Appends: tc.appends})
			if !errors.Is(err, ErrTooLarge) {
				t.Fatalf("Write: %v, want ErrTooLarge", err)
			}
			wantHeads(t, s, before, "src", "out")
			if n := countKeys(t, s, kindMessage); n != keys {
				t.Fatalf("%d message keys after a refused write, want %d", n, keys)
			}
			wantCursors(t, s, "src", sub.ID, "c0", "c1")
			wantAcked(t, s, "src", sub.ID, nil, []string{"big"})
			// The writers work on, and the refused ids are not duplicates.
			for _, b := range tc.appends {
				h := heads(t, s, b.Topic)[b.Partition]
				if r := mustAppend(t, s, b.Topic, b.Partition, msg(b.Messages[0].ID, "small")); r[0].Duplicate || r[0].Offset != h {
					t.Fatalf("append to %s/%d = %+v, want offset %d", b.Topic, b.Partition, r[0], h)
				}
			}
			after := []Message{msg("after", "y")}
			res := mustWrite(t, s, Write{Topic: "src", Subscription: sub.ID, Cursors: []CursorWrite{{0, []byte("moved")}},
				Appends: []AppendBatch{{Topic: "out", Partition: 0, Messages: after}, {Topic: "out", Partition: 1, Messages: after}}})
			if hs := heads(t, s, "out"); res[0][0].Offset != hs[0]-1 || res[1][0].Offset != hs[1]-1 {
				t.Fatalf("write after the refused one = %v, heads %v", res, hs)
			}
			wantCursors(t, s, "src", sub.ID, "moved", "c1")
		})
	}
}

func TestWriteRefusedChangesNothing(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, testOptions(t, clock.NewFake(t0)))
	mustCreate(t, s, "src", TopicConfig{Partitions: 2})
	mustCreate(t, s, "out", TopicConfig{Partitions: 2})
	sub := mustCreateSub(t, s, "src", "s", nil, "c0", "c1")
	onOut := mustCreateSub(t, s, "out", "s", nil, "d0", "d1")
	gone := mustCreateSub(t, s, "src", "gone", nil, "g0", "g1")
	if err := s.DeleteSubscription(ctx, "src", "gone"); err != nil {
		t.Fatal(err)
	}
	mustWrite(t, s, Write{Topic: "src", Subscription: sub.ID, Cursors: []CursorWrite{{0, []byte("c0-1")}}, AckedIDs: []string{"a"}})
	mustAppend(t, s, "out", 0, msg("o", "x"))
	s.bg.Wait() // the drop of gone's acked ids
	snapshot := func() string {
		c1, _ := s.Cursors("src", sub.ID)
		c2, _ := s.Cursors("out", onOut.ID)
		a1, _ := s.AckedIDs("src", sub.ID, []string{"a", "b"})
		a2, _ := s.AckedIDs("src", gone.ID, []string{"b"})
		return fmt.Sprintf("heads %v cursors %q %q acked %v %v keys %d %d %d", heads(t, s, "src", "out"), c1, c2, a1, a2,
			countKeys(t, s, kindMessage), countKeys(t, s, kindCursor), countKeys(t, s, kindAckedID))
	}
	before := snapshot()
	cur := []CursorWrite{{0, []byte("moved")}}
	app := func(topic string, part uint32) AppendBatch {
		return AppendBatch{Topic: topic, Partition: part, Messages: []Message{msg("new", "x")}}
	}
	tests := []struct {
		name string
		w    Write
		want error // nil: any error
	}{
		{"deleted subscription", Write{Topic: "src", Subscription: gone.ID, Cursors: cur, AckedIDs: []string{"b"}, Appends: []AppendBatch{app("out", 0)}}, ErrSubscriptionNotFound},
		{"unknown subscription", Write{Topic: "src", Subscription: 9999, Cursors: cur}, ErrSubscriptionNotFound},
		{"another topic's subscription", Write{Topic: "src", Subscription: onOut.ID, Cursors: cur}, ErrSubscriptionNotFound},
		{"unknown topic", Write{Topic: "nope", Subscription: sub.ID, Cursors: cur}, ErrTopicNotFound},
		{"cursor partition", Write{Topic: "src", Subscription: sub.ID, Cursors: append(cur, CursorWrite{2, []byte("x")})}, ErrPartitionNotFound},
		{"append partition", Write{Topic: "src", Subscription: sub.ID, Cursors: cur, Appends: []AppendBatch{app("out", 0), app("out", 2)}}, ErrPartitionNotFound},
		{"append topic", Write{Topic: "src", Subscription: sub.ID, Cursors: cur, Appends: []AppendBatch{app("out", 0), app("nope", 0)}}, ErrTopicNotFound},
		{"long acked id", Write{Topic: "src", Subscription: sub.ID, Cursors: cur, AckedIDs: []string{strings.Repeat("i", MaxIDBytes+1)}}, ErrInvalidMessage},
		{"empty", Write{Topic: "src", Subscription: sub.ID}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			res, err := s.Write(ctx, tc.w)
			if err == nil || (tc.want != nil && !errors.Is(err, tc.want)) {
				t.Fatalf("Write = %v, %v; want %v", res, err, tc.want)
			}
			if after := snapshot(); after != before {
				t.Fatalf("a refused write changed the store:\n%s\nwant\n%s", after, before)
			}
		})
	}
}

func TestDeleteSubscription(t *testing.T) {
	ctx := context.Background()
	opts := testOptions(t, clock.NewFake(t0))
	s := openStore(t, opts)
	mustCreate(t, s, "src", TopicConfig{Partitions: 2})
	a := mustCreateSub(t, s, "src", "a", nil, "a0", "a1")
	b := mustCreateSub(t, s, "src", "b", nil, "b0", "b1")
	mustWrite(t, s, Write{Topic: "src", Subscription: a.ID, Cursors: []CursorWrite{{1, []byte("a1-2")}}, AckedIDs: []string{"x", "y", "z"}})
	mustWrite(t, s, Write{Topic: "src", Subscription: b.ID, AckedIDs: []string{"x", "w"}})
	if err := s.DeleteSubscription(ctx, "src", "a"); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteSubscription(ctx, "src", "a"); !errors.Is(err, ErrSubscriptionNotFound) {
		t.Fatalf("second delete: %v", err)
	}
	check := func(t *testing.T, s *Store) {
		t.Helper()
		if _, err := s.Subscription("src", "a"); !errors.Is(err, ErrSubscriptionNotFound) {
			t.Fatalf("Subscription(a): %v", err)
		}
		if _, err := s.Cursors("src", a.ID); !errors.Is(err, ErrSubscriptionNotFound) {
			t.Fatalf("Cursors(a): %v", err)
		}
		if subs, _ := s.Subscriptions("src"); len(subs) != 1 || !sameSub(subs[0], b) {
			t.Fatalf("Subscriptions = %+v, want b", subs)
		}
		wantCursors(t, s, "src", b.ID, "b0", "b1")
		wantAcked(t, s, "src", b.ID, []string{"x", "w"}, []string{"y"})
	}
	check(t, s)
	s = reopenStore(t, s, opts)
	check(t, s)
	wantAcked(t, s, "src", a.ID, nil, []string{"x", "y", "z"})
	if n, c, ids, tombs := countKeys(t, s, kindSub), countKeys(t, s, kindCursor), countKeys(t, s, kindAckedID), countKeys(t, s, kindSubTomb); n != 1 || c != 2 || ids != 2 || tombs != 0 {
		t.Fatalf("keys left: %d subscriptions, %d cursors, %d acked ids, %d tombstones; want b's 1, 2, 2, 0", n, c, ids, tombs)
	}
	a2 := mustCreateSub(t, s, "src", "a", nil, "n0", "n1")
	wantCursors(t, s, "src", a2.ID, "n0", "n1")
}

func TestDeleteTopicDropsSubscriptions(t *testing.T) {
	ctx := context.Background()
	opts := testOptions(t, clock.NewFake(t0))
	s := openStore(t, opts)
	mustCreate(t, s, "src", TopicConfig{Partitions: 2})
	mustCreate(t, s, "out", TopicConfig{})
	var sids []uint32
	for _, name := range []string{"a", "b"} {
		sub := mustCreateSub(t, s, "src", name, nil, "c0", "c1")
		mustWrite(t, s, Write{Topic: "src", Subscription: sub.ID, Cursors: []CursorWrite{{0, []byte("x")}, {1, []byte("y")}},
			AckedIDs: []string{"i1", "i2"}, Appends: []AppendBatch{{Topic: "out", Messages: []Message{msg(name, "p")}}}})
		sids = append(sids, sub.ID)
	}
	if err := s.DeleteTopic(ctx, "src"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Subscriptions("src"); !errors.Is(err, ErrTopicNotFound) {
		t.Fatalf("Subscriptions of a deleted topic: %v", err)
	}
	mustCreate(t, s, "src", TopicConfig{Partitions: 2})
	check := func(t *testing.T, s *Store) {
		t.Helper()
		if subs, err := s.Subscriptions("src"); err != nil || len(subs) != 0 {
			t.Fatalf("recreated topic's subscriptions = %+v, %v", subs, err)
		}
		for _, sid := range sids {
			if _, err := s.Cursors("src", sid); !errors.Is(err, ErrSubscriptionNotFound) {
				t.Fatalf("Cursors(%d) on the recreated topic: %v", sid, err)
			}
			wantAcked(t, s, "src", sid, nil, []string{"i1", "i2"})
		}
		wantHeads(t, s, []uint64{2}, "out")
	}
	check(t, s)
	s = reopenStore(t, s, opts)
	check(t, s)
	for _, kind := range []byte{kindSub, kindCursor, kindAckedID, kindSubTomb, kindTombstone} {
		if n := countKeys(t, s, kind); n != 0 {
			t.Errorf("%d %q keys left after the topic drop", n, kind)
		}
	}
}

func TestWriteConcurrent(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, testOptions(t, clock.NewFake(t0)))
	mustCreate(t, s, "src", TopicConfig{Partitions: 2})
	mustCreate(t, s, "out", TopicConfig{Partitions: 2})
	sub := mustCreateSub(t, s, "src", "s", nil, "init", "init")
	const writers, each = 8, 50
	parts := []struct {
		topic string
		part  uint32
	}{{"src", 0}, {"src", 1}, {"out", 0}, {"out", 1}}
	var mu sync.Mutex
	offsets := []map[uint64]bool{{}, {}, {}, {}} // by index in parts
	states := [2]map[string]bool{{"init": true}, {"init": true}}
	note := func(k int, off uint64) {
		mu.Lock()
		defer mu.Unlock()
		if offsets[k][off] {
			t.Errorf("%v: offset %d given twice", parts[k], off)
		}
		offsets[k][off] = true
	}
	var wg sync.WaitGroup
	for g := range writers {
		wg.Go(func() {
			for i := range each {
				cp, op := uint32((g+i)%2), uint32((g*3+i)%3%2)
				state := fmt.Sprintf("%d-%d", g, i)
				mu.Lock()
				states[cp][state] = true
				mu.Unlock()
				w := Write{Topic: "src", Subscription: sub.ID, Cursors: []CursorWrite{{cp, []byte(state)}}, AckedIDs: []string{state}}
				if i%5 != 0 { // else only a cursor moves, through the partition's writer
					w.Appends = []AppendBatch{{Topic: "out", Partition: op, Messages: []Message{msg("w"+state, state)}}}
				}
				res, err := s.Write(ctx, w)
				if err != nil {
					t.Error(err)
					return
				}
				if i%5 != 0 {
					note(2+int(op), res[0][0].Offset)
				}
			}
		})
	}
	for k, p := range parts {
		wg.Go(func() {
			for i := range each {
				r, err := s.Append(ctx, p.topic, p.part, []Message{msg(fmt.Sprint("a", k, "-", i), "x")})
				if err != nil {
					t.Error(err)
					return
				}
				note(k, r[0].Offset)
			}
		})
	}
	wg.Wait()
	hs := heads(t, s, "src", "out")
	for k, p := range parts {
		if n := len(mustRead(t, s, p.topic, p.part, 0, 10000)); hs[k] != uint64(len(offsets[k])) || n != len(offsets[k]) {
			t.Errorf("%v: head %d and %d messages read for %d stored", p, hs[k], n, len(offsets[k]))
		}
	}
	got, err := s.Cursors("src", sub.ID)
	if err != nil || len(got) != 2 || !states[0][string(got[0])] || !states[1][string(got[1])] {
		t.Errorf("cursors = %q, %v: not states written there", got, err)
	}
	wantAcked(t, s, "src", sub.ID, []string{"0-0", "7-49"}, nil)
}
