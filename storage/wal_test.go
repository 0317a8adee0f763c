package storage

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dgraph-io/badger/v4"

	"github.com/ferrymq/ferry/internal/clock"
)

// TestCutWALsLetsBadgerOpenReadOnly copies a live Badger directory, as
// kill -9 would leave it (memtable logs never cut), and checks that Badger
// refuses to open the copy read-only until cutWALs has cut its logs, and
// then finds every committed key in it.
func TestCutWALsLetsBadgerOpenReadOnly(t *testing.T) {
	dir := t.TempDir()
	opts := DefaultOptions(dir)
	opts.Logger = benchLogger()
	// Small memtables, so the copy is quick; values stay in the log.
	small := func(o badger.Options) badger.Options { return o.WithMemTableSize(4 << 20).WithValueThreshold(1 << 10) }
	db, err := badger.Open(small(badgerOptions(opts)))
	if err != nil {
		t.Fatal(err)
	}
	const n = 500
	for i := range n {
		err := db.Update(func(txn *badger.Txn) error {
			for j := range 1 + i%3 { // transactions of one to three entries
				if err := txn.Set([]byte(fmt.Sprintf("k%04d-%d", i, j)), []byte(fmt.Sprintf("value %d", i))); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := db.Sync(); err != nil {
		t.Fatal(err)
	}
	crashed := t.TempDir()
	copyDir(t, dir, crashed)
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}

	ro := small(badgerOptions(DefaultOptions(crashed))).WithReadOnly(true).WithLogger(badgerLogger{benchLogger()})
	if db, err := badger.Open(ro); err == nil {
		db.Close()
		t.Fatal("badger opened an uncut log read-only: the cut is not needed and this test proves nothing")
	}
	if err := cutWALs(crashed); err != nil {
		t.Fatal(err)
	}
	db, err = badger.Open(ro)
	if err != nil {
		t.Fatalf("open read-only after the cut: %v", err)
	}
	defer db.Close()
	err = db.View(func(txn *badger.Txn) error {
		for i := range n {
			for j := range 1 + i%3 {
				if _, err := txn.Get([]byte(fmt.Sprintf("k%04d-%d", i, j))); err != nil {
					return fmt.Errorf("key k%04d-%d: %w", i, j, err)
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func copyDir(t *testing.T, from, to string) {
	t.Helper()
	entries, err := os.ReadDir(from)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.Name() == "LOCK" || filepath.Ext(e.Name()) == ".vlog" {
			continue // the value log holds nothing here, and is 2 GiB sparse
		}
		src, err := os.Open(filepath.Join(from, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		dst, err := os.Create(filepath.Join(to, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.Copy(dst, src); err != nil {
			t.Fatal(err)
		}
		src.Close()
		dst.Close()
	}
}

// TestOpenAfterCrashBetweenCreateAndSize: a crash right after Badger
// created its next memtable log or value-log file, before it sized it,
// leaves an empty file, and Badger refuses to open with one ("while
// opening fid: 2 err: Create a new file", seen after a kill -9 under
// load). The store removes such files first and opens with its data.
func TestOpenAfterCrashBetweenCreateAndSize(t *testing.T) {
	for _, name := range []string{"00042.mem", "000042.vlog"} {
		t.Run(name, func(t *testing.T) {
			opts := testOptions(t, clock.NewFake(t0))
			s := openStore(t, opts)
			mustCreate(t, s, "t", TopicConfig{})
			mustAppend(t, s, "t", 0, msg("a", strings.Repeat("x", 2000)))
			if err := s.Close(context.Background()); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(opts.Dir, name), nil, 0o644); err != nil {
				t.Fatal(err)
			}
			s, err := Open(opts)
			if err != nil {
				t.Fatalf("open with an empty %s: %v", name, err)
			}
			defer s.Close(context.Background())
			if got := mustRead(t, s, "t", 0, 0, 10); len(got) != 1 || got[0].ID != "a" {
				t.Fatalf("read %+v after the reopen, want message a", got)
			}
		})
	}
}
