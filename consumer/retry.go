package consumer

import (
	"slices"
	"time"
)

// Retries at scale: after thousands of consumers leave at once p.retry
// holds every offset they held. These keep detach and dispatch from
// costing that many per event.

// keepRest is kept (a prefix filter of retry, in place) with retry[i+1:]
// after it, retry[i] being kept already. If nothing before i was dropped
// that is retry itself, and nothing is copied: a stalled pass costs O(1)
// however many retries wait (thousands, after a mass disconnect).
func keepRest(retry, kept []uint64, i int) []uint64 {
	if len(kept) == i+1 {
		return retry
	}
	return append(kept, retry[i+1:]...)
}

// toRetryAll queues offs (increasing) for redelivery at once, merging
// them into p.retry in one pass rather than one insertion each.
func (s *machine) toRetryAll(p *partition, offs []uint64) {
	if len(offs) == 0 {
		return
	}
	add := offs[:0:0]
	for _, off := range offs {
		a := p.st.attempts[off]
		a.notBefore = time.Time{}
		p.st.attempts[off] = a
		p.dirty = p.dirty || s.persistAttempts()
		if p.msgs[off] != nil {
			add = append(add, off)
		}
	}
	// Merge from the back, in place: no allocation but retry's growth.
	i, j := len(p.retry)-1, len(add)-1
	p.retry = slices.Grow(p.retry, len(add))[:len(p.retry)+len(add)]
	k := len(p.retry) - 1
	for j >= 0 {
		switch {
		case i >= 0 && p.retry[i] > add[j]:
			p.retry[k] = p.retry[i]
			i--
		case i >= 0 && p.retry[i] == add[j]: // queued already
			j--
			continue
		default:
			p.retry[k] = add[j]
			j--
		}
		k--
	}
	if k >= i { // duplicates left a gap: close it
		p.retry = slices.Delete(p.retry, i+1, k+1)
	}
}
