package cluster

// A group: its state, how it opens (openGroup), and what the node and the
// host call on it (Propose, do, the transport's reports). Its loop is in
// group_run.go; applying, snapshots and leadership in group_apply.go,
// group_snapshot.go and group_leader.go.

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"

	"github.com/ferrymq/ferry/storage"
)

// Raft's flow-control limits, the same for every group.
const (
	// maxSizePerMsg bounds the entries of one append message (at least one
	// entry is sent, however large).
	maxSizePerMsg = 1 << 20
	// maxInflightMsgs bounds the append messages in flight to a follower.
	maxInflightMsgs = 256
	// maxUncommittedBytes bounds what a leader holds proposed and not yet
	// committed; beyond it proposals fail with ErrProposalDropped.
	maxUncommittedBytes = 64 << 20
	// maxCommittedPerReady bounds the bytes of entries one Ready hands to
	// the applier.
	maxCommittedPerReady = 16 << 20
)

// Per-iteration batching of the group loop.
const (
	// maxStepBatch is how many queued messages one iteration steps.
	maxStepBatch = 256
	// maxProposeBatch and maxProposeBytes bound the proposals one
	// iteration takes: one Raft entry each, appended and saved together.
	maxProposeBatch = 1024
	maxProposeBytes = 4 << 20
	// saveChunkBytes bounds the entries of one RaftLog.Save, well under
	// what one Badger transaction takes (15% of a 64 MiB memtable).
	saveChunkBytes = 4 << 20
	// recvQueue is how many inbound messages may wait for the loop before
	// more are dropped (Raft resends).
	recvQueue = 4096
	// proposeQueue is how many proposals may wait for the loop before
	// Propose blocks (on ctx).
	proposeQueue = 4096
)

// Group is one Raft group on this node: a raft.RawNode over the group's
// storage.RaftLog, driven by one goroutine (run) that owns the RawNode
// and every field marked "owned by run", and an applier goroutine that
// applies the committed entries to the state machine (group_apply.go).
// Other goroutines talk to it through channels. All exported methods are
// safe for concurrent use.
type Group struct {
	id   uint64
	node uint64
	h    *Host
	rlog *storage.RaftLog
	sm   StateMachine
	log  *slog.Logger

	// Owned by run.
	rn          *raft.RawNode
	pending     map[uint64]*proposal // by seq: proposed and not handed to the applier yet
	pendTerm    uint64               // the term the pending proposals were made in
	pendLead    uint64               // and the leader they were made under (this node, or the one forwarded to)
	ticks       uint64               // ticks taken, the clock of forwarded proposals
	queued      uint64               // last index handed to the applier (entries of Raft's own too)
	smApplied   uint64               // entries up to here are in the state machine already (a restart)
	confState   *raftpb.ConfState
	snapFrom    uint64            // the node that sent the last snapshot stepped: where a peerRestorer fetches first
	restoreOpen *raftpb.Snapshot  // a snapshot openGroup left to run to restore from peers, before anything else
	unsavedHS   *raftpb.HardState // the latest hard state, if save put it off
	savedTerm   uint64            // the term and vote last saved
	savedVote   uint64
	transfers   []*transfer
	lead        uint64 // as last seen, to notice changes
	term        uint64
	quiesced    bool   // at rest: ticks are ignored (quiesce.go)
	silent      uint64 // ticks an awake follower has not heard from its leader

	tickc   chan struct{} // capacity 1: ticks the loop has not taken merge
	recvq   *inbox[*raftpb.Message]
	propq   *inbox[*proposal]
	snapc   chan inboundSnapshot
	ctrlc   chan func()
	reportc chan struct{} // capacity 1: reports are waiting
	stopc   chan struct{} // closed by Host.Close
	done    chan struct{} // closed when run has returned

	reportsMu   sync.Mutex // guards unreachable, snapReports and peers
	unreachable map[uint64]struct{}
	snapReports []snapshotReport
	peers       map[uint64]bool // peer nodes found down (true) or back up, not taken yet

	asleep atomic.Bool // quiesced, as run last set it: the Host does not tick it

	ap        *applier      // applies what run hands it; run and stop call it
	applied   atomic.Uint64 // last index applied (entries of Raft's own too): the applier's, or run's while the applier is idle
	snapIndex atomic.Uint64 // index of the latest snapshot; written by run

	leader atomic.Uint64 // the leader as last seen by run
	seq    atomic.Uint64 // the last proposal seq handed out

	watchMu     sync.Mutex // guards watchers, current and watchClosed
	watchers    map[chan LeaderChange]struct{}
	current     LeaderChange
	watchClosed bool

	stopMu  sync.RWMutex // guards stopped; ProposeAsync queues under it, so stop answers what it queued
	stopped bool
	err     error  // why run returned; written before done closes (and before stopped)
	final   Status // the status when run returned; written before done closes
}

// inboundSnapshot is a MsgSnap from the transport, waiting to be stepped.
type inboundSnapshot struct {
	m    *raftpb.Message
	done chan error // capacity 1
}

type snapshotReport struct {
	to uint64
	st raft.SnapshotStatus
}

// transfer is a TransferLeadership call waiting for the outcome.
type transfer struct {
	to   uint64
	done chan error // capacity 1
}

// openGroup loads group id's Raft log, bootstraps it with voters if it is
// new, brings sm up to the log's snapshot if it is behind it, and makes
// the RawNode. The caller starts run.
func openGroup(h *Host, id uint64, voters []uint64, sm StateMachine) (*Group, error) {
	rlog, err := h.opts.Store.RaftLog(id)
	if err != nil {
		return nil, err
	}
	hs, cs, err := rlog.InitialState()
	if err != nil {
		return nil, err
	}
	last, err := rlog.LastIndex()
	if err != nil {
		return nil, err
	}
	lg := h.log.With("group", id)
	bootstrap := raft.IsEmptyHardState(hs) && last == 0
	if bootstrap {
		if cs, err = h.initialConf(voters); err != nil {
			return nil, fmt.Errorf("group %d: %w", id, err)
		}
		// A new group starts from a snapshot at index 1 holding its
		// configuration (raft.NewRawNode's advice): every replica
		// bootstraps the same, so their logs agree from the start.
		snap := &raftpb.Snapshot{Metadata: &raftpb.SnapshotMetadata{Index: new(uint64(1)), Term: new(uint64(1)), ConfState: cs}}
		if err := rlog.Save(nil, nil, snap); err != nil {
			return nil, fmt.Errorf("group %d: bootstrap: %w", id, err)
		}
	}
	snap, err := rlog.Snapshot()
	if err != nil {
		return nil, err
	}
	snapIndex := snap.GetMetadata().GetIndex()
	smApplied, restoreOpen, err := catchUp(id, sm, snap, last)
	if err != nil {
		return nil, err
	}
	rn, err := raft.NewRawNode(h.raftConfig(rlog, snapIndex, lg))
	if err != nil {
		return nil, fmt.Errorf("group %d: %w", id, err)
	}
	g := &Group{
		id:          id,
		node:        h.opts.NodeID,
		h:           h,
		rlog:        rlog,
		sm:          sm,
		log:         lg,
		rn:          rn,
		pending:     make(map[uint64]*proposal),
		queued:      snapIndex,
		smApplied:   smApplied,
		confState:   cs,
		restoreOpen: restoreOpen,
		savedTerm:   hs.GetTerm(),
		savedVote:   hs.GetVote(),
		tickc:       make(chan struct{}, 1),
		recvq:       newInbox[*raftpb.Message](recvQueue),
		propq:       newInbox[*proposal](proposeQueue),
		snapc:       make(chan inboundSnapshot),
		ctrlc:       make(chan func()),
		reportc:     make(chan struct{}, 1),
		stopc:       make(chan struct{}),
		done:        make(chan struct{}),
		unreachable: make(map[uint64]struct{}),
		watchers:    make(map[chan LeaderChange]struct{}),
		current:     LeaderChange{Group: id},
	}
	g.seq.Store(rand.Uint64() >> 1) // see proposal.go; >> 1 leaves room to count up
	g.applied.Store(snapIndex)
	g.snapIndex.Store(snapIndex)
	g.ap = newApplier(g)
	if bootstrap && preferredLeader(cs.GetVoters(), id) == g.node {
		// Spread the leaders of new groups over their voters: the
		// preferred one campaigns at once instead of waiting out an
		// election timeout. Pre-vote keeps this harmless if it cannot win.
		if err := rn.Campaign(); err != nil {
			return nil, fmt.Errorf("group %d: campaign: %w", id, err)
		}
	}
	lg.Debug("raft group opened", "bootstrap", bootstrap, "snapshot_index", snapIndex,
		"state_machine_applied", smApplied, "commit", hs.GetCommit(), "last_index", last)
	return g, nil
}

// catchUp brings sm up to the log's snapshot snap if it is behind it, and
// returns what sm has applied then; restoreOpen is snap when sm restores
// from the peers and run must fetch it first. last is the log's last index.
func catchUp(id uint64, sm StateMachine, snap *raftpb.Snapshot, last uint64) (smApplied uint64, restoreOpen *raftpb.Snapshot, err error) {
	snapIndex := snap.GetMetadata().GetIndex()
	smApplied = sm.Applied()
	_, fromPeers := sm.(peerRestorer)
	if smApplied < snapIndex {
		if fromPeers && len(snap.GetData()) > 0 {
			// Its state is on the peers (a restore cut short by a crash):
			// run fetches it before anything else, so that AddGroup does
			// not wait for the peers.
			restoreOpen = snap
		} else if err := sm.Restore(snap); err != nil {
			return 0, nil, fmt.Errorf("group %d: restore the state machine from the snapshot at %d: %w", id, snapIndex, err)
		}
		smApplied = snapIndex
	}
	// The saved commit index may lag what was applied (see save), but the
	// log must hold every entry the state machine has — unless the state
	// came from a peer, which may have applied more than the snapshot that
	// asked for it (committed entries all the same).
	if smApplied > max(last, snapIndex) && !fromPeers {
		return 0, nil, fmt.Errorf("group %d: the state machine applied up to %d, beyond the log's last index %d: %w",
			id, smApplied, max(last, snapIndex), storage.ErrCorrupt)
	}
	return smApplied, restoreOpen, nil
}

// raftConfig is the RawNode's configuration for a group on rlog. Applied
// is the snapshot's index, not the state machine's: Raft then hands back
// every committed entry after the snapshot, so the configuration changes
// among them are applied to the RawNode again (it starts from the
// snapshot's ConfState); run skips the normal ones the state machine has.
func (h *Host) raftConfig(rlog *storage.RaftLog, applied uint64, lg *slog.Logger) *raft.Config {
	return &raft.Config{
		ID:                        h.opts.NodeID,
		ElectionTick:              h.opts.ElectionTicks,
		HeartbeatTick:             h.opts.HeartbeatTicks,
		Storage:                   rlog,
		Applied:                   applied,
		MaxSizePerMsg:             maxSizePerMsg,
		MaxCommittedSizePerReady:  maxCommittedPerReady,
		MaxUncommittedEntriesSize: maxUncommittedBytes,
		MaxInflightMsgs:           maxInflightMsgs,
		CheckQuorum:               true,                     // a leader cut off from the majority steps down
		PreVote:                   true,                     // a node back from a partition does not depose a working leader
		DisableProposalForwarding: !h.opts.ForwardProposals, // if so, Propose answers NotLeaderError instead
		StepDownOnRemoval:         true,
		Logger:                    raftLogger{log: lg},
	}
}

// ID returns the group's id.
func (g *Group) ID() uint64 { return g.id }

// Leader returns the node id of the group's leader as this replica knows
// it, 0 if it knows none.
func (g *Group) Leader() uint64 { return g.leader.Load() }

// Propose proposes data as the group's next entry and returns its index
// once a quorum has committed it and this node's state machine has
// applied it. Only the leader takes proposals, unless the host forwards
// them (Options.ForwardProposals): elsewhere Propose fails at once with a
// *NotLeaderError naming the leader, for the caller to forward to. It
// fails with an error wrapping ErrLeadershipLost if the leader or term
// changed before the entry was applied (the entry may still commit), ErrProposalDropped if Raft refused it, ErrTooLarge for data
// over MaxEntryBytes, ErrClosed or ErrGroupFailed if the group stopped,
// and ctx's error if ctx ends first (the entry may still commit). data is
// copied.
func (g *Group) Propose(ctx context.Context, data []byte) (uint64, error) {
	if len(data) > g.h.opts.MaxEntryBytes {
		return 0, fmt.Errorf("group %d: %d bytes, at most %d: %w", g.id, len(data), g.h.opts.MaxEntryBytes, ErrTooLarge)
	}
	seq := g.seq.Add(1)
	p := &proposal{seq: seq, data: encodeEntry(g.node, seq, data), done: make(chan proposalResult, 1)}
	if !g.propq.pushWait(p, ctx.Done(), g.done) {
		select {
		case <-g.done:
			return 0, g.err
		default:
			return 0, ctx.Err()
		}
	}
	select {
	case r := <-p.done:
		return r.index, r.err
	case <-ctx.Done():
		return 0, ctx.Err()
	case <-g.done:
		select {
		case r := <-p.done: // answered on the way out
			return r.index, r.err
		default:
			return 0, g.err
		}
	}
}

// ProposeAsync is Propose without the wait, for a caller that pipelines
// (a partition's writer, through storage.Proposer): it queues data as the
// next proposal, in the order of the calls, and returns at once. done is
// called once: with the entry's index once it is applied here, or with
// why it failed — Propose's errors, or ErrProposalDropped when
// proposeQueue proposals are waiting already. It runs on the group's loop
// or its applier (in the caller, for a failure found at once) and must
// not block. data is copied.
func (g *Group) ProposeAsync(data []byte, done func(index uint64, err error)) {
	if len(data) > g.h.opts.MaxEntryBytes {
		done(0, fmt.Errorf("group %d: %d bytes, at most %d: %w", g.id, len(data), g.h.opts.MaxEntryBytes, ErrTooLarge))
		return
	}
	seq := g.seq.Add(1)
	p := &proposal{seq: seq, data: encodeEntry(g.node, seq, data), cb: done}
	g.stopMu.RLock()
	defer g.stopMu.RUnlock()
	if g.stopped {
		done(0, g.err)
		return
	}
	if !g.propq.push(p) {
		done(0, fmt.Errorf("group %d: %d proposals are queued: %w", g.id, proposeQueue, ErrProposalDropped))
	}
}

// do runs f on the loop; ErrClosed (or why the group failed) if it has
// stopped, ctx's error if ctx ends first.
func (g *Group) do(ctx context.Context, f func()) error {
	select {
	case g.ctrlc <- f:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-g.done:
		return g.err
	}
}

// tick gives the loop a tick; one the loop has not taken yet absorbs it.
func (g *Group) tick() {
	if g.asleep.Load() {
		return
	}
	select {
	case g.tickc <- struct{}{}:
	default:
	}
}

// receive queues an inbound message, or drops it if the queue is full.
func (g *Group) receive(m *raftpb.Message) {
	g.recvq.push(m)
}

func (g *Group) reportUnreachable(to uint64) {
	g.reportsMu.Lock()
	g.unreachable[to] = struct{}{}
	g.reportsMu.Unlock()
	g.notifyReports()
}

func (g *Group) reportSnapshot(to uint64, st raft.SnapshotStatus) {
	g.reportsMu.Lock()
	g.snapReports = append(g.snapReports, snapshotReport{to: to, st: st})
	g.reportsMu.Unlock()
	g.notifyReports()
}

// reportPeers hands the loop peer nodes found down or back up (liveness.go).
func (g *Group) reportPeers(changed map[uint64]bool) {
	g.reportsMu.Lock()
	if g.peers == nil {
		g.peers = make(map[uint64]bool)
	}
	for id, down := range changed {
		g.peers[id] = down
	}
	g.reportsMu.Unlock()
	g.notifyReports()
}

func (g *Group) notifyReports() {
	select {
	case g.reportc <- struct{}{}:
	default:
	}
}
