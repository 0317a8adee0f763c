package storage

import (
	"hash/maphash"
	"math/bits"
	"time"
)

// dedupFilter is a partition's bloom filters of the ids it published: a
// few generations, the newest taking the adds. It never answers no for an
// id added (so a lookup it rules out needs no Badger read) and answers yes
// for about 0.2% of the others per generation. A generation is dropped
// once its newest id expired, so expired ids leave with it. Generations
// start small (an idle partition has none, one with a few ids 448 B, so
// that a partition written once costs little while its ids are remembered) and
// grow fourfold up to dedupFilterMaxIDs; with dedupFilterMaxGens of them
// the newest takes every further add and grows less selective instead of
// bigger: memory per partition stays under 4.5 MiB whatever the rate (14
// bits an id, at most about 2.3 million ids' worth), and a lookup then
// reads Badger more often, still deciding right.
type dedupFilter struct {
	gens []*bloom // oldest first; the last takes the adds
}

const (
	dedupFilterFirstIDs = 256     // ids the first generation is sized for
	dedupFilterMaxIDs   = 1 << 20 // ids the largest generation is sized for
	dedupFilterMaxGens  = 8       // 256, 1Ki, 4Ki, 16Ki, 64Ki, 256Ki, 1Mi, and one more 1Mi
	bloomBitsPerID      = 14      // with 10 hashes: about 0.2% false positives
	bloomHashes         = 10
)

// bloomSeed hashes ids: the filters live in memory only, so a seed per
// process is enough.
var bloomSeed = maphash.MakeSeed()

// bloom is one generation: a bloom filter sized for capacity ids.
type bloom struct {
	bits     []uint64
	capacity int
	n        int       // ids added
	newest   time.Time // publish time of the newest id added
}

func newBloom(capacity int) *bloom {
	words := (capacity*bloomBitsPerID + 63) / 64
	return &bloom{bits: make([]uint64, words), capacity: capacity}
}

// positions calls fn with the filter's bit positions for id (double
// hashing of one 64-bit hash).
func (b *bloom) positions(h uint64, fn func(word int, mask uint64) bool) bool {
	m := uint64(len(b.bits)) * 64
	h1, h2 := h, bits.RotateLeft64(h, 32)|1
	for i := range uint64(bloomHashes) {
		p := (h1 + i*h2) % m
		if !fn(int(p/64), 1<<(p%64)) {
			return false
		}
	}
	return true
}

func (b *bloom) add(h uint64, t time.Time) {
	b.positions(h, func(w int, mask uint64) bool {
		b.bits[w] |= mask
		return true
	})
	b.n++
	if t.After(b.newest) {
		b.newest = t
	}
}

func (b *bloom) has(h uint64) bool {
	return b.positions(h, func(w int, mask uint64) bool { return b.bits[w]&mask != 0 })
}

// add puts id, published at t, in the newest generation, starting a new
// one when it is full and the bound allows.
func (f *dedupFilter) add(id string, t time.Time) {
	n := len(f.gens)
	if n == 0 || (f.gens[n-1].n >= f.gens[n-1].capacity && n < dedupFilterMaxGens) {
		capacity := dedupFilterFirstIDs
		if n > 0 {
			capacity = min(4*f.gens[n-1].capacity, dedupFilterMaxIDs)
		}
		f.gens = append(f.gens, newBloom(capacity))
	}
	f.gens[len(f.gens)-1].add(maphash.String(bloomSeed, id), t)
}

// mayContain reports whether id may have been added; false means it was
// not.
func (f *dedupFilter) mayContain(id string) bool {
	if len(f.gens) == 0 {
		return false
	}
	h := maphash.String(bloomSeed, id)
	for _, g := range f.gens {
		if g.has(h) {
			return true
		}
	}
	return false
}

// expire drops the generations whose ids were all added window or more
// before now.
func (f *dedupFilter) expire(now time.Time, window time.Duration) {
	i := 0
	for i < len(f.gens) && now.Sub(f.gens[i].newest) >= window {
		i++
	}
	if i > 0 {
		f.gens = append(f.gens[:0:0], f.gens[i:]...)
	}
}

// count is the ids the generations hold.
func (f *dedupFilter) count() int {
	n := 0
	for _, g := range f.gens {
		n += g.n
	}
	return n
}
