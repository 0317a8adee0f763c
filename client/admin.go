package client

import (
	"context"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	ferryv1 "github.com/ferrymq/ferry/proto/ferry/v1"
)

// TopicConfig is a topic's config; zero fields take the broker's defaults.
// A Topic read back from the broker carries the effective values, so a
// zero there means "no limit" where a field says so.
type TopicConfig struct {
	// Partitions is the number of partitions, 1 to 1024. Default (0) 1.
	// Fixed at creation: UpdateTopic cannot change it.
	Partitions uint32
	// RetentionMaxAge deletes messages older than this, at most 100 years.
	// Default (0): no age limit.
	RetentionMaxAge time.Duration
	// RetentionMaxBytes deletes a partition's oldest messages while it
	// holds more than this many bytes of messages (per partition, in
	// bytes). Default (0): no byte limit.
	RetentionMaxBytes uint64
	// RetentionMaxMessages deletes a partition's oldest messages while it
	// holds more than this many (per partition, a count). Default (0): no
	// count limit.
	RetentionMaxMessages uint64
	// DedupWindow is how long a published message id is remembered per
	// partition: a repeat within it is answered as a duplicate and not
	// stored again. At most 7 days. Default (0) 2 minutes.
	DedupWindow time.Duration
	// MaxMessageBytes is the largest payload accepted, in bytes, at most
	// 4 MiB. Default (0) 1 MiB.
	MaxMessageBytes uint32
	// ReplicationFactor is the copies of each partition in a cluster; 0:
	// one per node (this version keeps one on every node).
	ReplicationFactor uint32
}

// Topic is a topic as stored, with its partitions' offsets and the
// answering broker's disk when read with GetTopic.
type Topic struct {
	Name       string
	Config     TopicConfig
	CreateTime time.Time
	Partitions []PartitionStats
	// Storage is the answering broker's disk (GetTopic only; else nil).
	Storage *StorageStatus
}

// StorageStatus is a broker's data disk and what it refuses because of
// it (ferry serve --disk-reserve).
type StorageStatus struct {
	// DiskFreeBytes is the bytes free on the data directory's filesystem,
	// as last read (at most a second ago); DiskCapacityBytes its size.
	DiskFreeBytes, DiskCapacityBytes uint64
	// DiskReserveBytes is the disk reserve, in bytes: below it, publishes
	// are refused.
	DiskReserveBytes uint64
	// PublishingRefused: publishes, Commit's outputs and dead letters are
	// refused (RESOURCE_EXHAUSTED): free space is below the reserve, or
	// ReadOnly.
	PublishingRefused bool
	// ReadOnly: every write but topic and subscription deletes and
	// retention is refused: free space is below half the reserve, or a
	// disk error made the broker read-only.
	ReadOnly bool
	// Detail is the state in words, with the cause of ReadOnly if any.
	Detail string
}

// PartitionStats is one partition's offsets and size.
type PartitionStats struct {
	// Partition is the partition's number, from 0.
	Partition uint32
	// FirstOffset is the offset of the oldest retained message; equal to
	// HeadOffset when the partition is empty.
	FirstOffset uint64
	// HeadOffset is the offset the next published message will get.
	HeadOffset uint64
	// Messages is how many messages are retained: HeadOffset - FirstOffset.
	Messages uint64
	// Bytes is the encoded size of the retained messages, in bytes.
	Bytes uint64
}

func (tc TopicConfig) proto() *ferryv1.TopicConfig {
	return &ferryv1.TopicConfig{
		Partitions:           tc.Partitions,
		RetentionMaxAge:      durationpb.New(tc.RetentionMaxAge),
		RetentionMaxBytes:    tc.RetentionMaxBytes,
		RetentionMaxMessages: tc.RetentionMaxMessages,
		DedupWindow:          durationpb.New(tc.DedupWindow),
		MaxMessageBytes:      tc.MaxMessageBytes,
		ReplicationFactor:    tc.ReplicationFactor,
	}
}

func topicFromProto(t *ferryv1.Topic, parts []*ferryv1.PartitionStats) Topic {
	c := t.GetConfig()
	out := Topic{Name: t.GetName(), CreateTime: t.GetCreateTime().AsTime(), Config: TopicConfig{
		Partitions:           c.GetPartitions(),
		RetentionMaxAge:      c.GetRetentionMaxAge().AsDuration(),
		RetentionMaxBytes:    c.GetRetentionMaxBytes(),
		RetentionMaxMessages: c.GetRetentionMaxMessages(),
		DedupWindow:          c.GetDedupWindow().AsDuration(),
		MaxMessageBytes:      c.GetMaxMessageBytes(),
		ReplicationFactor:    c.GetReplicationFactor(),
	}}
	for _, p := range parts {
		out.Partitions = append(out.Partitions, PartitionStats{p.GetPartition(), p.GetFirstOffset(), p.GetHeadOffset(), p.GetMessageCount(), p.GetBytes()})
	}
	return out
}

// CreateTopic creates a topic; an identical create is a no-op.
func (c *Client) CreateTopic(ctx context.Context, name string, cfg TopicConfig) (Topic, error) {
	var resp *ferryv1.CreateTopicResponse
	err := c.call(ctx, func(ctx context.Context) (err error) {
		resp, err = c.admin.CreateTopic(ctx, &ferryv1.CreateTopicRequest{Name: name, Config: cfg.proto()})
		return err
	})
	return topicFromProto(resp.GetTopic(), nil), err
}

// GetTopic returns a topic with its partitions' offsets.
func (c *Client) GetTopic(ctx context.Context, name string) (Topic, error) {
	var resp *ferryv1.GetTopicResponse
	err := c.call(ctx, func(ctx context.Context) (err error) {
		resp, err = c.admin.GetTopic(ctx, &ferryv1.GetTopicRequest{Name: name})
		return err
	})
	t := topicFromProto(resp.GetTopic(), resp.GetPartitions())
	if st := resp.GetStorage(); st != nil {
		t.Storage = &StorageStatus{st.GetDiskFreeBytes(), st.GetDiskCapacityBytes(), st.GetDiskReserveBytes(),
			st.GetPublishingRefused(), st.GetReadOnly(), st.GetDetail()}
	}
	return t, err
}

// ListTopics returns every topic, ordered by name.
func (c *Client) ListTopics(ctx context.Context) ([]Topic, error) {
	var resp *ferryv1.ListTopicsResponse
	err := c.call(ctx, func(ctx context.Context) (err error) {
		resp, err = c.admin.ListTopics(ctx, &ferryv1.ListTopicsRequest{})
		return err
	})
	var out []Topic
	for _, t := range resp.GetTopics() {
		out = append(out, topicFromProto(t, nil))
	}
	return out, err
}

// UpdateTopic sets the config fields named in fields (retention_max_age,
// retention_max_bytes, retention_max_messages, dedup_window,
// max_message_bytes) to their values in cfg.
func (c *Client) UpdateTopic(ctx context.Context, name string, cfg TopicConfig, fields ...string) (Topic, error) {
	var resp *ferryv1.UpdateTopicResponse
	err := c.call(ctx, func(ctx context.Context) (err error) {
		resp, err = c.admin.UpdateTopic(ctx, &ferryv1.UpdateTopicRequest{Name: name, Config: cfg.proto(), UpdateMask: &fieldmaskpb.FieldMask{Paths: fields}})
		return err
	})
	return topicFromProto(resp.GetTopic(), nil), err
}

// DeleteTopic deletes a topic without subscriptions.
func (c *Client) DeleteTopic(ctx context.Context, name string) error {
	return c.deleteTopic(ctx, name, false)
}

// ForceDeleteTopic deletes a topic and its subscriptions.
func (c *Client) ForceDeleteTopic(ctx context.Context, name string) error {
	return c.deleteTopic(ctx, name, true)
}

func (c *Client) deleteTopic(ctx context.Context, name string, force bool) error {
	return c.call(ctx, func(ctx context.Context) error {
		_, err := c.admin.DeleteTopic(ctx, &ferryv1.DeleteTopicRequest{Name: name, Force: force})
		return err
	})
}

// The broker's defaults for a subscription's zero durations.
const (
	DefaultAckTimeout = 30 * time.Second
	DefaultBackoffMin = time.Second
	DefaultBackoffMax = time.Minute
)

// SubscriptionConfig is how a subscription delivers. Guarantee and Type
// are required; zero durations take the broker's defaults (ack timeout 30s,
// backoff 1s to 60s); a zero Start is latest. docs/design.md says what
// each guarantee promises.
type SubscriptionConfig struct {
	// Guarantee is the delivery guarantee: None, AtMostOnce, AtLeastOnce
	// or EffectivelyOnce. Required: no default.
	Guarantee Guarantee
	// Type is how messages spread over the subscription's consumers:
	// Shared, KeyShared, Exclusive or Failover. Required: no default.
	Type SubscriptionType
	// Start is where a new subscription starts: Earliest, Latest, AtOffset
	// or AtTime. Default (zero Position) Latest; a None subscription
	// always starts at Latest.
	Start Position
	// AckTimeout is how long a delivery may stay unacked before it is due
	// again, 1s to 12h. Default (0) 30s.
	AckTimeout time.Duration
	// BackoffMin is the delay before redelivering a message nacked once;
	// it doubles with each further attempt. 10ms to 12h. Default (0) 1s.
	BackoffMin time.Duration
	// BackoffMax caps the nack backoff, BackoffMin to 12h. Default (0) 60s.
	BackoffMax time.Duration
	// MaxDeliveries is how many attempts a message gets before it is
	// dead-lettered (a count); needs DeadLetterTopic. Default (0): no limit.
	MaxDeliveries uint32
	// DeadLetterTopic receives messages that ran out of attempts, with
	// headers ferry-dead-letter-{topic,partition,offset,subscription,attempts}.
	// It must exist and differ from the subscription's topic. Default
	// (empty): none.
	DeadLetterTopic string
	// DedupHorizon, for EffectivelyOnce only, is how long the ids of acked
	// messages are remembered, so a later message with one of them is
	// skipped; 1s to 100 years. Default (0): the topic's RetentionMaxAge
	// (for ever if it has none). Must be 0 for the other guarantees.
	DedupHorizon time.Duration
}

func optDuration(d time.Duration) *durationpb.Duration {
	if d == 0 {
		return nil
	}
	return durationpb.New(d)
}

func (sc SubscriptionConfig) proto() *ferryv1.SubscriptionConfig {
	return &ferryv1.SubscriptionConfig{
		Guarantee:       ferryv1.DeliveryGuarantee(sc.Guarantee),
		Type:            ferryv1.SubscriptionType(sc.Type),
		Start:           sc.Start.p,
		AckTimeout:      optDuration(sc.AckTimeout),
		BackoffMin:      optDuration(sc.BackoffMin),
		BackoffMax:      optDuration(sc.BackoffMax),
		MaxDeliveries:   sc.MaxDeliveries,
		DeadLetterTopic: sc.DeadLetterTopic,
		DedupHorizon:    optDuration(sc.DedupHorizon),
	}
}

// Subscription is a subscription with its config and, when read with
// GetSubscription or ListSubscriptions, its stats.
type Subscription struct {
	Topic      string
	Name       string
	Config     SubscriptionConfig
	CreateTime time.Time
	Stats      SubscriptionStats
}

// SubscriptionStats are a subscription's gauges and counters (since the
// broker started).
type SubscriptionStats struct {
	Backlog          uint64
	InFlight         uint32
	OldestUnackedAge time.Duration
	Consumers        uint32
	Delivered        uint64
	Redelivered      uint64
	Acked            uint64
	Nacked           uint64
	DeadLettered     uint64
	StaleAcks        uint64
	Skipped          uint64
}

func subscriptionFromProto(s *ferryv1.Subscription, st *ferryv1.SubscriptionStats) Subscription {
	c := s.GetConfig()
	return Subscription{
		Topic: s.GetTopic(), Name: s.GetName(), CreateTime: s.GetCreateTime().AsTime(),
		Config: SubscriptionConfig{
			Guarantee: Guarantee(c.GetGuarantee()), Type: SubscriptionType(c.GetType()), Start: Position{c.GetStart()},
			AckTimeout: c.GetAckTimeout().AsDuration(), BackoffMin: c.GetBackoffMin().AsDuration(), BackoffMax: c.GetBackoffMax().AsDuration(),
			MaxDeliveries: c.GetMaxDeliveries(), DeadLetterTopic: c.GetDeadLetterTopic(), DedupHorizon: c.GetDedupHorizon().AsDuration(),
		},
		Stats: SubscriptionStats{
			Backlog: st.GetBacklog(), InFlight: st.GetInFlight(), OldestUnackedAge: st.GetOldestUnackedAge().AsDuration(),
			Consumers: st.GetConsumers(), Delivered: st.GetDelivered(), Redelivered: st.GetRedelivered(), Acked: st.GetAcked(),
			Nacked: st.GetNacked(), DeadLettered: st.GetDeadLettered(), StaleAcks: st.GetStaleAcks(), Skipped: st.GetSkipped(),
		},
	}
}

// CreateSubscription creates a subscription; an identical create is a
// no-op. Refused for a limit (RESOURCE_EXHAUSTED with a RetryInfo: the
// caller's subscriptions quota, say), it waits the delay the broker asked
// for and tries again, for as long as the waits fit in the call timeout;
// then it returns the refusal.
func (c *Client) CreateSubscription(ctx context.Context, topic, name string, cfg SubscriptionConfig) (Subscription, error) {
	var resp *ferryv1.CreateSubscriptionResponse
	err := c.callWaiting(ctx, func(ctx context.Context) (err error) {
		resp, err = c.admin.CreateSubscription(ctx, &ferryv1.CreateSubscriptionRequest{Topic: topic, Name: name, Config: cfg.proto()})
		return err
	})
	return subscriptionFromProto(resp.GetSubscription(), nil), err
}

// GetSubscription returns a subscription with its stats.
func (c *Client) GetSubscription(ctx context.Context, topic, name string) (Subscription, error) {
	var resp *ferryv1.GetSubscriptionResponse
	err := c.call(ctx, func(ctx context.Context) (err error) {
		resp, err = c.admin.GetSubscription(ctx, &ferryv1.GetSubscriptionRequest{Topic: topic, Name: name})
		return err
	})
	return subscriptionFromProto(resp.GetSubscription(), resp.GetStats()), err
}

// ListSubscriptions returns a topic's subscriptions with stats, by name.
func (c *Client) ListSubscriptions(ctx context.Context, topic string) ([]Subscription, error) {
	var resp *ferryv1.ListSubscriptionsResponse
	err := c.call(ctx, func(ctx context.Context) (err error) {
		resp, err = c.admin.ListSubscriptions(ctx, &ferryv1.ListSubscriptionsRequest{Topic: topic})
		return err
	})
	var out []Subscription
	for i, s := range resp.GetSubscriptions() {
		var st *ferryv1.SubscriptionStats
		if i < len(resp.GetStats()) {
			st = resp.GetStats()[i]
		}
		out = append(out, subscriptionFromProto(s, st))
	}
	return out, err
}

// UpdateSubscription sets the config fields named in fields (ack_timeout,
// backoff_min, backoff_max, max_deliveries, dead_letter_topic,
// dedup_horizon) to their values in cfg. Attached consumers reconnect.
func (c *Client) UpdateSubscription(ctx context.Context, topic, name string, cfg SubscriptionConfig, fields ...string) (Subscription, error) {
	var resp *ferryv1.UpdateSubscriptionResponse
	err := c.call(ctx, func(ctx context.Context) (err error) {
		resp, err = c.admin.UpdateSubscription(ctx, &ferryv1.UpdateSubscriptionRequest{Topic: topic, Name: name, Config: cfg.proto(),
			UpdateMask: &fieldmaskpb.FieldMask{Paths: fields}})
		return err
	})
	return subscriptionFromProto(resp.GetSubscription(), nil), err
}

// DeleteSubscription deletes a subscription, detaching its consumers.
func (c *Client) DeleteSubscription(ctx context.Context, topic, name string) error {
	return c.call(ctx, func(ctx context.Context) error {
		_, err := c.admin.DeleteSubscription(ctx, &ferryv1.DeleteSubscriptionRequest{Topic: topic, Name: name})
		return err
	})
}

// Seek moves a subscription's cursor in every partition to pos.
func (c *Client) Seek(ctx context.Context, topic, name string, pos Position) error {
	return c.call(ctx, func(ctx context.Context) error {
		_, err := c.sub.Seek(ctx, &ferryv1.SeekRequest{Topic: topic, Subscription: name, Position: pos.p})
		return err
	})
}
