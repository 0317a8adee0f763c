package consumer

import (
	"sync/atomic"

	lru "github.com/hashicorp/golang-lru/v2"
)

// DefaultRememberedCommits is EngineOptions.RememberedCommits' default.
const DefaultRememberedCommits = 1 << 15

// commitMemory remembers the delivery ids of landed commits with their
// results, for every subscription of an engine together: a retry of a
// commit that landed (its reply lost, or its write answered with the
// outcome unknown) is answered with the first's results (commit.go). It
// holds at most a fixed number of ids, the most recently used; a retry of
// a forgotten one is refused as already acked, which is true, and writes
// nothing. One bound for the whole engine: 20,000 subscriptions that all
// commit hold no more than one.
//
// At the default, 32,768 ids, it holds about 9 MiB: 280 bytes an id for
// commits of one input and one output (measured: the key, its list
// element and map slot, and the record); a record is shared by the ids of
// one commit and holds 16 bytes per output.
type commitMemory struct {
	ids *lru.Cache[commitKey, *commitRecord]
}

// commitKey is a delivery id of one subscription: sub is the
// subscription's number in the engine (never a pointer, which would keep
// a deleted subscription alive until its ids are forgotten).
type commitKey struct {
	sub uint64
	id  DeliveryID
}

// subNumbers numbers the subscriptions of every engine, for commitKey.
var subNumbers atomic.Uint64

func newCommitMemory(size int) *commitMemory {
	if size <= 0 {
		size = DefaultRememberedCommits
	}
	c, err := lru.New[commitKey, *commitRecord](size)
	if err != nil {
		panic(err) // only for a size ≤ 0, excluded above
	}
	return &commitMemory{ids: c}
}

// get returns the record of sub's landed commit that acked id, if it is
// remembered.
func (m *commitMemory) get(sub uint64, id DeliveryID) *commitRecord {
	rec, _ := m.ids.Get(commitKey{sub, id})
	return rec
}

// add remembers that sub's commit acked id, with rec.
func (m *commitMemory) add(sub uint64, id DeliveryID, rec *commitRecord) {
	m.ids.Add(commitKey{sub, id}, rec)
}

// len is how many ids are remembered.
func (m *commitMemory) len() int { return m.ids.Len() }
