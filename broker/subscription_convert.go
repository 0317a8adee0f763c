package broker

import (
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/ferrymq/ferry/consumer"
	ferryv1 "github.com/ferrymq/ferry/proto/ferry/v1"
)

// The proto enums and the consumer package's number their values alike
// (UNSPECIFIED = 0); the conversions only check the range.

func subConfigFromProto(c *ferryv1.SubscriptionConfig) (consumer.Options, error) {
	if c == nil {
		return consumer.Options{}, invalidf("config is required: set guarantee and type")
	}
	o := consumer.DefaultOptions(consumer.Guarantee(c.GetGuarantee()))
	o.Type = consumer.Type(c.GetType())
	if c.GetStart() != nil && c.GetStart().GetKind() != ferryv1.PositionKind_POSITION_KIND_UNSPECIFIED {
		pos, err := positionFromProto(c.GetStart())
		if err != nil {
			return o, err
		}
		o.Start = pos
	}
	for _, f := range []struct {
		name string
		d    *durationpb.Duration
		to   *time.Duration
	}{
		{"ack_timeout", c.GetAckTimeout(), &o.AckTimeout},
		{"backoff_min", c.GetBackoffMin(), &o.BackoffMin},
		{"backoff_max", c.GetBackoffMax(), &o.BackoffMax},
		{"dedup_horizon", c.GetDedupHorizon(), &o.DedupHorizon},
	} {
		if f.d == nil {
			continue
		}
		d, err := durationFromProto(f.name, f.d)
		if err != nil {
			return o, err
		}
		*f.to = d
	}
	o.MaxDeliveries = c.GetMaxDeliveries()
	o.DeadLetterTopic = c.GetDeadLetterTopic()
	return o, o.Validate()
}

func positionFromProto(p *ferryv1.Position) (consumer.StartPosition, error) {
	switch p.GetKind() {
	case ferryv1.PositionKind_POSITION_KIND_EARLIEST:
		return consumer.StartPosition{Kind: consumer.StartEarliest}, nil
	case ferryv1.PositionKind_POSITION_KIND_LATEST:
		return consumer.StartPosition{Kind: consumer.StartLatest}, nil
	case ferryv1.PositionKind_POSITION_KIND_OFFSET:
		return consumer.StartPosition{Kind: consumer.StartOffset, Offset: p.GetOffset()}, nil
	case ferryv1.PositionKind_POSITION_KIND_TIME:
		if err := p.GetTime().CheckValid(); err != nil {
			return consumer.StartPosition{}, invalidf("position time: %s", err.Error())
		}
		return consumer.StartPosition{Kind: consumer.StartTime, Time: p.GetTime().AsTime()}, nil
	}
	return consumer.StartPosition{}, invalidf("position kind %v: use earliest, latest, offset or time", p.GetKind())
}

// PositionToProto is the wire form of a start or seek position.
func PositionToProto(p consumer.StartPosition) *ferryv1.Position {
	switch p.Kind {
	case consumer.StartEarliest:
		return &ferryv1.Position{Kind: ferryv1.PositionKind_POSITION_KIND_EARLIEST}
	case consumer.StartOffset:
		return &ferryv1.Position{Kind: ferryv1.PositionKind_POSITION_KIND_OFFSET, Offset: p.Offset}
	case consumer.StartTime:
		return &ferryv1.Position{Kind: ferryv1.PositionKind_POSITION_KIND_TIME, Time: timestamppb.New(p.Time)}
	}
	return &ferryv1.Position{Kind: ferryv1.PositionKind_POSITION_KIND_LATEST}
}

func subscriptionToProto(info consumer.Info) *ferryv1.Subscription {
	o := info.Options
	c := &ferryv1.SubscriptionConfig{
		Guarantee:       ferryv1.DeliveryGuarantee(o.Guarantee),
		Type:            ferryv1.SubscriptionType(o.Type),
		Start:           PositionToProto(o.Start),
		AckTimeout:      durationpb.New(o.AckTimeout),
		BackoffMin:      durationpb.New(o.BackoffMin),
		BackoffMax:      durationpb.New(o.BackoffMax),
		MaxDeliveries:   o.MaxDeliveries,
		DeadLetterTopic: o.DeadLetterTopic,
	}
	if o.DedupHorizon > 0 {
		c.DedupHorizon = durationpb.New(o.DedupHorizon)
	}
	return &ferryv1.Subscription{Topic: info.Topic, Name: info.Name, Config: c, CreateTime: timestamppb.New(info.CreateTime)}
}

func statsToProto(st consumer.Stats, now time.Time) *ferryv1.SubscriptionStats {
	ps := &ferryv1.SubscriptionStats{
		Backlog:      st.Backlog,
		InFlight:     uint32(st.Inflight),
		Consumers:    uint32(st.Consumers),
		Delivered:    st.Delivered,
		Redelivered:  st.Redelivered,
		Acked:        st.Acked,
		Nacked:       st.Nacked,
		DeadLettered: st.DeadLettered,
		StaleAcks:    st.StaleAcks,
		Skipped:      st.Skipped,
	}
	if !st.OldestUnacked.IsZero() {
		ps.OldestUnackedAge = durationpb.New(max(now.Sub(st.OldestUnacked), 0))
	}
	return ps
}
