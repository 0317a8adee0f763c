package storage

import "github.com/ferrymq/ferry/internal/echo"

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
