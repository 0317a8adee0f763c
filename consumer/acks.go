package consumer

// The subscription's acks: checking a delivery id against what is
// outstanding, ack, nack, extend, Commit and dead letters.

import (
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/ferrymq/ferry/storage"
)

// Headers of a dead-lettered message, naming where it came from.
const (
	HeaderDeadLetterTopic        = "ferry-dead-letter-topic"
	HeaderDeadLetterPartition    = "ferry-dead-letter-partition"
	HeaderDeadLetterOffset       = "ferry-dead-letter-offset"
	HeaderDeadLetterSubscription = "ferry-dead-letter-subscription"
	HeaderDeadLetterAttempts     = "ferry-dead-letter-attempts"
)

// messageID is the id of the message at off, if it is known: in memory,
// or read by the loop (noteIDs).
func (s *machine) messageID(p *partition, off uint64) string {
	if m := p.msgs[off]; m != nil {
		return m.ID
	}
	return p.loadedIDs[off]
}

// unloaded returns the ids among ids that an EFFECTIVELY_ONCE ack or commit
// could take but whose message is not in memory (delivered before a
// restart, not fetched again): the loop reads their message ids and hands
// them to noteIDs first, so that the acked-id horizon gets them.
func (s *machine) unloaded(ids []DeliveryID) []DeliveryID {
	if s.opts.Guarantee != EffectivelyOnce {
		return nil
	}
	var out []DeliveryID
	for _, id := range ids {
		if p, err := s.check(id, false); err == nil && p.msgs[id.Offset] == nil {
			out = append(out, id)
		}
	}
	return out
}

// noteIDs records message ids the loop read for unloaded deliveries.
func (s *machine) noteIDs(found map[DeliveryID]string) {
	for id, mid := range found {
		p := s.parts[id.Partition]
		if _, ok := p.st.attempts[id.Offset]; !ok || mid == "" {
			continue
		}
		if p.loadedIDs == nil {
			p.loadedIDs = make(map[uint64]string)
		}
		p.loadedIDs[id.Offset] = mid
	}
}

// check finds the partition of an ack, nack, extend or commit and says
// whether id names the current attempt of an outstanding delivery.
// AT_LEAST_ONCE takes an ack of an older attempt: the message was processed.
func (s *machine) check(id DeliveryID, ack bool) (*partition, error) {
	if id.Partition >= uint32(len(s.parts)) {
		return nil, fmt.Errorf("delivery %s: no partition %d: %w", id, id.Partition, ErrUnknownDelivery)
	}
	p := s.parts[id.Partition]
	if s.opts.Guarantee == AtMostOnce && id.Epoch == p.st.epoch {
		// The cursor passed every delivered message before it went out:
		// an outstanding delivery is found by its lease, not the cursor.
		if l, ok := p.inflight.Get(id.Offset); ok && l.Attempt == id.Attempt {
			return p, nil
		}
	}
	switch {
	case p.st.cursor.Acked(id.Offset):
		return nil, fmt.Errorf("delivery %s: %w", id, ErrAlreadyAcked)
	case id.Epoch != p.st.epoch:
		return nil, fmt.Errorf("delivery %s is from before a seek: %w", id, ErrStaleAttempt)
	case p.busy[id.Offset]:
		return nil, fmt.Errorf("delivery %s is being committed: %w", id, ErrUnknownDelivery)
	}
	if s.opts.Guarantee == AtMostOnce {
		return nil, fmt.Errorf("delivery %s: %w", id, ErrUnknownDelivery) // no lease matched above
	}
	a, ok := p.st.attempts[id.Offset]
	switch {
	case !ok || id.Attempt == 0 || id.Attempt > a.n:
		return nil, fmt.Errorf("delivery %s: %w", id, ErrUnknownDelivery)
	case id.Attempt < a.n && !(ack && s.opts.Guarantee == AtLeastOnce):
		return nil, fmt.Errorf("delivery %s: attempt %d is current: %w", id, a.n, ErrStaleAttempt)
	}
	return p, nil
}

// ack acks deliveries. Each gets a result (nil or why it was refused) in
// the reply to call. For EFFECTIVELY_ONCE the reply goes out once the acks
// are durable (with the write's error, if it failed); otherwise at once.
// Acks under AT_MOST_ONCE only free credit; NONE takes none.
func (s *machine) ack(call callID, ids []DeliveryID, now time.Time) {
	results := make([]error, len(ids))
	touched := map[*partition]bool{}
	for i, id := range ids {
		if s.opts.Guarantee == None {
			results[i] = fmt.Errorf("acks: %w", ErrNotSupported)
			continue
		}
		p, err := s.check(id, true)
		if err != nil {
			results[i] = err
			s.stats.StaleAcks++
			if q := s.unstored(id, err); q != nil {
				touched[q] = true // answered once what it says is stored
			}
			continue
		}
		if s.opts.Guarantee == AtMostOnce {
			s.release(p, id.Offset)
			delete(p.msgs, id.Offset)
			continue
		}
		if mid := s.messageID(p, id.Offset); s.opts.Guarantee == EffectivelyOnce && mid != "" {
			p.ackedIDs = append(p.ackedIDs, mid)
		}
		s.forget(p, id.Offset)
		p.st.cursor.Ack(id.Offset)
		p.dirty = true
		touched[p] = true
		s.stats.Acked++
	}
	if s.opts.Guarantee != EffectivelyOnce || len(touched) == 0 {
		s.answer(reply{call: call, results: results})
	} else {
		s.afterWrites(touched, reply{call: call, results: results})
	}
	s.step(now)
}

// unstored returns the partition of an EFFECTIVELY_ONCE ack refused as
// already acked while the partition's state is not all stored: an ack
// answered with a failed write (outcome unknown) stands in memory and is
// written again; its retry is answered "already acked" only once that is
// true on disk, or with the error of the write that failed again.
func (s *machine) unstored(id DeliveryID, err error) *partition {
	if s.opts.Guarantee != EffectivelyOnce || !errors.Is(err, ErrAlreadyAcked) {
		return nil
	}
	if p := s.parts[id.Partition]; p.dirty || len(p.writes) > 0 {
		return p
	}
	return nil
}

// afterWrites answers r once what every partition in parts holds now is
// stored, with the first error: by the partition's next write if it has
// changes no write carries yet (dirty), else by its last write in flight
// (each write carries the whole state). A partition of parts is dirty or
// has a write in flight.
func (s *machine) afterWrites(parts map[*partition]bool, r reply) {
	w := &waiter{reply: r, left: len(parts)}
	for p := range parts {
		if !p.dirty && len(p.writes) > 0 {
			last := p.writes[len(p.writes)-1]
			last.waiters = append(last.waiters, w)
			continue
		}
		p.waiters = append(p.waiters, w)
	}
}

// nack makes deliveries due again after the backoff for their attempt.
func (s *machine) nack(ids []DeliveryID, now time.Time) []error {
	results := make([]error, len(ids))
	for i, id := range ids {
		if s.opts.Guarantee == None || s.opts.Guarantee == AtMostOnce {
			results[i] = fmt.Errorf("nack: %w", ErrNotSupported)
			continue
		}
		p, err := s.check(id, false)
		if err != nil {
			results[i] = err
			s.stats.StaleAcks++
			continue
		}
		s.release(p, id.Offset)
		s.toRetry(p, id.Offset, now.Add(s.opts.Backoff(id.Attempt)))
		s.stats.Nacked++
	}
	s.step(now)
	return results
}

// extend moves the deadline of outstanding deliveries to now+d.
func (s *machine) extend(ids []DeliveryID, d time.Duration, now time.Time) []error {
	results := make([]error, len(ids))
	for i, id := range ids {
		if s.opts.Guarantee == None {
			results[i] = fmt.Errorf("extend: %w", ErrNotSupported)
			continue
		}
		p, err := s.check(id, false)
		if err == nil && !p.inflight.Extend(id.Offset, now.Add(d)) {
			err = fmt.Errorf("delivery %s is not outstanding: %w", id, ErrUnknownDelivery)
		}
		if err != nil {
			results[i] = err
			continue
		}
		if a, ok := p.st.attempts[id.Offset]; ok {
			a.notBefore = now.Add(d)
			p.st.attempts[id.Offset] = a
			p.dirty = p.dirty || s.persistAttempts()
		}
	}
	s.step(now)
	return results
}

// deadLetter sends off to the dead-letter topic and acks it, atomically.
func (s *machine) deadLetter(p *partition, off uint64, m *storage.Message, attempts uint32) {
	dl := storage.Message{ID: m.ID, Key: m.Key, Payload: m.Payload, Headers: make(map[string]string, len(m.Headers)+5)}
	for k, v := range m.Headers {
		dl.Headers[k] = v
	}
	dl.Headers[HeaderDeadLetterTopic] = s.topic
	dl.Headers[HeaderDeadLetterPartition] = strconv.FormatUint(uint64(p.n), 10)
	dl.Headers[HeaderDeadLetterOffset] = strconv.FormatUint(off, 10)
	dl.Headers[HeaderDeadLetterSubscription] = s.name
	dl.Headers[HeaderDeadLetterAttempts] = strconv.FormatUint(uint64(attempts), 10)
	part, err := s.route(s.opts.DeadLetterTopic, &dl)
	if err != nil {
		// The dead-letter topic is gone: keep the message and try again
		// after the longest backoff.
		s.toRetry(p, off, m.PublishTime.Add(s.opts.BackoffMax))
		return
	}
	p.busy[off] = true
	job := &writeJob{
		deadLetter: true,
		acks:       map[uint32][]uint64{p.n: {off}},
		w:          storage.Write{Appends: []storage.AppendBatch{{Topic: s.opts.DeadLetterTopic, Partition: part, Messages: []storage.Message{dl}}}},
	}
	if s.opts.Guarantee == EffectivelyOnce && m.ID != "" {
		job.ackedIDs = []string{m.ID}
	}
	s.queue(job)
}
