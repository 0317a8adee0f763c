package powerloss

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"runtime/debug"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// syncDir fsyncs the directory dir.
func syncDir(t *testing.T, dir string) {
	t.Helper()
	d, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		t.Fatalf("fsync %s: %v", dir, err)
	}
}

// cut cuts the power, closes files (as a process killed after the cut
// does) and remounts.
func cut(fs *FS, files ...*os.File) {
	fs.PowerCut()
	for _, f := range files {
		f.Close()
	}
	fs.Remount()
}

func wantFile(t *testing.T, path string, want []byte) {
	t.Helper()
	got, err := os.ReadFile(path)
	if want == nil {
		if !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("%s: %d bytes, err %v; want it gone", filepath.Base(path), len(got), err)
		}
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%s holds %d bytes %.40q, want %d bytes %.40q", filepath.Base(path), len(got), got, len(want), want)
	}
}

func TestWritesSurviveOnlyOnceSynced(t *testing.T) {
	backing := t.TempDir()
	fs := Mount(t, backing)
	path := filepath.Join(fs.Dir(), "log")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	synced := bytes.Repeat([]byte("durable "), 2000) // spans pages
	if _, err := f.Write(synced); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	// Not synced: an overwrite inside the synced part and an append.
	if _, err := f.WriteAt([]byte("OVERWRITTEN"), 5000); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("appended, never synced"), int64(len(synced))); err != nil {
		t.Fatal(err)
	}
	wantFile(t, filepath.Join(backing, "log"), append(append(synced[:5000:5000], "OVERWRITTEN"...),
		append(synced[5011:len(synced):len(synced)], "appended, never synced"...)...)) // written through
	cut(fs, f) // the close, after the cut, changes nothing
	wantFile(t, path, synced)
	wantFile(t, filepath.Join(backing, "log"), synced)
}

func TestUnsyncedFileIsLost(t *testing.T) {
	fs := Mount(t, t.TempDir())
	d := fs.Dir()
	early, kept, lost := filepath.Join(d, "early"), filepath.Join(d, "kept"), filepath.Join(d, "lost")
	if err := os.WriteFile(early, []byte("created before kept, never synced"), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(kept)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString("synced")
	if err := f.Sync(); err != nil { // on ext4 this commits its name, and every earlier change's
		t.Fatal(err)
	}
	f.Close()
	if err := os.WriteFile(lost, []byte("written, never synced"), 0o600); err != nil {
		t.Fatal(err)
	}
	cut(fs)
	wantFile(t, kept, []byte("synced"))
	wantFile(t, early, []byte{}) // its name committed with kept's, its data never synced
	wantFile(t, lost, nil)
}

// noGC turns the garbage collector off for the rest of t. A test that
// touches a mapping of the mount in its own process faults pages in from
// its own FUSE server: the faulting thread waits in the kernel, not in a
// syscall Go knows of, and a stop-the-world GC meanwhile waits for it for
// ever while the server's goroutines stay stopped (a suite run under two
// busy loops hung so, in TestKillKeepsMmapWrites). ferry itself always runs
// in a process of its own.
func noGC(t *testing.T) {
	old := debug.SetGCPercent(-1)
	t.Cleanup(func() { debug.SetGCPercent(old) })
}

// mapFile creates the file name on fs, sized to size and fsynced, and
// maps it shared, read-write, with the GC off (noGC).
func mapFile(t *testing.T, fs *FS, name string, size int) (path string, f *os.File, m []byte) {
	t.Helper()
	noGC(t)
	path = filepath.Join(fs.Dir(), name)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(int64(size)); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	if m, err = unix.Mmap(int(f.Fd()), 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED); err != nil {
		t.Fatal(err)
	}
	return path, f, m
}

func TestMmapWritesSurviveOnlyOnceMsynced(t *testing.T) {
	fs := Mount(t, t.TempDir())
	const size = 4 * pageSize
	path, f, m := mapFile(t, fs, "mapped", size)
	copy(m, "msynced")
	if err := unix.Msync(m, unix.MS_SYNC); err != nil {
		t.Fatalf("msync: %v", err)
	}
	copy(m[2*pageSize:], "dirty, never msynced")
	fs.PowerCut()
	// Only now does the process let go of its mapping: the kernel writes
	// the dirty page back, and the dead filesystem refuses it.
	unix.Munmap(m)
	f.Close()
	fs.Remount()
	want := make([]byte, size)
	copy(want, "msynced")
	wantFile(t, path, want)
}

// TestKillKeepsMmapWrites is why a cut must come before the kill: without
// one, a mapping's unsynced pages reach the filesystem when it is closed.
func TestKillKeepsMmapWrites(t *testing.T) {
	fs := Mount(t, t.TempDir())
	path, f, m := mapFile(t, fs, "mapped", pageSize)
	copy(m, "never msynced")
	unix.Munmap(m)
	f.Close() // as a killed process's descriptors are: FLUSH writes the page back
	fs.Remount()
	want := make([]byte, pageSize)
	copy(want, "never msynced")
	wantFile(t, path, want)
}

func TestMetadataNeedsAnFsync(t *testing.T) {
	fs := Mount(t, t.TempDir())
	d := fs.Dir()
	for _, name := range []string{"a", "b", "c"} {
		if err := os.WriteFile(filepath.Join(d, name), []byte(name), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	f, _ := os.OpenFile(filepath.Join(d, "a"), os.O_RDWR, 0)
	f.Sync()
	f.Close()
	f, _ = os.OpenFile(filepath.Join(d, "b"), os.O_RDWR, 0)
	f.Sync()
	f.Close()
	f, _ = os.OpenFile(filepath.Join(d, "c"), os.O_RDWR, 0)
	f.Sync()
	f.Close()
	syncDir(t, d)
	// Durable: a, b, c. Not synced: the rename of a over b, c's unlink,
	// a new directory.
	if err := os.Rename(filepath.Join(d, "a"), filepath.Join(d, "b")); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(d, "c")); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(d, "sub"), 0o700); err != nil {
		t.Fatal(err)
	}
	wantFile(t, filepath.Join(d, "b"), []byte("a"))
	cut(fs)
	wantFile(t, filepath.Join(d, "a"), []byte("a"))
	wantFile(t, filepath.Join(d, "b"), []byte("b"))
	wantFile(t, filepath.Join(d, "c"), []byte("c"))
	wantFile(t, filepath.Join(d, "sub"), nil)

	// The same changes, then the directory's fsync: all durable.
	os.Rename(filepath.Join(d, "a"), filepath.Join(d, "b"))
	os.Remove(filepath.Join(d, "c"))
	syncDir(t, d)
	cut(fs)
	wantFile(t, filepath.Join(d, "a"), nil)
	wantFile(t, filepath.Join(d, "b"), []byte("a"))
	wantFile(t, filepath.Join(d, "c"), nil)
}

func TestTruncateIsUndone(t *testing.T) {
	fs := Mount(t, t.TempDir())
	path := filepath.Join(fs.Dir(), "t")
	content := bytes.Repeat([]byte("0123456789"), 1000)
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	f.Write(content)
	f.Sync()
	if err := f.Truncate(1234); err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(20000); err != nil { // and out again: zeros
		t.Fatal(err)
	}
	cut(fs, f)
	wantFile(t, path, content)
}

func TestFailedFsyncMakesNothingDurable(t *testing.T) {
	fs := Mount(t, t.TempDir())
	path := filepath.Join(fs.Dir(), "f")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString("first")
	f.Sync()
	f.WriteString(" second")
	fs.FailSyncs(1)
	if err := f.Sync(); !errors.Is(err, syscall.EIO) {
		t.Fatalf("fsync with a failure asked for: %v, want EIO", err)
	}
	cut(fs, f)
	wantFile(t, path, []byte("first"))

	// A failed fsync, then one that succeeds: durable.
	f, _ = os.OpenFile(path, os.O_RDWR|os.O_APPEND, 0)
	f.WriteString(" third")
	fs.FailSyncs(1)
	if err := f.Sync(); !errors.Is(err, syscall.EIO) {
		t.Fatalf("fsync: %v, want EIO", err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	cut(fs, f)
	wantFile(t, path, []byte("first third"))
}

// TestTruncateCommitsWithTheJournal: on ext4 a truncate is a journaled
// size change, durable with the next journal commit (any fsync naming an
// earlier or later change), while data written to the file stays unsynced.
func TestTruncateCommitsWithTheJournal(t *testing.T) {
	fs := Mount(t, t.TempDir())
	d := fs.Dir()
	f, err := os.Create(filepath.Join(d, "sized"))
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(3 * pageSize); err != nil {
		t.Fatal(err)
	}
	f.WriteAt([]byte("unsynced"), 10)
	g, err := os.Create(filepath.Join(d, "other"))
	if err != nil {
		t.Fatal(err)
	}
	if err := g.Sync(); err != nil { // commits the journal: sized's create and truncate
		t.Fatal(err)
	}
	cut(fs, f, g)
	wantFile(t, filepath.Join(d, "sized"), make([]byte, 3*pageSize))
}

func TestCutAfterSyncs(t *testing.T) {
	fs := Mount(t, t.TempDir())
	d := fs.Dir()
	a, _ := os.Create(filepath.Join(d, "a"))
	b, _ := os.Create(filepath.Join(d, "b"))
	syncDir(t, d)
	a.WriteString("a")
	b.WriteString("b")
	fs.CutAfterSyncs(1)
	if err := a.Sync(); err != nil {
		t.Fatalf("the fsync the cut comes after: %v", err)
	}
	if err := b.Sync(); !errors.Is(err, syscall.EIO) {
		t.Fatalf("an fsync after the armed cut: %v, want EIO", err)
	}
	cut(fs, a, b)
	wantFile(t, filepath.Join(d, "a"), []byte("a"))
	wantFile(t, filepath.Join(d, "b"), []byte{})
}
