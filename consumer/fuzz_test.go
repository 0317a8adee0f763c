package consumer

import (
	"bytes"
	"testing"
	"time"
)

// FuzzDecodePartitionState: stored state never panics the decoder, and
// what it accepts encodes back to the same bytes.
func FuzzDecodePartitionState(f *testing.F) {
	st := newCursorRecord(7)
	st.epoch = 2
	st.cursor.Ack(9)
	st.attempts[8] = attempt{n: 3, notBefore: time.UnixMilli(1_800_000_000_000).UTC()}
	st.attempts[10] = attempt{n: 1}
	f.Add(st.appendBinary(nil, true))
	f.Add(st.appendBinary(nil, false))
	f.Add([]byte{stateVersion})
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := decodeCursorRecord(b)
		if err != nil {
			return
		}
		if again := s.appendBinary(nil, true); !bytes.Equal(again, b) {
			t.Fatalf("decode then encode changed %x to %x", b, again)
		}
	})
}

// FuzzParseDeliveryID: any string parses or is refused; what parses
// prints back the same.
func FuzzParseDeliveryID(f *testing.F) {
	for _, s := range []string{"0.41.2.0", "4294967295.18446744073709551615.1.7", "", "1.2.3", "01.2.3.4", "-1.2.3.4", "1.2.3.4.5"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		id, err := ParseDeliveryID(s)
		if err != nil {
			return
		}
		if id.String() != s {
			t.Fatalf("ParseDeliveryID(%q) = %v, prints %q", s, id, id.String())
		}
	})
}

// FuzzOptionsUnmarshal: a stored subscription config never panics the
// decoder, and what it accepts meets the stored rules and encodes back the
// same.
func FuzzOptionsUnmarshal(f *testing.F) {
	o := DefaultOptions(EffectivelyOnce)
	o.MaxDeliveries, o.DeadLetterTopic = 3, "dead"
	o.Start = StartPosition{Kind: StartTime, Time: time.Unix(1_800_000_000, 5).UTC()}
	b, _ := o.MarshalBinary()
	f.Add(b)
	f.Fuzz(func(t *testing.T, b []byte) {
		var o Options
		if err := o.UnmarshalBinary(b); err != nil {
			return
		}
		// A stored record is held to the rules every stored subscription
		// met (validateStored), not to today's ranges: one created before
		// them keeps loading.
		if err := o.validateStored(); err != nil {
			t.Fatalf("accepted invalid options %+v: %v", o, err)
		}
		again, _ := o.MarshalBinary()
		var o2 Options
		if err := o2.UnmarshalBinary(again); err != nil || o2 != o {
			t.Fatalf("round trip of %+v gave %+v, %v", o, o2, err)
		}
	})
}
