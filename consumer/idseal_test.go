package consumer

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/ferrymq/ferry/storage"
)

func TestIDSealOpensOnlyItsOwn(t *testing.T) {
	key := newSealKey()
	seal := newIDSeal(key, "orders", "billing")
	id := DeliveryID{Partition: 3, Offset: 41, Attempt: 2, Epoch: 1}
	raw := seal.Seal(id)
	if len(raw) > sealedMaxLen || !strings.HasPrefix(raw, "3.41.2.1.") {
		t.Fatalf("Seal = %q", raw)
	}
	if got, err := seal.Open(raw); err != nil || got != id {
		t.Fatalf("Open(%q) = %v, %v; want %v", raw, got, err, id)
	}
	widest := DeliveryID{Partition: ^uint32(0), Offset: ^uint64(0), Attempt: ^uint32(0), Epoch: ^uint32(0)}
	if w := seal.Seal(widest); len(w) != sealedMaxLen {
		t.Fatalf("the widest id is %d bytes, sealedMaxLen %d", len(w), sealedMaxLen)
	}
	foreign := map[string]*IDSeal{
		"another subscription":    newIDSeal(key, "orders", "shipping"),
		"another topic":           newIDSeal(key, "refunds", "billing"),
		"another key (recreated)": newIDSeal(newSealKey(), "orders", "billing"),
	}
	for name, other := range foreign {
		if _, err := other.Open(raw); !errors.Is(err, ErrForeignDelivery) {
			t.Errorf("%s: Open = %v, want ErrForeignDelivery", name, err)
		}
	}
	// Every field altered, and the check itself: refused.
	tampered := []string{
		seal.Seal(id)[:len(raw)-11] + strings.Repeat("A", 11),
		strings.Replace(raw, "3.41.2.1.", "3.42.2.1.", 1),
		strings.Replace(raw, "3.41.2.1.", "2.41.2.1.", 1),
		strings.Replace(raw, "3.41.2.1.", "3.41.3.1.", 1),
		strings.Replace(raw, "3.41.2.1.", "3.41.2.0.", 1),
	}
	for _, s := range tampered {
		if _, err := seal.Open(s); !errors.Is(err, ErrForeignDelivery) {
			t.Errorf("Open(%q) = %v, want ErrForeignDelivery", s, err)
		}
	}
	malformed := []string{"", "3.41.2.1", "3.41.2.1.", "x.41.2.1." + raw[len(raw)-11:], raw + "A",
		raw[:len(raw)-1], "3.41.2.1.!!!!!!!!!!!", strings.Repeat("9", 1<<20)}
	for _, s := range malformed {
		_, err := seal.Open(s)
		if !errors.Is(err, ErrMalformedDelivery) {
			t.Errorf("Open(%.40q) = %v, want ErrMalformedDelivery", s, err)
		}
		if err != nil && len(err.Error()) > 200 {
			t.Errorf("Open's error is %d bytes", len(err.Error()))
		}
	}
}

// A subscription stored before sealed ids (its config bare options) loads
// with a key derived from its identity; an update gives it a random key,
// kept by later updates.
func TestLegacySubscriptionGetsAKey(t *testing.T) {
	h := newHarness(t)
	h.createTopic("t", storage.TopicConfig{Partitions: 1})
	o := DefaultOptions(AtLeastOnce)
	bare, _ := o.MarshalBinary()
	ctx := context.Background()
	sub, err := h.st.CreateSubscription(ctx, "t", "old", bare, [][]byte{newCursorRecord(0).appendBinary(nil, false)})
	if err != nil {
		t.Fatal(err)
	}
	e := h.engine()
	seal, err := e.Seal("t", "old")
	if err != nil {
		t.Fatal(err)
	}
	id := DeliveryID{Offset: 7, Attempt: 1}
	if _, err := newIDSeal(legacySealKey("t", "old", sub.ID, sub.CreateTime), "t", "old").Open(seal.Seal(id)); err != nil {
		t.Fatalf("a legacy subscription's ids do not open under its derived key: %v", err)
	}
	if _, err := e.UpdateSubscription(ctx, "t", "old", func(o *Options) { o.AckTimeout = time.Minute }); err != nil {
		t.Fatal(err)
	}
	stored, _ := h.st.Subscription("t", "old")
	_, key, err := decodeConfig(stored.Config)
	if err != nil || len(key) != sealKeyBytes {
		t.Fatalf("after an update: key %x, %v", key, err)
	}
	if _, err := e.UpdateSubscription(ctx, "t", "old", func(o *Options) { o.AckTimeout = 2 * time.Minute }); err != nil {
		t.Fatal(err)
	}
	again, _ := h.st.Subscription("t", "old")
	if _, key2, _ := decodeConfig(again.Config); !bytes.Equal(key, key2) {
		t.Fatalf("a second update changed the key: %x, then %x", key, key2)
	}
	seal2, err := e.Seal("t", "old")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := seal2.Open(seal.Seal(id)); !errors.Is(err, ErrForeignDelivery) {
		t.Fatalf("an id under the derived key after the update: %v, want ErrForeignDelivery", err)
	}
}

// FuzzIDSealOpen: any string opens or is refused, never panics; what
// opens seals back to itself.
func FuzzIDSealOpen(f *testing.F) {
	seal := newIDSeal(bytes.Repeat([]byte{7}, sealKeyBytes), "t", "s")
	f.Add(seal.Seal(DeliveryID{Partition: 1, Offset: 2, Attempt: 3, Epoch: 4}))
	f.Add("0.0.1.0")
	f.Add("0.0.1.0.AAAAAAAAAAA")
	f.Fuzz(func(t *testing.T, s string) {
		id, err := seal.Open(s)
		if err != nil {
			if !errors.Is(err, ErrMalformedDelivery) && !errors.Is(err, ErrForeignDelivery) {
				t.Fatalf("Open(%q): %v", s, err)
			}
			return
		}
		if again := seal.Seal(id); again != s {
			t.Fatalf("Open(%q) = %v, seals as %q", s, id, again)
		}
	})
}

// go test -run '^$' -bench IDSeal -benchmem ./consumer
func BenchmarkIDSeal(b *testing.B) {
	seal := newIDSeal(newSealKey(), "orders", "billing")
	id := DeliveryID{Partition: 3, Offset: 123456789, Attempt: 1}
	raw := seal.Seal(id)
	b.Run("seal", func(b *testing.B) {
		for b.Loop() {
			seal.Seal(id)
		}
	})
	b.Run("open", func(b *testing.B) {
		for b.Loop() {
			if _, err := seal.Open(raw); err != nil {
				b.Fatal(err)
			}
		}
	})
}
