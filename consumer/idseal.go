package consumer

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"hash"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Delivery ids on the wire are sealed: the broker hands out
// "partition.offset.attempt.epoch.check", where check is an HMAC-SHA256 of
// the four numbers under a key of the subscription's own, cut to
// sealCheckBytes and base64url-encoded. A sealed id opens only on the
// subscription (and incarnation of it) that made it, so an id acked on
// another subscription, another topic, or made up (they used to look like
// "0.41.1.0") is refused instead of acking an unrelated message.
//
// The key is random, sealKeyBytes long, made when the subscription is
// created and stored in its record (so it travels with the record through
// a cluster's metadata group and verifies on whichever node owns the
// subscription). Records from before sealed ids have no key: their key is
// derived from the subscription's identity (topic, name, id, create time),
// which binds ids to the subscription but is not secret; the next update
// of the subscription gives it a random key. A NONE subscription keeps
// its key in memory.
const (
	sealKeyBytes   = 16
	sealCheckBytes = 8
)

// IDSeal seals and opens one subscription's delivery ids. It is safe for
// concurrent use.
type IDSeal struct {
	macs sync.Pool // of hash.Hash: HMAC-SHA256 under the subscription's id key
}

// newIDSeal binds ids to topic and subscription name under key: the MAC key
// is derived from key, topic and name, so the same key on another
// subscription seals differently.
func newIDSeal(key []byte, topic, name string) *IDSeal {
	m := hmac.New(sha256.New, key)
	m.Write(lenPrefixed(topic))
	m.Write(lenPrefixed(name))
	idKey := m.Sum(nil)
	return &IDSeal{macs: sync.Pool{New: func() any { return hmac.New(sha256.New, idKey) }}}
}

func lenPrefixed(s string) []byte {
	return append(binary.BigEndian.AppendUint32(nil, uint32(len(s))), s...)
}

// check is id's check value.
func (s *IDSeal) check(id DeliveryID) [sealCheckBytes]byte {
	var msg [20]byte
	binary.BigEndian.PutUint32(msg[0:], id.Partition)
	binary.BigEndian.PutUint64(msg[4:], id.Offset)
	binary.BigEndian.PutUint32(msg[12:], id.Attempt)
	binary.BigEndian.PutUint32(msg[16:], id.Epoch)
	m := s.macs.Get().(hash.Hash)
	m.Reset()
	m.Write(msg[:])
	var sum [sha256.Size]byte
	m.Sum(sum[:0])
	s.macs.Put(m)
	var c [sealCheckBytes]byte
	copy(c[:], sum[:])
	return c
}

// Seal is id's wire form, "partition.offset.attempt.epoch.check", as in
// "0.41.2.0.q3Zx0aB9kLw".
func (s *IDSeal) Seal(id DeliveryID) string {
	c := s.check(id)
	b := make([]byte, 0, sealedMaxLen)
	b = strconv.AppendUint(b, uint64(id.Partition), 10)
	b = append(b, '.')
	b = strconv.AppendUint(b, id.Offset, 10)
	b = append(b, '.')
	b = strconv.AppendUint(b, uint64(id.Attempt), 10)
	b = append(b, '.')
	b = strconv.AppendUint(b, uint64(id.Epoch), 10)
	b = append(b, '.')
	b = base64.RawURLEncoding.AppendEncode(b, c[:])
	return string(b)
}

// sealedMaxLen is the longest id Seal makes: four numbers at their widest,
// four dots and the check.
const sealedMaxLen = 10 + 20 + 10 + 10 + 4 + 11

// Open parses a wire id made by Seal and verifies its check value. It
// returns ErrMalformedDelivery for an id that is not of that form and
// ErrForeignDelivery for one whose check fails: sealed by another
// subscription or topic, or altered. The errors do not quote the id.
func (s *IDSeal) Open(raw string) (DeliveryID, error) {
	if len(raw) > sealedMaxLen {
		return DeliveryID{}, fmt.Errorf("delivery id of %d bytes, longer than any: %w", len(raw), ErrMalformedDelivery)
	}
	dot := strings.LastIndexByte(raw, '.')
	if dot < 0 {
		return DeliveryID{}, fmt.Errorf("want partition.offset.attempt.epoch.check: %w", ErrMalformedDelivery)
	}
	id, err := ParseDeliveryID(raw[:dot])
	if err != nil {
		return DeliveryID{}, fmt.Errorf("want partition.offset.attempt.epoch.check: %w", ErrMalformedDelivery)
	}
	var got [sealCheckBytes]byte
	enc := raw[dot+1:]
	if len(enc) != base64.RawURLEncoding.EncodedLen(sealCheckBytes) {
		return DeliveryID{}, fmt.Errorf("the check value is not %d base64url bytes: %w", sealCheckBytes, ErrMalformedDelivery)
	}
	if n, err := base64.RawURLEncoding.Strict().Decode(got[:], []byte(enc)); err != nil || n != sealCheckBytes {
		return DeliveryID{}, fmt.Errorf("the check value is not %d base64url bytes: %w", sealCheckBytes, ErrMalformedDelivery)
	}
	want := s.check(id)
	if !hmac.Equal(got[:], want[:]) {
		return DeliveryID{}, fmt.Errorf("delivery %s: %w", id, ErrForeignDelivery)
	}
	return id, nil
}

// newSealKey is a fresh random id key.
func newSealKey() []byte {
	k := make([]byte, sealKeyBytes)
	_, _ = rand.Read(k) // crypto/rand.Read does not fail (it crashes the program instead)
	return k
}

// legacySealKey is the id key of a subscription stored before sealed ids:
// derived from its identity, the same on every node.
func legacySealKey(topic, name string, sid uint32, created time.Time) []byte {
	h := sha256.New()
	h.Write([]byte("ferry delivery id key, legacy subscription\x00"))
	h.Write(lenPrefixed(topic))
	h.Write(lenPrefixed(name))
	h.Write(binary.BigEndian.AppendUint32(nil, sid))
	h.Write(binary.BigEndian.AppendUint64(nil, uint64(created.UnixNano())))
	return h.Sum(nil)[:sealKeyBytes]
}

// configVersion is the first byte of a subscription record's config since
// sealed ids; a record whose config starts with optionsVersion is from
// before (no key).
const configVersion = 2

// encodeConfig is a subscription record's config:
//
//	ver u8 (2) | id key [16] | options (Options.MarshalBinary)
func encodeConfig(o Options, key []byte) []byte {
	opts, _ := o.MarshalBinary()
	b := make([]byte, 0, 1+len(key)+len(opts))
	b = append(b, configVersion)
	b = append(b, key...)
	return append(b, opts...)
}

// decodeConfig decodes what encodeConfig made, or the bare options of a
// record from before sealed ids (key nil).
func decodeConfig(b []byte) (o Options, key []byte, err error) {
	if len(b) > 0 && b[0] == configVersion {
		if len(b) < 1+sealKeyBytes {
			return Options{}, nil, fmt.Errorf("subscription config: %w", ErrCorrupt)
		}
		key = b[1 : 1+sealKeyBytes : 1+sealKeyBytes]
		b = b[1+sealKeyBytes:]
	}
	if err := o.UnmarshalBinary(b); err != nil {
		return Options{}, nil, err
	}
	return o, key, nil
}
