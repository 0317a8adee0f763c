package cluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"

	"go.etcd.io/raft/v3/raftpb"

	"github.com/ferrymq/ferry/internal/clock"
	"github.com/ferrymq/ferry/storage"
)

// MetadataGroup is the id of the metadata Raft group, the one group every
// node runs. It is reserved: partition groups take other ids. (Group ids
// must not be 0, which is what an unset id looks like to storage.RaftLog.)
const MetadataGroup uint64 = 1 << 63

// Metadata is the metadata group's state machine and its client: the topics
// and subscriptions of a node's storage.Store, changed only through
// MetadataGroup so that every node's store holds the same ones, with the
// same ids, configs and create times.
//
// Each change is one entry, stamped with the leader's clock when it was
// proposed; every replica applies it with storage's stamped calls
// (storage.Stamp), never with its own clock, and ids come from the store's
// counters, which the same sequence of creates advances the same way on
// every replica. The store's topics and subscriptions must therefore be
// the group's alone: one created on the side would take an id the others
// do not, and the snapshot a new group starts from, which is empty, makes
// the store empty.
//
// The applied index is kept in the store (storage.AdminApplied), in the
// same transaction as each change, so a replica that restarts replays
// exactly the entries whose changes it lacks: replaying a create after its
// topic was deleted would make it again under a new id. An entry that
// changes nothing (a create of an identical topic, or one refused) stores
// nothing; the index is brought up to date after each batch, and an entry
// of that kind replayed meanwhile changes nothing again.
//
// A change the store refuses the same way on every replica — the topic
// exists with another config, is not found, the config is invalid — is
// that entry's outcome, not a failure of the group: the proposer gets the
// store's error back, and nothing changed anywhere. Any other store error
// stops the group (ErrGroupFailed).
//
// The change methods work on the leader only; elsewhere they fail with a
// *NotLeaderError, as Group.Propose does. Reads go to the store.
type Metadata struct {
	store *storage.Store
	node  uint64
	clk   clock.Clock
	group *Group

	applied atomic.Uint64 // durable applied index; written by the group's loop
	seq     atomic.Uint64 // the last proposal number

	waitMu  sync.Mutex // guards waiters
	waiters map[uint64]chan metaResult

	changed chan struct{} // capacity 1: the store's topics or subscriptions changed
}

// metaResult is an applied entry's outcome.
type metaResult struct {
	topic storage.Topic
	sub   storage.Subscription
	err   error // an outcome error from the store, or nil
}

// OpenMetadata starts the metadata group on h with voters (see
// Host.AddGroup), its state machine over h's store. It stops with h.
func OpenMetadata(h *Host, voters []uint64) (*Metadata, error) {
	m := &Metadata{
		store:   h.opts.Store,
		node:    h.NodeID(),
		clk:     h.opts.Clock,
		waiters: make(map[uint64]chan metaResult),
		changed: make(chan struct{}, 1),
	}
	applied, err := m.store.AdminApplied(MetadataGroup)
	if err != nil {
		return nil, err
	}
	m.applied.Store(applied)
	// Like Group's, proposal numbers start at random: an entry of this
	// node's previous life replayed now must not answer a new proposal.
	m.seq.Store(rand.Uint64() >> 1)
	if m.group, err = h.AddGroup(MetadataGroup, voters, m); err != nil {
		return nil, err
	}
	return m, nil
}

// Group returns the metadata group.
func (m *Metadata) Group() *Group { return m.group }

// Changed returns a channel that receives a value after entries or a
// snapshot changed the store's topics or subscriptions (it holds one:
// several changes may come as one value). Whoever starts the partitions'
// groups of new topics watches it.
func (m *Metadata) Changed() <-chan struct{} { return m.changed }

// Sync returns once every change committed before the call is applied on
// this node, so that the store shows it: a read after Sync sees every
// change acknowledged before it, wherever it was made. It fails as
// Group.Propose does.
func (m *Metadata) Sync(ctx context.Context) error {
	_, err := m.group.Propose(ctx, nil)
	return err
}

func (m *Metadata) signal() {
	select {
	case m.changed <- struct{}{}:
	default:
	}
}

// CreateTopic creates a topic on every node: storage.Store.CreateTopic's
// semantics, with the leader's time as its create time. An identical topic
// that exists is returned as it is.
func (m *Metadata) CreateTopic(ctx context.Context, name string, cfg storage.TopicConfig) (storage.Topic, error) {
	if err := storage.ValidateTopicName(name); err != nil {
		return storage.Topic{}, err
	}
	if err := cfg.WithDefaults().Validate(); err != nil {
		return storage.Topic{}, err
	}
	r, err := m.propose(ctx, &metaOp{kind: metaCreateTopic, topic: name, cfg: cfg})
	return r.topic, err
}

// UpdateTopic replaces a topic's config with cfg on every node; zero fields
// take their defaults, and Partitions 0 keeps the topic's count (it cannot
// change: storage.ErrInvalidConfig).
func (m *Metadata) UpdateTopic(ctx context.Context, name string, cfg storage.TopicConfig) (storage.Topic, error) {
	r, err := m.propose(ctx, &metaOp{kind: metaUpdateTopic, topic: name, cfg: cfg})
	return r.topic, err
}

// DeleteTopic deletes a topic on every node.
func (m *Metadata) DeleteTopic(ctx context.Context, name string) error {
	_, err := m.propose(ctx, &metaOp{kind: metaDeleteTopic, topic: name})
	return err
}

// CreateSubscription creates a subscription on every node, with one initial
// cursor state per partition: storage.Store.CreateSubscription's semantics
// (an existing one is returned with storage.ErrSubscriptionExists), with
// the leader's time as its create time.
func (m *Metadata) CreateSubscription(ctx context.Context, topic, name string, config []byte, cursors [][]byte) (storage.Subscription, error) {
	if err := storage.ValidateSubscriptionName(name); err != nil {
		return storage.Subscription{}, err
	}
	r, err := m.propose(ctx, &metaOp{kind: metaCreateSub, topic: topic, sub: name, subConfig: config, cursors: cursors})
	return r.sub, err
}

// UpdateSubscription replaces a subscription's config on every node.
func (m *Metadata) UpdateSubscription(ctx context.Context, topic, name string, config []byte) (storage.Subscription, error) {
	r, err := m.propose(ctx, &metaOp{kind: metaUpdateSub, topic: topic, sub: name, subConfig: config})
	return r.sub, err
}

// DeleteSubscription deletes a subscription on every node.
func (m *Metadata) DeleteSubscription(ctx context.Context, topic, name string) error {
	_, err := m.propose(ctx, &metaOp{kind: metaDeleteSub, topic: topic, sub: name})
	return err
}

// propose proposes op, stamped with this node's clock (Propose works only
// on the leader, so it is the leader's), and returns its outcome once it
// is applied here. It fails as Group.Propose does.
func (m *Metadata) propose(ctx context.Context, op *metaOp) (metaResult, error) {
	op.node, op.seq, op.at = m.node, m.seq.Add(1), m.clk.Now()
	done := make(chan metaResult, 1)
	m.waitMu.Lock()
	m.waiters[op.seq] = done
	m.waitMu.Unlock()
	defer func() {
		m.waitMu.Lock()
		delete(m.waiters, op.seq)
		m.waitMu.Unlock()
	}()
	index, err := m.group.Propose(ctx, encodeMetaOp(op))
	if err != nil {
		return metaResult{}, err
	}
	select {
	case r := <-done:
		return r, r.err
	default:
		// Applied, but not by Apply here: a snapshot covered it.
		return metaResult{}, fmt.Errorf("metadata entry %d (%v): restored from a snapshot, its outcome is unknown here: %w", index, op.kind, ErrLeadershipLost)
	}
}

// isOutcome reports whether err is a refusal every replica makes the same
// way for the same entry, rather than a failure of this replica's store.
func isOutcome(err error) bool {
	for _, o := range []error{
		storage.ErrTopicExists, storage.ErrTopicNotFound,
		storage.ErrSubscriptionExists, storage.ErrSubscriptionNotFound,
		storage.ErrInvalidConfig, storage.ErrPartitionNotFound,
	} {
		if errors.Is(err, o) {
			return true
		}
	}
	return false
}

// Apply applies metadata entries through the store's stamped calls; see
// StateMachine.
func (m *Metadata) Apply(ents []*raftpb.Entry) error {
	defer m.signal()
	for _, e := range ents {
		if len(e.GetData()) == 0 {
			continue // Sync's
		}
		op, err := decodeMetaOp(e.GetData())
		if err != nil {
			return fmt.Errorf("entry %d: %w: %w", e.GetIndex(), storage.ErrCorrupt, err)
		}
		r := m.apply(op, storage.Stamp{At: op.at, Group: MetadataGroup, Index: e.GetIndex()})
		if r.err != nil && !isOutcome(r.err) {
			return fmt.Errorf("entry %d (%v): %w", e.GetIndex(), op.kind, r.err)
		}
		if op.node == m.node {
			m.waitMu.Lock()
			if done := m.waiters[op.seq]; done != nil {
				done <- r
			}
			m.waitMu.Unlock()
		}
	}
	if len(ents) == 0 {
		return nil
	}
	// The entries that changed something stored their index with the
	// change; this covers those that did not (see Metadata).
	last := ents[len(ents)-1].GetIndex()
	if err := m.store.SetAdminApplied(MetadataGroup, last); err != nil {
		return err
	}
	m.applied.Store(last)
	return nil
}

// apply makes op's change in the store.
func (m *Metadata) apply(op *metaOp, st storage.Stamp) metaResult {
	ctx := context.Background()
	var r metaResult
	switch op.kind {
	case metaCreateTopic:
		r.topic, r.err = m.store.CreateTopicAt(ctx, op.topic, op.cfg, st)
	case metaUpdateTopic:
		r.topic, r.err = m.store.UpdateTopicAt(ctx, op.topic, func(c *storage.TopicConfig) {
			parts := c.Partitions
			*c = op.cfg
			if c.Partitions == 0 {
				c.Partitions = parts
			}
		}, st)
	case metaDeleteTopic:
		r.err = m.store.DeleteTopicAt(ctx, op.topic, st)
	case metaCreateSub:
		r.sub, r.err = m.store.CreateSubscriptionAt(ctx, op.topic, op.sub, op.subConfig, op.cursors, st)
	case metaUpdateSub:
		r.sub, r.err = m.store.UpdateSubscriptionAt(ctx, op.topic, op.sub, op.subConfig, st)
	case metaDeleteSub:
		r.err = m.store.DeleteSubscriptionAt(ctx, op.topic, op.sub, st)
	}
	return r
}

// Applied returns the applied index stored with the changes; see
// StateMachine.
func (m *Metadata) Applied() uint64 { return m.applied.Load() }

// Snapshot encodes every topic and subscription of the store, with the id
// counters. A subscription's cursors are this node's at the moment: they
// belong to the partitions' groups, and are only where a replica that
// lacks the subscription starts from.
func (m *Metadata) Snapshot() ([]byte, error) {
	next, err := m.store.NextIDs()
	if err != nil {
		return nil, err
	}
	snap := &metaSnapshot{next: next}
	for _, t := range m.store.Topics() {
		mt := metaTopic{topic: t, id: t.ID()}
		subs, err := m.store.Subscriptions(t.Name)
		if err != nil {
			return nil, err
		}
		for _, sub := range subs {
			cursors, err := m.store.Cursors(t.Name, sub.ID)
			if err != nil {
				return nil, fmt.Errorf("subscription %q on topic %q: %w", sub.Name, t.Name, err)
			}
			mt.subs = append(mt.subs, metaSub{sub: sub, cursors: cursors})
		}
		snap.topics = append(snap.topics, mt)
	}
	return encodeMetaSnapshot(snap), nil
}

// Restore makes the store match the snapshot: it deletes the topics and
// subscriptions the snapshot lacks (or has under another id), sets the
// configs of the rest, and creates what is missing with the snapshot's ids
// and create times. It is idempotent, so a restore cut short by a crash is
// made again at the next start (the applied index is stored last). A store
// whose id counters are past the snapshot's gave ids the group did not:
// its ids would differ from the others', so Restore fails.
func (m *Metadata) Restore(snap *raftpb.Snapshot) error {
	defer m.signal()
	s, err := decodeMetaSnapshot(snap.GetData())
	if err != nil {
		return fmt.Errorf("%w: %w", storage.ErrCorrupt, err)
	}
	ctx := context.Background()
	want := make(map[string]*metaTopic, len(s.topics))
	for i := range s.topics {
		want[s.topics[i].topic.Name] = &s.topics[i]
	}
	for _, t := range m.store.Topics() {
		wt := want[t.Name]
		if wt == nil || wt.id != t.ID() {
			if err := m.store.DeleteTopic(ctx, t.Name); err != nil {
				return err
			}
			continue
		}
		if t.Config != wt.topic.Config {
			if _, err := m.store.UpdateTopic(ctx, t.Name, func(c *storage.TopicConfig) { *c = wt.topic.Config }); err != nil {
				return err
			}
		}
		if err := m.restoreSubs(ctx, wt); err != nil {
			return err
		}
	}
	for _, wt := range s.topics {
		if _, err := m.store.Topic(wt.topic.Name); err == nil {
			continue
		}
		st := storage.Stamp{At: wt.topic.CreateTime, ID: wt.id}
		if _, err := m.store.CreateTopicAt(ctx, wt.topic.Name, wt.topic.Config, st); err != nil {
			return err
		}
		if err := m.restoreSubs(ctx, &wt); err != nil {
			return err
		}
	}
	next, err := m.store.RaiseNextIDs(s.next)
	if err != nil {
		return err
	}
	if next != s.next {
		return fmt.Errorf("the store's next ids are %+v, the snapshot's %+v: it made topics or subscriptions outside the metadata group: %w",
			next, s.next, storage.ErrCorrupt)
	}
	index := snap.GetMetadata().GetIndex()
	if err := m.store.SetAdminApplied(MetadataGroup, index); err != nil {
		return err
	}
	m.applied.Store(index)
	return nil
}

// restoreSubs makes the subscriptions of topic wt, which the store has
// under the snapshot's id, match the snapshot's.
func (m *Metadata) restoreSubs(ctx context.Context, wt *metaTopic) error {
	name := wt.topic.Name
	have, err := m.store.Subscriptions(name)
	if err != nil {
		return err
	}
	want := make(map[string]*metaSub, len(wt.subs))
	for i := range wt.subs {
		want[wt.subs[i].sub.Name] = &wt.subs[i]
	}
	kept := make(map[string]bool, len(have))
	for _, sub := range have {
		ws := want[sub.Name]
		if ws == nil || ws.sub.ID != sub.ID {
			if err := m.store.DeleteSubscription(ctx, name, sub.Name); err != nil {
				return err
			}
			continue
		}
		kept[sub.Name] = true
		if !bytes.Equal(sub.Config, ws.sub.Config) {
			if _, err := m.store.UpdateSubscription(ctx, name, sub.Name, ws.sub.Config); err != nil {
				return err
			}
		}
	}
	for _, ws := range wt.subs {
		if kept[ws.sub.Name] {
			continue
		}
		st := storage.Stamp{At: ws.sub.CreateTime, ID: ws.sub.ID}
		if _, err := m.store.CreateSubscriptionAt(ctx, name, ws.sub.Name, ws.sub.Config, ws.cursors, st); err != nil {
			return err
		}
	}
	return nil
}
