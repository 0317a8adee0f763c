package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"
	"sync"
)

// lineLog is an append-only file of lines of space-separated fields, the
// durable record a service keeps of its side effects (the notifier's
// outbox, the courier's deliveries). Each line is written with one write
// and fsynced before append returns: once append has returned, the line
// survives kill -9 and power loss. A line cut short by a crash has no
// newline; openLineLog cuts it off, and readers never see one.
type lineLog struct {
	mu sync.Mutex // guards f
	f  *os.File
}

// openLineLog opens the log at path, creating it if missing, and removes
// a torn last line.
func openLineLog(path string) (*lineLog, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, err
	}
	end, err := completeLength(f)
	if err == nil {
		err = f.Truncate(end)
	}
	if err == nil {
		_, err = f.Seek(end, io.SeekStart)
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	return &lineLog{f: f}, nil
}

// completeLength returns the length of f up to and including its last
// newline.
func completeLength(f *os.File) (int64, error) {
	st, err := f.Stat()
	if err != nil {
		return 0, err
	}
	size := st.Size()
	buf := make([]byte, 4096)
	for end := size; end > 0; {
		n := min(end, int64(len(buf)))
		if _, err := f.ReadAt(buf[:n], end-n); err != nil {
			return 0, err
		}
		if i := bytes.LastIndexByte(buf[:n], '\n'); i >= 0 {
			return end - n + int64(i) + 1, nil
		}
		end -= n
	}
	return 0, nil
}

// append writes one line of fields and fsyncs it. Fields must not contain
// spaces or newlines.
func (l *lineLog) append(fields ...string) error {
	line := strings.Join(fields, " ") + "\n"
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, err := l.f.WriteString(line); err != nil {
		return fmt.Errorf("append to %s: %w", l.f.Name(), err)
	}
	if err := l.f.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", l.f.Name(), err)
	}
	return nil
}

// Close closes the file.
func (l *lineLog) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.f.Close()
}

// lineTail reads a line log incrementally: each read returns the complete
// lines added since the last one. A missing file reads as empty.
type lineTail struct {
	path string
	off  int64 // just past the last complete line read
}

// read calls fn with the fields of each complete line after the last one
// read.
func (t *lineTail) read(fn func(fields []string)) error {
	f, err := os.Open(t.path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := f.Seek(t.off, io.SeekStart); err != nil {
		return err
	}
	r := bufio.NewReader(f)
	for {
		line, err := r.ReadString('\n')
		if err == io.EOF {
			return nil // a partial line: not yet written, or torn
		}
		if err != nil {
			return fmt.Errorf("read %s: %w", t.path, err)
		}
		t.off += int64(len(line))
		fn(strings.Fields(line))
	}
}
