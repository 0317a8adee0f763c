package cluster

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"

	"github.com/ferrymq/ferry/internal/clock"
	clusterv1 "github.com/ferrymq/ferry/proto/ferry/cluster/v1"
)

// Host runs the Raft groups of one node: one Group per group, all over
// one Transport and the Raft logs of one storage.Store, ticked by one
// timer. Its methods are safe for concurrent use.
type Host struct {
	opts Options
	log  *slog.Logger
	tr   *Transport

	addMu    sync.Mutex   // serializes AddGroup: a group's log loads once
	groupsMu sync.RWMutex // guards groups and closed
	groups   map[uint64]*Group
	closed   bool
	loops    sync.WaitGroup // the groups' run loops

	awakeMu sync.Mutex          // guards awake
	awake   map[*Group]struct{} // the groups that are not quiesced: the ones tick ticks

	tickMu   sync.Mutex // guards timer and tickStop
	timer    clock.Timer
	tickStop bool

	closeOnce sync.Once
	closeErr  error

	gate diskGate  // refuses appends on a nearly full disk (diskgate.go)
	live *liveness // the peers' nodes, for quiesced groups (liveness.go)

	// applyBacklog is the bytes of entries every group's applier holds,
	// bounded by applyLimit (group_apply.go).
	applyBacklog atomic.Int64
	applyLimit   int64
}

var _ Handler = (*Host)(nil)

// OpenHost starts a node's host: it listens on the node-to-node address,
// connects to the peers and starts ticking. Add groups with AddGroup;
// stop it with Close.
func OpenHost(opts Options) (*Host, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	opts.Peers = maps.Clone(opts.Peers) // the caller's map stays theirs
	h := &Host{
		opts:   opts,
		log:    opts.Logger.With("node", opts.NodeID),
		groups: make(map[uint64]*Group),
		awake:  make(map[*Group]struct{}),
		gate:   diskGate{disk: opts.Store.Disk},
		live:   newLiveness(&opts),

		applyLimit: int64(maxNodeApplyBacklog),
	}
	tr, err := NewTransport(opts.transportOptions(), h)
	if err != nil {
		return nil, err
	}
	h.tr = tr
	if opts.Registerer != nil {
		if err := h.registerMetrics(opts.Registerer); err != nil {
			_ = tr.Close(context.Background())
			return nil, fmt.Errorf("register cluster metrics: %w", err)
		}
	}
	h.tickMu.Lock()
	h.timer = opts.Clock.AfterFunc(opts.TickInterval, h.tick)
	h.tickMu.Unlock()
	h.log.Info("cluster host started", "addr", tr.Addr().String(), "peers", len(opts.Peers))
	return h, nil
}

// NodeID returns this node's id.
func (h *Host) NodeID() uint64 { return h.opts.NodeID }

// Addr returns the node-to-node address the host listens on.
func (h *Host) Addr() net.Addr { return h.tr.Addr() }

// AddGroup starts Raft group id on this node with sm as its state
// machine. A group new to this node's store is bootstrapped with voters
// (which must include this node, and be the same on every voter); one the
// store has a log for restarts from it, its saved configuration
// overriding voters, and replays to sm the committed entries after
// sm.Applied(). It fails with ErrGroupExists if the group runs already,
// ErrInvalidConfig for bad voters, ErrClosed after Close.
func (h *Host) AddGroup(id uint64, voters []uint64, sm StateMachine) (*Group, error) {
	if id == 0 {
		return nil, fmt.Errorf("group id 0: %w", ErrInvalidConfig)
	}
	h.addMu.Lock()
	defer h.addMu.Unlock()
	h.groupsMu.RLock()
	_, exists := h.groups[id]
	closed := h.closed
	h.groupsMu.RUnlock()
	switch {
	case closed:
		return nil, ErrClosed
	case exists:
		return nil, fmt.Errorf("group %d: %w", id, ErrGroupExists)
	}
	g, err := openGroup(h, id, voters, sm)
	if err != nil {
		return nil, err
	}
	h.groupsMu.Lock()
	defer h.groupsMu.Unlock()
	if h.closed {
		return nil, ErrClosed
	}
	h.groups[id] = g
	h.setAwake(g, true)
	h.loops.Go(g.run)
	return g, nil
}

// RemoveGroup stops group id on this node and deletes its Raft log, for a
// group whose state is gone (its topic was deleted). Its waiting
// proposals fail with ErrClosed. It is a no-op for a group the host does
// not run.
func (h *Host) RemoveGroup(ctx context.Context, id uint64) error {
	h.addMu.Lock()
	defer h.addMu.Unlock()
	h.groupsMu.Lock()
	if h.closed {
		h.groupsMu.Unlock()
		return ErrClosed
	}
	g, ok := h.groups[id]
	if ok {
		delete(h.groups, id)
		close(g.stopc)
	}
	h.groupsMu.Unlock()
	if !ok {
		return nil
	}
	select {
	case <-g.done:
	case <-ctx.Done():
		return fmt.Errorf("remove group %d: %w", id, ctx.Err())
	}
	return h.opts.Store.DropRaftLog(id)
}

// initialConf checks the voters of a group to bootstrap and returns its
// initial configuration.
func (h *Host) initialConf(voters []uint64) (*raftpb.ConfState, error) {
	vs := slices.Sorted(slices.Values(voters))
	if len(vs) == 0 {
		return nil, fmt.Errorf("no voters: %w", ErrInvalidConfig)
	}
	if len(slices.Compact(slices.Clone(vs))) != len(vs) {
		return nil, fmt.Errorf("voters %v name a node twice: %w", voters, ErrInvalidConfig)
	}
	if !slices.Contains(vs, h.opts.NodeID) {
		return nil, fmt.Errorf("voters %v leave out this node, %d: %w", voters, h.opts.NodeID, ErrInvalidConfig)
	}
	for _, v := range vs {
		if _, ok := h.opts.Peers[v]; !ok && v != h.opts.NodeID {
			return nil, fmt.Errorf("voter %d is not a known peer: %w", v, ErrInvalidConfig)
		}
	}
	return &raftpb.ConfState{Voters: vs}, nil
}

// Group returns the group id runs on this node, if it does.
func (h *Host) Group(id uint64) (*Group, bool) {
	h.groupsMu.RLock()
	defer h.groupsMu.RUnlock()
	g, ok := h.groups[id]
	return g, ok
}

// Groups returns the groups running on this node, in id order.
func (h *Host) Groups() []*Group {
	h.groupsMu.RLock()
	defer h.groupsMu.RUnlock()
	gs := make([]*Group, 0, len(h.groups))
	for _, g := range h.groups {
		gs = append(gs, g)
	}
	slices.SortFunc(gs, func(a, b *Group) int { return cmp.Compare(a.id, b.id) })
	return gs
}

// tick ticks every group that is not quiesced, tracks the peers'
// liveness and sends them beats, and schedules the next tick.
func (h *Host) tick() {
	h.tickMu.Lock()
	if h.tickStop {
		h.tickMu.Unlock()
		return
	}
	h.timer = h.opts.Clock.AfterFunc(h.opts.TickInterval, h.tick)
	h.tickMu.Unlock()
	h.checkDisk()
	h.tickLiveness()
	h.awakeMu.Lock()
	defer h.awakeMu.Unlock()
	for g := range h.awake { // not the quiesced ones: idle, a tick costs nothing per group
		g.tick()
	}
}

// setAwake adds g to the groups tick ticks, or takes it out.
func (h *Host) setAwake(g *Group, awake bool) {
	h.awakeMu.Lock()
	defer h.awakeMu.Unlock()
	if awake {
		h.awake[g] = struct{}{}
	} else {
		delete(h.awake, g)
	}
}

// Receive hands an inbound message to its group; see Handler. A message
// for a group this node does not run is dropped: the group may not be
// added yet, and its leader resends.
func (h *Host) Receive(group uint64, m *raftpb.Message) {
	if g, ok := h.Group(group); ok {
		g.receive(m)
	}
}

// ReceiveSnapshot hands a snapshot to its group and waits until the group
// has stepped it; see Handler.
func (h *Host) ReceiveSnapshot(ctx context.Context, group uint64, m *raftpb.Message) error {
	g, ok := h.Group(group)
	if !ok {
		return fmt.Errorf("no group %d on node %d", group, h.opts.NodeID)
	}
	if h.refuses(group, m) {
		return h.refusedSnapshot()
	}
	s := inboundSnapshot{m: m, done: make(chan error, 1)}
	select {
	case g.snapc <- s:
	case <-ctx.Done():
		return ctx.Err()
	case <-g.done:
		return g.err
	}
	select {
	case err := <-s.done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	case <-g.done:
		return g.err
	}
}

// exportPartition streams the partition of req's group to a peer
// restoring its snapshot (FetchPartition). The group's state machine must
// be a PartitionStateMachine; the export goes through the partition's
// writer, not the group's loop.
func (h *Host) exportPartition(ctx context.Context, req *clusterv1.FetchPartitionRequest, send func(*clusterv1.FetchPartitionResponse) error) error {
	g, ok := h.Group(req.GetGroupId())
	if !ok {
		return fmt.Errorf("node %d runs no group %d", h.opts.NodeID, req.GetGroupId())
	}
	pm, ok := g.sm.(*PartitionStateMachine)
	if !ok {
		return fmt.Errorf("group %d is not a partition's: %w", req.GetGroupId(), errWrongPartition)
	}
	return pm.export(ctx, req, h.opts.SnapshotChunkBytes, send)
}

// ReportUnreachable passes the transport's report to the group; see
// Handler.
func (h *Host) ReportUnreachable(group, to uint64) {
	if g, ok := h.Group(group); ok {
		g.reportUnreachable(to)
	}
}

// ReportSnapshot passes the transport's report to the group; see Handler.
func (h *Host) ReportSnapshot(group, to uint64, st raft.SnapshotStatus) {
	if g, ok := h.Group(group); ok {
		g.reportSnapshot(to, st)
	}
}

// HandOffLeadership transfers every group this node leads to its most
// caught-up active follower and waits for each transfer, so that a
// graceful shutdown does not leave its groups without a leader for an
// election timeout (a rolling restart then moves leaders in a round trip,
// not in seconds). Call it before Close. A group with no active follower
// (after waiting up to an election timeout for one) keeps its leader; the first transfer that fails is returned after the
// others were tried. Proposals to a group fail with ErrProposalDropped
// while its transfer is under way.
func (h *Host) HandOffLeadership(ctx context.Context) error {
	return h.handOff(ctx, func(uint64) bool { return true })
}

// handOff is HandOffLeadership for the groups whose id match takes.
func (h *Host) handOff(ctx context.Context, match func(group uint64) bool) error {
	var first error
	for _, g := range h.Groups() {
		if !match(g.id) || g.Leader() != h.opts.NodeID {
			continue
		}
		st := g.Status()
		to := transferee(st)
		// Each quorum check (every election timeout) clears the leader's
		// record of active followers until their next answers to its
		// heartbeats: wait for those, up to an election timeout.
		beat := time.Duration(h.opts.HeartbeatTicks) * h.opts.TickInterval
		for waited := 0; st.State == raft.StateLeader && to == 0 && waited < h.opts.ElectionTicks; waited += h.opts.HeartbeatTicks {
			if !clock.Sleep(h.opts.Clock, beat, ctx.Done()) {
				return fmt.Errorf("hand off group %d: %w", st.Group, ctx.Err())
			}
			st = g.Status()
			to = transferee(st)
		}
		if st.State != raft.StateLeader {
			continue
		}
		if to == 0 {
			h.log.Warn("no active follower to hand leadership to", "group", st.Group)
			continue
		}
		if err := g.TransferLeadership(ctx, to); err != nil && first == nil {
			first = fmt.Errorf("hand off group %d to node %d: %w", st.Group, to, err)
		}
	}
	return first
}

// transferee returns a leader's most caught-up active follower, the lowest
// id among equals; 0 if none is active (or st is not a leader's).
func transferee(st Status) uint64 {
	to, best := uint64(0), uint64(0)
	for id, pr := range st.Followers {
		if pr.Active && (to == 0 || pr.Match > best || (pr.Match == best && id < to)) {
			to, best = id, pr.Match
		}
	}
	return to
}

// Close stops the host: the ticks, the transport (inbound and outbound
// streams), then every group, whose waiting proposals fail with
// ErrClosed. It waits for all of it, or for ctx. It does not close the
// store. Idempotent.
func (h *Host) Close(ctx context.Context) error {
	h.closeOnce.Do(func() {
		h.tickMu.Lock()
		h.tickStop = true
		h.timer.Stop()
		h.tickMu.Unlock()
		h.groupsMu.Lock()
		h.closed = true
		groups := make([]*Group, 0, len(h.groups))
		for _, g := range h.groups {
			groups = append(groups, g)
		}
		h.groupsMu.Unlock()
		err := h.tr.Close(ctx)
		for _, g := range groups {
			close(g.stopc)
		}
		done := make(chan struct{})
		go func() {
			h.loops.Wait()
			close(done)
		}()
		select {
		case <-done:
		case <-ctx.Done():
			if err == nil {
				err = fmt.Errorf("close host: groups still stopping: %w", ctx.Err())
			}
		}
		h.closeErr = err
		h.log.Info("cluster host stopped")
	})
	return h.closeErr
}
