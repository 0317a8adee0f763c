package storage

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
)

// Badger's memtable write-ahead logs (*.mem), as badger/v4 memtable.go
// and value.go write them, unencrypted:
//
//	header  20 bytes (key id u64, base IV 12 bytes)
//	entry   meta u8 | user meta u8 | key len uvarint | value len uvarint |
//	        expires at uvarint | key | value | crc32-C of all before, u32
//
// An entry with meta bit 6 (txn) belongs to the transaction whose commit
// timestamp ends its key; one with bit 7 (fin txn) ends that transaction,
// its value the timestamp in decimal. Badger opens a log read-write by
// replaying it to the end of its last whole transaction and cutting it
// there. It refuses to open read-only a log that was never cut (a log is
// created longer than it will hold, so after kill -9 every log is) — and
// it cannot open read-write on a full disk. cutWALs makes the cut Badger
// would make, so that a store can open read-only on a full disk.
const (
	walHeaderBytes = 20
	walBitTxn      = 1 << 6
	walBitFinTxn   = 1 << 7
	walMaxKeyBytes = 1 << 16
)

var walCRC = crc32.MakeTable(crc32.Castagnoli)

// cutWALs cuts every memtable log in dir to the end of its last whole
// transaction, as Badger does when it opens read-write. Cutting frees
// space and takes none.
func cutWALs(dir string) error {
	return withDirLock(dir, func() error {
		paths, err := filepath.Glob(filepath.Join(dir, "*.mem"))
		if err != nil {
			return err
		}
		for _, path := range paths {
			if err := cutWAL(path); err != nil {
				return fmt.Errorf("memtable log %s: %w", filepath.Base(path), err)
			}
		}
		return nil
	})
}

// removeEmptyLogs removes the memtable logs and value-log files of dir that
// are empty, not even their header written: a crash between Badger creating
// the next file and sizing it leaves one, and Badger then refuses to open
// ("while opening fid: N err: Create a new file"). Holding no entry, it
// loses nothing. It returns the names removed.
func removeEmptyLogs(dir string) ([]string, error) {
	var removed []string
	err := withDirLock(dir, func() error {
		for _, pattern := range []string{"*.mem", "*.vlog"} {
			paths, err := filepath.Glob(filepath.Join(dir, pattern))
			if err != nil {
				return err
			}
			for _, path := range paths {
				if fi, err := os.Stat(path); err != nil || fi.Size() != 0 {
					continue
				}
				if err := os.Remove(path); err != nil {
					return err
				}
				removed = append(removed, filepath.Base(path))
			}
		}
		return nil
	})
	return removed, err
}

// withDirLock runs fn holding dir's lock, the one Badger takes (flock of
// the directory), so that a store open in another process is never
// touched. A missing dir runs nothing.
func withDirLock(dir string, fn func() error) error {
	d, err := os.Open(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("open data directory: %w", err)
	}
	defer d.Close()
	if err := syscall.Flock(int(d.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		return fmt.Errorf("lock data directory %s (is another broker using it?): %w", dir, err)
	}
	defer func() { _ = syscall.Flock(int(d.Fd()), syscall.LOCK_UN) }()
	return fn()
}

func cutWAL(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return err
	}
	end, err := walEnd(bufio.NewReaderSize(f, 64<<10))
	f.Close()
	if err != nil {
		return err
	}
	if fi.Size() <= walHeaderBytes || end >= fi.Size() {
		return nil
	}
	return os.Truncate(path, end)
}

// walEnd reads a memtable log and returns the offset just past its last
// whole transaction (or the header, if none), where Badger would cut it.
// A torn or zeroed entry ends the log, as in Badger; a header Badger could
// not decode either is an error.
func walEnd(r *bufio.Reader) (int64, error) {
	if _, err := io.CopyN(io.Discard, r, walHeaderBytes); err != nil {
		return walHeaderBytes, nil // too short for a header: nothing to cut
	}
	off, valid := int64(walHeaderBytes), int64(walHeaderBytes)
	var lastCommit uint64
	for {
		e, n, err := readWALEntry(r)
		switch {
		case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, errWALTorn):
			return valid, nil
		case err != nil:
			return 0, err
		case len(e.key) == 0:
			return valid, nil
		}
		off += n
		switch {
		case e.meta&walBitTxn != 0:
			ts := walKeyTs(e.key)
			if lastCommit == 0 {
				lastCommit = ts
			}
			if lastCommit != ts {
				return valid, nil
			}
		case e.meta&walBitFinTxn != 0:
			ts, err := strconv.ParseUint(string(e.value), 10, 64)
			if err != nil || ts != lastCommit {
				return valid, nil
			}
			lastCommit, valid = 0, off
		default:
			if lastCommit != 0 {
				return valid, nil
			}
			valid = off
		}
	}
}

// errWALTorn is an entry cut short or failing its checksum: the log's end.
var errWALTorn = errors.New("storage: torn memtable log entry")

type walEntry struct {
	meta       byte
	key, value []byte
}

// readWALEntry reads one entry and says how many bytes it took.
func readWALEntry(r *bufio.Reader) (walEntry, int64, error) {
	hr := &recordingReader{r: r}
	var hdr [2]byte
	for i := range hdr {
		b, err := hr.ReadByte()
		if err != nil {
			return walEntry{}, 0, err
		}
		hdr[i] = b
	}
	var lens [3]uint64 // key length, value length, expires at
	for i := range lens {
		v, err := binary.ReadUvarint(hr)
		if err != nil {
			return walEntry{}, 0, err
		}
		lens[i] = v
	}
	klen, vlen := lens[0], lens[1]
	if klen > walMaxKeyBytes || vlen > math.MaxUint32 {
		return walEntry{}, 0, errWALTorn
	}
	kv := make([]byte, klen+vlen)
	if _, err := io.ReadFull(r, kv); err != nil {
		return walEntry{}, 0, errWALTorn
	}
	var tail [4]byte
	if _, err := io.ReadFull(r, tail[:]); err != nil {
		return walEntry{}, 0, errWALTorn
	}
	crc := crc32.Update(crc32.Checksum(hr.read, walCRC), walCRC, kv)
	if binary.BigEndian.Uint32(tail[:]) != crc {
		return walEntry{}, 0, errWALTorn
	}
	n := int64(len(hr.read)) + int64(klen+vlen) + 4
	return walEntry{meta: hdr[0], key: kv[:klen], value: kv[klen:]}, n, nil
}

// recordingReader keeps the bytes read through it: an entry's header,
// whose checksum covers them.
type recordingReader struct {
	r    io.ByteReader
	read []byte
}

func (rr *recordingReader) ReadByte() (byte, error) {
	b, err := rr.r.ReadByte()
	if err == nil {
		rr.read = append(rr.read, b)
	}
	return b, err
}

// walKeyTs is the commit timestamp that ends a Badger key.
func walKeyTs(key []byte) uint64 {
	if len(key) <= 8 {
		return 0
	}
	return math.MaxUint64 - binary.BigEndian.Uint64(key[len(key)-8:])
}
