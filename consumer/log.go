package consumer

import (
	"context"
	"time"

	"github.com/ferrymq/ferry/storage"
)

// Log is the partitioned log the engine reads messages from and writes
// subscription state through. *storage.Store implements it; in a cluster a
// replicated log stands in (the broker's clusterLog, which makes
// subscription changes through the metadata group). Every method is safe
// for concurrent use. Slices passed in are not kept after a call returns;
// slices returned belong to the caller unless a method says otherwise.
// Errors are the storage package's sentinels (storage.ErrTopicNotFound,
// storage.ErrSubscriptionNotFound, storage.ErrClosed, ...), wrapped.
type Log interface {
	// Topic returns the topic called name, with its config, or
	// storage.ErrTopicNotFound.
	Topic(name string) (storage.Topic, error)
	// Partitions returns the state (first offset, head, size) of every
	// partition of topic, in partition order, as of each partition's last
	// durable group.
	Partitions(topic string) ([]storage.PartitionInfo, error)
	// Read returns up to maxMessages messages of a partition from offset
	// from, in offset order, at most maxBytes of records (the first
	// message whatever its size). Reading at the head returns nothing;
	// below the first retained offset or beyond the head it fails with a
	// *storage.OffsetOutOfRangeError. The messages may share memory with
	// the log and must not be modified.
	Read(ctx context.Context, topic string, part uint32, from uint64, maxMessages, maxBytes int) ([]storage.Message, error)
	// WaitHead blocks until a partition's head is beyond off (a message at
	// off is readable) and returns the head. It fails with
	// storage.ErrClosed if the partition goes away (topic deleted, log
	// closed), and with ctx's error if ctx ends first.
	WaitHead(ctx context.Context, topic string, part uint32, off uint64) (uint64, error)
	// OffsetAt returns the first offset of a partition published at or
	// after t, or its head if every retained message is older.
	OffsetAt(topic string, part uint32, t time.Time) (uint64, error)
	// Submit queues a write of cursors, acked ids and appends, to be stored
	// atomically; writes submitted one after another land in that order.
	// It returns once w is queued, not durable: WritePending.Wait says
	// when it is, with the appends' results. A write refused at once (bad
	// write, disk full, storage.ErrFenced in a cluster) fails here and
	// stores nothing. The caller does not modify w's slices until the
	// write is done.
	Submit(ctx context.Context, w storage.Write) (*storage.WritePending, error)
	// AckedIDs reports which of ids the subscription sid of topic has
	// acked within its dedup horizon: acked[i] is true if ids[i] was. Only
	// EFFECTIVELY_ONCE subscriptions store acked ids (Write.AckedIDs).
	AckedIDs(topic string, sid uint32, ids []string) ([]bool, error)

	// CreateSubscription stores a subscription on topic with config (the
	// engine's encoding of Options) and one initial cursor state per
	// partition, in one transaction. If one of that name exists it
	// returns it with storage.ErrSubscriptionExists, so the caller can
	// tell an identical create from a conflicting one.
	CreateSubscription(ctx context.Context, topic, name string, config []byte, cursors [][]byte) (storage.Subscription, error)
	// Subscription returns the subscription called name on topic, or
	// storage.ErrSubscriptionNotFound.
	Subscription(topic, name string) (storage.Subscription, error)
	// Subscriptions returns topic's subscriptions, ordered by name.
	Subscriptions(topic string) ([]storage.Subscription, error)
	// UpdateSubscription replaces a subscription's config and returns the
	// subscription as stored; its cursors are untouched.
	UpdateSubscription(ctx context.Context, topic, name string, config []byte) (storage.Subscription, error)
	// DeleteSubscription deletes a subscription: its record and cursors
	// at once, its acked ids in the background. The caller stops writing
	// for it first: a later Submit for it fails with
	// storage.ErrSubscriptionNotFound, but one already queued still lands.
	DeleteSubscription(ctx context.Context, topic, name string) error
	// Cursors returns the cursor state of subscription sid of topic in
	// every partition, in partition order, as last written (the engine's
	// encoding), or storage.ErrSubscriptionNotFound.
	Cursors(topic string, sid uint32) ([][]byte, error)
}
