package cluster

import (
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.etcd.io/raft/v3/raftpb"

	"github.com/ferrymq/ferry/storage"
)

// BenchmarkPropose measures pipelined proposals of 1 KiB from many
// concurrent proposers to one group's leader, each waiting until its entry
// is committed and applied: a one-node group (the fsync alone) against a
// three-node one (fsync on the leader, then on a follower, over loopback
// gRPC), both with fsync always and the wall clock.
//
//	go test -run '^$' -bench Propose -benchtime 20000x ./cluster
func BenchmarkPropose(b *testing.B) {
	for _, nodes := range []int{1, 3} {
		for _, proposers := range []int{1, 64, 256} {
			b.Run(fmt.Sprintf("nodes=%d/proposers=%d/payload=1KiB", nodes, proposers), func(b *testing.B) {
				benchPropose(b, nodes, proposers, 1024)
			})
		}
	}
}

func benchPropose(b *testing.B, nodes, proposers, size int) {
	fsync := storage.FsyncAlways
	if os.Getenv("FERRY_BENCH_FSYNC") == "never" {
		fsync = storage.FsyncNever
	}
	c := startCluster(b, nodes, clusterConfig{fsync: fsync, realClock: true, memTableBytes: 64 << 20, direct: true})
	for _, id := range c.ids {
		if _, err := c.nodes[id].host.AddGroup(1, c.ids, &benchSM{}); err != nil {
			b.Fatal(err)
		}
	}
	g := c.group(c.waitLeader(1, c.ids...), 1)
	payload := make([]byte, size)
	ctx := context.Background()
	if _, err := g.Propose(ctx, payload); err != nil {
		b.Fatal(err)
	}
	lat := make([][]time.Duration, proposers)
	var next atomic.Int64
	var failed atomic.Pointer[error]
	b.SetBytes(int64(size))
	b.ResetTimer()
	var wg sync.WaitGroup
	for w := range proposers {
		wg.Go(func() {
			for next.Add(1) <= int64(b.N) {
				start := time.Now()
				if _, err := g.Propose(ctx, payload); err != nil {
					failed.CompareAndSwap(nil, &err)
					return
				}
				lat[w] = append(lat[w], time.Since(start))
			}
		})
	}
	wg.Wait()
	b.StopTimer()
	if err := failed.Load(); err != nil {
		b.Fatal(*err)
	}
	all := slices.Concat(lat...)
	slices.Sort(all)
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "entries/s")
	b.ReportMetric(float64(all[len(all)/2].Microseconds())/1000, "p50_ms")
	b.ReportMetric(float64(all[len(all)*99/100].Microseconds())/1000, "p99_ms")
}

// benchSM counts what it applies: the benchmark measures replication, not
// a state machine.
type benchSM struct {
	applied, n uint64 // the group's: one call at a time
}

func (s *benchSM) Apply(ents []*raftpb.Entry) error {
	s.n += uint64(len(ents))
	s.applied = ents[len(ents)-1].GetIndex()
	return nil
}

func (s *benchSM) Applied() uint64 { return s.applied }

func (s *benchSM) Snapshot() ([]byte, error) { return binary.BigEndian.AppendUint64(nil, s.n), nil }

func (s *benchSM) Restore(snap *raftpb.Snapshot) error {
	s.n, s.applied = 0, snap.GetMetadata().GetIndex()
	if d := snap.GetData(); len(d) == 8 {
		s.n = binary.BigEndian.Uint64(d)
	}
	return nil
}
