package powerloss

import (
	"fmt"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// RequireEnv is the environment variable that turns a missing FUSE from a
// skip into a failure (CI sets it to 1).
const RequireEnv = "FERRY_REQUIRE_FUSE"

// FS is a mounted power-loss filesystem. Its methods are safe for
// concurrent use with the process writing to it.
type FS struct {
	tb      testing.TB
	backing string
	trash   string
	dir     string
	s       *state
	server  *fuse.Server
}

// Mount mounts a power-loss filesystem over backing (an existing
// directory, whose content counts as durable) on a new directory, and
// unmounts it when the test ends. Without /dev/fuse or root the test is
// skipped, or fails if FERRY_REQUIRE_FUSE=1.
func Mount(tb testing.TB, backing string) *FS {
	tb.Helper()
	skip := tb.Skipf
	if os.Getenv(RequireEnv) == "1" {
		skip = tb.Fatalf
	}
	if os.Geteuid() != 0 {
		skip("powerloss: mounting FUSE directly needs root (%s=1 makes this a failure)", RequireEnv)
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		skip("powerloss: no FUSE: %v (%s=1 makes this a failure)", err, RequireEnv)
	}
	f := &FS{tb: tb, backing: backing, trash: backing + ".powerloss-trash", dir: tb.TempDir()}
	if err := os.Mkdir(f.trash, 0o700); err != nil {
		tb.Fatalf("powerloss: %v", err)
	}
	if err := f.mount(); err != nil {
		os.RemoveAll(f.trash)
		skip("powerloss: mount: %v (%s=1 makes this a failure)", err, RequireEnv)
	}
	tb.Cleanup(func() {
		f.unmount()
		os.RemoveAll(f.trash)
	})
	return f
}

func (f *FS) mount() error {
	s := newState(f.trash)
	root, err := newRoot(f.backing, s)
	if err != nil {
		return err
	}
	server, err := fs.Mount(f.dir, root, &fs.Options{MountOptions: fuse.MountOptions{
		DirectMount: true, DirectMountStrict: true, FsName: "powerloss", Name: "powerloss",
		DisableXAttrs: true, MaxBackground: 64,
	}})
	if err != nil {
		return err
	}
	f.s, f.server = s, server
	return nil
}

// unmount unmounts, retrying while the mount is busy for up to 10 s (a
// killed process's descriptors close a moment after it is reaped). If it
// stays busy (a test failed with files open) it aborts the FUSE
// connection, so that nothing waits on this server again, and detaches
// the mount.
func (f *FS) unmount() {
	if f.server == nil {
		return
	}
	var st syscall.Stat_t
	statErr := syscall.Stat(f.dir, &st)
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := f.server.Unmount()
		if err == nil {
			f.server.Wait()
			break
		}
		if time.Now().After(deadline) {
			f.tb.Errorf("powerloss: unmount %s: %v; aborting the connection: is a process still using it?", f.dir, err)
			if statErr == nil {
				abort := fmt.Sprintf("/sys/fs/fuse/connections/%d/abort", unix.Minor(st.Dev))
				os.WriteFile(abort, []byte("1"), 0)
			}
			syscall.Unmount(f.dir, syscall.MNT_DETACH)
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	f.server = nil
}

// Dir is the mount point: the directory the process under test uses.
func (f *FS) Dir() string { return f.dir }

// PowerCut cuts the power: the backing directory goes back to what was
// durable (see the package doc), and from this instant every operation on
// the mount fails with EIO, so nothing written or synced later counts.
// Kill the process writing to it after PowerCut, never before (its
// unsynced mmap'd pages reach the filesystem when it dies), then Remount.
func (f *FS) PowerCut() {
	f.tb.Helper()
	if err := f.s.powerCut(); err != nil {
		f.tb.Errorf("powerloss: rewinding %s: %v", f.backing, err)
	}
}

// Remount unmounts and mounts again on the same Dir, as a machine that
// restarts: after a PowerCut the new mount sees only what survived, with
// nothing of the old kernel page cache. Without a PowerCut first it is a
// clean restart: everything written is kept. Every process using the
// mount must be gone.
func (f *FS) Remount() {
	f.tb.Helper()
	f.unmount()
	if !f.s.cut.Load() {
		if err := f.s.forget(); err != nil {
			f.tb.Errorf("powerloss: %v", err)
		}
	}
	if err := f.mount(); err != nil {
		f.tb.Fatalf("powerloss: mount again: %v", err)
	}
}

// FailSyncs makes the next n fsyncs on the mount (of files or
// directories, msync included) fail with EIO; they make nothing durable.
func (f *FS) FailSyncs(n int) {
	f.s.mu.Lock()
	defer f.s.mu.Unlock()
	f.s.failSyncs = n
}

// CutAfterSyncs arms a power cut right after the nth fsync from now that
// succeeds: that fsync is durable, nothing after it is. It makes a crash
// point between two fsyncs deterministic (say, between the two a store
// does to commit). Call PowerCut afterwards all the same, before killing
// the process: it reports what the armed cut found and does nothing more.
func (f *FS) CutAfterSyncs(n int) {
	f.s.mu.Lock()
	defer f.s.mu.Unlock()
	f.s.cutAfter = n
}

// String names the mount, for logs.
func (f *FS) String() string { return fmt.Sprintf("powerloss %s over %s", f.dir, f.backing) }
