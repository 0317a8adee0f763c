package broker

import (
	"context"
	"errors"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"

	"github.com/ferrymq/ferry/internal/clock"
	"github.com/ferrymq/ferry/internal/echo"
	"github.com/ferrymq/ferry/internal/limits"
	ferryv1 "github.com/ferrymq/ferry/proto/ferry/v1"
	"github.com/ferrymq/ferry/storage"
)

// Rate limits and quotas per principal (Options.Limits, docs/security.md),
// applied by interceptors on the public port only: a call another node
// forwards was counted by the node its client called.
//
//   - Publish, each PublishStream request and the outputs of a Commit take
//     their messages and bytes from the principal's buckets before
//     anything is queued. Over a
//     limit, a Publish is refused; a PublishStream ends, once the requests
//     before the refused one are answered, with the refusal — the path of a
//     memory refusal: the SDK waits out the RetryInfo and sends the refused
//     request and those after it again, in order, with the same ids.
//   - PublishStream and Subscribe streams count against the principal's
//     open streams while they run.
//   - CreateSubscription of a subscription that does not exist counts
//     against the principal's subscriptions (limits.AddSubscription).
//   - Every call counts its connection against its principal, from the
//     principal's first call on it until it closes (connquota.go).
//   - A publish (Publish, a PublishStream request, a Commit's outputs) to
//     a topic holding Limits.TopicBytes or more is refused before the
//     principal's buckets are charged (topicFull).
//
// Every refusal is RESOURCE_EXHAUSTED with a RetryInfo (exhaustedf): for a
// rate, the time until the bucket holds the request; for a count, a fixed
// delay (limits.StreamRetry, limits.SubscriptionRetry,
// limits.ConnectionRetry); for a full topic, the retention interval (the
// soonest retention may delete some of it).
type quotas struct {
	lim        *limits.Limits
	store      *storage.Store
	clk        clock.Clock
	grace      time.Duration // how long a new subscription counts though the store does not show it yet
	topicRetry time.Duration // the RetryInfo of a full topic: the retention interval
	refused    *prometheus.CounterVec
}

// subscriptionGrace is, in a cluster, how long a subscription just
// created counts even if this node's store does not show it yet: the
// owner stored it, and this node applies it a moment later.
const subscriptionGrace = 30 * time.Second

func newQuotas(opts Options, st *storage.Store, reg prometheus.Registerer) (*quotas, error) {
	o := opts.Limits
	o.Clock = opts.Clock
	lim, err := limits.New(o)
	if err != nil {
		return nil, err
	}
	q := &quotas{lim: lim, store: st, clk: opts.Clock, topicRetry: opts.Storage.RetentionInterval,
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ferry_limits_refusals_total",
			Help: "Calls refused (RESOURCE_EXHAUSTED) for a limit, by limit: publish_messages, publish_bytes, streams, subscriptions, subscription_owners, connections, connection_principals, topic_bytes.",
		}, []string{"limit"}),
	}
	if opts.Cluster != nil {
		q.grace = subscriptionGrace
	}
	for _, k := range limits.Kinds {
		q.refused.WithLabelValues(string(k))
	}
	reg.MustRegister(q.refused, prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "ferry_limits_tracked_principals",
		Help: "Principals whose publish rates the broker remembers (at most its principal cap).",
	}, func() float64 { return float64(lim.Principals()) }))
	return q, nil
}

// interceptors are q's interceptors, none if no limit is set.
func (q *quotas) interceptors() []grpc.ServerOption {
	if !q.lim.Options().Enabled() {
		return nil
	}
	opts := []grpc.ServerOption{grpc.ChainUnaryInterceptor(q.unary), grpc.ChainStreamInterceptor(q.stream)}
	if q.lim.Options().Connections > 0 {
		opts = append(opts, grpc.StatsHandler(connQuota{q}))
	}
	return opts
}

func (q *quotas) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	principal := principalOf(ctx)
	if err := q.hold(ctx, info.FullMethod, principal); err != nil {
		return nil, err
	}
	switch r := req.(type) {
	case *ferryv1.PublishRequest:
		if err := q.publish(principal, r.GetTopic(), r.GetMessages()); err != nil {
			return nil, err
		}
	case *ferryv1.CommitRequest:
		// Its outputs are publishes: refused, the commit acks nothing
		// either.
		var outs []*ferryv1.PublishMessage
		for _, p := range r.GetPublishes() {
			if err := q.topicFull(principal, p.GetTopic()); err != nil {
				return nil, err
			}
			outs = append(outs, p.GetMessages()...)
		}
		if err := q.publish(principal, "", outs); err != nil {
			return nil, err
		}
	case *ferryv1.CreateSubscriptionRequest:
		return q.createSubscription(ctx, r, h)
	}
	return h(ctx, req)
}

func (q *quotas) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
	if !strings.HasPrefix(info.FullMethod, "/ferry.v1.") {
		return h(srv, ss) // health and reflection
	}
	principal := principalOf(ss.Context())
	if err := q.hold(ss.Context(), info.FullMethod, principal); err != nil {
		return err
	}
	closeStream, err := q.lim.OpenStream(principal)
	if err != nil {
		return q.refuse(principal, err)
	}
	defer closeStream()
	return h(srv, &limitedStream{ServerStream: ss, q: q, principal: principal})
}

// limitedStream takes each publish request's messages from the principal's
// buckets as it is received; over a limit, Recv fails with the refusal,
// which ends the stream once the requests before are answered.
type limitedStream struct {
	grpc.ServerStream
	q         *quotas
	principal string
}

func (s *limitedStream) RecvMsg(m any) error {
	if err := s.ServerStream.RecvMsg(m); err != nil {
		return err
	}
	if r, ok := m.(*ferryv1.PublishStreamRequest); ok {
		return s.q.publish(s.principal, r.GetTopic(), r.GetMessages())
	}
	return nil
}

// publish takes a batch to topic ("": checked already) from principal's
// buckets, or answers the refusal: the topic's first, so a refused batch
// costs its principal nothing.
func (q *quotas) publish(principal, topic string, msgs []*ferryv1.PublishMessage) error {
	if topic != "" {
		if err := q.topicFull(principal, topic); err != nil {
			return err
		}
	}
	var n int
	for _, m := range msgs {
		n += len(m.GetPayload()) + len(m.GetKey()) + len(m.GetId())
		for k, v := range m.GetHeaders() {
			n += len(k) + len(v)
		}
	}
	if err := q.lim.Publish(principal, len(msgs), n); err != nil {
		return q.refuse(principal, err)
	}
	return nil
}

// topicFull refuses a publish to topic if it holds Limits.TopicBytes or
// more: the record bytes of its partitions on this node's store, the
// count retention by bytes reads (storage.PartitionInfo.Bytes), as of each
// partition's last sync. A topic this node does not know passes, for the
// handler to answer.
func (q *quotas) topicFull(principal, topic string) error {
	if q.lim.Options().TopicBytes == 0 {
		return nil
	}
	parts, err := q.store.Partitions(topic)
	if err != nil {
		return nil
	}
	var stored uint64
	for _, p := range parts {
		stored += p.Bytes
	}
	if err := q.lim.TopicBytes(topic, stored, q.topicRetry); err != nil {
		return q.refuse(principal, err)
	}
	return nil
}

// createSubscription counts a new subscription against its principal's.
func (q *quotas) createSubscription(ctx context.Context, r *ferryv1.CreateSubscriptionRequest, h grpc.UnaryHandler) (any, error) {
	if q.lim.Options().Subscriptions == 0 {
		return h(ctx, r)
	}
	if _, err := q.store.Subscription(r.GetTopic(), r.GetName()); err == nil {
		// It exists: an identical create is a no-op and another config
		// is refused; neither adds a subscription.
		return h(ctx, r)
	}
	principal := principalOf(ctx)
	done, err := q.lim.AddSubscription(principal, q.live)
	if err != nil {
		return nil, q.refuse(principal, err)
	}
	resp, err := h(ctx, r)
	created, _ := resp.(*ferryv1.CreateSubscriptionResponse)
	sub := created.GetSubscription()
	done(limits.SubscriptionRef{Topic: sub.GetTopic(), Name: sub.GetName(), Created: sub.GetCreateTime().AsTime()}, err == nil && sub != nil)
	return resp, err
}

// live reports whether ref's subscription still exists: the same name,
// created at the same time.
func (q *quotas) live(ref limits.SubscriptionRef) bool {
	if q.grace > 0 && q.clk.Now().Sub(ref.Created) < q.grace {
		return true
	}
	s, err := q.store.Subscription(ref.Topic, ref.Name)
	return err == nil && s.CreateTime.Equal(ref.Created)
}

// refuse counts a refusal and makes it a status: RESOURCE_EXHAUSTED with
// the RetryInfo the limit computed.
func (q *quotas) refuse(principal string, err error) error {
	var e *limits.Exceeded
	if !errors.As(err, &e) {
		return toStatus(err)
	}
	q.refused.WithLabelValues(string(e.Kind)).Inc()
	who := echo.Quote(principal)
	var out error
	switch e.Kind {
	case limits.PublishMessages:
		out = exhaustedf(e.Retry, "%s is over its publish limit of %v messages/s (ferry serve --limit-publish-msgs); nothing of this batch was stored; retry in %v", who, e.Limit, e.Retry)
	case limits.PublishBytes:
		out = exhaustedf(e.Retry, "%s is over its publish limit of %v bytes/s (ferry serve --limit-publish-bytes); nothing of this batch was stored; retry in %v", who, e.Limit, e.Retry)
	case limits.Streams:
		out = exhaustedf(e.Retry, "%s has %v streams open, its limit (ferry serve --limit-streams); close one, or retry in %v", who, e.Limit, e.Retry)
	case limits.Subscriptions:
		out = exhaustedf(e.Retry, "%s has created %v subscriptions through this node, its limit (ferry serve --limit-subscriptions); delete one first", who, e.Limit)
	case limits.Connections:
		out = exhaustedf(e.Retry, "%s holds %v connections, its limit (ferry serve --limit-connections); this connection's calls are refused until one closes; retry in %v", who, e.Limit, e.Retry)
	case limits.ConnectionOwners:
		out = exhaustedf(e.Retry, "the broker counts the connections of at most %v principals (ferry serve --limit-principals), and they all hold some; retry in %v", e.Limit, e.Retry)
	case limits.TopicBytes:
		out = exhaustedf(e.Retry, "topic %s holds its quota of %s or more on disk (ferry serve --limit-topic-bytes); nothing of this batch was stored; reads, consumes and acks go on; publishes are taken again once retention or a delete brings it under; retry in %v",
			echo.Quote(e.Topic), storage.FormatBytes(uint64(e.Limit)), e.Retry)
	default:
		out = exhaustedf(e.Retry, "the broker counts the subscriptions of at most %v principals, and they all have some; retry in %v", e.Limit, e.Retry)
	}
	return toStatus(out)
}
