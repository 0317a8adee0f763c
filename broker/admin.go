package broker

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/ferrymq/ferry/consumer"
	"github.com/ferrymq/ferry/internal/clock"
	"github.com/ferrymq/ferry/internal/echo"
	ferryv1 "github.com/ferrymq/ferry/proto/ferry/v1"
	"github.com/ferrymq/ferry/storage"
)

// admin implements ferryv1.AdminServiceServer.
type admin struct {
	ferryv1.UnimplementedAdminServiceServer
	store  *storage.Store
	topics topicAdmin // the store, or the metadata group in a cluster
	node   *node      // nil on a single node
	engine *consumer.Engine
	clk    clock.Clock
	log    *slog.Logger
	// clients are the public port's connections (ListClients).
	clients *clients
}

// replicas is how many copies of each partition there are: one per node.
func (a *admin) replicas() uint32 {
	if a.node == nil {
		return 1
	}
	return uint32(len(a.node.Voters()))
}

// syncMeta makes a read of topics and subscriptions linearizable in a
// cluster: it waits until this node applied every metadata change
// committed before the call (docs/cluster.md). A single node has nothing
// to wait for.
func (a *admin) syncMeta(ctx context.Context) error {
	if a.node == nil {
		return nil
	}
	return a.node.SyncMeta(ctx)
}

// GetClusterStatus reports every node's Raft groups.
func (a *admin) GetClusterStatus(ctx context.Context, req *ferryv1.GetClusterStatusRequest) (*ferryv1.GetClusterStatusResponse, error) {
	if a.node == nil {
		return nil, status.Error(codes.FailedPrecondition, "this broker is a single node, not a cluster; ferry serve --node-id and --peers start one")
	}
	return a.node.status(ctx, req.GetLocal()), nil
}

// ListClients lists the clients connected to this node's public port.
func (a *admin) ListClients(context.Context, *ferryv1.ListClientsRequest) (*ferryv1.ListClientsResponse, error) {
	return a.clients.list(), nil
}

// topicAdmin makes topic changes: *storage.Store on a single node,
// the cluster.Node in a cluster.
type topicAdmin interface {
	CreateTopic(ctx context.Context, name string, cfg storage.TopicConfig) (storage.Topic, error)
	UpdateTopic(ctx context.Context, name string, change func(*storage.TopicConfig)) (storage.Topic, error)
	DeleteTopic(ctx context.Context, name string) error
}

// CreateTopic creates a topic; an identical create is a no-op.
func (a *admin) CreateTopic(ctx context.Context, req *ferryv1.CreateTopicRequest) (*ferryv1.CreateTopicResponse, error) {
	cfg, err := configFromProto(req.GetConfig())
	if err != nil {
		return nil, toStatus(err)
	}
	if rf := req.GetConfig().GetReplicationFactor(); rf != 0 && rf != a.replicas() {
		return nil, toStatus(invalidf("replication factor %d: this version keeps a copy of every partition on every node, so it must be %d (the number of nodes) or 0", rf, a.replicas()))
	}
	t, err := a.topics.CreateTopic(ctx, req.GetName(), cfg)
	if err != nil {
		return nil, toStatus(err)
	}
	a.log.Info("topic created", "topic", t.Name, "partitions", t.Config.Partitions)
	return &ferryv1.CreateTopicResponse{Topic: a.topicProto(t)}, nil
}

// GetTopic returns a topic with its partitions' stats.
func (a *admin) GetTopic(ctx context.Context, req *ferryv1.GetTopicRequest) (*ferryv1.GetTopicResponse, error) {
	if err := storage.ValidateTopicName(req.GetName()); err != nil {
		return nil, toStatus(err)
	}
	if err := a.syncMeta(ctx); err != nil {
		return nil, toStatus(err)
	}
	t, err := a.store.Topic(req.GetName())
	if err != nil {
		return nil, toStatus(err)
	}
	infos, err := a.store.Partitions(req.GetName())
	if err != nil {
		return nil, toStatus(err)
	}
	d := a.store.Disk()
	resp := &ferryv1.GetTopicResponse{Topic: a.topicProto(t), Storage: &ferryv1.StorageStatus{
		DiskFreeBytes:     d.Free,
		DiskCapacityBytes: d.Capacity,
		DiskReserveBytes:  d.Reserve,
		PublishingRefused: d.Low,
		ReadOnly:          d.ReadOnly,
		Detail:            d.String(),
	}}
	for _, pi := range infos {
		resp.Partitions = append(resp.Partitions, &ferryv1.PartitionStats{
			Partition:    pi.Partition,
			FirstOffset:  pi.First,
			HeadOffset:   pi.Head,
			MessageCount: pi.Messages,
			Bytes:        pi.Bytes,
		})
	}
	return resp, nil
}

// ListTopics returns every topic by name.
func (a *admin) ListTopics(ctx context.Context, req *ferryv1.ListTopicsRequest) (*ferryv1.ListTopicsResponse, error) {
	if err := a.syncMeta(ctx); err != nil {
		return nil, toStatus(err)
	}
	resp := &ferryv1.ListTopicsResponse{}
	for _, t := range a.store.Topics() {
		resp.Topics = append(resp.Topics, a.topicProto(t))
	}
	return resp, nil
}

// UpdateTopic changes the config fields named in the update mask.
func (a *admin) UpdateTopic(ctx context.Context, req *ferryv1.UpdateTopicRequest) (*ferryv1.UpdateTopicResponse, error) {
	if err := storage.ValidateTopicName(req.GetName()); err != nil {
		return nil, toStatus(err)
	}
	paths := req.GetUpdateMask().GetPaths()
	if len(paths) == 0 {
		return nil, toStatus(invalidf("update_mask is empty; name the config fields to change"))
	}
	next, err := configFromProto(req.GetConfig())
	if err != nil {
		return nil, toStatus(err)
	}
	var sets []func(*storage.TopicConfig)
	for _, p := range paths {
		switch p {
		case "retention_max_age":
			sets = append(sets, func(c *storage.TopicConfig) { c.RetentionMaxAge = next.RetentionMaxAge })
		case "retention_max_bytes":
			sets = append(sets, func(c *storage.TopicConfig) { c.RetentionMaxBytes = next.RetentionMaxBytes })
		case "retention_max_messages":
			sets = append(sets, func(c *storage.TopicConfig) { c.RetentionMaxMessages = next.RetentionMaxMessages })
		case "dedup_window":
			sets = append(sets, func(c *storage.TopicConfig) { c.DedupWindow = next.DedupWindow })
		case "max_message_bytes":
			sets = append(sets, func(c *storage.TopicConfig) { c.MaxMessageBytes = next.MaxMessageBytes })
		case "partitions":
			return nil, toStatus(invalidf("partitions cannot be changed: ids and keys would move to other partitions and escape dedup; create a new topic"))
		default:
			return nil, toStatus(invalidf("update_mask path %s is not a topic config field; use retention_max_age, retention_max_bytes, retention_max_messages, dedup_window or max_message_bytes", echo.Quote(p)))
		}
	}
	t, err := a.topics.UpdateTopic(ctx, req.GetName(), func(c *storage.TopicConfig) {
		for _, set := range sets {
			set(c)
		}
	})
	if err != nil {
		return nil, toStatus(err)
	}
	a.log.Info("topic updated", "topic", t.Name, "fields", strings.Join(paths, ","))
	return &ferryv1.UpdateTopicResponse{Topic: a.topicProto(t)}, nil
}

// DeleteTopic deletes a topic and its messages.
func (a *admin) DeleteTopic(ctx context.Context, req *ferryv1.DeleteTopicRequest) (*ferryv1.DeleteTopicResponse, error) {
	if err := storage.ValidateTopicName(req.GetName()); err != nil {
		return nil, toStatus(err)
	}
	subs, err := a.engine.Subscriptions(ctx, req.GetName())
	if err != nil {
		return nil, toStatus(err)
	}
	if len(subs) > 0 && !req.GetForce() {
		var names []string
		for _, s := range subs[:min(len(subs), 3)] {
			names = append(names, s.Name)
		}
		if len(subs) > len(names) {
			names = append(names, fmt.Sprintf("and %d more", len(subs)-len(names)))
		}
		return nil, status.Errorf(codes.FailedPrecondition, "topic %q has %d subscriptions (%s); delete them first, or delete with force",
			req.GetName(), len(subs), strings.Join(names, ", "))
	}
	// Stop delivery first, so the subscriptions' last writes land, and
	// again after, for a consumer that attached in between.
	a.engine.StopTopic(req.GetName())
	if err := a.topics.DeleteTopic(ctx, req.GetName()); err != nil {
		return nil, toStatus(err)
	}
	a.engine.StopTopic(req.GetName())
	a.log.Info("topic deleted", "topic", req.GetName(), "subscriptions", len(subs))
	return &ferryv1.DeleteTopicResponse{}, nil
}

// ReadMessages reads a range of a partition's log.
func (a *admin) ReadMessages(ctx context.Context, req *ferryv1.ReadMessagesRequest) (*ferryv1.ReadMessagesResponse, error) {
	if err := storage.ValidateTopicName(req.GetTopic()); err != nil {
		return nil, toStatus(err)
	}
	max := int(req.GetMaxMessages())
	switch {
	case max == 0:
		max = DefaultReadMessages
	case max > MaxReadMessages:
		return nil, toStatus(invalidf("max_messages %d is over the limit of %d", max, MaxReadMessages))
	}
	maxBytes := int(req.GetMaxBytes())
	if maxBytes == 0 {
		maxBytes = DefaultReadBytes
	}
	if a.node != nil {
		// Linearizable: the read sees the topic and every write
		// acknowledged before it, wherever they were made.
		if err := a.node.SyncMeta(ctx); err != nil {
			return nil, toStatus(err)
		}
		if err := a.node.SyncPartition(ctx, req.GetTopic(), req.GetPartition()); err != nil {
			return nil, toStatus(err)
		}
	}
	msgs, err := a.store.Read(ctx, req.GetTopic(), req.GetPartition(), req.GetFromOffset(), max, maxBytes)
	if err != nil {
		return nil, toStatus(err)
	}
	infos, err := a.store.Partitions(req.GetTopic())
	if err != nil {
		return nil, toStatus(err)
	}
	if int(req.GetPartition()) >= len(infos) { // the topic was replaced meanwhile
		return nil, toStatus(storage.ErrPartitionNotFound)
	}
	resp := &ferryv1.ReadMessagesResponse{NextOffset: req.GetFromOffset(), HeadOffset: infos[req.GetPartition()].Head}
	for i := range msgs {
		m := &msgs[i]
		resp.Messages = append(resp.Messages, messageToProto(m))
		resp.NextOffset = m.Offset + 1
	}
	return resp, nil
}

func configFromProto(c *ferryv1.TopicConfig) (storage.TopicConfig, error) {
	if c == nil {
		return storage.TopicConfig{}, nil
	}
	cfg := storage.TopicConfig{
		Partitions:           c.GetPartitions(),
		RetentionMaxBytes:    c.GetRetentionMaxBytes(),
		RetentionMaxMessages: c.GetRetentionMaxMessages(),
		MaxMessageBytes:      c.GetMaxMessageBytes(),
	}
	var err error
	if cfg.RetentionMaxAge, err = durationFromProto("retention_max_age", c.GetRetentionMaxAge()); err != nil {
		return cfg, err
	}
	if cfg.RetentionMaxAge > MaxRetentionAge {
		return cfg, invalidf("retention_max_age %v must be 0 (for ever) or at most %v", cfg.RetentionMaxAge, MaxRetentionAge)
	}
	if cfg.DedupWindow, err = durationFromProto("dedup_window", c.GetDedupWindow()); err != nil {
		return cfg, err
	}
	return cfg, nil
}

// durationRanges names what each duration field takes, for the refusal of
// one beyond any range.
var durationRanges = map[string]string{
	"retention_max_age": "0 (for ever) to 100 years",
	"dedup_window":      "0 (2m) to 7 days",
	"ack_timeout":       "1s to 12h",
	"ack_deadline":      "1s to 12h",
	"backoff_min":       "10ms to 12h",
	"backoff_max":       "backoff_min to 12h",
	"dedup_horizon":     "0 (the topic's retention) or 1s to 100 years, effectively-once only",
}

// durationFromProto converts a duration field. A negative one, or one
// beyond what a time.Duration holds (about 292 years, which AsDuration
// would clamp to silently), is refused; each field's own range is checked
// where it is used.
func durationFromProto(field string, d *durationpb.Duration) (time.Duration, error) {
	if d == nil {
		return 0, nil
	}
	if err := d.CheckValid(); err != nil {
		return 0, invalidf("%s: %s", field, err.Error())
	}
	if d.GetSeconds() < 0 || d.GetNanos() < 0 {
		return 0, invalidf("%s is negative (%ds)", field, d.GetSeconds())
	}
	if d.GetSeconds() > math.MaxInt64/int64(time.Second)-1 {
		return 0, invalidf("%s of %ds is out of range; it takes %s", field, d.GetSeconds(), durationRanges[field])
	}
	return d.AsDuration(), nil
}

// topicProto is t on the wire, with the replication factor: this
// version keeps a copy of every partition on every node.
func (a *admin) topicProto(t storage.Topic) *ferryv1.Topic {
	c := t.Config
	pc := &ferryv1.TopicConfig{
		ReplicationFactor:    a.replicas(),
		Partitions:           c.Partitions,
		RetentionMaxBytes:    c.RetentionMaxBytes,
		RetentionMaxMessages: c.RetentionMaxMessages,
		DedupWindow:          durationpb.New(c.DedupWindow),
		MaxMessageBytes:      c.MaxMessageBytes,
	}
	if c.RetentionMaxAge > 0 {
		pc.RetentionMaxAge = durationpb.New(c.RetentionMaxAge)
	}
	return &ferryv1.Topic{Name: t.Name, Config: pc, CreateTime: timestamppb.New(t.CreateTime)}
}

// CreateSubscription creates a subscription; an identical create is a no-op.
func (a *admin) CreateSubscription(ctx context.Context, req *ferryv1.CreateSubscriptionRequest) (*ferryv1.CreateSubscriptionResponse, error) {
	if resp, ok, err := forward(ctx, a.node, req.GetTopic(), req.GetName(), ferryv1.NewAdminServiceClient, ferryv1.AdminServiceClient.CreateSubscription, req); ok {
		return resp, err
	}
	if err := validateSubName(req.GetTopic(), req.GetName()); err != nil {
		return nil, toStatus(err)
	}
	o, err := subConfigFromProto(req.GetConfig())
	if err != nil {
		return nil, toStatus(err)
	}
	info, err := a.engine.CreateSubscription(ctx, req.GetTopic(), req.GetName(), o)
	if err != nil {
		return nil, toStatus(err)
	}
	a.log.Info("subscription created", "topic", info.Topic, "subscription", info.Name,
		"guarantee", o.Guarantee.String(), "type", o.Type.String())
	return &ferryv1.CreateSubscriptionResponse{Subscription: subscriptionToProto(info)}, nil
}

// GetSubscription returns a subscription with its stats.
func (a *admin) GetSubscription(ctx context.Context, req *ferryv1.GetSubscriptionRequest) (*ferryv1.GetSubscriptionResponse, error) {
	if resp, ok, err := forward(ctx, a.node, req.GetTopic(), req.GetName(), ferryv1.NewAdminServiceClient, ferryv1.AdminServiceClient.GetSubscription, req); ok {
		return resp, err
	}
	if err := validateSubName(req.GetTopic(), req.GetName()); err != nil {
		return nil, toStatus(err)
	}
	info, err := a.engine.Subscription(ctx, req.GetTopic(), req.GetName())
	if err != nil {
		return nil, toStatus(err)
	}
	return &ferryv1.GetSubscriptionResponse{Subscription: subscriptionToProto(info), Stats: statsToProto(info.Stats, a.clk.Now())}, nil
}

// ListSubscriptions returns a topic's subscriptions by name, with stats.
func (a *admin) ListSubscriptions(ctx context.Context, req *ferryv1.ListSubscriptionsRequest) (*ferryv1.ListSubscriptionsResponse, error) {
	if err := storage.ValidateTopicName(req.GetTopic()); err != nil {
		return nil, toStatus(err)
	}
	if err := a.syncMeta(ctx); err != nil {
		return nil, toStatus(err)
	}
	infos, err := a.engine.Subscriptions(ctx, req.GetTopic())
	if err != nil {
		return nil, toStatus(err)
	}
	resp := &ferryv1.ListSubscriptionsResponse{}
	now := a.clk.Now()
	for _, info := range infos {
		resp.Subscriptions = append(resp.Subscriptions, subscriptionToProto(info))
		resp.Stats = append(resp.Stats, statsToProto(info.Stats, now))
	}
	return resp, nil
}

// UpdateSubscription changes the config fields named in the update mask.
func (a *admin) UpdateSubscription(ctx context.Context, req *ferryv1.UpdateSubscriptionRequest) (*ferryv1.UpdateSubscriptionResponse, error) {
	if resp, ok, err := forward(ctx, a.node, req.GetTopic(), req.GetName(), ferryv1.NewAdminServiceClient, ferryv1.AdminServiceClient.UpdateSubscription, req); ok {
		return resp, err
	}
	if err := validateSubName(req.GetTopic(), req.GetName()); err != nil {
		return nil, toStatus(err)
	}
	paths := req.GetUpdateMask().GetPaths()
	if len(paths) == 0 {
		return nil, toStatus(invalidf("update_mask is empty; name the config fields to change"))
	}
	c := req.GetConfig()
	var sets []func(*consumer.Options)
	for _, p := range paths {
		var d *durationpb.Duration
		var to func(*consumer.Options) *time.Duration
		switch p {
		case "ack_timeout":
			d, to = c.GetAckTimeout(), func(o *consumer.Options) *time.Duration { return &o.AckTimeout }
		case "backoff_min":
			d, to = c.GetBackoffMin(), func(o *consumer.Options) *time.Duration { return &o.BackoffMin }
		case "backoff_max":
			d, to = c.GetBackoffMax(), func(o *consumer.Options) *time.Duration { return &o.BackoffMax }
		case "dedup_horizon":
			d, to = c.GetDedupHorizon(), func(o *consumer.Options) *time.Duration { return &o.DedupHorizon }
		case "max_deliveries":
			n := c.GetMaxDeliveries()
			sets = append(sets, func(o *consumer.Options) { o.MaxDeliveries = n })
			continue
		case "dead_letter_topic":
			t := c.GetDeadLetterTopic()
			sets = append(sets, func(o *consumer.Options) { o.DeadLetterTopic = t })
			continue
		case "guarantee", "type", "start":
			return nil, toStatus(invalidf("%s cannot be changed; create a new subscription", p))
		default:
			return nil, toStatus(invalidf("update_mask path %s is not a subscription config field; use ack_timeout, backoff_min, backoff_max, max_deliveries, dead_letter_topic or dedup_horizon", echo.Quote(p)))
		}
		v, err := durationFromProto(p, d)
		if err != nil {
			return nil, toStatus(err)
		}
		sets = append(sets, func(o *consumer.Options) { *to(o) = v })
	}
	info, err := a.engine.UpdateSubscription(ctx, req.GetTopic(), req.GetName(), func(o *consumer.Options) {
		for _, set := range sets {
			set(o)
		}
	})
	if err != nil {
		return nil, toStatus(err)
	}
	return &ferryv1.UpdateSubscriptionResponse{Subscription: subscriptionToProto(info)}, nil
}

// DeleteSubscription detaches a subscription's consumers and deletes it.
func (a *admin) DeleteSubscription(ctx context.Context, req *ferryv1.DeleteSubscriptionRequest) (*ferryv1.DeleteSubscriptionResponse, error) {
	if resp, ok, err := forward(ctx, a.node, req.GetTopic(), req.GetName(), ferryv1.NewAdminServiceClient, ferryv1.AdminServiceClient.DeleteSubscription, req); ok {
		return resp, err
	}
	if err := validateSubName(req.GetTopic(), req.GetName()); err != nil {
		return nil, toStatus(err)
	}
	if err := a.engine.DeleteSubscription(ctx, req.GetTopic(), req.GetName()); err != nil {
		return nil, toStatus(err)
	}
	a.log.Info("subscription deleted", "topic", req.GetTopic(), "subscription", req.GetName())
	return &ferryv1.DeleteSubscriptionResponse{}, nil
}
