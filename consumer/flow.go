package consumer

import (
	"fmt"
	"sync/atomic"
	"time"
)

// Bounds of what one consumer may cost the broker (CONTRIBUTING.md's
// conventions: everything kept per client has a bound and a behaviour at
// it).
const (
	// MaxCredit is the most credit a consumer may grant: the most unacked
	// deliveries it may hold. A larger credit is refused with
	// ErrInvalidCredit, naming this maximum; it is not clamped. A consumer
	// that reads and never acks holds at most MaxCredit deliveries, each a
	// few hundred bytes of state without its payload (kept only while
	// queued).
	MaxCredit = 10000

	// DefaultQueueBytes is the default of EngineOptions.QueueBytes: a
	// stream that does not read holds at most this much queued for it
	// (plus gRPC's own per-stream buffers, up to about 100 KiB).
	DefaultQueueBytes = 64 << 10

	// pendingQueues: a consumer's deliveries waiting for their write may
	// amount to this many times QueueBytes.
	pendingQueues = 4

	// deliveryOverhead is what a queued delivery costs besides its
	// payload, key and id, in bytes (Delivery and its message), for
	// QueueBytes' accounting.
	deliveryOverhead = 192

	// noneMaxLag is how far behind the live tail a NONE consumer may fall:
	// once the oldest message waiting for it was published longer ago
	// than this, what waits is skipped (Stats.Dropped) and the next read
	// starts at the partition's head.
	noneMaxLag = 5 * time.Second
)

// checkCredit refuses a credit outside 1..MaxCredit.
func checkCredit(credit int) error {
	if credit < 1 || credit > MaxCredit {
		return fmt.Errorf("credit %d: must be 1 to %d: %w", credit, MaxCredit, ErrInvalidCredit)
	}
	return nil
}

// deliverySize is what a queued delivery of m counts against QueueBytes.
func deliverySize(d *Delivery) int {
	return len(d.Message.Payload) + len(d.Message.Key) + len(d.Message.ID) + deliveryOverhead
}

// hasRoom reports whether c may take another delivery. Besides credit
// (outstanding deliveries; NONE takes no acks, so for it credit, or
// fetchMax if more, bounds what is queued instead), every consumer has a
// queue of deliveries handed to it and not yet taken by its stream: it gets
// nothing more while QueueBytes are queued (one delivery always fits), or
// while pendingQueues times that wait for their write (AT_MOST_ONCE and
// EFFECTIVELY_ONCE send a delivery once its write is durable; the larger
// bound leaves a group commit its batch). A consumer whose stream does not
// read stops receiving, and costs at most its credit's worth of messages,
// and of those at most (1+pendingQueues)×QueueBytes with their payload.
//
// A closing consumer (its stream ended, its detach not yet run) has none.
func (s *machine) hasRoom(c *consumerState) bool {
	if c.closing != nil && c.closing.Load() {
		return false
	}
	if c.queued > 0 && c.queuedBytes >= s.queueBytes || c.pendingBytes >= pendingQueues*s.queueBytes {
		return false
	}
	if s.opts.Guarantee == None {
		return c.queued < max(c.credit, fetchMax)
	}
	return c.hasCredit()
}

// send hands d to the loop for its consumer's queue, counting it there.
// A delivery that waits for a write first (durableSends) is counted once
// the write is done: until then credit bounds it, and counting it would
// shrink the batches a group commit takes.
func (s *machine) send(d Delivery) {
	if c := s.consumer(d.Consumer); c != nil {
		c.queued++
		c.queuedBytes += deliverySize(&d)
	}
	s.out.sends = append(s.out.sends, d)
}

// watchClosing gives consumer id its Consumer's closing flag (hasRoom).
func (s *machine) watchClosing(id uint64, closing *atomic.Bool) {
	if c := s.consumer(id); c != nil {
		c.closing = closing
	}
}

// unsent takes back d, which its consumer's queue refused or which found
// its consumer detached: its stream ended after d was made (durableSends:
// while its write was on its way), so no client saw it. Under AT_LEAST_ONCE and EFFECTIVELY_ONCE it is due
// again at once, for another consumer, instead of at its ack deadline;
// AT_MOST_ONCE moved its cursor past it before it went out, and NONE keeps
// nothing, so there it is gone, as at a detach.
func (s *machine) unsent(d Delivery, now time.Time) {
	if c := s.consumer(d.Consumer); c != nil {
		c.queued = max(c.queued-1, 0)
		c.queuedBytes = max(c.queuedBytes-deliverySize(&d), 0)
	}
	if d.ID.Partition >= uint32(len(s.parts)) || s.opts.Guarantee == None {
		return
	}
	p := s.parts[d.ID.Partition]
	l, ok := p.inflight.Get(d.ID.Offset)
	if !ok || l.Attempt != d.ID.Attempt || l.Consumer != d.Consumer && l.Consumer != 0 {
		// Acked, or delivered again since. (A detach under
		// EFFECTIVELY_ONCE leaves a lease with no consumer until its
		// deadline, for a client that saw it: this one did not.)
		return
	}
	s.release(p, d.ID.Offset)
	if s.opts.Guarantee == AtMostOnce {
		delete(p.msgs, d.ID.Offset)
		return
	}
	s.toRetry(p, d.ID.Offset, time.Time{})
	s.step(now)
}

// taken says the stream of consumer id took n deliveries of bytes (as
// deliverySize counts them) from its queue.
func (s *machine) taken(id uint64, n, bytes int, now time.Time) {
	if c := s.consumer(id); c != nil {
		c.queued = max(c.queued-n, 0)
		c.queuedBytes = max(c.queuedBytes-bytes, 0)
	}
	s.step(now)
}

// anyRoom reports whether some consumer could take a delivery.
func (s *machine) anyRoom() bool {
	for _, c := range s.consumers {
		if s.hasRoom(c) {
			return true
		}
	}
	return false
}

// skipLagging drops what a NONE subscription's partition buffered once its
// oldest message is more than noneMaxLag old: its consumers fell behind,
// and are skipped forward to the head instead of being fed the backlog.
func (s *machine) skipLagging(p *partition, now time.Time) {
	if s.opts.Guarantee != None || len(p.buf) == 0 || now.Sub(p.buf[0].PublishTime) <= noneMaxLag {
		return
	}
	s.stats.Dropped += uint64(len(p.buf))
	clear(p.buf)
	p.buf = p.buf[:0]
	p.behind = true
}
