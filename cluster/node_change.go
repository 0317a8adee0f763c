package cluster

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/ferrymq/ferry/internal/clock"
	"github.com/ferrymq/ferry/storage"
)

// retryPause is the pause between two attempts of a metadata change or a
// fence.
const retryPause = 50 * time.Millisecond

// leaderWait bounds how long a change or a barrier waits for a group to
// elect a leader before it fails.
const leaderWait = 10 * time.Second

// CreateTopic creates a topic on every node through the metadata group
// (Metadata.CreateTopic; an identical create answers with what exists),
// and returns once each of its partitions has a leader, so the topic
// takes writes. It retries as metaChange does.
func (n *Node) CreateTopic(ctx context.Context, name string, cfg storage.TopicConfig) (t storage.Topic, err error) {
	err = n.metaChange(ctx, func(ctx context.Context, _ bool) error {
		t, err = n.meta.CreateTopic(ctx, name, cfg)
		return err
	})
	if err != nil {
		return t, err
	}
	wctx, cancel := context.WithTimeout(ctx, leaderWait)
	defer cancel()
	return t, n.waitLeaders(wctx, name)
}

// UpdateTopic changes a topic's config on every node: change edits a copy
// of the config this node has.
func (n *Node) UpdateTopic(ctx context.Context, name string, change func(*storage.TopicConfig)) (storage.Topic, error) {
	t, err := n.store.Topic(name)
	if err != nil {
		return t, err
	}
	cfg := t.Config
	change(&cfg)
	err = n.metaChange(ctx, func(ctx context.Context, _ bool) error {
		t, err = n.meta.UpdateTopic(ctx, name, cfg)
		return err
	})
	return t, err
}

// DeleteTopic deletes a topic on every node; every node then stops its
// partitions' groups.
func (n *Node) DeleteTopic(ctx context.Context, name string) error {
	return n.metaChange(ctx, func(ctx context.Context, retry bool) error {
		err := n.meta.DeleteTopic(ctx, name)
		if retry && errors.Is(err, storage.ErrTopicNotFound) {
			return nil // the lost attempt did it
		}
		return err
	})
}

// CreateSubscription creates a subscription on every node
// (Metadata.CreateSubscription).
func (n *Node) CreateSubscription(ctx context.Context, topic, name string, config []byte, cursors [][]byte) (sub storage.Subscription, err error) {
	err = n.metaChange(ctx, func(ctx context.Context, _ bool) error {
		sub, err = n.meta.CreateSubscription(ctx, topic, name, config, cursors)
		return err
	})
	return sub, err
}

// UpdateSubscription changes a subscription's config on every node.
func (n *Node) UpdateSubscription(ctx context.Context, topic, name string, config []byte) (sub storage.Subscription, err error) {
	err = n.metaChange(ctx, func(ctx context.Context, _ bool) error {
		sub, err = n.meta.UpdateSubscription(ctx, topic, name, config)
		return err
	})
	return sub, err
}

// DeleteSubscription deletes a subscription on every node.
func (n *Node) DeleteSubscription(ctx context.Context, topic, name string) error {
	return n.metaChange(ctx, func(ctx context.Context, retry bool) error {
		err := n.meta.DeleteSubscription(ctx, topic, name)
		if retry && errors.Is(err, storage.ErrSubscriptionNotFound) {
			return nil // the lost attempt did it
		}
		return err
	})
}

// metaChange makes a change through the metadata group: it waits for a
// leader, and tries again while an attempt's outcome is unknown (the
// leader changed, or dropped the forwarded proposal), up to leaderWait in
// all. The changes are idempotent: an identical create answers with what
// exists, and change tells a retry, for a delete to take "not found" as
// done.
func (n *Node) metaChange(ctx context.Context, change func(ctx context.Context, retry bool) error) error {
	ctx, cancel := context.WithTimeout(ctx, leaderWait)
	defer cancel()
	for attempt := 0; ; attempt++ {
		if err := waitLeader(ctx, n.meta.Group()); err != nil {
			return fmt.Errorf("the metadata group has no leader: %w", &NotLeaderError{Group: MetadataGroup})
		}
		err := change(ctx, attempt > 0)
		if !outcomeUnknown(err) {
			return err
		}
		if !clock.Sleep(n.clk, retryPause, ctx.Done()) {
			return err
		}
	}
}

// outcomeUnknown reports whether a proposal failed without saying whether
// its entry will commit (or it was not appended): a retry is due.
func outcomeUnknown(err error) bool {
	return errors.Is(err, ErrLeadershipLost) || errors.Is(err, ErrNotLeader) || errors.Is(err, ErrProposalDropped)
}

// SyncMeta returns once every metadata change committed before the call
// is applied on this node, so that a read of topics or subscriptions here
// shows what was created through any other node (linearizable reads). It
// retries as metaChange does while the barrier's outcome is unknown.
func (n *Node) SyncMeta(ctx context.Context) error {
	return n.metaChange(ctx, func(ctx context.Context, _ bool) error {
		return Barrier(ctx, n.meta.Group())
	})
}

// CatchUpMeta is one try of SyncMeta: it fails as Group.Propose does,
// without waiting for a leader or retrying. A publish for a topic this
// node does not know yet catches up with it before it gives up.
func (n *Node) CatchUpMeta(ctx context.Context) error { return n.meta.Sync(ctx) }

// SyncTopic returns once every write committed to topic's partitions
// before the call is applied on this node: what a subscription's new owner
// waits for before it loads the cursors. The partitions' barriers go
// through their groups at once, not one round after another.
func (n *Node) SyncTopic(ctx context.Context, topic string) error {
	t, err := n.store.Topic(topic)
	if err != nil {
		return err
	}
	errs := make([]error, t.Config.Partitions)
	var wg sync.WaitGroup
	for p := range t.Config.Partitions {
		wg.Go(func() { errs[p] = n.SyncPartition(ctx, topic, p) })
	}
	wg.Wait()
	return errors.Join(errs...)
}

// SyncPartition returns once every write committed to topic's partition
// part before the call is applied on this node.
func (n *Node) SyncPartition(ctx context.Context, topic string, part uint32) error {
	t, err := n.store.Topic(topic)
	if err != nil {
		return err
	}
	if part >= t.Config.Partitions {
		return fmt.Errorf("topic %q has %d partitions, not %d: %w", topic, t.Config.Partitions, part, storage.ErrPartitionNotFound)
	}
	g, err := n.PartitionGroup(topic, part)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, leaderWait)
	defer cancel()
	if err := Barrier(ctx, g); err != nil {
		return fmt.Errorf("topic %q partition %d: %w", topic, part, err)
	}
	return nil
}

// waitLeaders waits until every partition of topic has a leader, so a
// topic create returns a topic that takes writes.
func (n *Node) waitLeaders(ctx context.Context, topic string) error {
	if err := n.reconcile(); err != nil {
		return err
	}
	t, err := n.store.Topic(topic)
	if err != nil {
		return err
	}
	for p := range t.Config.Partitions {
		g, err := n.PartitionGroup(topic, p)
		if err != nil {
			return err
		}
		if err := waitLeader(ctx, g); err != nil {
			return fmt.Errorf("topic %q partition %d has no leader yet: %w", topic, p, err)
		}
	}
	return nil
}

// waitLeader waits until g knows a leader.
func waitLeader(ctx context.Context, g *Group) error {
	changes, unwatch := g.WatchLeader()
	defer unwatch()
	for {
		select {
		case c, ok := <-changes:
			if !ok {
				return ErrClosed
			}
			if c.Leader != 0 {
				return nil
			}
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}
