package consumer

import (
	"cmp"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// TestInflightMatchesModel runs random adds, removes, extends, consumer
// removals and due sweeps against a plain map of outstanding deliveries.
func TestInflightMatchesModel(t *testing.T) {
	const seed = 7
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 2))
	for run := range 30 {
		f := NewInflight()
		model := map[uint64]Lease{}
		now := t0
		for step := range 400 {
			off := rng.Uint64N(50)
			switch k := rng.IntN(10); {
			case k < 4:
				d := Lease{Offset: off, Attempt: 1 + rng.Uint32N(3), Consumer: rng.Uint64N(4),
					Deadline: now.Add(time.Duration(rng.IntN(30)) * time.Second)}
				_, had := model[off]
				if got := f.Add(d); got == had {
					t.Fatalf("run %d step %d: Add(%d) = %t with the offset outstanding: %t", run, step, off, got, had)
				}
				if !had {
					model[off] = d
				}
			case k < 5:
				got, ok := f.Remove(off)
				want, had := model[off]
				if ok != had || got != want {
					t.Fatalf("run %d step %d: Remove(%d) = %+v %t, want %+v %t", run, step, off, got, ok, want, had)
				}
				delete(model, off)
			case k < 6:
				dl := now.Add(time.Duration(rng.IntN(30)) * time.Second)
				d, had := model[off]
				if f.Extend(off, dl) != had {
					t.Fatalf("run %d step %d: Extend(%d) disagrees", run, step, off)
				}
				if had {
					d.Deadline = dl
					model[off] = d
				}
			case k < 7:
				c := rng.Uint64N(4)
				var want []Lease
				for o, d := range model {
					if d.Consumer == c {
						want = append(want, d)
						delete(model, o)
					}
				}
				slices.SortFunc(want, func(a, b Lease) int { return cmp.Compare(a.Offset, b.Offset) })
				if got := f.RemoveConsumer(c); !slices.Equal(got, want) {
					t.Fatalf("run %d step %d: RemoveConsumer(%d) = %v, want %v", run, step, c, got, want)
				}
			default:
				now = now.Add(time.Duration(rng.IntN(8)) * time.Second)
				var want []Lease
				for o, d := range model {
					if !d.Deadline.After(now) {
						want = append(want, d)
						delete(model, o)
					}
				}
				slices.SortFunc(want, func(a, b Lease) int {
					if c := a.Deadline.Compare(b.Deadline); c != 0 {
						return c
					}
					return cmp.Compare(a.Offset, b.Offset)
				})
				if got := f.Due(now); !slices.Equal(got, want) {
					t.Fatalf("run %d step %d: Due(%v) = %v, want %v", run, step, now, got, want)
				}
			}
			if f.Len() != len(model) {
				t.Fatalf("run %d step %d: Len %d, model %d", run, step, f.Len(), len(model))
			}
			var earliest time.Time
			for _, d := range model {
				if earliest.IsZero() || d.Deadline.Before(earliest) {
					earliest = d.Deadline
				}
			}
			if next, ok := f.NextDeadline(); ok != (len(model) > 0) || (ok && !next.Equal(earliest)) {
				t.Fatalf("run %d step %d: NextDeadline = %v %t, want %v", run, step, next, ok, earliest)
			}
			for o, d := range model {
				if got, ok := f.Get(o); !ok || got != d {
					t.Fatalf("run %d step %d: Get(%d) = %+v %t, want %+v", run, step, o, got, ok, d)
				}
			}
		}
	}
}
