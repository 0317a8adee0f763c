package storage

// Benchmarks of the append path, and of raw Badger doing the same writes:
//
//	go test -run '^$' -bench . -benchmem ./storage
//	go test -run '^$' -bench 'Append$|BadgerBaseline' -benchtime 2s ./storage
//
// BenchmarkAppend (every message with an id, as the SDK sends them),
// BenchmarkAppendNoID and BenchmarkBadgerBaseline share sub-benchmark names
// such as fsync=always/payload=1024/batch=64, so their msgs/s line up: the
// ratio is what the store costs over the writes it cannot avoid. Whole-system
// numbers come from `ferry bench`.

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"runtime/metrics"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"
)

var (
	benchFsyncs   = []FsyncPolicy{FsyncAlways, FsyncNever}
	benchPayloads = []int{128, 1024}
	benchBatches  = []int{1, 64, 1024}
)

// forEachBenchSize runs fn under one b.Run per fsync policy, payload size
// and batch size.
func forEachBenchSize(b *testing.B, fn func(b *testing.B, fsync FsyncPolicy, payload, batch int)) {
	for _, fsync := range benchFsyncs {
		for _, payload := range benchPayloads {
			for _, batch := range benchBatches {
				b.Run(fmt.Sprintf("fsync=%v/payload=%d/batch=%d", fsync, payload, batch), func(b *testing.B) {
					fn(b, fsync, payload, batch)
				})
			}
		}
	}
}

func BenchmarkAppend(b *testing.B) {
	forEachBenchSize(b, func(b *testing.B, fsync FsyncPolicy, payload, batch int) {
		benchAppend(b, fsync, payload, batch, true)
	})
}

// BenchmarkAppendNoID is BenchmarkAppend without ids: no dedup lookup and
// no dedup or expiry keys written.
func BenchmarkAppendNoID(b *testing.B) {
	forEachBenchSize(b, func(b *testing.B, fsync FsyncPolicy, payload, batch int) {
		benchAppend(b, fsync, payload, batch, false)
	})
}

func benchAppend(b *testing.B, fsync FsyncPolicy, payload, batch int, ids bool) {
	s := benchStore(b, fsync)
	ctx := context.Background()
	msgs := make([]Message, batch)
	body := benchPayload(payload)
	for i := range msgs {
		msgs[i].Payload = body
	}
	var n uint64
	syncs := s.Syncs()
	b.SetBytes(int64(batch * payload))
	for b.Loop() {
		if ids {
			for i := range msgs {
				msgs[i].ID = benchID(n)
				n++
			}
		}
		if _, err := s.Append(ctx, "bench", 0, msgs); err != nil {
			b.Fatal(err)
		}
	}
	reportAppend(b, batch, s.Syncs()-syncs)
}

// BenchmarkAppendConcurrent has 64 writers append one 1 KiB message each at
// a time with fsync=always: group commit shows as fsyncs/op well below 1 and
// msgs/s well above the one-writer fsync=always/payload=1024/batch=1.
func BenchmarkAppendConcurrent(b *testing.B) {
	const writers, payload = 64, 1024
	b.Run(fmt.Sprintf("fsync=always/payload=%d/batch=1/writers=%d", payload, writers), func(b *testing.B) {
		s := benchStore(b, FsyncAlways)
		ctx := context.Background()
		body := benchPayload(payload)
		var next atomic.Uint64
		syncs := s.Syncs()
		b.SetBytes(payload)
		b.ResetTimer()
		var wg sync.WaitGroup
		for range writers {
			wg.Go(func() {
				for {
					n := next.Add(1)
					if n > uint64(b.N) {
						return
					}
					msgs := []Message{{ID: benchID(n), Payload: body}}
					if _, err := s.Append(ctx, "bench", 0, msgs); err != nil {
						b.Error(err)
						return
					}
				}
			})
		}
		wg.Wait()
		b.StopTimer()
		reportAppend(b, 1, s.Syncs()-syncs)
	})
}

// BenchmarkBadgerBaseline does BenchmarkAppend's writes straight to Badger,
// opened with the options Open uses: per op, one write batch of batch keys
// of 16 bytes with payload-sized values, flushed, then synced under
// fsync=always. No dedup, no meta, no group commit.
func BenchmarkBadgerBaseline(b *testing.B) {
	forEachBenchSize(b, func(b *testing.B, fsync FsyncPolicy, payload, batch int) {
		db := openBaselineBadger(b)
		value := benchPayload(payload)
		var n uint64
		syncs := uint64(0)
		b.SetBytes(int64(batch * payload))
		for b.Loop() {
			wb := db.NewWriteBatch()
			for range batch {
				// The batch holds keys until Flush: each needs its own.
				k := binary.BigEndian.AppendUint64([]byte{kindMessage, 0, 0, 0, 1, 0, 0, 0}, n)
				n++
				if err := wb.Set(k, value); err != nil {
					b.Fatal(err)
				}
			}
			if err := wb.Flush(); err != nil {
				b.Fatal(err)
			}
			if fsync == FsyncAlways {
				if err := db.Sync(); err != nil {
					b.Fatal(err)
				}
				syncs++
			}
		}
		reportAppend(b, batch, syncs)
	})
}

func reportAppend(b *testing.B, batch int, syncs uint64) {
	b.ReportMetric(float64(b.N*batch)/b.Elapsed().Seconds(), "msgs/s")
	b.ReportMetric(float64(syncs)/float64(b.N), "fsyncs/op")
}

func benchLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelError}))
}

// benchStore opens a store with default options (wall clock) and one
// one-partition topic, "bench".
func benchStore(b *testing.B, fsync FsyncPolicy) *Store {
	b.Helper()
	opts := DefaultOptions(b.TempDir())
	opts.Fsync = fsync
	opts.Logger = benchLogger()
	s := openStore(b, opts)
	mustCreate(b, s, "bench", TopicConfig{})
	return s
}

// openBaselineBadger opens Badger exactly as Open does (badgerOptions), with
// DefaultOptions' sizes, so the ratio compares like with like.
func openBaselineBadger(b *testing.B) *badger.DB {
	b.Helper()
	opts := DefaultOptions(b.TempDir())
	opts.Logger = benchLogger()
	db, err := badger.Open(badgerOptions(opts))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = db.Close() })
	return db
}

func benchPayload(n int) []byte {
	p := make([]byte, n)
	for i := range p {
		p[i] = byte(i*7 + i>>8)
	}
	return p
}

// benchID returns a distinct 36-byte id for each n, the length of the
// UUIDv7 the SDK sets.
func benchID(n uint64) string {
	const hex = "0123456789abcdef"
	var b [36]byte
	copy(b[:], "0195d3c4-7b2a-7000-8000-")
	for i := len(b) - 1; i >= 24; i-- {
		b[i] = hex[n&0xf]
		n >>= 4
	}
	return string(b[:])
}

// BenchmarkReadTail reads batches of 100 messages of 1 KiB just behind the
// head, as a tailing consumer does, from the tail cache and from Badger
// (cache off).
//
//	go test -run '^$' -bench ReadTail -benchmem ./storage
func BenchmarkReadTail(b *testing.B) {
	for _, cache := range []int{1 << 20, 0} {
		b.Run(fmt.Sprintf("tail_cache=%d", cache), func(b *testing.B) {
			opts := DefaultOptions(b.TempDir())
			opts.Logger = benchLogger()
			opts.Fsync = FsyncNever
			opts.TailCacheBytes = cache
			s := openStore(b, opts)
			mustCreate(b, s, "bench", TopicConfig{})
			batch := make([]Message, 500)
			for i := range batch {
				batch[i].Payload = make([]byte, 1024)
			}
			mustAppend(b, s, "bench", 0, batch...)
			b.SetBytes(100 * 1024)
			for b.Loop() {
				msgs, err := s.Read(context.Background(), "bench", 0, 400, 100, 1<<20)
				if err != nil || len(msgs) != 100 {
					b.Fatalf("read %d messages: %v", len(msgs), err)
				}
			}
			b.ReportMetric(float64(b.N*100)/b.Elapsed().Seconds(), "msgs/s")
		})
	}
}

// BenchmarkValueLayout compares where Badger keeps message records: inline
// in the LSM tree (the old layout: every value under 1 MiB inline, 64 MiB
// memtables × 3, 64 MiB block cache) against the value log for records of
// ValueThreshold bytes or more (DefaultOptions). 64 writers append one
// 1 KiB message each at a time (group commit), and one writer appends
// batches of 64, both with fsync=always; it reports msgs/s and the peak Go
// heap in MiB (Badger's memtables and table building are on the heap).
//
//	go test -run '^$' -bench ValueLayout -benchtime 200000x ./storage
func BenchmarkValueLayout(b *testing.B) {
	layouts := []struct {
		name string
		set  func(o *Options)
	}{
		{"inline", func(o *Options) {
			o.ValueThreshold, o.MemTableBytes, o.NumMemTables, o.BlockCacheBytes = 1<<20, 64<<20, 3, 64<<20
		}},
		{"vlog", func(*Options) {}},
	}
	for _, l := range layouts {
		for _, writers := range []int{64, 1} {
			batch := 1
			if writers == 1 {
				batch = 64
			}
			b.Run(fmt.Sprintf("layout=%s/fsync=always/payload=1024/batch=%d/writers=%d", l.name, batch, writers), func(b *testing.B) {
				opts := DefaultOptions(b.TempDir())
				opts.Logger = benchLogger()
				l.set(&opts)
				s := openStore(b, opts)
				mustCreate(b, s, "bench", TopicConfig{})
				peak := watchHeap(b)
				body := benchPayload(1024)
				var next atomic.Uint64
				b.SetBytes(int64(1024 * batch))
				b.ResetTimer()
				var wg sync.WaitGroup
				for range writers {
					wg.Go(func() {
						msgs := make([]Message, batch)
						for {
							n := next.Add(1)
							if n > uint64(b.N) {
								return
							}
							for i := range msgs {
								msgs[i] = Message{ID: benchID(n*uint64(batch) + uint64(i)), Payload: body}
							}
							if _, err := s.Append(context.Background(), "bench", 0, msgs); err != nil {
								b.Error(err)
								return
							}
						}
					})
				}
				wg.Wait()
				b.StopTimer()
				b.ReportMetric(float64(b.N*batch)/b.Elapsed().Seconds(), "msgs/s")
				b.ReportMetric(float64(peak())/(1<<20), "peak-heap-MiB")
			})
		}
	}
}

// watchHeap samples the Go heap's objects every 10ms until the benchmark
// ends; the returned function gives the largest sample so far.
func watchHeap(b *testing.B) func() uint64 {
	var peak atomic.Uint64
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		s := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			metrics.Read(s)
			if v := s[0].Value.Uint64(); v > peak.Load() {
				peak.Store(v)
			}
			select {
			case <-done:
				return
			case <-tick.C:
			}
		}
	})
	b.Cleanup(func() { close(done); wg.Wait() })
	return peak.Load
}
