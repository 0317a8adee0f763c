package storage

import (
	"bytes"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/ferrymq/ferry/internal/clock"
)

// rssFile is this process's resident file-backed memory, in bytes.
func rssFile(t *testing.T) int64 {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Skipf("no /proc/self/status: %v", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) == 3 && f[0] == "RssFile:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb << 10
		}
	}
	t.Skip("no RssFile in /proc/self/status")
	return 0
}

// TestPageOutDropsMappedFiles writes and reads 32 MiB of 1 KiB messages,
// which Badger keeps in its value log and reads through mmap, and checks
// that pageOut takes at least half of them out of the process's resident
// memory and that every message reads back the same afterwards.
func TestPageOutDropsMappedFiles(t *testing.T) {
	opts := testOptions(t, clock.NewFake(t0))
	opts.PageOutInterval = 0 // the test calls pageOut itself
	opts.TailCacheBytes = 0  // reads go to Badger
	s := openStore(t, opts)
	mustCreate(t, s, "big", TopicConfig{})
	const n, size = 32 << 10, 1 << 10
	batch := make([]Message, 1000)
	for i := 0; i < n; i += len(batch) {
		for j := range batch {
			batch[j] = Message{Payload: bytes.Repeat([]byte{byte(i + j)}, size)}
		}
		mustAppend(t, s, "big", 0, batch[:min(len(batch), n-i)]...)
	}
	check := func() {
		t.Helper()
		for from := 0; from < n; from += 1000 {
			for j, m := range mustRead(t, s, "big", 0, uint64(from), 1000) {
				if len(m.Payload) != size || m.Payload[0] != byte(from+j) || m.Payload[size-1] != byte(from+j) {
					t.Fatalf("message %d reads back wrong", from+j)
				}
			}
		}
	}
	check() // every value page resident
	before := rssFile(t)
	advised, err := pageOut(opts.Dir)
	if err != nil {
		t.Fatal(err)
	}
	after := rssFile(t)
	t.Logf("resident file pages %d MiB -> %d MiB; %d MiB of mappings advised", before>>20, after>>20, advised>>20)
	if before-after < n*size/2 {
		t.Errorf("pageOut freed %d MiB of resident file pages, want at least %d MiB", (before-after)>>20, n*size/2>>20)
	}
	check()
}
