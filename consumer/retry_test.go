package consumer

import (
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/ferrymq/ferry/storage"
)

// TestToRetryAllMerges: toRetryAll merges increasing offsets into retry,
// keeping it increasing and free of duplicates, like one toRetry each.
func TestToRetryAllMerges(t *testing.T) {
	rng := rand.New(rand.NewPCG(16, 4))
	for round := range 500 {
		s := &machine{}
		p := &partition{st: newCursorRecord(0), msgs: map[uint64]*storage.Message{}, inflight: NewInflight()}
		want := map[uint64]bool{}
		for range rng.IntN(20) {
			off := rng.Uint64N(50)
			p.msgs[off] = &storage.Message{}
			s.toRetry(p, off, time.Time{})
			want[off] = true
		}
		var add []uint64
		for range rng.IntN(20) {
			off := rng.Uint64N(50)
			p.msgs[off] = &storage.Message{}
			add = append(add, off)
			want[off] = true
		}
		slices.Sort(add)
		add = slices.Compact(add)
		s.toRetryAll(p, add)
		var keys []uint64
		for off := range want {
			keys = append(keys, off)
		}
		slices.Sort(keys)
		if !slices.Equal(p.retry, keys) {
			t.Fatalf("round %d: retry %v, want %v", round, p.retry, keys)
		}
	}
}

// TestKeepRest: a stalled pass keeps what it kept, the stalled offset and
// everything after, whether or not it dropped some before.
func TestKeepRest(t *testing.T) {
	for _, tc := range []struct {
		name string
		drop map[int]bool // positions before the stall dispatched
		want []uint64
	}{
		{"none dropped", nil, []uint64{10, 11, 12, 13, 14}},
		{"first dropped", map[int]bool{0: true}, []uint64{11, 12, 13, 14}},
		{"one before the stall dropped", map[int]bool{1: true}, []uint64{10, 12, 13, 14}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			retry := []uint64{10, 11, 12, 13, 14}
			const stall = 2
			kept := retry[:0]
			for i, off := range retry[:stall+1] {
				if !tc.drop[i] {
					kept = append(kept, off)
				}
			}
			if got := keepRest(retry, kept, stall); !slices.Equal(got, tc.want) {
				t.Fatalf("keepRest = %v, want %v", got, tc.want)
			}
		})
	}
}
