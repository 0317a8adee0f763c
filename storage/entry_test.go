package storage

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"
)

// entryCommands is one command of each kind, with what a message can
// carry: an id, a key, headers, an empty payload.
func entryCommands() []*command {
	return []*command{
		{kind: cmdAppend, dedupWindow: 2 * time.Minute, msgs: []Message{
			{ID: "a", Key: []byte("k1"), Payload: []byte("one"), Headers: map[string]string{"z": "1", "a": ""}},
			{Payload: []byte{}},
			{ID: "b", Payload: bytes.Repeat([]byte{7}, 300)},
		}},
		{kind: cmdAppend, cursors: []cursorWrite{{sid: 3, state: []byte{1, 2, 3}}, {sid: 9, state: nil}},
			acked: &ackedIDs{sid: 3, ttl: time.Hour, ids: []string{"a", "x"}}},
		{kind: cmdAppend, dedupWindow: time.Second, msgs: []Message{{ID: "c", Payload: []byte("c")}},
			acked: &ackedIDs{sid: 4}},
		{kind: cmdTrim, trimTo: 1, limit: 1000},
		{kind: cmdExpireDedup, dedupWindow: 3 * time.Minute},
	}
}

// sameCommand compares what an entry carries of a command: everything but
// size, which decodeEntry recomputes from the records.
func sameCommand(a, b *command) bool {
	x, y := *a, *b
	x.size, y.size = 0, 0
	return reflect.DeepEqual(x, y)
}

func TestEntryRoundTrip(t *testing.T) {
	at := time.Date(2026, 11, 25, 1, 2, 3, 456, time.UTC)
	cmds := entryCommands()
	b, err := encodeEntry(at, 77, cmds)
	if err != nil {
		t.Fatal(err)
	}
	gotAt, proposal, got, err := decodeEntry(b)
	if err != nil {
		t.Fatal(err)
	}
	if !gotAt.Equal(at) || proposal != 77 {
		t.Errorf("at, proposal = %v, %d, want %v, 77", gotAt, proposal, at)
	}
	if len(got) != len(cmds) {
		t.Fatalf("%d commands, want %d", len(got), len(cmds))
	}
	for i := range cmds {
		if !sameCommand(got[i], cmds[i]) {
			t.Errorf("command %d:\n got %+v\nwant %+v", i, got[i], cmds[i])
		}
	}
	if want := messageRecordSize(&cmds[0].msgs[0]) + messageRecordSize(&cmds[0].msgs[1]) + messageRecordSize(&cmds[0].msgs[2]); got[0].size != want {
		t.Errorf("size = %d, want the records' %d", got[0].size, want)
	}
	// The same commands encode to the same bytes, whatever the map order.
	for range 20 {
		again, err := encodeEntry(at, 77, entryCommands())
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(again, b) {
			t.Fatal("the same commands encoded to different entries")
		}
	}
}

func TestEntryRefusesBarrierAndCorruption(t *testing.T) {
	if _, err := encodeEntry(time.Now(), 1, []*command{{kind: cmdBarrier}}); !errors.Is(err, errNotReplicable) {
		t.Fatalf("encoding a barrier: %v, want errNotReplicable", err)
	}
	good, err := encodeEntry(time.Unix(1, 0), 1, entryCommands())
	if err != nil {
		t.Fatal(err)
	}
	bad := map[string][]byte{
		"empty":            nil,
		"version":          append([]byte{9}, good[1:]...),
		"truncated":        good[:len(good)-1],
		"trailing":         append(slices.Clone(good), 0),
		"unknown kind":     {recordVersion, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 99},
		"barrier kind":     {recordVersion, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1, byte(cmdBarrier)},
		"huge count":       {recordVersion, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x0f},
		"huge msg count":   {recordVersion, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1, byte(cmdAppend), 0, 0xff, 0xff, 0xff, 0x0f},
		"bad acked marker": {recordVersion, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1, byte(cmdAppend), 0, 0, 0, 7},
	}
	for name, b := range bad {
		if _, _, _, err := decodeEntry(b); !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: %v, want ErrCorrupt", name, err)
		}
	}
}

// replica is one partition's state on one store, applied to by entries.
type replica struct {
	s  *Store
	st partitionState
}

func (r *replica) apply(tb testing.TB, index uint64, data []byte) ([]result, error) {
	tb.Helper()
	txn := r.s.db.NewTransaction(true)
	defer txn.Discard()
	next, a, err := r.st.applyEntry(txn, nil, index, data)
	if err != nil {
		return nil, err
	}
	res := a.results
	if err := txn.Commit(); err != nil {
		tb.Fatalf("commit entry %d: %v", index, err)
	}
	next.committed()
	r.st = next
	return res, nil
}

// dump lists every key of the replicated partition's topic, with its value
// and expiry, in key order.
func (r *replica) dump(tb testing.TB) []string {
	tb.Helper()
	var out []string
	err := r.s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.DefaultIteratorOptions)
		defer it.Close()
		for _, kind := range []byte{kindPartition, kindMessage, kindCursor, kindAckedID} {
			prefix := topicPrefix(kind, r.st.tid)
			for it.Seek(prefix); it.ValidForPrefix(prefix); it.Next() {
				v, err := it.Item().ValueCopy(nil)
				if err != nil {
					return err
				}
				out = append(out, fmt.Sprintf("%x=%x@%d", it.Item().Key(), v, it.Item().ExpiresAt()))
			}
		}
		return nil
	})
	if err != nil {
		tb.Fatal(err)
	}
	return out
}

// randomEntry is a batch of random commands: appends whose ids repeat (so
// dedup answers), cursor writes and acked ids, trims and expiry.
func randomEntry(rng *rand.Rand, head uint64) []*command {
	var cmds []*command
	for range 1 + rng.IntN(4) {
		switch rng.IntN(6) {
		case 0:
			cmds = append(cmds, &command{kind: cmdTrim, trimTo: uint64(rng.IntN(int(head) + 2)), limit: 1 + rng.IntN(5)})
		case 1:
			cmds = append(cmds, &command{kind: cmdExpireDedup, dedupWindow: time.Duration(1+rng.IntN(5)) * time.Second})
		default:
			c := &command{kind: cmdAppend, dedupWindow: time.Duration(1+rng.IntN(5)) * time.Second}
			for range rng.IntN(5) {
				m := Message{Payload: []byte(fmt.Sprint(rng.Int()))}
				if rng.IntN(4) > 0 {
					m.ID = fmt.Sprint("id-", rng.IntN(30))
				}
				if rng.IntN(2) == 0 {
					m.Key = []byte(fmt.Sprint("key-", rng.IntN(5)))
					m.Headers = map[string]string{"h": m.ID, "g": "x"}
				}
				c.msgs = append(c.msgs, m)
			}
			if rng.IntN(2) == 0 {
				c.cursors = []cursorWrite{{sid: uint32(1 + rng.IntN(3)), state: []byte(fmt.Sprint(rng.Int()))}}
			}
			if rng.IntN(3) == 0 {
				c.acked = &ackedIDs{sid: uint32(1 + rng.IntN(3)), ttl: time.Duration(rng.IntN(3)) * time.Hour,
					ids: []string{fmt.Sprint("id-", rng.IntN(30))}}
			}
			cmds = append(cmds, c)
		}
	}
	return cmds
}

// TestApplyEntryIsDeterministic applies the same random entries to the same
// partition on two stores and finds the same results and the same keys,
// values and expiries on both; the time comes from the entry, and it
// sometimes goes back, as a new leader's clock may. A replayed entry
// changes nothing, and the applied index survives a reopen.
func TestApplyEntryIsDeterministic(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 11))
	opts := []Options{DefaultOptions(t.TempDir()), DefaultOptions(t.TempDir())}
	var reps [2]*replica
	for i := range reps {
		reps[i] = &replica{s: openStore(t, opts[i]), st: partitionState{tid: 1000, part: 3, dedup: newDedupIndex()}}
	}
	at := time.Date(2026, 11, 25, 0, 0, 0, 0, time.UTC)
	const entries = 300
	for index := uint64(1); index <= entries; index++ {
		at = at.Add(time.Duration(rng.IntN(2000)-200) * time.Millisecond)
		data, err := encodeEntry(at, index, randomEntry(rng, reps[0].st.meta.head))
		if err != nil {
			t.Fatal(err)
		}
		var results [2][]result
		for i, r := range reps {
			if results[i], err = r.apply(t, index, data); err != nil {
				t.Fatalf("replica %d, entry %d: %v", i, index, err)
			}
		}
		if !reflect.DeepEqual(results[0], results[1]) {
			t.Fatalf("entry %d: results differ:\n%+v\n%+v", index, results[0], results[1])
		}
	}
	a, b := reps[0].dump(t), reps[1].dump(t)
	if !slices.Equal(a, b) {
		t.Fatalf("the replicas differ: %d keys and %d keys", len(a), len(b))
	}
	if reps[0].st.meta.head == 0 || reps[0].st.meta.applied != entries {
		t.Fatalf("head %d, applied %d: want messages stored and %d applied", reps[0].st.meta.head, reps[0].st.meta.applied, entries)
	}

	// A replay of an applied entry is refused and writes nothing.
	replay, err := encodeEntry(at, 1, []*command{{kind: cmdAppend, msgs: []Message{{ID: "new", Payload: []byte("x")}}}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := reps[0].apply(t, entries, replay); !errors.Is(err, errApplied) {
		t.Fatalf("replaying entry %d: %v, want errApplied", entries, err)
	}
	if got := reps[0].dump(t); !slices.Equal(got, a) {
		t.Fatal("a refused replay changed the partition")
	}

	// The applied index is in the partition meta, so it survives a reopen.
	s := reopenStore(t, reps[0].s, opts[0])
	err = s.db.View(func(txn *badger.Txn) error {
		item, err := txn.Get(partitionKey(1000, 3))
		if err != nil {
			return err
		}
		return item.Value(func(v []byte) error {
			pm, err := decodePartitionMeta(v)
			if err == nil && !pm.equal(reps[1].st.meta) {
				err = fmt.Errorf("meta after reopen %+v, want %+v", pm, reps[1].st.meta)
			}
			return err
		})
	})
	if err != nil {
		t.Fatal(err)
	}
}

// A single node's partition meta (applied 0) encodes as it did before
// clusters, and both forms decode.
func TestPartitionMetaApplied(t *testing.T) {
	pm := partitionMeta{first: 1, head: 5, bytes: 99, lastTime: time.Unix(7, 0).UTC()}
	if n := len(pm.encode()); n != 33 {
		t.Fatalf("single-node meta is %d bytes, want 33", n)
	}
	pm.applied = 12
	got, err := decodePartitionMeta(pm.encode())
	if err != nil || !got.equal(pm) {
		t.Fatalf("decode(encode(%+v)) = %+v, %v", pm, got, err)
	}
	if _, err := decodePartitionMeta(append(pm.encode(), 1)); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("meta with a trailing byte: %v, want ErrCorrupt", err)
	}
	pm.pin, pm.pinOff = 9, 2
	got, err = decodePartitionMeta(pm.encode())
	if err != nil || !got.equal(pm) {
		t.Fatalf("decode(encode(%+v)) = %+v, %v", pm, got, err)
	}
	pm.pin, pm.pinOff = 0, 0
	pm.applied = 0
	if _, err := decodePartitionMeta(binary.BigEndian.AppendUint64(pm.encode(), 0)); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("meta with an applied index of 0 written out: %v, want ErrCorrupt (it is never encoded)", err)
	}
}

// FuzzDecodeEntry: a Raft entry comes from another node; whatever its
// bytes, decoding never panics, and what decodes encodes back to an entry
// that decodes to the same commands.
func FuzzDecodeEntry(f *testing.F) {
	good, err := encodeEntry(time.Unix(1, 2), 3, entryCommands())
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add([]byte{recordVersion, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		at, proposal, cmds, err := decodeEntry(b)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("decode error %v is not ErrCorrupt", err)
			}
			return
		}
		again, err := encodeEntry(at, proposal, cmds)
		if err != nil {
			t.Fatalf("re-encoding a decoded entry: %v", err)
		}
		at2, proposal2, cmds2, err := decodeEntry(again)
		if err != nil || !at2.Equal(at) || proposal2 != proposal || len(cmds2) != len(cmds) {
			t.Fatalf("re-decoded: %v, %v, %d commands, want %v, %d", err, at2, len(cmds2), at, len(cmds))
		}
		for i := range cmds {
			if !sameCommand(cmds[i], cmds2[i]) {
				t.Fatalf("command %d changed in a round trip:\n%+v\n%+v", i, cmds[i], cmds2[i])
			}
		}
	})
}
