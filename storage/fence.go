package storage

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/dgraph-io/badger/v4"
)

// Owner epochs fence off a subscription's former owners (cluster mode,
// docs/cluster.md). A subscription's delivery engine runs on one node, its
// owner, which writes the subscription's cursors and acked ids into the
// partitions of its topic, each a Raft group of its own. When ownership
// moves, the old owner may not know yet (it was stopped, or cut off) and
// its writes may still reach a partition's group after the new owner loaded
// the cursors: an ack confirmed twice, a cursor gone back.
//
// So every such write carries the epoch of the ownership it was decided
// under (Write.Epoch), and each partition keeps the highest epoch it has
// seen per subscription, beside the cursor:
//
//	c <tid u32> <part u32> <sid u32> 'e'  → epoch u64
//
// apply refuses a command whose epoch is below it — on every replica alike,
// since every replica applies the same entries in the same order — and the
// command changes nothing, its messages included; its request gets
// ErrFenced. A command with a higher epoch raises it. A new owner first
// raises the epoch in every partition (Fence), and only then reads the
// cursors: whatever an older owner wrote before the fence is in what it
// reads, and nothing it writes after lands.
//
// A single node never fences and writes with epoch 0: it never has an
// epoch key, and the check is one lookup in an empty map.

// epochSuffix ends an epoch key: the cursor key and one byte.
const epochSuffix byte = 'e'

func epochKey(tid, part, sid uint32) []byte {
	return append(cursorKey(tid, part, sid), epochSuffix)
}

// isEpochKey reports whether k, a key of the c kind, is an epoch key.
func isEpochKey(k []byte) bool {
	return len(k) == partitionPrefixLen+4+1 && k[len(k)-1] == epochSuffix
}

// loadEpochs reads the partition's epochs, once per state.
func (s *partitionState) loadEpochs(txn *badger.Txn) error {
	if s.epochs != nil {
		return nil
	}
	epochs := make(map[uint32]uint64)
	opts := badger.DefaultIteratorOptions
	opts.Prefix = partitionPrefix(kindCursor, s.tid, s.part)
	opts.PrefetchValues = false
	it := txn.NewIterator(opts)
	defer it.Close()
	for it.Rewind(); it.Valid(); it.Next() {
		k := it.Item().Key()
		if !isEpochKey(k) {
			continue
		}
		err := it.Item().Value(func(v []byte) error {
			if len(v) != 8 {
				return fmt.Errorf("epoch key %x: %w", k, ErrCorrupt)
			}
			epochs[binary.BigEndian.Uint32(k[partitionPrefixLen:])] = binary.BigEndian.Uint64(v)
			return nil
		})
		if err != nil {
			return err
		}
	}
	s.epochs = epochs
	return nil
}

// epoch is subscription sid's highest epoch, this apply's raises included.
func (s *partitionState) epoch(sid uint32) uint64 {
	if e, ok := s.raised[sid]; ok {
		return e
	}
	return s.epochs[sid]
}

// raise stores epoch as sid's highest, if it is higher.
func (s *partitionState) raise(txn *badger.Txn, sid uint32, epoch uint64) error {
	if epoch <= s.epoch(sid) {
		return nil
	}
	if err := txn.Set(epochKey(s.tid, s.part, sid), binary.BigEndian.AppendUint64(nil, epoch)); err != nil {
		return fmt.Errorf("set epoch of subscription %d: %w", sid, err)
	}
	if s.raised == nil {
		s.raised = make(map[uint32]uint64, 1)
	}
	s.raised[sid] = epoch
	return nil
}

// admit checks c's epoch against that of every subscription whose state
// c writes, and raises theirs to it. refused is ErrFenced, and nothing
// was written, if one has seen a higher epoch; err is a failed read or
// write.
func (s *partitionState) admit(txn *badger.Txn, c *command) (refused, err error) {
	if !c.writes() {
		return nil, nil // messages alone: no subscription's state
	}
	if err := s.loadEpochs(txn); err != nil {
		return nil, err
	}
	acked := c.acked != nil && len(c.acked.ids) > 0
	for _, w := range c.cursors {
		if refused := s.stale(w.sid, c.epoch, "write of"); refused != nil {
			return refused, nil
		}
	}
	if acked {
		if refused := s.stale(c.acked.sid, c.epoch, "write of"); refused != nil {
			return refused, nil
		}
	}
	for _, w := range c.cursors {
		if err := s.raise(txn, w.sid, c.epoch); err != nil {
			return nil, err
		}
	}
	if acked {
		return nil, s.raise(txn, c.acked.sid, c.epoch)
	}
	return nil, nil
}

// stale is ErrFenced if sid has seen an epoch above epoch: what, at that
// epoch, comes from an owner a newer one fenced off.
func (s *partitionState) stale(sid uint32, epoch uint64, what string) error {
	if have := s.epoch(sid); epoch < have {
		return fmt.Errorf("subscription %d: %s owner epoch %d, partition %d has seen %d: %w", sid, what, epoch, s.part, have, ErrFenced)
	}
	return nil
}

// fence raises sid's epoch to epoch; refused is ErrFenced if it has seen
// a higher one (a newer owner fenced this one off).
func (s *partitionState) fence(txn *badger.Txn, sid uint32, epoch uint64) (refused, err error) {
	if err := s.loadEpochs(txn); err != nil {
		return nil, err
	}
	if refused := s.stale(sid, epoch, "fence at"); refused != nil {
		return refused, nil
	}
	return nil, s.raise(txn, sid, epoch)
}

// Fence makes this caller subscription sid's owner at epoch in every
// partition of topic: each partition raises the subscription's epoch to
// epoch, and from then on refuses its writes of a lower one. It returns
// once every partition has applied its fence here — in a replicated store,
// once every entry committed before it is applied too, so Cursors then
// reads every write an older owner made before it was fenced off. It fails
// with ErrFenced if a partition has seen a higher epoch: a newer owner took
// over first. The caller's writes carry epoch (Write.Epoch).
func (s *Store) Fence(ctx context.Context, topic string, sid uint32, epoch uint64) error {
	h, err := s.handle(topic)
	if err != nil {
		return err
	}
	if !h.subs.isLive(sid) {
		return fmt.Errorf("subscription %d on topic %q: %w", sid, topic, ErrSubscriptionNotFound)
	}
	if err := s.guard.admit(writeState, 0); err != nil {
		return err
	}
	reqs := make([]*request, 0, len(h.partitions))
	for _, p := range h.partitions {
		r, err := p.submit(ctx, command{kind: cmdFence, sid: sid, epoch: epoch})
		if err != nil {
			return err
		}
		reqs = append(reqs, r)
	}
	var errs []error
	for _, r := range reqs {
		select {
		case <-r.done:
			errs = append(errs, r.err)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return errors.Join(errs...)
}
