package powerloss

import (
	"context"
	"os"
	"path/filepath"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// node is a loopback node whose changes go through the undo log.
type node struct {
	*fs.LoopbackNode
	s *state
}

func newRoot(backing string, s *state) (*node, error) {
	ops, err := fs.NewLoopbackRoot(backing)
	if err != nil {
		return nil, err
	}
	n := &node{LoopbackNode: ops.(*fs.LoopbackNode), s: s}
	n.RootData.RootNode = n
	return n, nil
}

// WrapChild makes every node of the tree a node.
func (n *node) WrapChild(ctx context.Context, ops fs.InodeEmbedder) fs.InodeEmbedder {
	return &node{LoopbackNode: ops.(*fs.LoopbackNode), s: n.s}
}

// path is n's path in the backing directory.
func (n *node) path() string { return filepath.Join(n.RootData.Path, n.Path(nil)) }

func lstatID(path string) (fileID, error) {
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		return fileID{}, err
	}
	return idOf(&st), nil
}

// id is n's backing inode.
func (n *node) id() (fileID, syscall.Errno) {
	id, err := lstatID(n.path())
	if err != nil {
		return fileID{}, fs.ToErrno(err)
	}
	return id, 0
}

func (n *node) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	if errno := n.s.down(); errno != 0 {
		return nil, errno
	}
	return n.LoopbackNode.Lookup(ctx, name, out)
}

func (n *node) Getattr(ctx context.Context, f fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	if errno := n.s.down(); errno != 0 {
		return errno
	}
	if h, ok := f.(*file); ok {
		f = h.lf
	}
	return n.LoopbackNode.Getattr(ctx, f, out)
}

// created journals the creation of name in n, undone by removing it.
func (n *node) created(what, name string) syscall.Errno {
	p := filepath.Join(n.path(), name)
	parent, errno := n.id()
	if errno != 0 {
		return errno
	}
	child, err := lstatID(p)
	if err != nil {
		return fs.ToErrno(err)
	}
	n.s.log(change{what: what + " " + p, touches: []fileID{parent, child}, undo: func() error { return os.Remove(p) }})
	return 0
}

// make runs op, which makes name in n (a directory, node, link), under
// the state's lock and unless the power is off, and journals the entry it
// made (created).
func (n *node) make(what, name string, op func() (*fs.Inode, syscall.Errno)) (*fs.Inode, syscall.Errno) {
	n.s.mu.Lock()
	defer n.s.mu.Unlock()
	if errno := n.s.down(); errno != 0 {
		return nil, errno
	}
	ch, errno := op()
	if errno == 0 {
		errno = n.created(what, name)
	}
	return ch, errno
}

func (n *node) Mkdir(ctx context.Context, name string, mode uint32, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	return n.make("mkdir", name, func() (*fs.Inode, syscall.Errno) {
		return n.LoopbackNode.Mkdir(ctx, name, mode, out)
	})
}

func (n *node) Mknod(ctx context.Context, name string, mode, rdev uint32, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	return n.make("mknod", name, func() (*fs.Inode, syscall.Errno) {
		return n.LoopbackNode.Mknod(ctx, name, mode, rdev, out)
	})
}

func (n *node) Symlink(ctx context.Context, target, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	return n.make("symlink", name, func() (*fs.Inode, syscall.Errno) {
		return n.LoopbackNode.Symlink(ctx, target, name, out)
	})
}

func (n *node) Link(ctx context.Context, target fs.InodeEmbedder, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	if t, ok := target.(*node); ok {
		target = t.LoopbackNode
	}
	return n.make("link", name, func() (*fs.Inode, syscall.Errno) {
		return n.LoopbackNode.Link(ctx, target, name, out)
	})
}

func (n *node) Create(ctx context.Context, name string, flags, mode uint32, out *fuse.EntryOut) (*fs.Inode, fs.FileHandle, uint32, syscall.Errno) {
	n.s.mu.Lock()
	defer n.s.mu.Unlock()
	if errno := n.s.down(); errno != 0 {
		return nil, nil, 0, errno
	}
	p := filepath.Join(n.path(), name)
	_, err := lstatID(p)
	existed := err == nil
	ch, fh, fuseFlags, errno := n.LoopbackNode.Create(ctx, name, flags&^syscall.O_TRUNC, mode, out)
	if errno != 0 {
		return nil, nil, 0, errno
	}
	h := n.s.wrap(fh)
	switch {
	case !existed:
		errno = n.created("create", name)
	case flags&syscall.O_TRUNC != 0:
		errno = h.truncate(0)
	}
	if errno != 0 {
		h.lf.Release(ctx)
		return nil, nil, 0, errno
	}
	return ch, h, fuseFlags, 0
}

func (n *node) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	n.s.mu.Lock()
	defer n.s.mu.Unlock()
	if errno := n.s.down(); errno != 0 {
		return nil, 0, errno
	}
	fh, fuseFlags, errno := n.LoopbackNode.Open(ctx, flags&^syscall.O_TRUNC)
	if errno != 0 {
		return nil, 0, errno
	}
	h := n.s.wrap(fh)
	if flags&syscall.O_TRUNC != 0 {
		if errno := h.truncate(0); errno != 0 {
			h.lf.Release(ctx)
			return nil, 0, errno
		}
	}
	return h, fuseFlags, 0
}

// remove moves name in n to the trash, journaling it: undone by moving it
// back, committed by deleting it.
func (n *node) remove(what, name string, dir bool) syscall.Errno {
	n.s.mu.Lock()
	defer n.s.mu.Unlock()
	if errno := n.s.down(); errno != 0 {
		return errno
	}
	p := filepath.Join(n.path(), name)
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		return fs.ToErrno(err)
	}
	isDir := st.Mode&unix.S_IFMT == unix.S_IFDIR
	switch {
	case dir && !isDir:
		return syscall.ENOTDIR
	case !dir && isDir:
		return syscall.EISDIR
	case dir:
		if ents, err := os.ReadDir(p); err != nil || len(ents) > 0 {
			return syscall.ENOTEMPTY
		}
	}
	parent, errno := n.id()
	if errno != 0 {
		return errno
	}
	t, err := n.s.toTrash(p)
	if err != nil {
		return fs.ToErrno(err)
	}
	n.s.log(change{what: what + " " + p, touches: []fileID{parent, idOf(&st)},
		undo:   func() error { return os.Rename(t, p) },
		commit: func() error { return os.RemoveAll(t) }})
	return 0
}

func (n *node) Unlink(ctx context.Context, name string) syscall.Errno {
	return n.remove("unlink", name, false)
}

func (n *node) Rmdir(ctx context.Context, name string) syscall.Errno {
	return n.remove("rmdir", name, true)
}

func (n *node) Rename(ctx context.Context, name string, newParent fs.InodeEmbedder, newName string, flags uint32) syscall.Errno {
	n.s.mu.Lock()
	defer n.s.mu.Unlock()
	if errno := n.s.down(); errno != 0 {
		return errno
	}
	np, ok := newParent.(*node)
	if !ok {
		return syscall.EXDEV
	}
	p1, p2 := filepath.Join(n.path(), name), filepath.Join(np.path(), newName)
	d1, errno := n.id()
	if errno != 0 {
		return errno
	}
	d2, errno := np.id()
	if errno != 0 {
		return errno
	}
	var src, dst unix.Stat_t
	if err := unix.Lstat(p1, &src); err != nil {
		return fs.ToErrno(err)
	}
	touches := []fileID{d1, d2, idOf(&src)}
	if flags&unix.RENAME_EXCHANGE != 0 {
		if err := unix.Renameat2(unix.AT_FDCWD, p1, unix.AT_FDCWD, p2, unix.RENAME_EXCHANGE); err != nil {
			return fs.ToErrno(err)
		}
		id2, _ := lstatID(p1)
		n.s.log(change{what: "exchange " + p1 + " " + p2, touches: append(touches, id2),
			undo: func() error { return unix.Renameat2(unix.AT_FDCWD, p1, unix.AT_FDCWD, p2, unix.RENAME_EXCHANGE) }})
		return 0
	}
	if err := unix.Lstat(p2, &dst); err != nil {
		// No target: a plain rename (the kernel checks the rest).
		if err := unix.Renameat2(unix.AT_FDCWD, p1, unix.AT_FDCWD, p2, uint(flags)); err != nil {
			return fs.ToErrno(err)
		}
		n.s.log(change{what: "rename " + p1 + " " + p2, touches: touches,
			undo: func() error { return os.Rename(p2, p1) }})
		return 0
	}
	if errno := replaceable(p1, p2, &src, &dst, flags); errno != 0 {
		return errno
	}
	// Swap, then send the replaced file to the trash: atomic for the
	// process above, and undoable.
	if err := unix.Renameat2(unix.AT_FDCWD, p1, unix.AT_FDCWD, p2, unix.RENAME_EXCHANGE); err != nil {
		return fs.ToErrno(err)
	}
	t, err := n.s.toTrash(p1)
	if err != nil {
		return fs.ToErrno(err)
	}
	n.s.log(change{what: "rename " + p1 + " over " + p2, touches: append(touches, idOf(&dst)),
		undo: func() error {
			if err := os.Rename(p2, p1); err != nil {
				return err
			}
			return os.Rename(t, p2)
		},
		commit: func() error { return os.RemoveAll(t) }})
	return 0
}

// replaceable checks a rename of p1 (src) over an existing p2 (dst) as
// rename(2) would.
func replaceable(p1, p2 string, src, dst *unix.Stat_t, flags uint32) syscall.Errno {
	srcDir, dstDir := src.Mode&unix.S_IFMT == unix.S_IFDIR, dst.Mode&unix.S_IFMT == unix.S_IFDIR
	switch {
	case flags&unix.RENAME_NOREPLACE != 0:
		return syscall.EEXIST
	case flags != 0:
		return syscall.EINVAL
	case idOf(src) == idOf(dst):
		return syscall.EINVAL // same file: rename(2) does nothing; not modelled
	case srcDir && !dstDir:
		return syscall.ENOTDIR
	case !srcDir && dstDir:
		return syscall.EISDIR
	case dstDir:
		if ents, err := os.ReadDir(p2); err != nil || len(ents) > 0 {
			return syscall.ENOTEMPTY
		}
	}
	return 0
}

func (n *node) Setattr(ctx context.Context, f fs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	n.s.mu.Lock()
	defer n.s.mu.Unlock()
	if errno := n.s.down(); errno != 0 {
		return errno
	}
	h, _ := f.(*file)
	if sz, ok := in.GetSize(); ok {
		if h == nil {
			fd, err := unix.Open(n.path(), unix.O_WRONLY|unix.O_CLOEXEC, 0)
			if err != nil {
				return fs.ToErrno(err)
			}
			defer unix.Close(fd)
			h = &file{fd: fd, s: n.s}
		}
		if errno := h.truncate(int64(sz)); errno != 0 {
			return errno
		}
		in.Valid &^= fuse.FATTR_SIZE
	}
	if f != nil {
		if fh, ok := f.(*file); ok {
			f = fh.lf
		}
	}
	return n.LoopbackNode.Setattr(ctx, f, in, out)
}

func (n *node) Allocate(ctx context.Context, f fs.FileHandle, off, size uint64, mode uint32) syscall.Errno {
	h, ok := f.(*file)
	if !ok {
		return syscall.EBADF
	}
	return h.Allocate(ctx, off, size, mode)
}

func (n *node) CopyFileRange(ctx context.Context, fhIn fs.FileHandle, offIn uint64, out *fs.Inode, fhOut fs.FileHandle, offOut, size, flags uint64) (uint32, syscall.Errno) {
	return 0, syscall.ENOSYS
}

// Fsync is fsync of a file (f its handle) or of a directory (f nil).
func (n *node) Fsync(ctx context.Context, f fs.FileHandle, flags uint32) syscall.Errno {
	if h, ok := f.(*file); ok {
		return h.Fsync(ctx, flags)
	}
	if errno := n.s.down(); errno != 0 {
		return errno
	}
	id, errno := n.id()
	if errno != 0 {
		return errno
	}
	return n.s.fsync(id)
}

func (n *node) OpendirHandle(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	if errno := n.s.down(); errno != 0 {
		return nil, 0, errno
	}
	fh, fuseFlags, errno := n.LoopbackNode.OpendirHandle(ctx, flags)
	if errno != 0 {
		return nil, 0, errno
	}
	return &dir{inner: fh, n: n}, fuseFlags, 0
}

// dir is an open directory whose fsync goes through the undo log.
type dir struct {
	inner fs.FileHandle
	n     *node
}

func (d *dir) Readdirent(ctx context.Context) (*fuse.DirEntry, syscall.Errno) {
	if errno := d.n.s.down(); errno != 0 {
		return nil, errno
	}
	return d.inner.(fs.FileReaddirenter).Readdirent(ctx)
}

func (d *dir) Seekdir(ctx context.Context, off uint64) syscall.Errno {
	return d.inner.(fs.FileSeekdirer).Seekdir(ctx, off)
}

func (d *dir) Releasedir(ctx context.Context, flags uint32) {
	d.inner.(fs.FileReleasedirer).Releasedir(ctx, flags)
}

func (d *dir) Fsyncdir(ctx context.Context, flags uint32) syscall.Errno {
	return d.n.Fsync(ctx, nil, flags)
}
