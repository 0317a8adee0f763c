package storage

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
)

// BenchmarkAppendPartitions is the write side of many small topics: 1,000
// partitions, each with its own writer appending one 1 KiB message with an
// id at a time, fsync=always. Every group then holds one message, so what
// it measures is the cost of a group — a Badger transaction per group
// before groups were committed together.
//
//	go test -run '^$' -bench AppendPartitions -benchtime 100000x ./storage
func BenchmarkAppendPartitions(b *testing.B) {
	const parts, payload = 1000, 1024
	b.Run(fmt.Sprintf("fsync=always/payload=%d/batch=1/partitions=%d", payload, parts), func(b *testing.B) {
		s := benchStore(b, FsyncAlways)
		mustCreate(b, s, "wide", TopicConfig{Partitions: parts})
		ctx := context.Background()
		body := benchPayload(payload)
		var next atomic.Uint64
		syncs := s.Syncs()
		b.SetBytes(payload)
		b.ResetTimer()
		var wg sync.WaitGroup
		for w := range parts {
			wg.Go(func() {
				for {
					n := next.Add(1)
					if n > uint64(b.N) {
						return
					}
					msgs := []Message{{ID: benchID(n), Payload: body}}
					if _, err := s.Append(ctx, "wide", uint32(w), msgs); err != nil {
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
