package cluster

import (
	"fmt"
	"sync/atomic"

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
// stays a follower and calls no election. The metadata group's entries
// (topic and subscription records, and the empty entries reads wait on
// to see the newest metadata) are small and still taken: reads through
// the node go on. Without this a follower
// appended and applied whatever its groups committed until Badger, short
// of space for a table it maps, died of SIGBUS. Once space is back the
// leaders' next appends (or a snapshot) catch it up.

// diskGate is a Host's view of its store's disk, for refusing appends.
// Safe for concurrent use.
type diskGate struct {
	disk     func() storage.DiskState
	refusing atomic.Bool   // as of the last append looked at
	refused  atomic.Uint64 // appends and snapshots dropped
}

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
// counts it if so, and logs a change of state.
func (h *Host) refuses(group uint64, m *raftpb.Message) bool {
	if group == MetadataGroup || !carriesData(m) {
		return false
	}
	d := h.gate.disk()
	now := d.ReadOnly
	if was := h.gate.refusing.Swap(now); was != now {
		if now {
			h.log.Error("disk space below half the reserve: this node refuses raft appends and snapshots, so leaders do not count it towards a quorum; free space to let it catch up",
				"storage", d.String())
		} else {
			h.log.Info("disk space is back: this node takes raft appends again", "storage", d.String())
		}
	}
	if now {
		h.gate.refused.Add(1)
	}
	return now
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
