package cluster

// Node liveness: one beat per node pair per heartbeat interval, not one
// heartbeat per group. Quiesced groups (quiesce.go) send nothing, so a
// quiesced follower learns that its leader's node died from the host: each
// host sends every peer a beat (an empty batch on the peer's stream) each
// HeartbeatTicks unless a batch went out since the last one, and counts
// every batch it receives from a peer as a sign of the peer's life. A peer
// not heard from for ElectionTicks ticks is down; the first batch from it
// makes it live again. Either change is handed to every group, which wakes
// if it is quiesced and the change concerns it (Group.peersChanged).
//
// Liveness is counted in the host's own ticks, not in wall time: a host
// that was stopped (SIGSTOP) finds no peer down when it continues, and the
// batches its peers queued meanwhile arrive first.

import (
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// liveness is a host's view of its peers' nodes. Its maps are fixed when
// the host opens; the values are atomics.
type liveness struct {
	electionTicks uint64
	ticks         atomic.Uint64 // the host's ticks so far
	peers         map[uint64]*peerLiveness
	wakes         atomic.Uint64 // quiesced groups woken, for the metric
	changes       atomic.Uint64 // peers found down or back up, for tests
}

type peerLiveness struct {
	heard atomic.Uint64 // the host tick at which the last batch from the peer arrived; 0 if none has
	down  atomic.Bool   // as of the last tick; true until the first batch arrives
}

func newLiveness(opts *Options) *liveness {
	l := &liveness{electionTicks: uint64(opts.ElectionTicks), peers: make(map[uint64]*peerLiveness, len(opts.Peers))}
	for id := range opts.Peers {
		if id != opts.NodeID {
			p := &peerLiveness{}
			p.down.Store(true)
			l.peers[id] = p
		}
	}
	return l
}

// heard notes a batch from node id.
func (l *liveness) heard(id uint64) {
	if p := l.peers[id]; p != nil {
		p.heard.Store(max(1, l.ticks.Load()))
	}
}

// tick advances the host's tick count and returns the peers whose state
// changed (true: now down).
func (l *liveness) tick() map[uint64]bool {
	now := l.ticks.Add(1)
	var changed map[uint64]bool
	for id, p := range l.peers {
		h := p.heard.Load()
		down := h == 0 || now-h > l.electionTicks
		if p.down.Swap(down) != down {
			l.changes.Add(1)
			if changed == nil {
				changed = make(map[uint64]bool)
			}
			changed[id] = down
		}
	}
	return changed
}

// gone reports whether node id has not been heard from for two election
// timeouts: a leader leaves such a voter out when it decides to quiesce.
// Twice the timeout that makes a node down, so that a node found down for
// a moment (a late beat under load) is still waited for: quiescing
// without it would leave it, if its group is awake, with no heartbeats
// until it calls an election.
func (l *liveness) gone(id uint64) bool {
	p := l.peers[id]
	return p != nil && l.ticks.Load()-p.heard.Load() > 2*l.electionTicks
}

// isLive reports whether node id was heard from within an election
// timeout; this node is always live.
func (l *liveness) isLive(id uint64) bool {
	p := l.peers[id]
	return p == nil || !p.down.Load()
}

// heard is called by the transport for each batch from node id; see
// beatHandler.
func (h *Host) heard(id uint64) { h.live.heard(id) }

// beatHandler is the part of a Handler that tracks its peers' liveness
// (the Host): the transport calls heard for every batch a peer sends,
// empty beats included.
type beatHandler interface {
	heard(node uint64)
}

// tickLiveness runs at each host tick: it hands liveness changes to every
// group and sends the beats due.
func (h *Host) tickLiveness() {
	changed := h.live.tick()
	if h.live.ticks.Load()%uint64(h.opts.HeartbeatTicks) == 0 {
		h.tr.beat()
	}
	if len(changed) == 0 {
		return
	}
	for id, down := range changed {
		if down {
			h.log.Info("peer node silent for an election timeout: down", "peer", id)
		} else {
			h.log.Info("peer node live", "peer", id)
		}
	}
	h.groupsMu.RLock()
	defer h.groupsMu.RUnlock()
	for _, g := range h.groups {
		g.reportPeers(changed)
	}
}

// QuiescedGroups returns how many of the groups on this node are at rest.
func (h *Host) QuiescedGroups() int {
	h.groupsMu.RLock()
	defer h.groupsMu.RUnlock()
	n := 0
	for _, g := range h.groups {
		if g.asleep.Load() {
			n++
		}
	}
	return n
}

// registerMetrics registers the host's metrics on reg.
func (h *Host) registerMetrics(reg prometheus.Registerer) error {
	for _, c := range []prometheus.Collector{
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "ferry_raft_groups_quiesced",
			Help: "Raft groups at rest on this node: no ticks, no heartbeats until a proposal or a message wakes them."},
			func() float64 { return float64(h.QuiescedGroups()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "ferry_raft_group_wakes_total",
			Help: "Times a quiesced Raft group on this node woke (a proposal, a message, a peer node down or back)."},
			func() float64 { return float64(h.live.wakes.Load()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "ferry_raft_peers_live",
			Help: "Peer nodes this node heard from within an election timeout (node-to-node beats or Raft traffic)."},
			func() float64 { return float64(h.livePeers()) }),
	} {
		if err := reg.Register(c); err != nil {
			return err
		}
	}
	return nil
}

func (h *Host) livePeers() int {
	n := 0
	for id := range h.live.peers {
		if h.live.isLive(id) {
			n++
		}
	}
	return n
}
