package cluster

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"go.etcd.io/raft/v3/raftpb"

	"github.com/ferrymq/ferry/storage"
)

// A node whose data directory's filesystem is below half its disk reserve
// (storage.DiskState.ReadOnly: the level at which a single broker refuses
// every write but deletes), or whose store turned read-only on a disk
// error, refuses what would grow its partitions' Raft logs: appends that
// carry entries and snapshots. They are dropped before they reach the
// RawNode, so the node acknowledges nothing it could not hold, and a
// leader cannot count it towards a quorum; heartbeats still go, so it
// stays a follower and calls no election. A partition group it leads it
// hands to its most caught-up follower (its own publishes are refused
// for disk space already), retrying while it refuses; with its log
// behind it cannot win an election back. The metadata group's entries
// (topic and subscription records, and the empty entries reads wait on
// to see the newest metadata) are small and still taken: reads through
// the node go on. Without this a follower
// appended and applied whatever its groups committed until Badger, short
// of space for a table it maps, died of SIGBUS. Once space is back the
// leaders' next appends (or a snapshot) catch it up.

// diskGate is a Host's view of its store's disk, for refusing appends.
// Safe for concurrent use.
type diskGate struct {
	disk       func() storage.DiskState
	refusing   atomic.Bool   // as of the last tick
	refused    atomic.Uint64 // appends and snapshots dropped
	handingOff atomic.Bool   // a hand-off of partition groups is under way
	ticks      atomic.Uint64 // ticks while refusing
}

const (
	// handOffTimeout bounds one round of handing partition groups off.
	handOffTimeout = 5 * time.Second
	// handOffTicks: while refusing, a round starts every this many ticks
	// (the first at once).
	handOffTicks = 10
)

// carriesData reports whether m would grow this node's Raft log: an
// append with entries, or a snapshot.
func carriesData(m *raftpb.Message) bool {
	switch m.GetType() {
	case raftpb.MsgApp:
		return len(m.GetEntries()) > 0
	case raftpb.MsgSnap:
		return true
	}
	return false
}

// refuses reports whether m, for group, must be dropped for disk space,
// and counts it if so.
func (h *Host) refuses(group uint64, m *raftpb.Message) bool {
	if group == MetadataGroup || !carriesData(m) || !h.gate.disk().ReadOnly {
		return false
	}
	h.gate.refused.Add(1)
	return true
}

// checkDisk runs at every tick: it logs a change of state and, while the
// node refuses, hands off the partition groups it leads (one round at a
// time).
func (h *Host) checkDisk() {
	d := h.gate.disk()
	now := d.ReadOnly
	if was := h.gate.refusing.Swap(now); was != now {
		if now {
			h.log.Error("disk space below half the reserve: this node refuses raft appends and snapshots of its partitions, so leaders do not count it towards a quorum, and hands off the partitions it leads; free space to let it catch up",
				"storage", d.String())
		} else {
			h.log.Info("disk space is back: this node takes raft appends again", "storage", d.String())
		}
	}
	if !now {
		h.gate.ticks.Store(0)
		return
	}
	if h.gate.ticks.Add(1)%handOffTicks != 1 || !h.gate.handingOff.CompareAndSwap(false, true) {
		return
	}
	h.groupsMu.RLock()
	defer h.groupsMu.RUnlock()
	if h.closed {
		h.gate.handingOff.Store(false)
		return
	}
	h.loops.Go(func() {
		defer h.gate.handingOff.Store(false)
		ctx, cancel := context.WithTimeout(context.Background(), handOffTimeout)
		defer cancel()
		if err := h.handOff(ctx, func(group uint64) bool { return group != MetadataGroup }); err != nil {
			h.log.Warn("handing off a partition on a full disk failed; retrying", "err", err)
		}
	})
}

// RefusingAppends reports whether this node refuses Raft appends and
// snapshots now for disk space (its store below half its reserve, or
// read-only on a disk error).
func (h *Host) RefusingAppends() bool { return h.gate.disk().ReadOnly }

// RefusedAppends is how many Raft appends and snapshots this node has
// dropped for disk space since it started.
func (h *Host) RefusedAppends() uint64 { return h.gate.refused.Load() }

// refusedSnapshot is ReceiveSnapshot's answer while the node refuses.
func (h *Host) refusedSnapshot() error {
	return fmt.Errorf("node %d refuses snapshots: %s", h.opts.NodeID, h.gate.disk().String())
}
