package consumer

import (
	"encoding/binary"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/ferrymq/ferry/internal/echo"
	"github.com/ferrymq/ferry/storage"
)

// Guarantee is what a subscription promises about delivery (docs/design.md §2).
type Guarantee int

const (
	// None streams the live tail to whoever is connected: no cursor, no acks.
	None Guarantee = iota + 1
	// AtMostOnce advances the cursor durably before sending: never twice,
	// possibly lost.
	AtMostOnce
	// AtLeastOnce delivers every retained message until it is acked or
	// dead-lettered: never lost, possibly twice.
	AtLeastOnce
	// EffectivelyOnce is AtLeastOnce plus durable ack confirmations, fencing
	// tokens, acked-id dedup and atomic Commit.
	EffectivelyOnce
)

var guaranteeNames = map[Guarantee]string{
	None:            "none",
	AtMostOnce:      "at-most-once",
	AtLeastOnce:     "at-least-once",
	EffectivelyOnce: "effectively-once",
}

// String returns the guarantee's CLI name, such as "at-least-once".
func (g Guarantee) String() string { return enumName(guaranteeNames, g, "Guarantee") }

// ParseGuarantee parses a CLI name: none, at-most-once, at-least-once or
// effectively-once.
func ParseGuarantee(s string) (Guarantee, error) {
	if g, ok := parseEnum(guaranteeNames, s); ok {
		return g, nil
	}
	return 0, fmt.Errorf("guarantee %s: want none, at-most-once, at-least-once or effectively-once: %w", echo.Quote(s), ErrInvalidOptions)
}

// Type is how a subscription's messages spread over its consumers.
type Type int

const (
	// Shared gives any message to any consumer.
	Shared Type = iota + 1
	// KeyShared gives all messages of a key to one consumer at a time, in
	// order.
	KeyShared
	// Exclusive allows one consumer; a second attach is refused.
	Exclusive
	// Failover has one active consumer; the next takes over when it leaves.
	Failover
)

var typeNames = map[Type]string{
	Shared:    "shared",
	KeyShared: "key-shared",
	Exclusive: "exclusive",
	Failover:  "failover",
}

// String returns the type's CLI name, such as "key-shared".
func (t Type) String() string { return enumName(typeNames, t, "Type") }

// ParseType parses a CLI name: shared, key-shared, exclusive or failover.
func ParseType(s string) (Type, error) {
	if t, ok := parseEnum(typeNames, s); ok {
		return t, nil
	}
	return 0, fmt.Errorf("type %s: want shared, key-shared, exclusive or failover: %w", echo.Quote(s), ErrInvalidOptions)
}

// enumName is v's name in names, or Kind(n) for a value without one.
func enumName[E ~int](names map[E]string, v E, kind string) string {
	if s, ok := names[v]; ok {
		return s
	}
	return fmt.Sprintf("%s(%d)", kind, int(v))
}

// parseEnum finds the value named s in names.
func parseEnum[E ~int](names map[E]string, s string) (E, bool) {
	for v, name := range names {
		if name == s {
			return v, true
		}
	}
	return 0, false
}

// Options configures a subscription's delivery. Start from DefaultOptions.
type Options struct {
	// Guarantee is the delivery guarantee. Required.
	Guarantee Guarantee
	// Type is how messages spread over consumers. Default Shared.
	Type Type
	// AckTimeout is how long a delivery may stay unacked before it is due
	// again. Default 30s; MinAckTimeout to MaxAckTimeout (1s to 12h).
	AckTimeout time.Duration
	// BackoffMin is the delay before redelivering a message nacked once;
	// each further nack doubles it. Default 1s; MinBackoff to MaxBackoff
	// (10ms to 12h).
	BackoffMin time.Duration
	// BackoffMax caps the nack backoff. Default 60s; BackoffMin to
	// MaxBackoff.
	BackoffMax time.Duration
	// MaxDeliveries is how many attempts a message gets before it is
	// dead-lettered. 0: no limit. Needs DeadLetterTopic to be set, and
	// DeadLetterTopic needs it.
	MaxDeliveries uint32
	// DeadLetterTopic receives messages that ran out of attempts.
	DeadLetterTopic string
	// DedupHorizon is how long an EFFECTIVELY_ONCE subscription remembers
	// the ids it acked, skipping a later message with one of them. 0: the
	// topic's retention max age (for ever if the topic keeps messages for
	// ever); else 1s to MaxDedupHorizon (100 years). Only
	// EFFECTIVELY_ONCE subscriptions remember acked ids: for the others it
	// must be 0.
	DedupHorizon time.Duration
	// Start is where a new subscription starts. Default latest.
	Start StartPosition
}

// Ranges of the Options durations.
const (
	MinAckTimeout = time.Second
	MaxAckTimeout = 12 * time.Hour
	// MinBackoff keeps a nacked message from coming back in a busy loop.
	MinBackoff      = 10 * time.Millisecond
	MaxBackoff      = 12 * time.Hour
	MaxDedupHorizon = 100 * 365 * 24 * time.Hour
)

// DefaultOptions returns the defaults for guarantee g.
func DefaultOptions(g Guarantee) Options {
	return Options{
		Guarantee:  g,
		Type:       Shared,
		AckTimeout: 30 * time.Second,
		BackoffMin: time.Second,
		BackoffMax: 60 * time.Second,
		Start:      StartPosition{Kind: StartLatest},
	}
}

// Validate reports the first field that is not acceptable, naming it and
// its range.
func (o *Options) Validate() error {
	if err := o.validateStored(); err != nil {
		return err
	}
	switch {
	case o.BackoffMin < MinBackoff || o.BackoffMin > MaxBackoff:
		return fmt.Errorf("backoff min %v must be %v to %v: %w", o.BackoffMin, MinBackoff, MaxBackoff, ErrInvalidOptions)
	case o.BackoffMax > MaxBackoff:
		return fmt.Errorf("backoff max %v must be backoff min (%v) to %v: %w", o.BackoffMax, o.BackoffMin, MaxBackoff, ErrInvalidOptions)
	case o.DedupHorizon != 0 && o.Guarantee != EffectivelyOnce:
		return fmt.Errorf("dedup horizon %v: only an effectively-once subscription remembers acked ids; leave it 0 for %v: %w",
			o.DedupHorizon, o.Guarantee, ErrInvalidOptions)
	case o.DedupHorizon != 0 && (o.DedupHorizon < time.Second || o.DedupHorizon > MaxDedupHorizon):
		return fmt.Errorf("dedup horizon %v must be 0 (the topic's retention) or 1s to %v: %w", o.DedupHorizon, MaxDedupHorizon, ErrInvalidOptions)
	case o.DeadLetterTopic != "":
		if err := storage.ValidateTopicName(o.DeadLetterTopic); err != nil {
			return fmt.Errorf("dead-letter topic: %w: %w", ErrInvalidOptions, err)
		}
	}
	return nil
}

// validateStored checks what every stored subscription met: Validate's
// rules from before the ranges above, which a subscription created
// earlier may be outside of (it keeps working; an update must bring it
// inside).
func (o *Options) validateStored() error {
	switch {
	case o.Guarantee < None || o.Guarantee > EffectivelyOnce:
		return fmt.Errorf("guarantee is unspecified; choose none, at-most-once, at-least-once or effectively-once: %w", ErrInvalidOptions)
	case o.Type < Shared || o.Type > Failover:
		return fmt.Errorf("type is unspecified; choose shared, key-shared, exclusive or failover: %w", ErrInvalidOptions)
	case o.AckTimeout < MinAckTimeout || o.AckTimeout > MaxAckTimeout:
		return fmt.Errorf("ack timeout %v must be %v to %v: %w", o.AckTimeout, MinAckTimeout, MaxAckTimeout, ErrInvalidOptions)
	case o.BackoffMin <= 0:
		return fmt.Errorf("backoff min %v must be positive: %w", o.BackoffMin, ErrInvalidOptions)
	case o.BackoffMax < o.BackoffMin:
		return fmt.Errorf("backoff max %v is below backoff min %v: %w", o.BackoffMax, o.BackoffMin, ErrInvalidOptions)
	case o.MaxDeliveries > 0 && o.DeadLetterTopic == "":
		return fmt.Errorf("max deliveries %d needs a dead-letter topic: %w", o.MaxDeliveries, ErrInvalidOptions)
	case o.MaxDeliveries == 0 && o.DeadLetterTopic != "":
		return fmt.Errorf("dead-letter topic %s needs max deliveries above 0: %w", echo.Quote(o.DeadLetterTopic), ErrInvalidOptions)
	case o.Guarantee == None && o.MaxDeliveries > 0:
		return fmt.Errorf("a none subscription takes no acks and redelivers nothing: it cannot dead-letter: %w", ErrInvalidOptions)
	case o.DedupHorizon < 0:
		return fmt.Errorf("dedup horizon %v must not be negative: %w", o.DedupHorizon, ErrInvalidOptions)
	case o.Start.Kind < StartLatest || o.Start.Kind > StartTime:
		return fmt.Errorf("start position is unspecified; choose earliest, latest, offset:N or time:RFC3339: %w", ErrInvalidOptions)
	case o.Guarantee == None && o.Start.Kind != StartLatest:
		return fmt.Errorf("a none subscription streams the live tail: its start must be latest, not %v: %w", o.Start, ErrInvalidOptions)
	}
	return nil
}

// Backoff is how long to wait before redelivering a message that has been
// nacked nacks times (1 for the first nack): BackoffMin doubled each further
// time, at most BackoffMax.
func (o *Options) Backoff(nacks uint32) time.Duration {
	d := o.BackoffMin
	for i := uint32(1); i < nacks && d < o.BackoffMax; i++ {
		d *= 2
	}
	return min(d, o.BackoffMax)
}

// StartKind says where a new subscription starts.
type StartKind int

const (
	// StartLatest starts at the head: only messages published from now on.
	StartLatest StartKind = iota + 1
	// StartEarliest starts at the oldest retained message.
	StartEarliest
	// StartOffset starts at a given offset in every partition.
	StartOffset
	// StartTime starts at the first message published at or after a time.
	StartTime
)

// StartPosition is where a new subscription (or a seek) starts.
type StartPosition struct {
	Kind   StartKind
	Offset uint64    // StartOffset
	Time   time.Time // StartTime
}

// String returns the CLI form: latest, earliest, offset:N or time:RFC3339.
func (p StartPosition) String() string {
	switch p.Kind {
	case StartLatest:
		return "latest"
	case StartEarliest:
		return "earliest"
	case StartOffset:
		return "offset:" + strconv.FormatUint(p.Offset, 10)
	case StartTime:
		return "time:" + p.Time.UTC().Format(time.RFC3339Nano)
	}
	return fmt.Sprintf("StartPosition(%d)", int(p.Kind))
}

// ParseStartPosition parses the CLI form: earliest, latest, offset:N or
// time:RFC3339.
func ParseStartPosition(s string) (StartPosition, error) {
	switch {
	case s == "latest":
		return StartPosition{Kind: StartLatest}, nil
	case s == "earliest":
		return StartPosition{Kind: StartEarliest}, nil
	case strings.HasPrefix(s, "offset:"):
		n, err := strconv.ParseUint(strings.TrimPrefix(s, "offset:"), 10, 64)
		if err != nil {
			return StartPosition{}, fmt.Errorf("start %s: offset:N wants a whole number: %w", echo.Quote(s), ErrInvalidOptions)
		}
		return StartPosition{Kind: StartOffset, Offset: n}, nil
	case strings.HasPrefix(s, "time:"):
		t, err := time.Parse(time.RFC3339Nano, strings.TrimPrefix(s, "time:"))
		if err != nil {
			return StartPosition{}, fmt.Errorf("start %s: time: wants RFC 3339, like time:2026-11-24T18:00:00Z: %w", echo.Quote(s), ErrInvalidOptions)
		}
		return StartPosition{Kind: StartTime, Time: t.UTC()}, nil
	}
	return StartPosition{}, fmt.Errorf("start %s: want earliest, latest, offset:N or time:RFC3339: %w", echo.Quote(s), ErrInvalidOptions)
}

// optionsVersion is the first byte of encoded Options.
const optionsVersion = 1

// MarshalBinary encodes o for the subscription record:
//
//	ver u8 | guarantee u8 | type u8 | ack timeout i64 | backoff min i64 |
//	backoff max i64 | max deliveries u32 | dedup horizon i64 |
//	start kind u8 | start offset u64 | start time i64 | dead-letter topic (the rest)
//
// Durations and times are in nanoseconds, big-endian.
func (o *Options) MarshalBinary() ([]byte, error) {
	b := make([]byte, 0, 64+len(o.DeadLetterTopic))
	b = append(b, optionsVersion, byte(o.Guarantee), byte(o.Type))
	b = binary.BigEndian.AppendUint64(b, uint64(o.AckTimeout))
	b = binary.BigEndian.AppendUint64(b, uint64(o.BackoffMin))
	b = binary.BigEndian.AppendUint64(b, uint64(o.BackoffMax))
	b = binary.BigEndian.AppendUint32(b, o.MaxDeliveries)
	b = binary.BigEndian.AppendUint64(b, uint64(o.DedupHorizon))
	b = append(b, byte(o.Start.Kind))
	b = binary.BigEndian.AppendUint64(b, o.Start.Offset)
	var t int64
	if o.Start.Kind == StartTime {
		t = o.Start.Time.UnixNano()
	}
	b = binary.BigEndian.AppendUint64(b, uint64(t))
	return append(b, o.DeadLetterTopic...), nil
}

// optionsFixedLen is the length of encoded Options without the topic.
const optionsFixedLen = 3 + 8*3 + 4 + 8 + 1 + 8 + 8

// UnmarshalBinary decodes what MarshalBinary made and validates it.
func (o *Options) UnmarshalBinary(b []byte) error {
	if len(b) < optionsFixedLen || b[0] != optionsVersion {
		return fmt.Errorf("subscription options: %w", ErrCorrupt)
	}
	u64 := func(i int) uint64 { return binary.BigEndian.Uint64(b[i:]) }
	d := Options{
		Guarantee:     Guarantee(b[1]),
		Type:          Type(b[2]),
		AckTimeout:    time.Duration(u64(3)),
		BackoffMin:    time.Duration(u64(11)),
		BackoffMax:    time.Duration(u64(19)),
		MaxDeliveries: binary.BigEndian.Uint32(b[27:]),
		DedupHorizon:  time.Duration(u64(31)),
		Start:         StartPosition{Kind: StartKind(b[39]), Offset: u64(40)},
	}
	if d.Start.Kind == StartTime {
		d.Start.Time = time.Unix(0, int64(u64(48))).UTC()
	}
	d.DeadLetterTopic = string(b[optionsFixedLen:])
	if err := d.validateStored(); err != nil {
		return fmt.Errorf("subscription options: %w: %w", ErrCorrupt, err)
	}
	*o = d
	return nil
}
