package storage

import (
	"errors"
	"syscall"

	"github.com/dgraph-io/badger/v4"

	"github.com/ferrymq/ferry/internal/echo"
)

// observeSync turns the store read-only until a restart if a sync of
// Badger's logs failed, whatever the error says. Badger's DB.Sync
// flattens its errors to text (y.CombineErrors formats them with %v), so
// observe's checks for EIO or ENOSPC cannot see through it. And any
// failed fsync may have lost data: the kernel may drop the dirty pages it
// could not write and report the failure once, so a later fsync that
// succeeds proves nothing about them, and acking writes after them would
// ack messages behind a hole in the log.
func (g *diskGuard) observeSync(err error) {
	if err == nil {
		return
	}
	g.setReadOnly("sync failed: "+echo.Cut(err.Error(), 200)+
		"; data written since the last good sync may be lost; restart the broker once the disk is fixed", true)
}

// durableCommit runs a commit that Badger syncs before it returns (under
// FsyncAlways: Options.SyncWrites), timing it as the log's fsync. An error
// Badger returns before writing anything (a transaction too big or
// conflicting, writes blocked, the DB closed) changes nothing; ENOSPC is a
// full disk (observe); any other error may come from a sync, and makes the
// store read-only until a restart (observeSync).
func (g *diskGuard) durableCommit(fn func() error) error {
	start := g.clk.Now()
	err := fn()
	took := g.clk.Now().Sub(start)
	g.metrics.observeFsync(took.Seconds())
	if took >= slowFsync {
		g.log.Warn("slow durable commit (its fsyncs)", "duration", took.String(), "err", err)
	}
	switch {
	case err == nil,
		errors.Is(err, badger.ErrTxnTooBig), errors.Is(err, badger.ErrConflict),
		errors.Is(err, badger.ErrBlockedWrites), errors.Is(err, badger.ErrDBClosed):
	case errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EDQUOT):
		g.observe(err)
	default:
		g.observeSync(err)
	}
	return err
}
