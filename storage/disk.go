package storage

import (
	"fmt"
	"math"
	"os"
	"strconv"
	"strings"
	"syscall"

	"github.com/ferrymq/ferry/internal/echo"
)

// DiskReserve is how much of the data directory's filesystem the store
// keeps free: a fixed size, or a percentage of the filesystem's size. The
// zero value is the default, 5%. Whichever it is, the reserve is never
// below MinDiskReserve of the store's options.
type DiskReserve struct {
	// Bytes is a fixed reserve, used when Percent is 0.
	Bytes uint64
	// Percent is a reserve of this share of the filesystem's size, above
	// 0 and below 100.
	Percent float64
}

// DefaultDiskReserve is 5% of the data directory's filesystem (raised to
// MinDiskReserve on small ones).
var DefaultDiskReserve = DiskReserve{Percent: 5}

// ParseDiskReserve parses a size ("512MiB", "2GiB", "1GB", "1048576") or a
// percentage of the filesystem ("5%").
func ParseDiskReserve(s string) (DiskReserve, error) {
	t := strings.TrimSpace(s)
	if p, ok := strings.CutSuffix(t, "%"); ok {
		v, err := strconv.ParseFloat(strings.TrimSpace(p), 64)
		if err != nil || math.IsNaN(v) || v <= 0 || v >= 100 {
			return DiskReserve{}, fmt.Errorf("disk reserve %s: a percentage must be above 0%% and below 100%%: %w", echo.Quote(s), ErrInvalidConfig)
		}
		return DiskReserve{Percent: v}, nil
	}
	n, err := ParseBytes(t)
	if err != nil {
		return DiskReserve{}, fmt.Errorf("disk reserve %s: want a size such as 512MiB or a percentage such as 5%%: %w", echo.Quote(s), ErrInvalidConfig)
	}
	if n == 0 {
		return DiskReserve{}, fmt.Errorf("disk reserve %s: the reserve cannot be 0; Badger's own writes need it: %w", echo.Quote(s), ErrInvalidConfig)
	}
	return DiskReserve{Bytes: n}, nil
}

// String returns the reserve as ParseDiskReserve reads it.
func (r DiskReserve) String() string {
	switch {
	case r.Percent > 0:
		return strconv.FormatFloat(r.Percent, 'f', -1, 64) + "%"
	case r.Bytes > 0:
		return exactBytes(r.Bytes)
	}
	return DefaultDiskReserve.String()
}

// exactBytes writes n in the largest binary unit that divides it, so that
// ParseBytes reads it back exactly: "512MiB", "1000000".
func exactBytes(n uint64) string {
	for _, u := range []struct {
		name string
		size uint64
	}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if n%u.size == 0 {
			return strconv.FormatUint(n/u.size, 10) + u.name
		}
	}
	return strconv.FormatUint(n, 10)
}

// resolve returns the reserve in bytes on a filesystem of capacity bytes,
// and whether the floor raised it.
func (r DiskReserve) resolve(capacity, floor uint64) (reserve uint64, raised bool) {
	switch {
	case r.Percent > 0:
		reserve = uint64(float64(capacity) * r.Percent / 100)
	case r.Bytes > 0:
		reserve = r.Bytes
	default:
		return DefaultDiskReserve.resolve(capacity, floor)
	}
	if reserve < floor {
		return floor, true
	}
	return reserve, false
}

// MinDiskReserve is the smallest disk reserve a store with opts keeps:
// four memtables and two value-log files (192 MiB with the default 16 MiB
// memtables and 64 MiB files). Badger writes its files through mmap, and a
// write into a mapped file on a full filesystem kills the process
// (SIGBUS), so once publishing is refused Badger's own writes must still
// fit: the flush of each memtable that was filling (NumMemtables of them,
// written one at a time, each an L0 table about its size, whose
// write-ahead log is removed only after), the write-ahead log of the next
// memtable, which acks, seeks and deletes keep filling, the tables a
// compaction writes before it removes the ones it read, and a value-log
// GC's copy of a file's live values (at most a file) into the newest file.
// Half the reserve is kept for those alone: below it, acks and seeks are
// refused too (see Store.Disk), and GC runs only with a file's room above
// it.
func MinDiskReserve(opts Options) uint64 {
	return 4*uint64(opts.MemTableBytes) + 2*uint64(opts.ValueLogFileBytes)
}

// ParseBytes parses a byte size: a whole number with an optional unit, B,
// KiB, MiB, GiB, TiB (powers of 1024) or KB, MB, GB, TB (powers of 1000).
func ParseBytes(s string) (uint64, error) {
	t := strings.TrimSpace(s)
	i := 0
	for i < len(t) && t[i] >= '0' && t[i] <= '9' {
		i++
	}
	if i == 0 {
		return 0, fmt.Errorf("size %s: want a number with an optional unit such as MiB", echo.Quote(s))
	}
	n, err := strconv.ParseUint(t[:i], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("size %s: %w", echo.Quote(s), err)
	}
	var mult uint64
	switch strings.TrimSpace(t[i:]) {
	case "", "B":
		mult = 1
	case "KiB":
		mult = 1 << 10
	case "MiB":
		mult = 1 << 20
	case "GiB":
		mult = 1 << 30
	case "TiB":
		mult = 1 << 40
	case "KB":
		mult = 1e3
	case "MB":
		mult = 1e6
	case "GB":
		mult = 1e9
	case "TB":
		mult = 1e12
	default:
		return 0, fmt.Errorf("size %s: unit %s: want B, KiB, MiB, GiB, TiB, KB, MB, GB or TB", echo.Quote(s), echo.Quote(t[i:]))
	}
	if n > math.MaxUint64/mult {
		return 0, fmt.Errorf("size %s is too large", echo.Quote(s))
	}
	return n * mult, nil
}

// FormatBytes writes n in the largest binary unit that keeps it at least
// 1, with one decimal: "1.5 GiB", "512.0 MiB", "900 B".
func FormatBytes(n uint64) string {
	units := []string{"KiB", "MiB", "GiB", "TiB", "PiB"}
	if n < 1<<10 {
		return strconv.FormatUint(n, 10) + " B"
	}
	v, u := float64(n)/(1<<10), 0
	for v >= 1<<10 && u < len(units)-1 {
		v /= 1 << 10
		u++
	}
	return strconv.FormatFloat(v, 'f', 1, 64) + " " + units[u]
}

// DiskSpace returns the bytes free to an unprivileged user and the size of
// the filesystem holding dir.
func DiskSpace(dir string) (free, capacity uint64, err error) {
	var fs syscall.Statfs_t
	if err := syscall.Statfs(dir, &fs); err != nil {
		return 0, 0, fmt.Errorf("statfs %s: %w", dir, err)
	}
	return fs.Bavail * uint64(fs.Bsize), fs.Blocks * uint64(fs.Bsize), nil
}

// DiskFullError is returned by the writes the store refuses to keep its
// disk reserve: appends (publishes, Commit's outputs, dead letters) while
// the data directory's filesystem has less free than the reserve; every
// write but deletes and retention while it has less than half of it; and
// every write while the store is read-only after a disk error or because
// it was opened on a full disk. Nothing was written then; the write may
// succeed once space is freed.
type DiskFullError struct {
	Free    uint64 // bytes free on the filesystem, as last seen
	Reserve uint64 // the reserve, in bytes
	// ReadOnly says every write is refused, not only appends.
	ReadOnly bool
	// Cause says why the store is read-only, if not for free space alone:
	// a disk error, or an open on a full disk.
	Cause string
}

func (e *DiskFullError) Error() string {
	var b strings.Builder
	b.WriteString("storage: ")
	switch {
	case e.Cause != "":
		b.WriteString("read-only: " + e.Cause)
	case e.ReadOnly:
		b.WriteString("disk nearly full, read-only")
	default:
		b.WriteString("disk space low, appends refused")
	}
	fmt.Fprintf(&b, " (%s free, reserve %s)", FormatBytes(e.Free), FormatBytes(e.Reserve))
	return b.String()
}

// openDiskGuard reads the data directory's free space before Badger opens.
// With less than half the reserve free, Badger could not replay and flush
// its memtables without filling the disk (a write into a mapped file on a
// full filesystem is SIGBUS, not an error), so the store opens read-only:
// it serves reads, refuses every write, and Reopen says when it could open
// read-write.
func openDiskGuard(opts *Options) (*diskGuard, error) {
	if err := os.MkdirAll(opts.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("create data directory: %w", err)
	}
	free, capacity, err := DiskSpace(opts.Dir)
	if err != nil {
		return nil, err
	}
	g := newDiskGuard(opts, DiskSpace, free, capacity)
	if levelOf(free, g.reserve) == diskReadOnly {
		g.openedRO = true
		g.setReadOnly(fmt.Sprintf("opened read-only: %s free is below half the reserve, too little for Badger to replay and flush its memtables; the store opens read-write once it is reopened with space freed",
			FormatBytes(free)), true)
	}
	return g, nil
}

// Disk returns the data directory's filesystem as the store last saw it
// (at most DiskPollInterval ago) and what the store refuses because of it.
func (s *Store) Disk() DiskState { return s.guard.state() }

// Reopen is closed once a store that was opened read-only for want of
// space (Disk().Cause says so) sees enough free space to open read-write:
// its owner should close it and open it again. It is never closed for a
// store opened read-write.
func (s *Store) Reopen() <-chan struct{} { return s.guard.reopen }

// admitAdmin asks the disk guard whether a topic or subscription change may
// go. A change that is a Raft entry (st.Group set) is applied whatever the
// disk: every replica must apply the same entries; the guard refused the
// writes that would grow the log before they were proposed.
func (s *Store) admitAdmin(kind writeKind, st Stamp) error {
	if st.Group != 0 {
		return nil
	}
	return s.guard.admit(kind, 0)
}

// dropAtOnce drops prefixes with Badger's DropPrefix when the disk is below
// its reserve. Deletes free no space until a compaction rewrites the
// tables holding the data, and with publishing refused none may come;
// DropPrefix removes the tables holding only the prefixes at once and
// rewrites the few that hold others too. It holds up every write
// meanwhile (dropMu), which a disk below its reserve can afford. The keys
// are deleted one by one after it all the same, which finds none left.
func (s *Store) dropAtOnce(prefixes [][]byte) error {
	if !s.guard.state().Low {
		return nil
	}
	if err := s.guard.admit(writeFree, 0); err != nil {
		return err
	}
	s.guard.dropMu.Lock()
	err := s.db.DropPrefix(prefixes...)
	s.guard.dropMu.Unlock()
	if err != nil {
		s.guard.observe(err)
		return fmt.Errorf("drop prefixes: %w", err)
	}
	s.guard.look()
	// The dropped payloads are in the value log: DropPrefix counted them
	// as garbage, and GC gives their files back.
	s.collectValueLog()
	s.log.Info("deleted data dropped at once to free disk space", "disk", s.guard.state().String())
	return nil
}
