package client

import (
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"google.golang.org/protobuf/types/known/timestamppb"

	ferryv1 "github.com/ferrymq/ferry/proto/ferry/v1"
)

// Guarantee is a subscription's delivery guarantee (docs/design.md).
type Guarantee ferryv1.DeliveryGuarantee

// The guarantees.
const (
	None            = Guarantee(ferryv1.DeliveryGuarantee_DELIVERY_GUARANTEE_NONE)
	AtMostOnce      = Guarantee(ferryv1.DeliveryGuarantee_DELIVERY_GUARANTEE_AT_MOST_ONCE)
	AtLeastOnce     = Guarantee(ferryv1.DeliveryGuarantee_DELIVERY_GUARANTEE_AT_LEAST_ONCE)
	EffectivelyOnce = Guarantee(ferryv1.DeliveryGuarantee_DELIVERY_GUARANTEE_EFFECTIVELY_ONCE)
)

var guaranteeNames = map[Guarantee]string{
	None:            "none",
	AtMostOnce:      "at-most-once",
	AtLeastOnce:     "at-least-once",
	EffectivelyOnce: "effectively-once",
}

// String returns the guarantee's CLI name, such as "at-least-once", or
// Guarantee(n) for a value without one.
func (g Guarantee) String() string { return enumName(guaranteeNames, g, "Guarantee") }

// ParseGuarantee parses a CLI name: none, at-most-once, at-least-once or
// effectively-once.
func ParseGuarantee(s string) (Guarantee, error) {
	if g, ok := parseEnum(guaranteeNames, s); ok {
		return g, nil
	}
	return 0, fmt.Errorf("guarantee %s: want none, at-most-once, at-least-once or effectively-once", quote(s))
}

// SubscriptionType is how a subscription's messages spread over consumers.
type SubscriptionType ferryv1.SubscriptionType

// The subscription types.
const (
	Shared    = SubscriptionType(ferryv1.SubscriptionType_SUBSCRIPTION_TYPE_SHARED)
	KeyShared = SubscriptionType(ferryv1.SubscriptionType_SUBSCRIPTION_TYPE_KEY_SHARED)
	Exclusive = SubscriptionType(ferryv1.SubscriptionType_SUBSCRIPTION_TYPE_EXCLUSIVE)
	Failover  = SubscriptionType(ferryv1.SubscriptionType_SUBSCRIPTION_TYPE_FAILOVER)
)

var typeNames = map[SubscriptionType]string{
	Shared:    "shared",
	KeyShared: "key-shared",
	Exclusive: "exclusive",
	Failover:  "failover",
}

// String returns the type's CLI name, such as "key-shared", or Type(n) for
// a value without one.
func (t SubscriptionType) String() string { return enumName(typeNames, t, "Type") }

// ParseSubscriptionType parses a CLI name: shared, key-shared, exclusive
// or failover.
func ParseSubscriptionType(s string) (SubscriptionType, error) {
	if t, ok := parseEnum(typeNames, s); ok {
		return t, nil
	}
	return 0, fmt.Errorf("type %s: want shared, key-shared, exclusive or failover", quote(s))
}

// enumName is v's name in names, or kind(n) for a value without one.
func enumName[E ~int32](names map[E]string, v E, kind string) string {
	if s, ok := names[v]; ok {
		return s
	}
	return fmt.Sprintf("%s(%d)", kind, int(v))
}

// parseEnum finds the value named s in names.
func parseEnum[E ~int32](names map[E]string, s string) (E, bool) {
	for v, name := range names {
		if name == s {
			return v, true
		}
	}
	return 0, false
}

// Position is where a subscription starts or seeks to: Earliest, Latest,
// AtOffset or AtTime.
type Position struct{ p *ferryv1.Position }

// Earliest is the oldest retained message of each partition.
func Earliest() Position {
	return Position{&ferryv1.Position{Kind: ferryv1.PositionKind_POSITION_KIND_EARLIEST}}
}

// Latest is the head of each partition: what is published from now on.
func Latest() Position {
	return Position{&ferryv1.Position{Kind: ferryv1.PositionKind_POSITION_KIND_LATEST}}
}

// AtOffset is offset off in every partition.
func AtOffset(off uint64) Position {
	return Position{&ferryv1.Position{Kind: ferryv1.PositionKind_POSITION_KIND_OFFSET, Offset: off}}
}

// AtTime is the first message of each partition published at or after t.
func AtTime(t time.Time) Position {
	return Position{&ferryv1.Position{Kind: ferryv1.PositionKind_POSITION_KIND_TIME, Time: timestamppb.New(t)}}
}

// String returns the CLI form: earliest, latest, offset:N or time:RFC3339
// (UTC). The zero Position, which a subscription takes as latest, is
// "latest".
func (p Position) String() string {
	switch p.p.GetKind() {
	case ferryv1.PositionKind_POSITION_KIND_EARLIEST:
		return "earliest"
	case ferryv1.PositionKind_POSITION_KIND_OFFSET:
		return "offset:" + strconv.FormatUint(p.p.GetOffset(), 10)
	case ferryv1.PositionKind_POSITION_KIND_TIME:
		return "time:" + p.p.GetTime().AsTime().UTC().Format(time.RFC3339Nano)
	}
	return "latest"
}

// ParsePosition parses the CLI form: earliest, latest, offset:N or
// time:RFC3339.
func ParsePosition(s string) (Position, error) {
	switch {
	case s == "latest":
		return Latest(), nil
	case s == "earliest":
		return Earliest(), nil
	case strings.HasPrefix(s, "offset:"):
		n, err := strconv.ParseUint(strings.TrimPrefix(s, "offset:"), 10, 64)
		if err != nil {
			return Position{}, fmt.Errorf("start %s: offset:N wants a whole number", quote(s))
		}
		return AtOffset(n), nil
	case strings.HasPrefix(s, "time:"):
		t, err := time.Parse(time.RFC3339Nano, strings.TrimPrefix(s, "time:"))
		if err != nil {
			return Position{}, fmt.Errorf("start %s: time: wants RFC 3339, like time:2026-11-24T18:00:00Z", quote(s))
		}
		return AtTime(t.UTC()), nil
	}
	return Position{}, fmt.Errorf("start %s: want earliest, latest, offset:N or time:RFC3339", quote(s))
}

// maxQuoted is how much of a name a parse error repeats.
const maxQuoted = 48

// quote is s quoted, its first maxQuoted bytes only (cut at a rune
// boundary, its length said).
func quote(s string) string {
	if len(s) <= maxQuoted {
		return strconv.Quote(s)
	}
	n := maxQuoted
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return fmt.Sprintf("%s (%d bytes)", strconv.Quote(s[:n]+"…"), len(s))
}
