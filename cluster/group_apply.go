package cluster

// A group's applier: the goroutine that applies committed entries to the
// state machine, off the group's loop, as etcd's server does. The loop
// hands each Ready's committed entries over (handToApplier) and calls Advance at
// once, so it goes on ticking, stepping and sending while they apply: a
// long apply (a burst of MiB, a slow disk, a starved CPU) delays no
// heartbeat, and followers call no election for it.
//
// What apply promised on the loop still holds:
//   - Entries apply in log order, each once: the loop hands them over in
//     order, skipping what the state machine has (smApplied), and the
//     applier applies batch after batch (every batch queued at once).
//   - A proposal is answered once its entry is applied here: its batch
//     carries it, and the applier answers it after Apply returns.
//   - The loop waits for the applier (waitApplied) only before a
//     configuration change (the RawNode applies it, in log order) and
//     before restoring a snapshot (the state machine is the applier's
//     while it runs).
//   - A snapshot is taken at an index the state machine has applied: the
//     applier takes the state machine's Snapshot between two batches and
//     hands it to the loop, which saves it (saveSnapshot) and compacts.
//   - Status.Applied (ferry_raft_applied_index) is what the applier has
//     applied, not what it was handed.
//   - stop ends the applier after the batch under way, and fails the
//     proposals of the batches it never applied: nothing applies after
//     the group stopped, and no goroutine is left.
//
// A quiesced group parks its applier (quiesce.go): its goroutine exits
// once everything handed to it is applied, and the next push starts one
// again, so a group at rest holds one goroutine, its loop, not two.
//
// The applier holds at most maxApplyBacklog bytes of entries, and the
// appliers of all a node's groups together at most maxNodeApplyBacklog:
// beyond either the loop takes no proposals and drops appends that carry
// entries (the leader sends them again), as a full disk does
// (diskgate.go); heartbeats still go both ways. The node's bound is four
// groups' worth, so one group whose apply is stuck cannot stop the others
// on its own, and ten thousand partitions cannot hold ten thousand
// groups' worth between them.

import (
	"errors"
	"fmt"
	"sync"

	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"

	"github.com/ferrymq/ferry/storage"
)

// maxApplyBacklog bounds the bytes of entries handed to the applier and
// not applied yet (a variable for tests: a group takes it when it opens).
var maxApplyBacklog = 4 * maxCommittedPerReady

// maxNodeApplyBacklog bounds the bytes of entries every group's applier
// of a node holds together (a variable for tests: a host takes it when it
// opens).
var maxNodeApplyBacklog = 4 * maxApplyBacklog

// applyBatch is committed entries for the applier.
type applyBatch struct {
	ents  []*raftpb.Entry   // for the state machine, header stripped; may be empty
	props []*proposal       // this node's proposals among them, answered once applied
	last  uint64            // the last index the batch covers (Raft's own entries too)
	conf  *raftpb.ConfState // the configuration as of last
	bytes int               // the entries' data
}

// takenSnapshot is the state machine's snapshot at index, which the
// applier took for the loop to save.
type takenSnapshot struct {
	index uint64
	conf  *raftpb.ConfState
	data  []byte
}

// applier applies a group's committed entries on a goroutine of its own.
// The loop calls push, backlog, failure, close and abandon; run is the
// goroutine.
type applier struct {
	g     *Group
	limit int // maxApplyBacklog when the group opened

	mu      sync.Mutex // guards the fields below
	queue   []applyBatch
	bytes   int    // the data of the queued batches and the one applying
	done    uint64 // the last index of the last batch run is through with (its snapshot too)
	err     error  // why run stopped applying
	closing bool
	running bool // a run goroutine is under way (or failed)
	parked  bool // the group is at rest: run exits once the queue is empty

	wake     chan struct{} // capacity 1: batches are queued, or closing
	progress chan struct{} // capacity 1: a batch applied, or the applier failed
	failed   chan struct{} // closed when the applier failed
	taken    chan takenSnapshot
	wg       sync.WaitGroup

	// Owned by run (one run goroutine at a time: a parked one exits before
	// push starts the next, under mu).
	noSnapshots bool   // the state machine answered ErrNoSnapshots
	snapAsked   uint64 // the index of the last snapshot handed to the loop
}

func newApplier(g *Group) *applier {
	return &applier{
		g:        g,
		limit:    maxApplyBacklog,
		done:     g.queued,
		wake:     make(chan struct{}, 1),
		progress: make(chan struct{}, 1),
		failed:   make(chan struct{}),
		taken:    make(chan takenSnapshot, 1),
	}
}

// start starts run.
func (a *applier) start() {
	a.mu.Lock()
	a.running = true
	a.wg.Add(1) // under mu: close cannot wait before it is counted
	a.mu.Unlock()
	go a.goRun()
}

func (a *applier) goRun() {
	defer a.wg.Done()
	a.run()
}

// push queues b; it never blocks. It starts run again if the applier was
// parked (and has not failed or been closed).
func (a *applier) push(b applyBatch) {
	a.mu.Lock()
	a.queue = append(a.queue, b)
	a.bytes += b.bytes
	a.g.h.applyBacklog.Add(int64(b.bytes))
	a.parked = false
	restart := !a.running && !a.closing
	if restart {
		a.running = true
		a.wg.Add(1)
	}
	a.mu.Unlock()
	if restart {
		go a.goRun()
		return
	}
	signal(a.wake)
}

// park lets run exit once it has applied everything queued: the group is
// at rest, and a parked applier holds no goroutine (nor its stack, grown
// by the applies). The next push starts it again.
func (a *applier) park() {
	a.mu.Lock()
	a.parked = true
	a.mu.Unlock()
	signal(a.wake)
}

// backlog returns the bytes handed over and not applied yet.
func (a *applier) backlog() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.bytes
}

// through reports whether run is through with every batch up to index:
// applied, answered, snapshotted. It has let go of the state machine then,
// until the next push.
func (a *applier) through(index uint64) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.done >= index
}

// skipTo records that the loop itself took the group to index (a
// configuration change, a restore) while run was through with everything.
func (a *applier) skipTo(index uint64) {
	a.mu.Lock()
	a.done = index
	a.mu.Unlock()
	a.g.applied.Store(index)
}

// failure returns why the applier stopped applying, nil while it works.
func (a *applier) failure() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.err
}

// close stops run after the batch under way and waits for it; then it
// returns the proposals of the batches never applied.
func (a *applier) close() []*proposal {
	a.mu.Lock()
	a.closing = true
	a.mu.Unlock()
	signal(a.wake)
	a.wg.Wait()
	a.mu.Lock()
	defer a.mu.Unlock()
	var props []*proposal
	for _, b := range a.queue {
		props = append(props, b.props...)
	}
	a.g.h.applyBacklog.Add(-int64(a.bytes))
	a.queue, a.bytes = nil, 0
	return props
}

// signal wakes c's reader, once however often it is called.
func signal(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// next waits for the next batch; false once closing, or once parked with
// nothing queued (run then exits, and push starts it again).
func (a *applier) next() (applyBatch, bool) {
	for {
		a.mu.Lock()
		switch {
		case a.closing:
			a.mu.Unlock()
			return applyBatch{}, false
		case len(a.queue) > 0:
			b := merge(a.queue)
			clear(a.queue)
			a.queue = a.queue[:0]
			a.mu.Unlock()
			return b, true
		case a.parked:
			a.running = false
			a.mu.Unlock()
			return applyBatch{}, false
		}
		a.mu.Unlock()
		<-a.wake
	}
}

// merge makes the batches queued one: the state machine applies a
// partition's entries handed over together in one run (storage's
// Replica.Apply commits a run once), so the more Readies the applier
// finds waiting, the fewer commits it makes.
func merge(queue []applyBatch) applyBatch {
	if len(queue) == 1 {
		return queue[0]
	}
	var b applyBatch
	for _, q := range queue {
		b.ents = append(b.ents, q.ents...)
		b.props = append(b.props, q.props...)
		b.last, b.conf = q.last, q.conf
		b.bytes += q.bytes
	}
	return b
}

// run applies batch after batch until close, or until the state machine
// fails.
func (a *applier) run() {
	for {
		b, ok := a.next()
		if !ok {
			return
		}
		applied, err := a.apply(b)
		a.mu.Lock()
		a.bytes -= b.bytes
		a.g.h.applyBacklog.Add(-int64(b.bytes))
		if err != nil {
			a.err = err
		}
		if applied {
			a.done = b.last
		} else {
			a.queue = append([]applyBatch{b}, a.queue...) // its proposals fail with the group
		}
		a.mu.Unlock()
		signal(a.progress)
		if err != nil {
			close(a.failed)
			return
		}
	}
}

// apply applies b, publishes the applied index, answers b's proposals and
// takes a snapshot if one is due. applied is false if the state machine
// failed to apply b: its proposals are not answered.
func (a *applier) apply(b applyBatch) (applied bool, err error) {
	g := a.g
	if len(b.ents) > 0 {
		if err := g.sm.Apply(b.ents); err != nil {
			return false, fmt.Errorf("apply entries %d to %d: %w", b.ents[0].GetIndex(), b.ents[len(b.ents)-1].GetIndex(), err)
		}
	}
	g.applied.Store(b.last)
	for _, p := range b.props {
		p.finish(p.index, nil)
	}
	return true, a.maybeSnapshot(b)
}

// maybeSnapshot takes the state machine's snapshot every SnapshotEntries
// applied entries and hands it to the loop, unless the loop has not saved
// the last one yet.
func (a *applier) maybeSnapshot(b applyBatch) error {
	g := a.g
	if a.noSnapshots || b.last < max(g.snapIndex.Load(), a.snapAsked)+g.h.opts.SnapshotEntries || len(a.taken) > 0 {
		return nil
	}
	data, err := g.sm.Snapshot()
	if errors.Is(err, ErrNoSnapshots) {
		a.noSnapshots = true
		g.log.Debug("the state machine takes no snapshots; the log is not compacted")
		return nil
	}
	if err != nil {
		return fmt.Errorf("snapshot the state machine at %d: %w", b.last, err)
	}
	a.snapAsked = b.last
	a.taken <- takenSnapshot{index: b.last, conf: b.conf, data: data} // never blocks: only run sends, after checking
	return nil
}

// handToApplier hands committed entries to the applier: proposals in batches,
// configuration changes applied by the loop itself once the applier has
// applied everything before them. Entries the state machine has already
// (a restart) or a snapshot covered are skipped.
func (g *Group) handToApplier(ents []*raftpb.Entry) error {
	b := applyBatch{}
	flush := func() {
		switch {
		case b.last <= g.queued:
		case len(b.ents) == 0 && len(b.props) == 0 && g.ap.through(g.queued):
			g.queued = b.last // Raft's own entries only, and nothing to wait for
			g.ap.skipTo(b.last)
		default:
			b.conf = g.confState
			g.ap.push(b)
			g.queued = b.last
		}
		b = applyBatch{}
	}
	for _, e := range ents {
		if e.GetIndex() <= g.queued {
			continue // a snapshot in the same Ready covered it
		}
		switch e.GetType() {
		case raftpb.EntryNormal:
			if len(e.GetData()) == 0 || e.GetIndex() <= g.smApplied {
				break // a leader's empty entry, or in the state machine already
			}
			node, seq, data, err := decodeEntry(e.GetData())
			if err != nil {
				return fmt.Errorf("entry %d: %w: %w", e.GetIndex(), storage.ErrCorrupt, err)
			}
			b.ents = append(b.ents, &raftpb.Entry{Term: e.Term, Index: e.Index, Type: e.Type, Data: data})
			b.bytes += len(data)
			if node == g.node {
				if p := g.pending[seq]; p != nil && p.index == e.GetIndex() {
					delete(g.pending, seq)
					b.props = append(b.props, p)
				}
			}
		case raftpb.EntryConfChange, raftpb.EntryConfChangeV2:
			flush()
			if err := g.waitApplied(); err != nil {
				return err
			}
			if err := g.applyConfChange(e); err != nil {
				return err
			}
			g.queued = e.GetIndex()
			g.ap.skipTo(g.queued)
			continue
		}
		b.last = e.GetIndex()
	}
	flush()
	return nil
}

// waitApplied waits until the applier is through with everything handed
// to it, and so has let go of the state machine; errStopping if the group
// stops first, or why the applier failed.
func (g *Group) waitApplied() error {
	for {
		if err := g.ap.failure(); err != nil {
			return err
		}
		if g.ap.through(g.queued) {
			return nil
		}
		select {
		case <-g.ap.progress:
		case <-g.stopc:
			return errStopping
		}
	}
}

// applyFull reports whether the applier holds maxApplyBacklog bytes or
// more, or the node's appliers maxNodeApplyBacklog: the loop then takes
// no proposals, and drops m if it carries entries.
func (g *Group) applyFull(m *raftpb.Message) bool {
	full := g.ap.backlog() >= g.ap.limit || g.h.applyBacklog.Load() >= g.h.applyLimit
	return full && (m == nil || carriesData(m))
}

// applyConfChange applies a configuration change entry to the RawNode.
func (g *Group) applyConfChange(e *raftpb.Entry) error {
	var cc raftpb.ConfChangeI
	if e.GetType() == raftpb.EntryConfChange {
		c := new(raftpb.ConfChange)
		if err := proto.Unmarshal(e.GetData(), c); err != nil {
			return fmt.Errorf("entry %d: conf change: %w: %w", e.GetIndex(), storage.ErrCorrupt, err)
		}
		cc = c
	} else {
		c := new(raftpb.ConfChangeV2)
		if err := proto.Unmarshal(e.GetData(), c); err != nil {
			return fmt.Errorf("entry %d: conf change: %w: %w", e.GetIndex(), storage.ErrCorrupt, err)
		}
		cc = c
	}
	g.confState = g.rn.ApplyConfChange(cc)
	g.log.Info("configuration changed", "index", e.GetIndex(), "voters", g.confState.GetVoters(), "learners", g.confState.GetLearners())
	return nil
}
