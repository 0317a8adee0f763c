package consumer

import (
	"encoding/binary"
	"fmt"
	"maps"
	"slices"
)

// Cursor is a subscription's position in one partition: every offset below
// the floor is acked (or dead-lettered, or skipped by a seek), and the
// offsets at or above it that were acked out of order — as SHARED consumers
// ack — are kept individually until the floor catches up with them.
// A Cursor is not safe for concurrent use; its owner serializes access.
type Cursor struct {
	floor uint64
	above map[uint64]struct{} // acked offsets > floor; never holds floor itself
}

// NewCursor returns a cursor whose floor is floor: offsets below it count as
// acked.
func NewCursor(floor uint64) *Cursor {
	return &Cursor{floor: floor, above: make(map[uint64]struct{})}
}

// Floor is the first offset not yet acked.
func (c *Cursor) Floor() uint64 { return c.floor }

// Acked reports whether off is acked.
func (c *Cursor) Acked(off uint64) bool {
	if off < c.floor {
		return true
	}
	_, ok := c.above[off]
	return ok
}

// Ack marks off acked and moves the floor past every acked offset in a row.
// It reports whether off was not acked before.
func (c *Cursor) Ack(off uint64) bool {
	if c.Acked(off) {
		return false
	}
	if off != c.floor {
		c.above[off] = struct{}{}
		return true
	}
	c.floor++
	for {
		if _, ok := c.above[c.floor]; !ok {
			return true
		}
		delete(c.above, c.floor)
		c.floor++
	}
}

// Seek moves the floor to off, forgetting individual acks: offsets below off
// count as acked, those from off on as not acked.
func (c *Cursor) Seek(off uint64) {
	c.floor = off
	clear(c.above)
}

// Skip counts every offset below off as acked, keeping the acks above it.
func (c *Cursor) Skip(off uint64) {
	if off <= c.floor {
		return
	}
	for a := range c.above {
		if a < off {
			delete(c.above, a)
		}
	}
	c.floor = off
	for {
		if _, ok := c.above[c.floor]; !ok {
			return
		}
		delete(c.above, c.floor)
		c.floor++
	}
}

// Clone returns a copy of c.
func (c *Cursor) Clone() *Cursor {
	return &Cursor{floor: c.floor, above: maps.Clone(c.above)}
}

// Gaps is how many offsets above the floor are acked out of order.
func (c *Cursor) Gaps() int { return len(c.above) }

// cursorVersion is the first byte of an encoded cursor.
const cursorVersion = 1

// AppendBinary appends the cursor's encoding to b:
//
//	ver u8 | floor uvarint | n uvarint | n × (gap uvarint)
//
// The acked offsets above the floor are written in increasing order, each
// as its distance from the previous one (from the floor for the first), so
// a cursor with a few gaps encodes in a few bytes.
func (c *Cursor) AppendBinary(b []byte) ([]byte, error) {
	b = append(b, cursorVersion)
	b = binary.AppendUvarint(b, c.floor)
	offs := make([]uint64, 0, len(c.above))
	for off := range c.above {
		offs = append(offs, off)
	}
	slices.Sort(offs)
	b = binary.AppendUvarint(b, uint64(len(offs)))
	prev := c.floor
	for _, off := range offs {
		b = binary.AppendUvarint(b, off-prev)
		prev = off
	}
	return b, nil
}

// UnmarshalBinary decodes an encoding made by AppendBinary into c. It
// refuses bytes that AppendBinary could not have made.
func (c *Cursor) UnmarshalBinary(b []byte) error {
	if len(b) == 0 || b[0] != cursorVersion {
		return fmt.Errorf("cursor: version: %w", ErrCorrupt)
	}
	b = b[1:]
	next := func() (uint64, error) {
		v, n := binary.Uvarint(b)
		if n <= 0 {
			return 0, fmt.Errorf("cursor: truncated: %w", ErrCorrupt)
		}
		// Uvarint also takes over-long forms (0x91 0x00 for 17); one value
		// has one encoding here.
		if n != len(binary.AppendUvarint(nil, v)) {
			return 0, fmt.Errorf("cursor: over-long varint: %w", ErrCorrupt)
		}
		b = b[n:]
		return v, nil
	}
	floor, err := next()
	if err != nil {
		return err
	}
	n, err := next()
	if err != nil {
		return err
	}
	if n > uint64(len(b)) { // every gap takes at least a byte
		return fmt.Errorf("cursor: %d gaps in %d bytes: %w", n, len(b), ErrCorrupt)
	}
	above := make(map[uint64]struct{}, n)
	prev := floor
	for range n {
		d, err := next()
		if err != nil {
			return err
		}
		// Offsets strictly increase and lie above the floor: a zero step
		// would put an offset on the floor or repeat one.
		if d == 0 || prev+d < prev {
			return fmt.Errorf("cursor: gap %d after %d: %w", d, prev, ErrCorrupt)
		}
		prev += d
		above[prev] = struct{}{}
	}
	if len(b) != 0 {
		return fmt.Errorf("cursor: %d trailing bytes: %w", len(b), ErrCorrupt)
	}
	c.floor, c.above = floor, above
	return nil
}
