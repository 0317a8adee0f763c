// Package wire reads ferry's binary records and entries — storage's
// records, Raft entries and snapshots, the metadata group's entries: one
// byte, big-endian integers, uvarints and uvarint-length-prefixed byte
// strings. Each format is laid out where it is written; this is only the
// reading.
package wire

import "encoding/binary"

// Decoder reads b from the front. The first short or malformed read sets
// its error — the one NewDecoder was given — and makes every later read
// return zero, so a decode reads every field and checks once, at End.
type Decoder struct {
	b   []byte
	bad error
	err error
}

// NewDecoder returns a Decoder of b that fails with bad.
func NewDecoder(b []byte, bad error) Decoder { return Decoder{b: b, bad: bad} }

// Err returns the error of the first bad read, or nil.
func (d *Decoder) Err() error { return d.err }

// Rest returns what is left, unread.
func (d *Decoder) Rest() []byte { return d.b }

// Fail marks the decode failed: what was read does not make sense.
func (d *Decoder) Fail() {
	if d.err == nil {
		d.err = d.bad
	}
	d.b = nil
}

func (d *Decoder) take(n uint64) []byte {
	if n > uint64(len(d.b)) {
		d.Fail()
		return nil
	}
	v := d.b[:n]
	d.b = d.b[n:]
	return v
}

// Byte reads one byte.
func (d *Decoder) Byte() byte {
	if v := d.take(1); v != nil {
		return v[0]
	}
	return 0
}

// U32 reads a big-endian uint32.
func (d *Decoder) U32() uint32 {
	if v := d.take(4); v != nil {
		return binary.BigEndian.Uint32(v)
	}
	return 0
}

// U64 reads a big-endian uint64.
func (d *Decoder) U64() uint64 {
	if v := d.take(8); v != nil {
		return binary.BigEndian.Uint64(v)
	}
	return 0
}

// Uvarint reads a uvarint.
func (d *Decoder) Uvarint() uint64 {
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.Fail()
		return 0
	}
	d.b = d.b[n:]
	return v
}

// Count reads a uvarint count of items that take at least a byte each: a
// count beyond the bytes left is malformed (and would make a caller
// allocate for nothing).
func (d *Decoder) Count() int {
	n := d.Uvarint()
	if n > uint64(len(d.b)) {
		d.Fail()
		return 0
	}
	return int(n)
}

// Bytes reads a uvarint-length-prefixed byte string. It aliases the
// decoded buffer.
func (d *Decoder) Bytes() []byte {
	n := d.Uvarint()
	if d.err != nil {
		return nil
	}
	return d.take(n)
}

// End fails the decode if bytes are left over, and returns its error.
func (d *Decoder) End() error {
	if d.err == nil && len(d.b) != 0 {
		d.Fail()
	}
	return d.err
}
