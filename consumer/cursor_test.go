package consumer

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"testing"
)

// TestCursorMatchesModel acks and seeks at random and compares the cursor
// with a plain set of acked offsets, round-tripping its encoding each step.
func TestCursorMatchesModel(t *testing.T) {
	const seed = 42
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 1))
	for run := range 50 {
		base := rng.Uint64N(1 << 40)
		c := NewCursor(base)
		model := map[uint64]bool{} // acked offsets at or above base
		floor := base
		for step := range 300 {
			switch k := rng.IntN(20); {
			case k == 0:
				floor = base + rng.Uint64N(80)
				c.Seek(floor)
				model = map[uint64]bool{}
			default:
				off := floor - min(floor, 3) + rng.Uint64N(40) // mostly near the floor, a few below
				want := off >= floor && !model[off]
				if got := c.Ack(off); got != want {
					t.Fatalf("run %d step %d: Ack(%d) = %t, want %t", run, step, off, got, want)
				}
				if off >= floor {
					model[off] = true
				}
				for model[floor] {
					delete(model, floor)
					floor++
				}
			}
			if c.Floor() != floor || c.Gaps() != len(model) {
				t.Fatalf("run %d step %d: floor %d gaps %d, model floor %d gaps %d", run, step, c.Floor(), c.Gaps(), floor, len(model))
			}
			for off := floor - min(floor, 2); off < floor+45; off++ {
				if c.Acked(off) != (off < floor || model[off]) {
					t.Fatalf("run %d step %d: Acked(%d) = %t", run, step, off, c.Acked(off))
				}
			}
			enc, _ := c.AppendBinary(nil)
			var back Cursor
			if err := back.UnmarshalBinary(enc); err != nil {
				t.Fatalf("run %d step %d: decode: %v", run, step, err)
			}
			again, _ := back.AppendBinary(nil)
			if !bytes.Equal(enc, again) || back.Floor() != c.Floor() || back.Gaps() != c.Gaps() {
				t.Fatalf("run %d step %d: round trip changed the cursor", run, step)
			}
		}
	}
}

func TestCursorEncodingIsCompact(t *testing.T) {
	c := NewCursor(1_000_000)
	for _, off := range []uint64{1_000_002, 1_000_003, 1_000_010} {
		c.Ack(off)
	}
	enc, _ := c.AppendBinary(nil)
	if len(enc) > 8 {
		t.Fatalf("a cursor with three gaps encodes in %d bytes: %x", len(enc), enc)
	}
}

func FuzzCursorDecode(f *testing.F) {
	c := NewCursor(7)
	c.Ack(9)
	c.Ack(12)
	enc, _ := c.AppendBinary(nil)
	f.Add(enc)
	f.Add([]byte{})
	f.Add([]byte{cursorVersion, 0, 1, 0})                         // a gap of zero: on the floor
	f.Add([]byte{cursorVersion, 0, 0xff, 0xff, 0xff, 0xff, 0x0f}) // more gaps than bytes
	f.Add([]byte{cursorVersion, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 1, 2})
	f.Fuzz(func(t *testing.T, b []byte) {
		var c Cursor
		if err := c.UnmarshalBinary(b); err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("decode %x: %v, want ErrCorrupt", b, err)
			}
			return
		}
		// Only AppendBinary's own encodings are accepted: it gives back b.
		if again, _ := c.AppendBinary(nil); !bytes.Equal(again, b) {
			t.Fatalf("%x decodes to a cursor that encodes as %x", b, again)
		}
		if c.Acked(c.Floor()) {
			t.Fatalf("%x: the floor %d counts as acked", b, c.Floor())
		}
	})
}
