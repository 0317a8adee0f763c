package powerloss

import (
	"context"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// file is an open file whose writes, truncates and fsyncs go through the
// undo log. It does not offer its descriptor for FUSE passthrough: the
// kernel must send every read and write here.
type file struct {
	lf *fs.LoopbackFile // nil for a descriptor Setattr opened for a truncate
	fd int
	s  *state
}

func (s *state) wrap(fh fs.FileHandle) *file {
	lf := fh.(*fs.LoopbackFile)
	fd, _ := lf.PassthroughFd()
	return &file{lf: lf, fd: fd, s: s}
}

func (f *file) Read(ctx context.Context, buf []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	if errno := f.s.down(); errno != 0 {
		return nil, errno
	}
	n, err := unix.Pread(f.fd, buf, off)
	if err != nil {
		return nil, fs.ToErrno(err)
	}
	return fuse.ReadResultData(buf[:n]), 0
}

func (f *file) Write(ctx context.Context, data []byte, off int64) (uint32, syscall.Errno) {
	f.s.mu.Lock()
	defer f.s.mu.Unlock()
	if errno := f.s.down(); errno != 0 {
		return 0, errno
	}
	r, err := f.s.recordOf(f.fd)
	if err == nil {
		err = r.save(off, off+int64(len(data)), false)
	}
	if err != nil {
		return 0, fs.ToErrno(err)
	}
	n, err := unix.Pwrite(f.fd, data, off)
	return uint32(n), fs.ToErrno(err)
}

// truncate sets the file's size (see state.resize). The caller holds mu.
func (f *file) truncate(size int64) syscall.Errno {
	return fs.ToErrno(f.s.resize(f.fd, size, func() error { return unix.Ftruncate(f.fd, size) }))
}

func (f *file) Allocate(ctx context.Context, off, size uint64, mode uint32) syscall.Errno {
	f.s.mu.Lock()
	defer f.s.mu.Unlock()
	if errno := f.s.down(); errno != 0 {
		return errno
	}
	apply := func() error { return unix.Fallocate(f.fd, mode, int64(off), int64(size)) }
	const zeroes = unix.FALLOC_FL_PUNCH_HOLE | unix.FALLOC_FL_ZERO_RANGE | unix.FALLOC_FL_KEEP_SIZE
	var st unix.Stat_t
	err := unix.Fstat(f.fd, &st)
	switch {
	case err != nil:
	case mode == unix.FALLOC_FL_KEEP_SIZE: // allocates only: nothing to rewind
		err = apply()
	case mode == 0 && int64(off+size) > st.Size: // grows the file
		err = f.s.resize(f.fd, int64(off+size), apply)
	case mode == 0:
		err = apply()
	case mode&^zeroes == 0: // writes zeros
		var r *record
		if r, err = f.s.recordOf(f.fd); err == nil {
			err = r.save(int64(off), int64(off+size), false)
		}
		if err == nil {
			err = apply()
		}
	default:
		return syscall.EOPNOTSUPP
	}
	return fs.ToErrno(err)
}

func (f *file) Fsync(ctx context.Context, flags uint32) syscall.Errno {
	if errno := f.s.down(); errno != 0 {
		return errno
	}
	var st unix.Stat_t
	if err := unix.Fstat(f.fd, &st); err != nil {
		return fs.ToErrno(err)
	}
	return f.s.fsync(idOf(&st))
}

func (f *file) Flush(ctx context.Context) syscall.Errno {
	if errno := f.s.down(); errno != 0 {
		return errno
	}
	return f.lf.Flush(ctx)
}

func (f *file) Release(ctx context.Context) syscall.Errno { return f.lf.Release(ctx) }

func (f *file) Getattr(ctx context.Context, out *fuse.AttrOut) syscall.Errno {
	if errno := f.s.down(); errno != 0 {
		return errno
	}
	return f.lf.Getattr(ctx, out)
}

func (f *file) Lseek(ctx context.Context, off uint64, whence uint32) (uint64, syscall.Errno) {
	if errno := f.s.down(); errno != 0 {
		return 0, errno
	}
	return f.lf.Lseek(ctx, off, whence)
}
