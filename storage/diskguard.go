package storage

import (
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ferrymq/ferry/internal/clock"
	"github.com/ferrymq/ferry/internal/echo"
)

// writeKind is what a write does to the disk, as the guard sees it.
type writeKind int

const (
	// writeGrow appends messages: publishes, Commit's outputs, dead
	// letters. Refused once free space is below the reserve.
	writeGrow writeKind = iota
	// writeState changes small records: cursors, acked ids, topic and
	// subscription records. Refused below half the reserve.
	writeState
	// writeFree deletes: topic and subscription deletes, retention.
	// Refused only while the store is read-only for a cause.
	writeFree
)

// diskLevel is how close the filesystem is to full.
type diskLevel int

const (
	diskOK       diskLevel = iota // free ≥ reserve: every write goes
	diskLow                       // free < reserve: appends refused
	diskReadOnly                  // free < reserve/2: only deletes and retention go
)

// levelOf is the level of a filesystem with free bytes free under reserve.
func levelOf(free, reserve uint64) diskLevel {
	switch {
	case free < reserve/2:
		return diskReadOnly
	case free < reserve:
		return diskLow
	}
	return diskOK
}

// resumeAt is the free space at which appends refused for space go again:
// a sixteenth above the reserve, so that a flush or compaction freeing a
// little does not let them in and out again.
func resumeAt(reserve uint64) uint64 { return reserve + reserve/16 }

// refreshBytes is how many bytes of appends the guard lets through on its
// estimate before it looks at the filesystem again, between polls.
const refreshBytes = 1 << 20

// diskGuard keeps the store's disk reserve. It looks at the filesystem's
// free space every poll interval and after every refreshBytes of appends,
// and between looks it counts what it let through (twice: the write-ahead
// log and the table it is flushed to). It also turns the store read-only
// on a disk error. All methods are safe for concurrent use.
type diskGuard struct {
	dir      string
	reserve  uint64
	space    func(dir string) (free, capacity uint64, err error)
	clk      clock.Clock
	log      *slog.Logger
	interval time.Duration
	openedRO bool // Badger was opened read-only: every write is refused
	// syncWrites: Badger syncs every commit before it returns (FsyncAlways),
	// so a failed commit may be a failed sync (durableCommit).
	syncWrites bool
	metrics    *Metrics

	free     atomic.Uint64          // bytes free at the last look
	held     atomic.Bool            // appends refused until free is resumeAt
	capacity atomic.Uint64          // the filesystem's size at the last look
	pending  atomic.Int64           // bytes let through since the last look, doubled
	cause    atomic.Pointer[string] // why every write is refused, if for a cause

	reopen     chan struct{} // closed once an opened-read-only store could open read-write
	reopenOnce sync.Once

	// dropMu is held shared across every commit to Badger, and exclusively
	// across a DropPrefix, which fails the commits made meanwhile
	// (badger.ErrBlockedWrites): with it they wait instead.
	dropMu sync.RWMutex

	lookMu   sync.Mutex // serializes looks; guards level, sticky, timer and stopped
	level    diskLevel  // the level last logged
	sticky   bool       // cause is an I/O error, cleared only by a restart
	timer    clock.Timer
	stopped  bool
	lookErrs int // failed looks in a row, to log the first only
}

// newDiskGuard returns a guard of dir whose filesystem has free bytes free
// of capacity now; it does not poll until start.
func newDiskGuard(opts *Options, space func(string) (uint64, uint64, error), free, capacity uint64) *diskGuard {
	floor := MinDiskReserve(*opts)
	reserve, raised := opts.DiskReserve.resolve(capacity, floor)
	if raised {
		opts.Logger.Info("disk reserve raised to the minimum Badger's own writes need",
			"asked", opts.DiskReserve.String(), "reserve", FormatBytes(reserve), "capacity", FormatBytes(capacity))
	}
	g := &diskGuard{
		dir: opts.Dir, reserve: reserve, space: space, clk: opts.Clock, log: opts.Logger,
		interval: opts.DiskPollInterval, reopen: make(chan struct{}),
		syncWrites: opts.Fsync == FsyncAlways, metrics: opts.Metrics,
	}
	g.free.Store(free)
	g.capacity.Store(capacity)
	g.held.Store(free < reserve)
	return g
}

// start begins polling and logs the state the store opens in.
func (g *diskGuard) start() {
	g.lookMu.Lock()
	defer g.lookMu.Unlock()
	g.level = diskOK
	if !g.openedRO { // which setReadOnly has logged
		g.logLevel(levelOf(g.free.Load(), g.reserve))
	}
	g.timer = g.clk.AfterFunc(g.interval, g.tick)
}

// stop ends polling.
func (g *diskGuard) stop() {
	g.lookMu.Lock()
	defer g.lookMu.Unlock()
	g.stopped = true
	if g.timer != nil {
		g.timer.Stop()
	}
}

func (g *diskGuard) tick() {
	g.look()
	g.lookMu.Lock()
	defer g.lookMu.Unlock()
	if !g.stopped {
		g.timer = g.clk.AfterFunc(g.interval, g.tick)
	}
}

// setReadOnly makes every write refused for cause; sticky causes stay
// until a restart, others until free space is above the reserve again.
// It logs the first cause only.
func (g *diskGuard) setReadOnly(cause string, sticky bool) {
	if g.cause.CompareAndSwap(nil, &cause) {
		g.lookMu.Lock()
		g.sticky = sticky
		g.lookMu.Unlock()
		g.log.Error("storage is read-only: reads go on, every write is refused",
			"cause", cause, "free", FormatBytes(g.free.Load()), "reserve", FormatBytes(g.reserve))
	}
}

// observe turns the store read-only if err is a disk error: out of space
// or quota (until free space is back above the reserve), or an I/O error
// or a read-only filesystem (until a restart).
func (g *diskGuard) observe(err error) {
	switch {
	case err == nil:
	case errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EDQUOT):
		g.setReadOnly("disk full: "+echo.Cut(err.Error(), 200), false)
	case errors.Is(err, syscall.EIO), errors.Is(err, syscall.EROFS):
		g.setReadOnly("disk error: "+echo.Cut(err.Error(), 200)+"; restart the broker once the disk is fixed", true)
	}
}

// commit runs a Badger commit (or update) so that a DropPrefix under way
// makes it wait, not fail, and turns the store read-only if it fails with
// a disk error, or under FsyncAlways with any error a sync may have
// caused (durableCommit).
func (g *diskGuard) commit(fn func() error) error {
	g.dropMu.RLock()
	defer g.dropMu.RUnlock()
	if g.syncWrites {
		return g.durableCommit(fn)
	}
	err := fn()
	g.observe(err)
	return err
}

// admit says whether a write of kind, adding bytes to the log, may go: nil,
// or a *DiskFullError.
func (g *diskGuard) admit(kind writeKind, bytes int) error {
	if kind == writeGrow && g.pending.Add(2*int64(bytes)) > refreshBytes {
		g.look()
	}
	free := g.estimate()
	if c := g.cause.Load(); c != nil {
		if kind == writeGrow {
			g.pending.Add(-2 * int64(bytes))
		}
		return &DiskFullError{Free: free, Reserve: g.reserve, ReadOnly: true, Cause: *c}
	}
	lvl := g.levelOf(free)
	if kind == writeGrow && lvl >= diskLow && !g.held.Load() {
		// Only the estimate says low (it counts what was let through
		// twice, for the WAL and the table): ask the filesystem before
		// refusing, so that a refusal always means free space below the
		// reserve, held until it is back above it.
		g.look()
		free = g.estimate()
		lvl = g.levelOf(free)
	}
	if kind == writeGrow && lvl >= diskLow || kind == writeState && lvl == diskReadOnly {
		if kind == writeGrow {
			g.pending.Add(-2 * int64(bytes)) // not written after all
		}
		return &DiskFullError{Free: free, Reserve: g.reserve, ReadOnly: lvl == diskReadOnly}
	}
	return nil
}

// roomFor says whether Badger may write n bytes of its own (a value-log
// GC's copy) and keep half the reserve free: the store is not read-only
// for a cause and free space, as estimated, is at least reserve/2 + n.
func (g *diskGuard) roomFor(n uint64) bool {
	return g.cause.Load() == nil && !g.openedRO && g.estimate() >= g.reserve/2+n
}

// grew counts bytes written without admit (a replica's raft log appends:
// the node's own were admitted as publishes, a follower's come from its
// leaders), so that the estimate drops with them and the filesystem is
// looked at after every refreshBytes, not only at the next poll: a
// cluster node refuses appends by the state this keeps current.
func (g *diskGuard) grew(bytes int) {
	if g.pending.Add(2*int64(bytes)) > refreshBytes {
		g.look()
	}
}

// levelOf is the level at free bytes free: levelOf, but low while held.
func (g *diskGuard) levelOf(free uint64) diskLevel {
	lvl := levelOf(free, g.reserve)
	if lvl == diskOK && g.held.Load() {
		return diskLow
	}
	return lvl
}

// estimate is the free space of the last look less what was let through
// since.
func (g *diskGuard) estimate() uint64 {
	free, p := g.free.Load(), g.pending.Load()
	if p <= 0 {
		return free
	}
	return free - min(free, uint64(p))
}

// look reads the filesystem's free space, logs a change of level, clears a
// cause that space cleared, and signals reopen once an opened-read-only
// store has room to open read-write. A look under way makes others skip.
func (g *diskGuard) look() {
	if !g.lookMu.TryLock() {
		return
	}
	defer g.lookMu.Unlock()
	p := g.pending.Load()
	free, capacity, err := g.space(g.dir)
	if err != nil {
		if g.lookErrs++; g.lookErrs == 1 {
			g.log.Warn("reading the data directory's free space failed; the guard keeps its last reading", "err", err)
		}
		return
	}
	g.lookErrs = 0
	g.free.Store(free)
	g.capacity.Store(capacity)
	g.pending.Add(-p)
	switch {
	case free < g.reserve:
		g.held.Store(true)
	case free >= resumeAt(g.reserve):
		g.held.Store(false)
	}
	lvl := g.levelOf(free)
	if g.openedRO {
		if lvl != diskReadOnly {
			g.reopenOnce.Do(func() {
				g.log.Info("disk space is back: the store, opened read-only, can open read-write",
					"free", FormatBytes(free), "reserve", FormatBytes(g.reserve))
				close(g.reopen)
			})
		}
		return
	}
	if c := g.cause.Load(); c != nil && !g.sticky && lvl == diskOK {
		g.cause.Store(nil)
		g.log.Info("disk space is back above the reserve: storage is writable again",
			"free", FormatBytes(free), "reserve", FormatBytes(g.reserve), "was", *c)
	}
	g.logLevel(lvl)
}

// logLevel logs a change to lvl. The caller holds lookMu.
func (g *diskGuard) logLevel(lvl diskLevel) {
	if lvl == g.level {
		return
	}
	free, reserve := FormatBytes(g.free.Load()), FormatBytes(g.reserve)
	switch lvl {
	case diskOK:
		g.log.Info("disk space is back above the reserve: publishing resumes", "free", free, "reserve", reserve)
	case diskLow:
		g.log.Warn("disk space below the reserve: publishes, commits' outputs and dead letters are refused; acks, reads and deletes go on; delete topics or shorten retention to free space",
			"free", free, "reserve", reserve)
	case diskReadOnly:
		g.log.Error("disk space below half the reserve: storage is read-only but for deletes and retention; delete topics or grow the volume",
			"free", free, "reserve", reserve)
	}
	g.level = lvl
}

// state is the guard's view for Store.Disk.
func (g *diskGuard) state() DiskState {
	d := DiskState{Free: g.estimate(), Capacity: g.capacity.Load(), Reserve: g.reserve}
	lvl := g.levelOf(d.Free)
	d.Low = lvl >= diskLow
	d.ReadOnly = lvl == diskReadOnly
	if c := g.cause.Load(); c != nil {
		d.Low, d.ReadOnly, d.Cause = true, true, *c
	}
	return d
}

// DiskState is the data directory's filesystem as the store last saw it,
// and what the store refuses because of it.
type DiskState struct {
	Free     uint64 // bytes free, less appends let through since the last look
	Capacity uint64 // the filesystem's size in bytes
	Reserve  uint64 // the reserve in bytes
	// Low is true while appends (publishes, Commit's outputs, dead
	// letters) are refused: free is below the reserve, or ReadOnly.
	Low bool
	// ReadOnly is true while every write but deletes and retention is
	// refused (free below half the reserve), or every write (Cause set).
	ReadOnly bool
	// Cause says why the store is read-only other than free space: a disk
	// error, or an open on a full disk. Empty otherwise.
	Cause string
}

// String says the state in a line, for logs, /readyz and ferry topic get.
func (d DiskState) String() string {
	space := FormatBytes(d.Free) + " free of " + FormatBytes(d.Capacity) + ", reserve " + FormatBytes(d.Reserve)
	switch {
	case d.Cause != "":
		return "read-only: " + d.Cause + " (" + space + ")"
	case d.ReadOnly:
		return "read-only: disk space below half the reserve; deletes and retention still run (" + space + ")"
	case d.Low:
		return "publishing refused: disk space below the reserve; reads, acks and deletes go on (" + space + ")"
	}
	return "writable (" + space + ")"
}
