package wire

import (
	"encoding/binary"
	"errors"
	"testing"
)

var errBad = errors.New("bad")

// TestDecoder reads each kind of field, then checks that the first bad read
// sticks: later reads return zero and End reports the Decoder's error.
func TestDecoder(t *testing.T) {
	b := []byte{7}
	b = binary.BigEndian.AppendUint32(b, 1<<30)
	b = binary.BigEndian.AppendUint64(b, 1<<60)
	b = binary.AppendUvarint(b, 300)
	b = binary.AppendUvarint(b, 3)
	b = append(b, "abc"...)
	d := NewDecoder(b, errBad)
	if v := d.Byte(); v != 7 {
		t.Fatalf("Byte = %d", v)
	}
	if v := d.U32(); v != 1<<30 {
		t.Fatalf("U32 = %d", v)
	}
	if v := d.U64(); v != 1<<60 {
		t.Fatalf("U64 = %d", v)
	}
	if v := d.Uvarint(); v != 300 {
		t.Fatalf("Uvarint = %d", v)
	}
	if v := string(d.Bytes()); v != "abc" {
		t.Fatalf("Bytes = %q", v)
	}
	if err := d.End(); err != nil {
		t.Fatalf("End = %v", err)
	}

	for name, b := range map[string][]byte{
		"short U32":            {1, 2, 3},
		"bytes beyond the end": binary.AppendUvarint(nil, 5),
		"count beyond the end": binary.AppendUvarint(nil, 2),
		"left over":            {0, 0, 0, 0, 9},
	} {
		d := NewDecoder(b, errBad)
		switch name {
		case "short U32":
			d.U32()
		case "bytes beyond the end":
			d.Bytes()
		case "count beyond the end":
			d.Count()
		case "left over":
			d.U32()
		}
		if name != "left over" && (d.Err() == nil || d.U64() != 0 || d.Byte() != 0) {
			t.Fatalf("%s: Err %v, and a later read not zero", name, d.Err())
		}
		if err := d.End(); !errors.Is(err, errBad) {
			t.Fatalf("%s: End = %v, want the Decoder's error", name, err)
		}
	}
}
