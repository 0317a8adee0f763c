package consumer

import (
	"encoding/binary"
	"fmt"
	"maps"
	"slices"
	"time"
)

// cursorRecord is what a subscription stores per partition, through the
// partition's writer (storage.Write): its cursor, the epoch that fences
// deliveries made before a seek, and — when the guarantee needs attempts to
// survive a restart (EFFECTIVELY_ONCE, or any dead-lettering subscription)
// — the attempts of every message delivered and not yet acked.
type cursorRecord struct {
	epoch    uint32
	cursor   *Cursor
	attempts map[uint64]attempt // offset → attempts so far; offsets not acked
}

// attempt is how often a message was delivered and when it may go out
// again: the deadline of its outstanding delivery or the end of its nack
// backoff. A zero notBefore means at once.
type attempt struct {
	n         uint32
	notBefore time.Time
}

// backlog is how many messages below head the cursor has not acked.
func (s *cursorRecord) backlog(head uint64) uint64 {
	if head <= s.cursor.Floor() {
		return 0
	}
	return head - s.cursor.Floor() - uint64(s.cursor.Gaps())
}

func newCursorRecord(floor uint64) *cursorRecord {
	return &cursorRecord{cursor: NewCursor(floor), attempts: make(map[uint64]attempt)}
}

// stateVersion is the first byte of an encoded cursorRecord.
const stateVersion = 1

// appendBinary appends the state's encoding; attempts are written only if
// withAttempts:
//
//	ver u8 | epoch uvarint | cursor len uvarint | cursor (Cursor.AppendBinary) |
//	n uvarint | n × (offset step uvarint | attempts uvarint | not before uvarint)
//
// Offsets increase; each is written as its step from the previous one (from
// the floor for the first). Not before is in unix milliseconds, 0 for none.
func (s *cursorRecord) appendBinary(b []byte, withAttempts bool) []byte {
	b = append(b, stateVersion)
	b = binary.AppendUvarint(b, uint64(s.epoch))
	c, _ := s.cursor.AppendBinary(nil)
	b = binary.AppendUvarint(b, uint64(len(c)))
	b = append(b, c...)
	if !withAttempts {
		return binary.AppendUvarint(b, 0)
	}
	offs := slices.Sorted(maps.Keys(s.attempts))
	b = binary.AppendUvarint(b, uint64(len(offs)))
	prev := s.cursor.Floor()
	for _, off := range offs {
		a := s.attempts[off]
		b = binary.AppendUvarint(b, off-prev)
		b = binary.AppendUvarint(b, uint64(a.n))
		var ms uint64
		if !a.notBefore.IsZero() {
			ms = uint64(a.notBefore.UnixMilli())
		}
		b = binary.AppendUvarint(b, ms)
		prev = off
	}
	return b
}

// decodeCursorRecord decodes what appendBinary made.
func decodeCursorRecord(b []byte) (*cursorRecord, error) {
	if len(b) == 0 || b[0] != stateVersion {
		return nil, fmt.Errorf("partition state: version: %w", ErrCorrupt)
	}
	b = b[1:]
	next := func() (uint64, error) {
		v, n := binary.Uvarint(b)
		if n <= 0 {
			return 0, fmt.Errorf("partition state: truncated: %w", ErrCorrupt)
		}
		if n != len(binary.AppendUvarint(nil, v)) {
			return 0, fmt.Errorf("partition state: over-long varint: %w", ErrCorrupt)
		}
		b = b[n:]
		return v, nil
	}
	epoch, err := next()
	if err != nil {
		return nil, err
	}
	clen, err := next()
	if err != nil {
		return nil, err
	}
	if epoch > 1<<32-1 || clen > uint64(len(b)) {
		return nil, fmt.Errorf("partition state: epoch %d, cursor of %d bytes: %w", epoch, clen, ErrCorrupt)
	}
	s := &cursorRecord{epoch: uint32(epoch), cursor: NewCursor(0)}
	if err := s.cursor.UnmarshalBinary(b[:clen]); err != nil {
		return nil, err
	}
	b = b[clen:]
	n, err := next()
	if err != nil {
		return nil, err
	}
	if n > uint64(len(b))/3 { // every entry takes at least three bytes
		return nil, fmt.Errorf("partition state: %d attempts in %d bytes: %w", n, len(b), ErrCorrupt)
	}
	s.attempts = make(map[uint64]attempt, n)
	prev := s.cursor.Floor()
	for i := range n {
		step, err := next()
		if err != nil {
			return nil, err
		}
		an, err := next()
		if err != nil {
			return nil, err
		}
		ms, err := next()
		if err != nil {
			return nil, err
		}
		if (i > 0 && step == 0) || prev+step < prev || an == 0 || an > 1<<32-1 || ms > 1<<62 {
			return nil, fmt.Errorf("partition state: attempt entry %d: %w", i, ErrCorrupt)
		}
		prev += step
		a := attempt{n: uint32(an)}
		if ms != 0 {
			a.notBefore = time.UnixMilli(int64(ms)).UTC()
		}
		s.attempts[prev] = a
	}
	if len(b) != 0 {
		return nil, fmt.Errorf("partition state: %d trailing bytes: %w", len(b), ErrCorrupt)
	}
	return s, nil
}

// withAcks returns a copy of s with offs acked, for a write that acks them
// only if it succeeds (Commit, dead letters).
func (s *cursorRecord) withAcks(offs []uint64) *cursorRecord {
	c := &cursorRecord{epoch: s.epoch, cursor: s.cursor.Clone(), attempts: maps.Clone(s.attempts)}
	for _, off := range offs {
		c.cursor.Ack(off)
		delete(c.attempts, off)
	}
	return c
}
