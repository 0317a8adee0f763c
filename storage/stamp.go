package storage

import (
	"encoding/binary"
	"fmt"
	"time"

	"github.com/dgraph-io/badger/v4"

	"github.com/ferrymq/ferry/internal/wire"
)

// Stamp makes a topic or subscription change the same on every replica of
// a cluster, where the change arrives as an entry of the metadata Raft
// group (package cluster): it carries what the entry decides instead of
// the local store. The zero Stamp is a plain local change.
type Stamp struct {
	// At is the create time a create records, truncated to microseconds:
	// the leader's clock when it proposed the entry, never the replica's.
	At time.Time
	// Group and Index, when Group is not 0, name the Raft entry the change
	// comes from: Index is stored as Group's applied index (AdminApplied)
	// in the change's own transaction, so a replica that restarts finds
	// exactly the entries whose changes it has, and replays the rest.
	Group, Index uint64
	// ID, when not 0, is the id a create gives the topic or subscription
	// instead of the counter's next one; the counter is raised past it. A
	// snapshot's topics are restored with their ids this way. An id in use
	// is refused with ErrIDTaken.
	ID uint32
}

// setApplied stores st's entry index as its group's applied index, in the
// change's transaction.
func setApplied(txn *badger.Txn, st Stamp) error {
	if st.Group == 0 {
		return nil
	}
	return txn.Set(raftKey(st.Group, raftKeyApplied), binary.BigEndian.AppendUint64(nil, st.Index))
}

// AdminApplied returns the applied index of group's topic and subscription
// changes: the Index of the last Stamp of group stored, or of
// SetAdminApplied; 0 if none was.
func (s *Store) AdminApplied(group uint64) (uint64, error) {
	var index uint64
	err := s.db.View(func(txn *badger.Txn) error {
		return getValue(txn, raftKey(group, raftKeyApplied), func(v []byte) error {
			d := wire.NewDecoder(v, ErrCorrupt)
			index = d.U64()
			return d.End()
		})
	})
	if err != nil {
		return 0, fmt.Errorf("raft group %d applied index: %w", group, err)
	}
	return index, nil
}

// SetAdminApplied stores index as group's applied index: for entries that
// changed nothing (a create of an existing topic, a delete of a missing
// one), which a replay makes again to the same effect, and after restoring
// a snapshot. It is durable under the fsync policy.
func (s *Store) SetAdminApplied(group, index uint64) error {
	if group == 0 {
		return fmt.Errorf("raft group 0: %w", ErrInvalidRaftRequest)
	}
	if err := s.update(func(txn *badger.Txn) error {
		return setApplied(txn, Stamp{Group: group, Index: index})
	}); err != nil {
		return fmt.Errorf("raft group %d: set applied index: %w", group, err)
	}
	return nil
}

// NextIDs are the ids the store's counters give next: to a topic and to a
// subscription. They only go up, so an id is never given twice.
type NextIDs struct {
	Topic, Subscription uint32
}

// NextIDs returns the ids the next topic and subscription creates get.
func (s *Store) NextIDs() (NextIDs, error) {
	var n NextIDs
	err := s.db.View(func(txn *badger.Txn) (err error) {
		if n.Topic, err = readCounter(txn, nextIDKey()); err != nil {
			return err
		}
		n.Subscription, err = readCounter(txn, nextSubIDKey())
		return err
	})
	return n, err
}

// RaiseNextIDs raises the counters to at least n (restoring a snapshot
// taken on a store that gave more ids) and returns what they are then.
func (s *Store) RaiseNextIDs(n NextIDs) (NextIDs, error) {
	s.adminMu.Lock()
	defer s.adminMu.Unlock()
	var got NextIDs
	err := s.update(func(txn *badger.Txn) error {
		for _, c := range []struct {
			key  []byte
			want uint32
			got  *uint32
		}{{nextIDKey(), n.Topic, &got.Topic}, {nextSubIDKey(), n.Subscription, &got.Subscription}} {
			cur, err := readCounter(txn, c.key)
			if err != nil {
				return err
			}
			*c.got = max(cur, c.want)
			if err := txn.Set(c.key, binary.BigEndian.AppendUint32(nil, *c.got)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return NextIDs{}, fmt.Errorf("raise id counters: %w", err)
	}
	return got, nil
}
