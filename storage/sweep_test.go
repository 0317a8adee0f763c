package storage

import (
	"slices"
	"testing"

	"github.com/dgraph-io/badger/v4"
)

// TestSweepDeletesKeysBroughtBack puts message keys below a partition's
// first offset, as Badger's value-log GC brings back deleted ones
// (sweep.go): reads and an export to a peer leave them out, and sweeps,
// a few keys walked at a time, delete exactly them.
func TestSweepDeletesKeysBroughtBack(t *testing.T) {
	src, dst, srcG, dstG, _ := exportSource(t)
	_, p, err := src.partition("orders", 0)
	if err != nil {
		t.Fatal(err)
	}
	vis := p.visible.Load()
	if vis.first != 80 || vis.head != 120 {
		t.Fatalf("partition at %d..%d, want 80..120 (retention of 40)", vis.first, vis.head)
	}
	want := readAll(t, src, "orders", 0)
	back := []uint64{3, 41, 79}
	err = src.db.Update(func(txn *badger.Txn) error {
		for _, off := range back {
			m := Message{Payload: []byte("deleted long ago")}
			rec := appendMessageRecord(nil, &m)
			if err := txn.Set(messageKey(p.tid, p.part, off, t0, uint32(len(rec)), ""), rec); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n := countKeys(t, src, kindMessage); n != 40+len(back) {
		t.Fatalf("%d message keys, want the 40 of the partition and %d brought back", n, len(back))
	}
	if got := readAll(t, src, "orders", 0); !slices.Equal(got, want) {
		t.Fatalf("reads changed with keys below first:\n got %q\nwant %q", got, want)
	}

	// A peer importing the partition gets exactly first..head-1: an
	// export of the keys below first would be refused (importCheck).
	applied, chunks := exportChunks(t, srcG.rep, 300)
	if err := importChunks(t, dstG.rep, applied, chunks); err != nil {
		t.Fatalf("import of an export with keys below first: %v", err)
	}
	if got := readAll(t, dst, "orders", 0); !slices.Equal(got, want) {
		t.Fatalf("the importer reads\n %q\nwant %q", got, want)
	}

	// Each trimmed offset has a version and a tombstone: with 5 keys a
	// sweep, the sweeps take many runs and resume where they stopped.
	deleted, runs := 0, 0
	for ; runs < 100 && countKeys(t, src, kindMessage) > 40; runs++ {
		n, err := src.sweep(p, 5)
		if err != nil {
			t.Fatal(err)
		}
		deleted += n
	}
	if n := countKeys(t, src, kindMessage); n != 40 || deleted != len(back) {
		t.Fatalf("after %d sweeps: %d message keys, %d deleted; want 40 and %d", runs, n, deleted, len(back))
	}
	if runs < 5 {
		t.Fatalf("%d sweeps of 5 keys each walked 80 trimmed offsets", runs)
	}
	if got := readAll(t, src, "orders", 0); !slices.Equal(got, want) {
		t.Fatalf("reads changed by the sweep:\n got %q\nwant %q", got, want)
	}
	if n, err := src.sweep(p, sweepLimit); err != nil || n != 0 {
		t.Fatalf("a sweep of a clean partition deleted %d keys (%v)", n, err)
	}
}
