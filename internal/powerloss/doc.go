// Package powerloss is a test filesystem that can lose power: a FUSE
// mount (github.com/hanwen/go-fuse/v2) that passes every operation through
// to a backing directory and, on PowerCut, rewinds that directory to what
// had been fsynced, as a machine's disk is after a power loss. It is for
// tests only: nothing outside _test.go files imports it.
//
//	fs := powerloss.Mount(t, t.TempDir()) // skips without FUSE, unless FERRY_REQUIRE_FUSE=1
//	p := start(fs.Dir())                  // the process under test writes there
//	fs.PowerCut()                         // from now on: nothing more reaches the disk
//	p.Kill()                              // only now may the process die
//	fs.Remount()                          // a fresh kernel view of what survived
//	start(fs.Dir())                       // recover from it
//
// # What survives a cut
//
// The model is ext4 with data=ordered, its default, seen from the worst
// moment the kernel allows:
//
//   - File data, and the size a write extends a file to, are durable once
//     that file is fsynced (fsync, fdatasync and msync(MS_SYNC) all reach
//     the filesystem as FSYNC). Until then a cut rewinds them, however
//     long ago they were written: neither the kernel's writeback nor
//     ext4's 5-second journal commit is assumed to have happened.
//   - Metadata (create, mkdir, mknod, symlink, link, unlink, rmdir,
//     rename, and the size set by truncate or an allocating fallocate,
//     which ext4 journals at once) goes into one journal, in order, as in
//     ext4. An fsync of a file or directory that has anything unsynced
//     (data written since its last fsync, or a change in the journal
//     naming it) commits the whole journal, as an ext4 fsync commits the
//     running transaction and with it every earlier create, rename and
//     truncate on the filesystem; an fsync with nothing to do commits
//     nothing. This is what ext4 does, and no more: POSIX alone asks for
//     the directory's fsync even for a new file's name, but on ext4 the
//     fsync of a new file commits the transaction that created it (Badger
//     relies on that for its memtable and value-log files), and a rename
//     or create is never durable on its own before some fsync (the
//     journal's 5-second commit is assumed never to come).
//   - Mode, owner, times and extended attributes are passed through and
//     never rewound: nothing here depends on them.
//   - fallocate's allocating modes (0, KEEP_SIZE) are size changes;
//     PUNCH_HOLE and ZERO_RANGE are writes of zeros; the modes that move
//     data (COLLAPSE_RANGE, INSERT_RANGE) are refused (EOPNOTSUPP), as
//     is copy_file_range (ENOSYS: the kernel falls back to reads and
//     writes).
//
// # How it works
//
// Writes go straight to the backing directory (reads need no merging, and
// a file mapped with mmap reads back what it wrote); what a cut must
// restore is kept in memory, as an undo log. Before the first change to a
// file since its last fsync the filesystem opens it a second time and
// notes its size; before a write, truncate or hole punch it copies each
// 4 KiB page below that size the first time it changes (a journaled
// truncate's size counts once it is committed). An unlink, rmdir
// or replacing rename moves the victim into a trash directory beside the
// backing one instead of deleting it. An fsync forgets the file's copies
// and may commit the journal as above (committed unlinks empty the trash).
// A cut rewinds every file to its noted size and copied pages, then undoes
// the uncommitted journal entries newest first. The effect is LazyFS's
// (unsynced data is held in memory and dropped on a cut), seen from the
// other side. The backing directory itself is never fsynced: its own
// durability is not what is simulated.
//
// # mmap, the page cache and killing the process
//
// Badger writes its value log and memtable WALs through shared writable
// mmaps. Those pages are dirtied in the kernel's page cache without any
// FUSE request; the kernel sends them as WRITE requests when it writes
// them back: on msync or fsync (then an FSYNC follows), under memory
// pressure or after dirty_expire_centisecs, and when the last file
// descriptor is closed (FUSE's FLUSH writes dirty pages first). A SIGKILL
// closes every descriptor, so a killed process's unsynced mmap'd pages
// still reach the filesystem moments after it dies: the page cache
// survives a process crash, which is why a kill -9 test cannot catch a
// missing fsync. A power cut must therefore be frozen BEFORE the process
// dies: PowerCut first rewinds the backing directory and from then on
// fails every operation with EIO (writes, fsyncs, reads, lookups), so
// nothing written or synced afterwards can count, and only then may the
// test kill the process. After a cut the kernel's page cache and
// attribute cache still hold the lost data; Remount unmounts (once the
// process is gone) and mounts again, so the restarted process reads only
// what survived.
//
// # Failing fsync
//
// FailSyncs(n) makes the next n fsyncs (of files or directories) fail
// with EIO and make nothing durable: the data stays unsynced, lost on a
// cut, until a later fsync succeeds. (Linux may instead drop the dirty
// pages on a failed writeback, so that a later fsync succeeds without
// them; a store that stops writing on the first failed sync, as ferry's
// does, never depends on the difference.)
//
// CutAfterSyncs(n) cuts the power right after the nth next fsync that
// succeeds: a crash point between two fsyncs that does not depend on
// timing.
//
// # Skipping
//
// Mount needs /dev/fuse and root (it mounts directly, without
// fusermount). Where either is missing the test is skipped, or fails when
// FERRY_REQUIRE_FUSE=1 (as CI sets it).
package powerloss
