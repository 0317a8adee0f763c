package storage

import (
	"bufio"
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
)

// madvPageout is MADV_PAGEOUT (Linux 5.4): reclaim the range's pages. It is
// not destructive: a page of a file mapping is written back if dirty and
// read again on the next access; a range no longer mapped, or mapped anew
// by something else, loses nothing (anonymous pages without swap stay).
const madvPageout = 21

// pageOut hands the resident pages of Badger's value-log, table and
// memtable-WAL files under dir, which Badger reads and writes through mmap, back to the page
// cache, so data written does not stay in the process's resident memory
// (and its memory budget) as the files grow: the same place write(2) leaves
// JetStream's data. It returns the bytes of mappings advised.
func pageOut(dir string) (int64, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return 0, err
	}
	if real, err := filepath.EvalSymlinks(abs); err == nil {
		abs = real
	}
	prefix := []byte(abs + string(filepath.Separator))
	f, err := os.Open("/proc/self/maps")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	var advised int64
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// start-end perms offset dev inode path
		line := sc.Bytes()
		i := bytes.IndexByte(line, '/')
		if i < 0 {
			continue
		}
		path := line[i:]
		if !bytes.HasPrefix(path, prefix) || !(bytes.HasSuffix(path, []byte(".vlog")) || bytes.HasSuffix(path, []byte(".sst")) || bytes.HasSuffix(path, []byte(".mem"))) {
			continue
		}
		sp := bytes.IndexByte(line, ' ')
		dash := bytes.IndexByte(line[:max(sp, 0)], '-')
		if dash < 0 {
			continue
		}
		start, err1 := strconv.ParseUint(string(line[:dash]), 16, 64)
		end, err2 := strconv.ParseUint(string(line[dash+1:sp]), 16, 64)
		if err1 != nil || err2 != nil || end <= start {
			continue
		}
		// An error (the range was unmapped meanwhile) changes nothing.
		if _, _, e := syscall.Syscall(syscall.SYS_MADVISE, uintptr(start), uintptr(end-start), madvPageout); e == 0 {
			advised += int64(end - start)
		}
	}
	return advised, sc.Err()
}
