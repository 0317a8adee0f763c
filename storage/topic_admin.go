package storage

// Topic admin: create, update and delete a topic, each also as the
// deterministic ...At form a Raft entry applies (see Stamp).

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/dgraph-io/badger/v4"

	"github.com/ferrymq/ferry/internal/wire"
)

// CreateTopic creates a topic. cfg's zero fields take their defaults. If the
// topic exists with the same effective config, CreateTopic returns it and
// changes nothing; with another config it returns ErrTopicExists.
func (s *Store) CreateTopic(ctx context.Context, name string, cfg TopicConfig) (Topic, error) {
	return s.CreateTopicAt(ctx, name, cfg, Stamp{At: s.opts.Clock.Now()})
}

// CreateTopicAt is CreateTopic made deterministic: the topic's create time
// is st.At, not the clock's, and st's Raft entry and id apply (see Stamp).
// A topic that exists with the same effective config is returned as it is,
// whatever st says, and nothing is written.
func (s *Store) CreateTopicAt(ctx context.Context, name string, cfg TopicConfig, st Stamp) (Topic, error) {
	if err := ValidateTopicName(name); err != nil {
		return Topic{}, err
	}
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return Topic{}, err
	}
	s.adminMu.Lock()
	defer s.adminMu.Unlock()
	if s.isClosing() {
		return Topic{}, ErrClosed
	}
	if err := s.admitAdmin(writeState, st); err != nil {
		return Topic{}, err
	}
	if h, err := s.handle(name); err == nil {
		if h.topic.Config == cfg {
			return h.topic, nil
		}
		return Topic{}, fmt.Errorf("topic %q: %w", name, ErrTopicExists)
	} else if !errors.Is(err, ErrTopicNotFound) {
		return Topic{}, err
	}

	if st.ID != 0 {
		if err := s.topicIDFree(st.ID); err != nil {
			return Topic{}, err
		}
	}
	t := Topic{Name: name, Config: cfg, CreateTime: st.At.UTC().Truncate(time.Microsecond)}
	err := s.update(func(txn *badger.Txn) error {
		id, err := takeID(txn, nextIDKey(), st.ID)
		if err != nil {
			return err
		}
		t.id = id
		if err := setApplied(txn, st); err != nil {
			return err
		}
		if err := txn.Set(topicKey(name), encodeTopicRecord(&t)); err != nil {
			return err
		}
		empty := partitionMeta{}
		for part := range cfg.Partitions {
			if err := txn.Set(partitionKey(id, part), empty.encode()); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return Topic{}, fmt.Errorf("create topic %q: %w", name, err)
	}
	h := &topicHandle{topic: t, subs: newSubscriptions()}
	for part := range cfg.Partitions {
		st := partitionState{tid: t.id, part: part, dedup: newDedupIndex()}
		h.partitions = append(h.partitions, newPartition(name, st, cfg.DedupWindow, s.db, s.sync, &s.opts, s.tails))
	}
	s.topicsMu.Lock()
	s.topics[name] = h
	s.topicsMu.Unlock()
	return t, nil
}

// takeID takes the next id from the counter at key (topic or subscription
// ids: never reused), starting at 1; or, if want is not 0, returns want and
// raises the counter past it. The caller has checked that want is free.
func takeID(txn *badger.Txn, key []byte, want uint32) (uint32, error) {
	next, err := readCounter(txn, key)
	if err != nil {
		return 0, err
	}
	id := next
	if want != 0 {
		id = want
	}
	return id, txn.Set(key, binary.BigEndian.AppendUint32(nil, max(next, id+1)))
}

// readCounter returns the id the counter at key gives next: 1 on a store
// that never gave one.
func readCounter(txn *badger.Txn, key []byte) (uint32, error) {
	id := uint32(1)
	err := getValue(txn, key, func(v []byte) error {
		d := wire.NewDecoder(v, ErrCorrupt)
		id = d.U32()
		return d.End()
	})
	if err != nil {
		return 0, fmt.Errorf("id counter %q: %w", key, err)
	}
	return id, nil
}

// topicIDFree reports, with ErrIDTaken, whether a live topic has id or a
// deleted one's data under it is still being dropped (which would drop the
// new topic's data too).
func (s *Store) topicIDFree(id uint32) error {
	s.topicsMu.RLock()
	for _, h := range s.topics {
		if h.topic.id == id {
			s.topicsMu.RUnlock()
			return fmt.Errorf("topic id %d is topic %q's: %w", id, h.topic.Name, ErrIDTaken)
		}
	}
	s.topicsMu.RUnlock()
	return s.keyAbsent(tombstoneKey(id), fmt.Sprintf("topic id %d", id))
}

// keyAbsent fails with ErrIDTaken, naming what, if key exists.
func (s *Store) keyAbsent(key []byte, what string) error {
	return s.db.View(func(txn *badger.Txn) error {
		_, err := txn.Get(key)
		switch {
		case errors.Is(err, badger.ErrKeyNotFound):
			return nil
		case err != nil:
			return err
		}
		return fmt.Errorf("%s: a deleted one's data is still being dropped: %w", what, ErrIDTaken)
	})
}

// UpdateTopic applies change to a copy of the topic's config and stores the
// result. The partition count cannot change.
func (s *Store) UpdateTopic(ctx context.Context, name string, change func(*TopicConfig)) (Topic, error) {
	return s.UpdateTopicAt(ctx, name, change, Stamp{})
}

// UpdateTopicAt is UpdateTopic recording st's Raft entry (see Stamp);
// st.At and st.ID are not used. change must be deterministic for the
// update to be.
func (s *Store) UpdateTopicAt(ctx context.Context, name string, change func(*TopicConfig), st Stamp) (Topic, error) {
	s.adminMu.Lock()
	defer s.adminMu.Unlock()
	h, err := s.handle(name)
	if err != nil {
		return Topic{}, err
	}
	t := h.topic
	change(&t.Config)
	t.Config = t.Config.WithDefaults()
	if t.Config.Partitions != h.topic.Config.Partitions {
		return Topic{}, fmt.Errorf("partitions cannot change from %d: ids and keys would move to other partitions and escape dedup: %w",
			h.topic.Config.Partitions, ErrInvalidConfig)
	}
	if err := t.Config.Validate(); err != nil {
		return Topic{}, err
	}
	if err := s.admitAdmin(writeState, st); err != nil {
		return Topic{}, err
	}
	if err := s.update(func(txn *badger.Txn) error {
		if err := setApplied(txn, st); err != nil {
			return err
		}
		return txn.Set(topicKey(name), encodeTopicRecord(&t))
	}); err != nil {
		return Topic{}, fmt.Errorf("update topic %q: %w", name, err)
	}
	s.topicsMu.Lock()
	s.topics[name] = &topicHandle{topic: t, partitions: h.partitions, subs: h.subs}
	s.topicsMu.Unlock()
	return t, nil
}

// DeleteTopic deletes a topic. Its writers finish what is queued, the topic
// record goes in one transaction, and its messages are dropped in the background (resumed at the next Open if interrupted).
func (s *Store) DeleteTopic(ctx context.Context, name string) error {
	return s.DeleteTopicAt(ctx, name, Stamp{})
}

// DeleteTopicAt is DeleteTopic recording st's Raft entry (see Stamp);
// st.At and st.ID are not used.
func (s *Store) DeleteTopicAt(ctx context.Context, name string, st Stamp) error {
	s.adminMu.Lock()
	defer s.adminMu.Unlock()
	h, err := s.handle(name)
	if err != nil {
		return err
	}
	if err := s.admitAdmin(writeFree, st); err != nil {
		return err
	}
	s.topicsMu.Lock()
	delete(s.topics, name)
	s.topicsMu.Unlock()
	for _, p := range h.partitions {
		p.close()
	}
	tid := h.topic.id
	err = s.update(func(txn *badger.Txn) error {
		if err := setApplied(txn, st); err != nil {
			return err
		}
		if err := txn.Delete(topicKey(name)); err != nil {
			return err
		}
		for part := range h.topic.Config.Partitions {
			if err := txn.Delete(partitionKey(tid, part)); err != nil {
				return err
			}
		}
		return txn.Set(tombstoneKey(tid), nil)
	})
	if err != nil {
		return fmt.Errorf("delete topic %q: %w", name, err)
	}
	s.startTopicDrop(tid)
	return nil
}
