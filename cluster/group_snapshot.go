package cluster

// A group's snapshots: taking one when the log has grown (maybeSnapshot),
// restoring one a leader sent, and fetching the state from peers when the
// snapshot is only a marker.

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/ferrymq/ferry/internal/clock"
	"github.com/ferrymq/ferry/storage"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// restore replaces the state machine's state with a snapshot from the
// leader, already saved, once the applier has applied what it was handed:
// the state machine is the loop's meanwhile.
func (g *Group) restore(snap *raftpb.Snapshot) error {
	if err := g.waitApplied(); err != nil {
		return err
	}
	meta := snap.GetMetadata()
	if pr, ok := g.sm.(peerRestorer); ok && len(snap.GetData()) > 0 {
		if err := g.restoreFromPeers(pr, snap); err != nil {
			return err
		}
	} else if err := g.sm.Restore(snap); err != nil {
		return fmt.Errorf("restore the state machine from the snapshot at %d: %w", meta.GetIndex(), err)
	}
	g.queued, g.smApplied = meta.GetIndex(), meta.GetIndex()
	g.ap.skipTo(meta.GetIndex())
	g.snapIndex.Store(meta.GetIndex())
	g.confState = proto.Clone(meta.GetConfState()).(*raftpb.ConfState)
	g.log.Info("state machine restored from a snapshot", "index", meta.GetIndex(), "term", meta.GetTerm(), "bytes", len(snap.GetData()))
	return nil
}

// restoreFromPeers restores snap, saved already, through the peerRestorer
// state machine from a peer: the node that sent it first (if known), then
// the other voters of its configuration in turn, over and over with a
// backoff (ReconnectMin doubling up to ReconnectMax, on the clock) until
// one works or the group stops. Meanwhile the loop does nothing else: the
// group cannot apply an entry before it has the snapshot's state. A
// snapshot this state machine cannot take (storage.ErrCorrupt) fails at
// once.
func (g *Group) restoreFromPeers(pr peerRestorer, snap *raftpb.Snapshot) error {
	index := snap.GetMetadata().GetIndex()
	var peers []uint64
	if g.snapFrom != 0 && g.snapFrom != g.node {
		peers = append(peers, g.snapFrom)
	}
	cs := snap.GetMetadata().GetConfState()
	for _, id := range slices.Sorted(slices.Values(slices.Concat(cs.GetVoters(), cs.GetLearners()))) {
		if id != g.node && !slices.Contains(peers, id) {
			peers = append(peers, id)
		}
	}
	if len(peers) == 0 {
		return fmt.Errorf("restore the snapshot at %d: no other node to fetch its state from", index)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-g.stopc:
			cancel()
		case <-ctx.Done():
		}
	}()
	wait := g.h.opts.ReconnectMin
	for {
		for _, peer := range peers {
			err := pr.restoreFrom(ctx, snap, g.h.tr, g.id, peer)
			if err == nil {
				g.log.Info("state machine restored from a peer", "index", index, "peer", peer, "applied", g.sm.Applied())
				return nil
			}
			if ctx.Err() != nil {
				return fmt.Errorf("restore the snapshot at %d: %w", index, errStopping)
			}
			if errors.Is(err, storage.ErrCorrupt) {
				return fmt.Errorf("restore the snapshot at %d: %w", index, err)
			}
			g.log.Warn("state machine not restored from a peer; trying the next", "index", index, "peer", peer, "err", err)
		}
		if !g.sleep(wait) {
			return fmt.Errorf("restore the snapshot at %d: %w", index, errStopping)
		}
		wait = min(2*wait, g.h.opts.ReconnectMax)
	}
}

// sleep waits d on the host's clock; false if the group stops first.
func (g *Group) sleep(d time.Duration) bool { return clock.Sleep(g.h.opts.Clock, d, g.stopc) }

// saveSnapshot saves a snapshot the applier took (applier.maybeSnapshot)
// as the Raft snapshot at its index, and compacts the log up to
// SnapshotKeepEntries behind. One older than the latest (a restore from
// the leader overtook it) is dropped.
func (g *Group) saveSnapshot(t takenSnapshot) error {
	if t.index <= g.snapIndex.Load() {
		return nil
	}
	// A restart starts from the snapshot as applied, which Raft takes
	// only up to the saved commit index: the hard state that committed
	// t.index was handed with its entries, saved or in unsavedHS.
	if err := g.saveHardState(); err != nil {
		return err
	}
	if _, err := g.rlog.CreateSnapshot(t.index, t.conf, t.data); err != nil {
		return fmt.Errorf("save the snapshot at %d: %w", t.index, err)
	}
	g.snapIndex.Store(t.index)
	if keep := g.h.opts.SnapshotKeepEntries; t.index > keep {
		first, err := g.rlog.FirstIndex()
		if err != nil {
			return err
		}
		if ci := t.index - keep; ci >= first {
			if err := g.rlog.Compact(ci); err != nil {
				return fmt.Errorf("compact the log to %d: %w", ci, err)
			}
		}
	}
	g.log.Debug("snapshot taken", "index", t.index, "bytes", len(t.data))
	return nil
}
