package consumer

// The subscription's reads of the log: fetches of new messages into the
// partitions' buffers and rereads of messages due again, and skipping past
// what retention removed.

import (
	"errors"
	"slices"
	"time"

	"github.com/ferrymq/ferry/storage"
)

// Fetch sizes. A partition's buffer of messages not yet delivered is
// refilled once it holds less than half its target: the consumers' free
// credit, at least fetchMin and at most fetchMax messages — so a
// subscription whose consumers hold their whole window keeps only a few
// messages in memory besides those they hold. One fetch reads at most
// fetchBytes.
const (
	fetchMin   = 32
	fetchMax   = 512
	fetchBytes = 4 << 20
)

// fetch asks the loop to read a partition from an offset (waiting for the
// head to pass it) and hand the messages to fetched.
type fetch struct {
	part uint32
	from uint64
	max  int // most messages to read
	seq  uint64
	// latest: read from the partition's head, not from; the messages in
	// between are skipped (NONE consumers that fell behind).
	latest bool
	// ackedIDs: look up which messages' ids the subscription acked
	// (EFFECTIVELY_ONCE's dedup horizon).
	ackedIDs bool
}

// reread asks the loop to read a partition's messages in [from, to) again,
// for redeliveries, and hand them to reread.
type reread struct {
	part     uint32
	from, to uint64
	seq      uint64
}

// wantReread notes that off needs its payload read again.
func (s *machine) wantReread(p *partition, off uint64) {
	if i, found := slices.BinarySearch(p.rereadWant, off); !found {
		p.rereadWant = slices.Insert(p.rereadWant, i, off)
	}
}

// queueRereads asks for the payloads redeliveries wait for: one read per
// partition at a time, of the lowest offsets wanted, spanning at most
// fetchMax offsets.
func (s *machine) queueRereads() {
	for _, p := range s.parts {
		if p.rereading || len(p.rereadWant) == 0 {
			continue
		}
		from := p.rereadWant[0]
		to := from + 1
		for _, off := range p.rereadWant {
			if off-from >= fetchMax {
				break
			}
			to = off + 1
		}
		p.rereading = true
		s.out.rereads = append(s.out.rereads, reread{part: p.n, from: from, to: to, seq: p.rereadSeq})
	}
}

// reread takes messages read again for redeliveries. A message retention
// removed meanwhile is skipped (skipTo) when the fetch finds it gone.
func (s *machine) reread(r reread, msgs []storage.Message, err error, now time.Time) {
	p := s.parts[r.part]
	if r.seq != p.rereadSeq {
		return
	}
	p.rereading = false
	for i := range msgs {
		m := &msgs[i]
		if held := p.msgs[m.Offset]; held != nil && held.Payload == nil {
			full := *m
			p.msgs[m.Offset] = &full
		}
	}
	kept := p.rereadWant[:0]
	for _, off := range p.rereadWant {
		if m := p.msgs[off]; m != nil && m.Payload == nil && (off >= r.to || err != nil) {
			kept = append(kept, off)
		}
	}
	p.rereadWant = kept
	var oor *storage.OffsetOutOfRangeError
	if errors.As(err, &oor) && oor.Offset < oor.First {
		s.skipTo(p, oor.First)
	}
	s.step(now)
}

// queueFetches asks for more messages where a partition's buffer runs low
// and someone could take them.
func (s *machine) queueFetches() {
	if len(s.consumers) == 0 {
		return
	}
	target := fetchMax
	if s.opts.Guarantee == None && !s.anyRoom() {
		return // a NONE partition that waits costs nothing; skipLagging
	}
	if s.opts.Guarantee != None {
		free := 0
		for _, c := range s.consumers {
			free += max(c.credit-c.out, 0)
		}
		target = min(max(free, fetchMin), fetchMax)
	}
	for _, p := range s.parts {
		if p.fetching || len(p.buf) >= target/2 {
			continue
		}
		p.fetching = true
		s.out.fetches = append(s.out.fetches, fetch{part: p.n, from: p.next, max: target - len(p.buf), seq: p.fetchSeq,
			latest: p.behind, ackedIDs: s.opts.Guarantee == EffectivelyOnce})
	}
}

// fetched takes the outcome of a fetch: messages from f.from, and for
// EFFECTIVELY_ONCE which of their ids the subscription already acked
// (those are acked again, not delivered). An *OffsetOutOfRangeError below
// the first retained offset skips what retention removed.
func (s *machine) fetched(f fetch, msgs []storage.Message, ackedID []bool, err error, now time.Time) {
	p := s.parts[f.part]
	if f.seq != p.fetchSeq {
		return // from before a seek
	}
	p.fetching = false
	var oor *storage.OffsetOutOfRangeError
	switch {
	case errors.As(err, &oor) && oor.Offset < oor.First:
		p.next = oor.First
		if s.opts.Guarantee != None {
			s.skipTo(p, oor.First)
		}
	case err != nil:
		// Try again at the next event; the loop backs off.
	default:
		if f.latest && len(msgs) > 0 && msgs[0].Offset > p.next {
			s.stats.Dropped += msgs[0].Offset - p.next
			p.next = msgs[0].Offset
		}
		if f.latest {
			p.behind = false
		}
		for i := range msgs {
			m := &msgs[i]
			if m.Offset != p.next {
				break
			}
			p.next++
			if i < len(ackedID) && ackedID[i] && !p.st.cursor.Acked(m.Offset) {
				s.forget(p, m.Offset)
				p.st.cursor.Ack(m.Offset)
				p.dirty = true
				s.stats.Skipped++
				continue
			}
			p.buf = append(p.buf, *m)
		}
	}
	s.step(now)
}

// skipTo counts every offset below first as acked: retention removed them.
func (s *machine) skipTo(p *partition, first uint64) {
	if p.st.cursor.Floor() >= first {
		return
	}
	for off := range p.st.attempts {
		if off < first {
			s.forget(p, off)
		}
	}
	p.st.cursor.Skip(first)
	p.dirty = true
}
