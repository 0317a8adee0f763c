package consumer

// The machine's dispatch: which consumer gets which message (the
// subscription type's rules: EXCLUSIVE, FAILOVER, SHARED round robin,
// KEY_SHARED pins and rendezvous hashing), redeliveries before fresh
// messages, and the bookkeeping of a delivery from its lease to its ack.

import (
	"hash/fnv"
	"slices"
	"time"

	"github.com/ferrymq/ferry/storage"
)

// keyHash is the KEY_SHARED hash of a key (FNV-1a 64).
func keyHash(key []byte) uint64 {
	h := fnv.New64a()
	h.Write(key)
	return h.Sum64()
}

// pick chooses the consumer for m, or nil if the one it must go to has no
// room (hasRoom: credit and queue).
func (s *machine) pick(m *storage.Message) *consumerState {
	ok := s.hasRoom
	switch s.opts.Type {
	case Exclusive, Failover:
		if c := s.consumers[0]; ok(c) {
			return c
		}
		return nil
	case KeyShared:
		if len(m.Key) == 0 {
			break
		}
		h := keyHash(m.Key)
		var c *consumerState
		if pn, pinned := s.pins[h]; pinned {
			c = s.consumer(pn.consumer)
		} else {
			c = s.rendezvous(h)
		}
		if c != nil && ok(c) {
			return c
		}
		return nil
	}
	for i := range s.consumers {
		c := s.consumers[(s.rr+i)%len(s.consumers)]
		if ok(c) {
			s.rr = (s.rr + i + 1) % len(s.consumers)
			return c
		}
	}
	return nil
}

// rendezvous is the consumer with the highest score for key hash h: when
// consumers come and go only the keys of those that left, or a fair share
// for one that joined, move.
func (s *machine) rendezvous(h uint64) *consumerState {
	var best *consumerState
	var bestScore uint64
	for _, c := range s.consumers {
		x := h ^ (c.id * 0x9E3779B97F4A7C15)
		x ^= x >> 33
		x *= 0xff51afd7ed558ccd
		x ^= x >> 33
		if best == nil || x > bestScore {
			best, bestScore = c, x
		}
	}
	return best
}

// dispatch hands out due redeliveries, then fetched messages, while
// consumers have credit.
func (s *machine) dispatch(now time.Time) {
	if len(s.consumers) == 0 {
		return
	}
	var blocked map[uint64]bool // KEY_SHARED keys that must wait this round
	for _, p := range s.parts {
		if s.opts.Type == KeyShared {
			blocked = make(map[uint64]bool)
		}
		stalled := false
		s.skipLagging(p, now)
		s.dispatchRetries(p, now, blocked, &stalled)
		if !stalled {
			n := len(p.retry)
			s.dispatchBuffer(p, now, blocked)
			if len(p.retry) > n {
				// Fetched messages that ran out of attempts before a
				// restart: dead-letter them now, not at the next event.
				s.dispatchRetries(p, now, blocked, &stalled)
			}
		}
	}
}

// hold reports whether a message that could not be placed stops the pass:
// only KEY_SHARED looks past it, to other keys.
func (s *machine) hold(m *storage.Message, blocked map[uint64]bool) bool {
	if s.opts.Type == KeyShared && len(m.Key) > 0 {
		blocked[keyHash(m.Key)] = true
		return false
	}
	return true
}

func (s *machine) isBlocked(m *storage.Message, blocked map[uint64]bool) bool {
	return len(blocked) > 0 && len(m.Key) > 0 && blocked[keyHash(m.Key)]
}

func (s *machine) dispatchRetries(p *partition, now time.Time, blocked map[uint64]bool, stalled *bool) {
	kept := p.retry[:0]
	for i, off := range p.retry {
		a := p.st.attempts[off]
		m := p.msgs[off]
		if *stalled || a.notBefore.After(now) || s.isBlocked(m, blocked) {
			kept = append(kept, off)
			continue
		}
		if m.Payload == nil {
			// Its payload was let go when it went out: read it again first,
			// holding back what must follow it.
			s.wantReread(p, off)
			kept = append(kept, off)
			*stalled = s.hold(m, blocked)
			if *stalled {
				kept = keepRest(p.retry, kept, i)
				break
			}
			continue
		}
		if s.opts.MaxDeliveries > 0 && a.n >= s.opts.MaxDeliveries {
			s.deadLetter(p, off, m, a.n)
			continue
		}
		c := s.pick(m)
		if c == nil {
			kept = append(kept, off)
			*stalled = s.hold(m, blocked)
			if *stalled {
				kept = keepRest(p.retry, kept, i)
				break
			}
			continue
		}
		s.deliver(p, c, m, now)
	}
	p.retry = kept
}

func (s *machine) dispatchBuffer(p *partition, now time.Time, blocked map[uint64]bool) {
	kept := p.buf[:0]
	for i := range p.buf {
		m := &p.buf[i]
		switch {
		case p.st.cursor.Acked(m.Offset):
			continue
		case p.busy[m.Offset], s.isBlocked(m, blocked):
			kept = append(kept, *m)
			continue
		}
		if a, ok := p.st.attempts[m.Offset]; ok && s.opts.Guarantee != None {
			// Delivered before a restart: a redelivery, when its deadline
			// or backoff allows.
			mc := *m
			p.msgs[m.Offset] = &mc
			if s.opts.Type == KeyShared && a.notBefore.After(now) {
				s.holdUnknown(p, m.Offset, a)
				continue
			}
			if a.notBefore.After(now) || (s.opts.MaxDeliveries > 0 && a.n >= s.opts.MaxDeliveries) {
				s.toRetry(p, m.Offset, a.notBefore)
				continue
			}
		}
		c := s.pick(m)
		if c == nil {
			kept = append(kept, *m)
			if s.hold(m, blocked) {
				kept = append(kept, p.buf[i+1:]...)
				break
			}
			continue
		}
		mc := *m
		s.deliver(p, c, &mc, now)
	}
	clear(p.buf[len(kept):])
	p.buf = kept
}

// holdUnknown keeps a KEY_SHARED delivery made before a restart (or by
// the subscription's previous owner) outstanding at its unknown holder
// until its deadline, its key pinned there, as a detached consumer's
// delivery is kept (machine.detach): the key's later messages wait until
// it is acked or due again, instead of going to another consumer while it
// may still be held. (A message nacked before the restart is held the
// same way until its backoff ends: which of the two it was is not stored.)
func (s *machine) holdUnknown(p *partition, off uint64, a attempt) {
	p.inflight.Add(Lease{Offset: off, Attempt: a.n, Consumer: 0, Deadline: a.notBefore})
	s.pinTo(p, off, 0)
}

// deliver makes one delivery of m to c.
func (s *machine) deliver(p *partition, c *consumerState, m *storage.Message, now time.Time) {
	off := m.Offset
	d := Delivery{Consumer: c.id, ID: DeliveryID{Partition: p.n, Offset: off, Attempt: 1, Epoch: p.st.epoch}, Message: *m}
	s.stats.Delivered++
	if s.opts.Guarantee == None {
		s.send(d)
		return
	}
	deadline := now.Add(s.opts.AckTimeout)
	// What stays in memory while the delivery is out is the message without
	// its payload and headers: a redelivery reads them again (reread), so
	// a subscription's memory does not grow with its consumers' credit
	// times the message size.
	held := *m
	held.Payload, held.Headers = nil, nil
	p.msgs[off] = &held
	if s.opts.Guarantee == AtMostOnce {
		// The cursor moves before the message goes out: never twice.
		p.st.cursor.Ack(off)
		p.dirty = true
	} else {
		a := p.st.attempts[off]
		a.n++
		a.notBefore = deadline
		p.st.attempts[off] = a
		d.ID.Attempt = a.n
		if a.n > 1 {
			s.stats.Redelivered++
		}
		p.dirty = p.dirty || s.persistAttempts()
	}
	p.inflight.Add(Lease{Offset: off, Attempt: d.ID.Attempt, Consumer: c.id, Deadline: deadline})
	c.out++
	s.pinTo(p, off, c.id)
	if s.durableSends() {
		c.pendingBytes += deliverySize(&d)
		p.sends = append(p.sends, d)
	} else {
		s.send(d)
	}
}

// pinKey is the KEY_SHARED key hash of the message at off, if it has a
// key and the subscription is KEY_SHARED.
func (s *machine) pinKey(p *partition, off uint64) (uint64, bool) {
	if s.opts.Type != KeyShared {
		return 0, false
	}
	m := p.msgs[off]
	if m == nil || len(m.Key) == 0 {
		return 0, false
	}
	return keyHash(m.Key), true
}

// pinTo holds off's key at consumer (0 for none: an EFFECTIVELY_ONCE
// delivery whose consumer left, still outstanding until its deadline).
func (s *machine) pinTo(p *partition, off uint64, consumer uint64) {
	h, ok := s.pinKey(p, off)
	if !ok {
		return
	}
	pn := s.pins[h]
	if pn == nil {
		pn = &pin{}
		s.pins[h] = pn
	}
	pn.consumer = consumer
	pn.out++
}

// unpin releases off's key once its last outstanding delivery is done.
func (s *machine) unpin(p *partition, off uint64) {
	h, ok := s.pinKey(p, off)
	if !ok {
		return
	}
	if pn := s.pins[h]; pn != nil {
		if pn.out--; pn.out <= 0 {
			delete(s.pins, h)
		}
	}
}

// toRetry queues off for redelivery no earlier than notBefore.
func (s *machine) toRetry(p *partition, off uint64, notBefore time.Time) {
	if !notBefore.IsZero() {
		p.retryLater = true
	}
	a := p.st.attempts[off]
	a.notBefore = notBefore
	p.st.attempts[off] = a
	p.dirty = p.dirty || s.persistAttempts()
	if p.msgs[off] == nil {
		return // not fetched yet: the fetch finds its attempts
	}
	if i, found := slices.BinarySearch(p.retry, off); !found {
		p.retry = slices.Insert(p.retry, i, off)
	}
}

// release ends off's outstanding delivery, if any, freeing its consumer's
// credit.
func (s *machine) release(p *partition, off uint64) {
	if l, ok := p.inflight.Remove(off); ok {
		s.released(p, l)
	}
}

// released frees what lease l held, once it is out of p.inflight: its key
// and its consumer's credit.
func (s *machine) released(p *partition, l Lease) {
	s.unpin(p, l.Offset)
	if c := s.consumer(l.Consumer); c != nil {
		c.out--
	}
}

// forget drops what is held for an acked off.
func (s *machine) forget(p *partition, off uint64) {
	s.release(p, off)
	delete(p.st.attempts, off)
	delete(p.msgs, off)
	delete(p.loadedIDs, off)
	if i, found := slices.BinarySearch(p.retry, off); found {
		p.retry = slices.Delete(p.retry, i, i+1)
	}
}
