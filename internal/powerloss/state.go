package powerloss

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"
)

// pageSize is the unit in which a file's synced content is copied.
const pageSize = 4096

// fileID names a backing inode, whatever its path.
type fileID struct{ dev, ino uint64 }

func idOf(st *unix.Stat_t) fileID { return fileID{dev: uint64(st.Dev), ino: st.Ino} }

// record is what a cut restores one file to: its durable size and the
// durable content of the pages changed since its last fsync.
type record struct {
	fd   int   // the backing file, opened read-write for the rewind
	size int64 // its durable size: at its last fsync, or a committed truncate's
	// limit is the largest size that may become durable without an fsync
	// of the file (a truncate or fallocate in the journal): pages below it
	// are copied before they change.
	limit int64
	pages map[int64][]byte // page index → durable content
}

// change is one metadata change in the journal.
type change struct {
	what    string
	touches []fileID     // directories and files it names
	undo    func() error // takes the backing directory back to before it
	commit  func() error // once durable: drops what undo would need; may be nil
}

// state is one mount's undo log. Every method that changes the backing
// directory holds mu while it records and applies the change, so a cut
// sees each change whole or not at all.
type state struct {
	mu        sync.Mutex
	cut       atomic.Bool // set by PowerCut: every operation fails with EIO
	trash     string      // where unlinked files wait for their unlink to commit
	trashN    int
	failSyncs int // fsyncs still to fail with EIO
	cutAfter  int // successful fsyncs still to go before a cut; 0: none armed
	cutErr    error
	files     map[fileID]*record
	journal   []change // uncommitted metadata changes, oldest first
}

func newState(trash string) *state {
	return &state{trash: trash, files: map[fileID]*record{}}
}

// down is EIO once the power is cut.
func (s *state) down() syscall.Errno {
	if s.cut.Load() {
		return syscall.EIO
	}
	return 0
}

// recordOf returns the record of the file open as fd, noting its current
// size as synced if it has none. The caller holds mu.
func (s *state) recordOf(fd int) (*record, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, err
	}
	id := idOf(&st)
	if r := s.files[id]; r != nil {
		return r, nil
	}
	// A second, read-write description of the same inode: the handle
	// that wrote may be write-only, and it may be closed before the cut.
	rfd, err := unix.Open("/proc/self/fd/"+strconv.Itoa(fd), unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	r := &record{fd: rfd, size: st.Size, limit: st.Size, pages: map[int64][]byte{}}
	s.files[id] = r
	return r, nil
}

// save copies the durable content of every page of r that [from, to)
// touches and that was not copied yet. Holes are skipped when sparse is
// set (they read back as zeros after the rewind's truncate anyway); the
// caller holds mu.
func (r *record) save(from, to int64, sparse bool) error {
	to = min(to, r.limit)
	for from < to {
		start, end := from, to
		if sparse {
			d, err := unix.Seek(r.fd, from, unix.SEEK_DATA)
			if errors.Is(err, unix.ENXIO) || err == nil && d >= to {
				return nil
			}
			if err != nil {
				return err
			}
			h, err := unix.Seek(r.fd, d, unix.SEEK_HOLE)
			if err != nil {
				return err
			}
			start, end = d, min(h, to)
		}
		for p := start / pageSize; p*pageSize < end; p++ {
			if _, ok := r.pages[p]; ok {
				continue
			}
			buf := make([]byte, min(pageSize, r.limit-p*pageSize))
			n, err := unix.Pread(r.fd, buf, p*pageSize)
			if err != nil {
				return err
			}
			r.pages[p] = buf[:n]
		}
		from = end
	}
	return nil
}

// rewind takes the file back to its durable size and content and closes
// the record.
func (r *record) rewind() error {
	defer unix.Close(r.fd)
	if err := unix.Ftruncate(r.fd, r.size); err != nil {
		return err
	}
	for p, buf := range r.pages {
		buf = buf[:max(0, min(int64(len(buf)), r.size-p*pageSize))]
		if _, err := unix.Pwrite(r.fd, buf, p*pageSize); err != nil {
			return err
		}
	}
	return nil
}

// resize sets the size of the file open as fd, as ftruncate or an
// allocating fallocate does: on ext4 a metadata change, journaled, so it
// becomes durable with the journal (an fsync of anything that commits it)
// even if the file is never fsynced. What it cuts off is copied first;
// what it adds is zeros, so pages there that were written since the last
// fsync are durable as zeros once it commits. The caller holds mu.
func (s *state) resize(fd int, size int64, apply func() error) error {
	r, err := s.recordOf(fd)
	if err != nil {
		return err
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return err
	}
	if err := r.save(size, r.limit, true); err != nil {
		return err
	}
	for p := r.limit / pageSize; p*pageSize < min(st.Size, size); p++ {
		buf := r.pages[p]
		if buf == nil && p*pageSize < r.limit { // straddles the limit: keep what is below
			buf = make([]byte, r.limit-p*pageSize)
			n, err := unix.Pread(fd, buf, p*pageSize)
			if err != nil {
				return err
			}
			buf = buf[:n]
		}
		r.pages[p] = append(buf, make([]byte, pageSize-len(buf))...)
	}
	if err := apply(); err != nil {
		return err
	}
	r.limit = max(r.limit, size)
	id := idOf(&st)
	s.log(change{what: fmt.Sprintf("resize to %d", size), touches: []fileID{id},
		undo: func() error { return nil }, // the file's record rewinds it
		commit: func() error {
			if r := s.files[id]; r != nil {
				r.size = size
			}
			return nil
		}})
	return nil
}

// log appends a metadata change to the journal. The caller holds mu.
func (s *state) log(c change) { s.journal = append(s.journal, c) }

// toTrash moves path into the trash and returns where it went. The caller
// holds mu.
func (s *state) toTrash(path string) (string, error) {
	s.trashN++
	dst := filepath.Join(s.trash, strconv.Itoa(s.trashN))
	return dst, os.Rename(path, dst)
}

// synced makes the file or directory id durable, as an fsync of it does
// on ext4: its data and, if it had anything unsynced (data, or a change
// in the journal naming it), the whole journal, as ext4 commits its
// running transaction. The caller holds mu.
func (s *state) synced(id fileID) error {
	var err error
	r := s.files[id]
	dirty := r != nil
	if r != nil {
		delete(s.files, id)
		err = unix.Close(r.fd)
	}
	for _, c := range s.journal {
		for _, t := range c.touches {
			dirty = dirty || t == id
		}
	}
	if !dirty {
		return err
	}
	for _, c := range s.journal {
		if c.commit != nil {
			err = errors.Join(err, c.commit())
		}
	}
	s.journal = nil
	return err
}

// fsync is an fsync of id: it fails with EIO while FailSyncs asks, else
// makes id durable.
func (s *state) fsync(id fileID) syscall.Errno {
	s.mu.Lock()
	defer s.mu.Unlock()
	if errno := s.down(); errno != 0 {
		return errno
	}
	if s.failSyncs > 0 {
		s.failSyncs--
		return syscall.EIO
	}
	if err := s.synced(id); err != nil {
		return errnoOf(err)
	}
	if s.cutAfter > 0 {
		if s.cutAfter--; s.cutAfter == 0 {
			s.cutErr = s.powerCutLocked()
		}
	}
	return 0
}

// powerCut fails every operation from now on, then takes the backing
// directory back to what was durable: every file to its last fsync, then
// the uncommitted metadata changes undone, newest first. It returns what
// went wrong while rewinding.
func (s *state) powerCut() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	err := s.cutErr
	s.cutErr = nil
	return errors.Join(err, s.powerCutLocked())
}

// powerCutLocked is powerCut; the caller holds mu.
func (s *state) powerCutLocked() error {
	if s.cut.Swap(true) {
		return nil
	}
	var errs []error
	for _, r := range s.files {
		if err := r.rewind(); err != nil {
			errs = append(errs, fmt.Errorf("rewinding a file: %w", err))
		}
	}
	s.files = map[fileID]*record{}
	for i := len(s.journal) - 1; i >= 0; i-- {
		if err := s.journal[i].undo(); err != nil {
			errs = append(errs, fmt.Errorf("undoing %s: %w", s.journal[i].what, err))
		}
	}
	s.journal = nil
	return errors.Join(errs...)
}

// forget makes everything durable without rewinding, as a clean shutdown
// does.
func (s *state) forget() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var err error
	for _, r := range s.files {
		err = errors.Join(err, unix.Close(r.fd))
	}
	s.files = map[fileID]*record{}
	for _, c := range s.journal {
		if c.commit != nil {
			err = errors.Join(err, c.commit())
		}
	}
	s.journal = nil
	return err
}

// errnoOf is err's errno, or EIO.
func errnoOf(err error) syscall.Errno {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return errno
	}
	return syscall.EIO
}
