package storage

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/dgraph-io/badger/v4"
)

// Subscription is a subscription's stored record. The store keeps its
// config and its cursors as opaque bytes: what they mean is the delivery
// engine's business (package consumer).
type Subscription struct {
	Topic      string
	Name       string
	ID         uint32 // keys the subscription's cursors and acked ids; never reused
	Config     []byte
	CreateTime time.Time
}

// subscriptions are a topic's live subscriptions.
type subscriptions struct {
	mu     sync.RWMutex // guards byName and live
	byName map[string]Subscription
	live   map[uint32]bool
}

func newSubscriptions() *subscriptions {
	return &subscriptions{byName: make(map[string]Subscription), live: make(map[uint32]bool)}
}

func (ss *subscriptions) put(sub Subscription) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	ss.byName[sub.Name] = sub
	ss.live[sub.ID] = true
}

func (ss *subscriptions) remove(sub Subscription) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	delete(ss.byName, sub.Name)
	delete(ss.live, sub.ID)
}

func (ss *subscriptions) get(name string) (Subscription, bool) {
	ss.mu.RLock()
	defer ss.mu.RUnlock()
	sub, ok := ss.byName[name]
	return sub, ok
}

func (ss *subscriptions) isLive(sid uint32) bool {
	ss.mu.RLock()
	defer ss.mu.RUnlock()
	return ss.live[sid]
}

// Subscription record, the value of an s key:
//
//	ver u8 | sid u32 | create time i64 | config (the rest)
func encodeSubRecord(sub *Subscription) []byte {
	b := make([]byte, 0, 13+len(sub.Config))
	b = append(b, recordVersion)
	b = binary.BigEndian.AppendUint32(b, sub.ID)
	b = binary.BigEndian.AppendUint64(b, uint64(sub.CreateTime.UnixNano()))
	return append(b, sub.Config...)
}

func decodeSubRecord(topic, name string, v []byte) (Subscription, error) {
	if len(v) < 13 || v[0] != recordVersion {
		return Subscription{}, fmt.Errorf("subscription record %q/%q: %w", topic, name, ErrCorrupt)
	}
	return Subscription{
		Topic:      topic,
		Name:       name,
		ID:         binary.BigEndian.Uint32(v[1:]),
		CreateTime: time.Unix(0, int64(binary.BigEndian.Uint64(v[5:]))).UTC(),
		Config:     slices.Clone(v[13:]),
	}, nil
}

// ValidateSubscriptionName reports whether name can name a subscription:
// the same rule as topic names.
func ValidateSubscriptionName(name string) error { return validateName("subscription", name) }

// loadSubscriptions reads every subscription record into its topic's set
// and returns the subscription tombstones left by interrupted drops.
func (s *Store) loadSubscriptions(txn *badger.Txn) ([][2]uint32, error) {
	byID := make(map[uint32]*topicHandle, len(s.topics))
	for _, h := range s.topics {
		byID[h.topic.id] = h
	}
	opts := badger.DefaultIteratorOptions
	opts.Prefix = []byte{kindSub}
	it := txn.NewIterator(opts)
	defer it.Close()
	for it.Rewind(); it.Valid(); it.Next() {
		item := it.Item()
		k := item.Key()
		if len(k) < 5 {
			return nil, fmt.Errorf("subscription key %x: %w", k, ErrCorrupt)
		}
		h, ok := byID[binary.BigEndian.Uint32(k[1:])]
		if !ok {
			continue // its topic is being dropped
		}
		err := item.Value(func(v []byte) error {
			sub, err := decodeSubRecord(h.topic.Name, string(k[5:]), v)
			if err == nil {
				h.subs.put(sub)
			}
			return err
		})
		if err != nil {
			return nil, err
		}
	}
	it.Close()
	opts = badger.DefaultIteratorOptions
	opts.Prefix = []byte{kindSubTomb}
	opts.PrefetchValues = false
	ts := txn.NewIterator(opts)
	defer ts.Close()
	var tombs [][2]uint32
	for ts.Rewind(); ts.Valid(); ts.Next() {
		tid, sid, err := decodeSubTombstoneKey(ts.Item().Key())
		if err != nil {
			return nil, err
		}
		tombs = append(tombs, [2]uint32{tid, sid})
	}
	return tombs, nil
}

// CreateSubscription creates a subscription on topic with config and one
// initial cursor state per partition, all in one transaction. If a
// subscription of that name exists, it returns it with
// ErrSubscriptionExists, so the caller can tell an identical create from a
// conflicting one.
func (s *Store) CreateSubscription(ctx context.Context, topic, name string, config []byte, cursors [][]byte) (Subscription, error) {
	return s.CreateSubscriptionAt(ctx, topic, name, config, cursors, Stamp{At: s.opts.Clock.Now()})
}

// CreateSubscriptionAt is CreateSubscription made deterministic: the
// subscription's create time is st.At, not the clock's, and st's Raft entry
// and id apply (see Stamp).
func (s *Store) CreateSubscriptionAt(ctx context.Context, topic, name string, config []byte, cursors [][]byte, st Stamp) (Subscription, error) {
	if err := ValidateSubscriptionName(name); err != nil {
		return Subscription{}, err
	}
	s.adminMu.Lock()
	defer s.adminMu.Unlock()
	h, err := s.handle(topic)
	if err != nil {
		return Subscription{}, err
	}
	if sub, ok := h.subs.get(name); ok {
		return sub, fmt.Errorf("subscription %q on topic %q: %w", name, topic, ErrSubscriptionExists)
	}
	if len(cursors) != len(h.partitions) {
		return Subscription{}, fmt.Errorf("%d cursors for %d partitions: %w", len(cursors), len(h.partitions), ErrInvalidConfig)
	}
	if st.ID != 0 {
		if err := s.subIDFree(h.topic.id, st.ID); err != nil {
			return Subscription{}, err
		}
	}
	if err := s.admitAdmin(writeState, st); err != nil {
		return Subscription{}, err
	}
	sub := Subscription{Topic: topic, Name: name, Config: slices.Clone(config), CreateTime: st.At.UTC().Truncate(time.Microsecond)}
	err = s.update(func(txn *badger.Txn) error {
		id, err := takeID(txn, nextSubIDKey(), st.ID)
		if err != nil {
			return err
		}
		sub.ID = id
		if err := setApplied(txn, st); err != nil {
			return err
		}
		if err := txn.Set(subKey(h.topic.id, name), encodeSubRecord(&sub)); err != nil {
			return err
		}
		for part, c := range cursors {
			k := cursorKey(h.topic.id, uint32(part), id)
			if st.Group != 0 {
				// Replicated: the partitions' own groups may have
				// applied a cursor write of the subscription before the
				// metadata group applied its create here. Their write
				// is the later state, whatever the order on this node.
				if _, err := txn.Get(k); err == nil {
					continue
				} else if !errors.Is(err, badger.ErrKeyNotFound) {
					return err
				}
			}
			if err := txn.Set(k, c); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return Subscription{}, fmt.Errorf("create subscription %q: %w", name, err)
	}
	h.subs.put(sub)
	return sub, nil
}

// subIDFree reports, with ErrIDTaken, whether a live subscription has id,
// or a deleted one of topic tid still has acked ids being dropped under it.
func (s *Store) subIDFree(tid, id uint32) error {
	s.topicsMu.RLock()
	for _, h := range s.topics {
		if h.subs.isLive(id) {
			s.topicsMu.RUnlock()
			return fmt.Errorf("subscription id %d is taken on topic %q: %w", id, h.topic.Name, ErrIDTaken)
		}
	}
	s.topicsMu.RUnlock()
	return s.keyAbsent(subTombstoneKey(tid, id), fmt.Sprintf("subscription id %d", id))
}

// Subscription returns the subscription called name on topic.
func (s *Store) Subscription(topic, name string) (Subscription, error) {
	_, sub, err := s.subscription(topic, name)
	return sub, err
}

// subscription finds the live topic and its subscription called name.
func (s *Store) subscription(topic, name string) (*topicHandle, Subscription, error) {
	h, err := s.handle(topic)
	if err != nil {
		return nil, Subscription{}, err
	}
	sub, ok := h.subs.get(name)
	if !ok {
		return nil, Subscription{}, fmt.Errorf("subscription %q on topic %q: %w", name, topic, ErrSubscriptionNotFound)
	}
	return h, sub, nil
}

// Subscriptions returns topic's subscriptions, ordered by name.
func (s *Store) Subscriptions(topic string) ([]Subscription, error) {
	h, err := s.handle(topic)
	if err != nil {
		return nil, err
	}
	h.subs.mu.RLock()
	subs := make([]Subscription, 0, len(h.subs.byName))
	for _, sub := range h.subs.byName {
		subs = append(subs, sub)
	}
	h.subs.mu.RUnlock()
	slices.SortFunc(subs, func(a, b Subscription) int { return strings.Compare(a.Name, b.Name) })
	return subs, nil
}

// UpdateSubscription replaces a subscription's config.
func (s *Store) UpdateSubscription(ctx context.Context, topic, name string, config []byte) (Subscription, error) {
	return s.UpdateSubscriptionAt(ctx, topic, name, config, Stamp{})
}

// UpdateSubscriptionAt is UpdateSubscription recording st's Raft entry (see
// Stamp); st.At and st.ID are not used.
func (s *Store) UpdateSubscriptionAt(ctx context.Context, topic, name string, config []byte, st Stamp) (Subscription, error) {
	s.adminMu.Lock()
	defer s.adminMu.Unlock()
	h, sub, err := s.subscription(topic, name)
	if err != nil {
		return Subscription{}, err
	}
	if err := s.admitAdmin(writeState, st); err != nil {
		return Subscription{}, err
	}
	sub.Config = slices.Clone(config)
	if err := s.update(func(txn *badger.Txn) error {
		if err := setApplied(txn, st); err != nil {
			return err
		}
		return txn.Set(subKey(h.topic.id, name), encodeSubRecord(&sub))
	}); err != nil {
		return Subscription{}, fmt.Errorf("update subscription %q: %w", name, err)
	}
	h.subs.put(sub)
	return sub, nil
}

// DeleteSubscription deletes a subscription: its record and cursors go in
// one transaction and its acked ids are dropped in the background. The
// caller stops writing for it first: a Write for a deleted subscription
// fails with ErrSubscriptionNotFound, but one already queued still lands.
func (s *Store) DeleteSubscription(ctx context.Context, topic, name string) error {
	return s.DeleteSubscriptionAt(ctx, topic, name, Stamp{})
}

// DeleteSubscriptionAt is DeleteSubscription recording st's Raft entry (see
// Stamp); st.At and st.ID are not used.
func (s *Store) DeleteSubscriptionAt(ctx context.Context, topic, name string, st Stamp) error {
	s.adminMu.Lock()
	defer s.adminMu.Unlock()
	h, sub, err := s.subscription(topic, name)
	if err != nil {
		return err
	}
	if err := s.admitAdmin(writeFree, st); err != nil {
		return err
	}
	h.subs.remove(sub)
	tid := h.topic.id
	err = s.update(func(txn *badger.Txn) error {
		if err := setApplied(txn, st); err != nil {
			return err
		}
		if err := txn.Delete(subKey(tid, name)); err != nil {
			return err
		}
		for part := range h.topic.Config.Partitions {
			if err := txn.Delete(cursorKey(tid, part, sub.ID)); err != nil {
				return err
			}
			if err := txn.Delete(epochKey(tid, part, sub.ID)); err != nil {
				return err
			}
		}
		return txn.Set(subTombstoneKey(tid, sub.ID), nil)
	})
	if err != nil {
		h.subs.put(sub) // nothing was deleted
		return fmt.Errorf("delete subscription %q: %w", name, err)
	}
	s.startBackgroundDrop(subTombstoneKey(tid, sub.ID), ackedIDPrefix(tid, sub.ID))
	return nil
}

// Cursors returns a subscription's cursor state in every partition, as
// last written.
func (s *Store) Cursors(topic string, sid uint32) ([][]byte, error) {
	h, err := s.handle(topic)
	if err != nil {
		return nil, err
	}
	if !h.subs.isLive(sid) {
		return nil, fmt.Errorf("subscription %d on topic %q: %w", sid, topic, ErrSubscriptionNotFound)
	}
	states := make([][]byte, len(h.partitions))
	err = s.db.View(func(txn *badger.Txn) error {
		for part := range states {
			item, err := txn.Get(cursorKey(h.topic.id, uint32(part), sid))
			if err != nil {
				return fmt.Errorf("partition %d: %w", part, err)
			}
			if states[part], err = item.ValueCopy(nil); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read cursors: %w", err)
	}
	return states, nil
}

// AckedIDs reports which of ids the subscription has acked within its
// dedup horizon: acked[i] is true if ids[i] was.
func (s *Store) AckedIDs(topic string, sid uint32, ids []string) (acked []bool, err error) {
	h, err := s.handle(topic)
	if err != nil {
		return nil, err
	}
	acked = make([]bool, len(ids))
	err = s.db.View(func(txn *badger.Txn) error {
		for i, id := range ids {
			if id == "" {
				continue
			}
			_, err := txn.Get(ackedIDKey(h.topic.id, sid, id))
			switch {
			case err == nil:
				acked[i] = true
			case !errors.Is(err, badger.ErrKeyNotFound):
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("look up acked ids: %w", err)
	}
	return acked, nil
}
