package storage

import (
	"context"
	"errors"
	"log"
	"sync/atomic"
	"testing"
	"time"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"

	"github.com/ferrymq/ferry/internal/clock"

	"github.com/ferrymq/ferry/internal/ferrytest"
)

// raftProposer is a partition's Raft group of one node, on the partition's
// RaftLog, driven by a goroutine of its own: the real engine, without the
// network (cluster/ runs groups of three). Propose hands it entries;
// committed entries go back to the partition through Replica.Apply.
type raftProposer struct {
	t     *testing.T
	props chan proposed
	camp  chan struct{}
	stop  chan struct{}
	done  chan struct{}
	rn    *raft.RawNode
	l     *RaftLog
	rep   *Replica
	// header is how many bytes the group puts before each proposal's data
	// in its entries (as cluster's groups do); tell, whether EntryLog
	// tells the log (refs.go) yet.
	header int
	tell   atomic.Bool
}

// EntryLog tells the group's log once tell is set; see storage.EntryLog.
func (p *raftProposer) EntryLog() (*RaftLog, int) {
	if !p.tell.Load() {
		return nil, 0
	}
	return p.l, p.header
}

type proposed struct {
	data   []byte
	failed func(error)
}

func (p *raftProposer) Propose(data []byte, failed func(error)) {
	p.props <- proposed{data, failed}
}

// startRaftProposer makes topic's partition part replicated on group l and
// starts driving the group; it does not campaign.
func startRaftProposer(t *testing.T, s *Store, topic string, part uint32, l *RaftLog) *raftProposer {
	t.Helper()
	return startRaftProposerWith(t, s, topic, part, l, &raftProposer{})
}

// startRaftProposerWith is startRaftProposer with p's header and tell.
func startRaftProposerWith(t *testing.T, s *Store, topic string, part uint32, l *RaftLog, p *raftProposer) *raftProposer {
	t.Helper()
	p.t, p.props, p.camp, p.stop, p.done, p.l = t, make(chan proposed, 4096), make(chan struct{}, 1), make(chan struct{}), make(chan struct{}), l
	rep, err := s.Replicate(context.Background(), topic, part, p)
	if err != nil {
		t.Fatal(err)
	}
	p.rep = rep
	first, err := l.FirstIndex()
	if err != nil {
		t.Fatal(err)
	}
	p.rn, err = raft.NewRawNode(&raft.Config{
		ID: 1, ElectionTick: 10, HeartbeatTick: 1, Storage: l,
		Applied:       max(rep.Applied(), first-1), // the bootstrap snapshot counts as applied
		MaxSizePerMsg: 1 << 20, MaxInflightMsgs: 256,
		Logger: &raft.DefaultLogger{Logger: log.New(ferrytest.Writer{TB: t}, "raft ", 0)},
	})
	if err != nil {
		t.Fatal(err)
	}
	go p.run()
	t.Cleanup(p.close)
	return p
}

func (p *raftProposer) run() {
	defer close(p.done)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case pr := <-p.props:
			if err := p.rn.Propose(append(make([]byte, p.header), pr.data...)); err != nil {
				pr.failed(err)
			}
		case <-p.camp:
			if err := p.rn.Campaign(); err != nil {
				p.t.Error(err)
			}
		case <-tick.C:
			p.rn.Tick()
		case <-p.stop:
			return
		}
		for p.rn.HasReady() {
			rd := p.rn.Ready()
			if err := p.l.Save(rd.HardState, rd.Entries, rd.Snapshot); err != nil {
				p.t.Errorf("Save: %v", err)
				return
			}
			var run []Entry // the Ready's entries, applied as one run
			for _, e := range rd.CommittedEntries {
				if e.GetType() != raftpb.EntryNormal || len(e.GetData()) == 0 {
					continue
				}
				run = append(run, Entry{Index: e.GetIndex(), Data: e.GetData()[p.header:]})
			}
			if err := p.rep.Apply(context.Background(), run); err != nil {
				p.t.Errorf("Apply %d entries: %v", len(run), err)
				return
			}
			p.rn.Advance(rd)
		}
	}
}

func (p *raftProposer) campaign() {
	p.camp <- struct{}{}
}

func (p *raftProposer) close() {
	select {
	case <-p.stop:
	default:
		close(p.stop)
	}
	<-p.done
}

// TestReplicatedPartition runs a partition through a Raft group: an append
// is answered once its entry is committed and applied, with offsets and
// dedup answers as a single node gives them; a proposal the group drops is
// answered with the group's error and stores nothing; a write across
// partitions is refused; and after a restart the partition goes on from
// what it applied, the group replaying nothing twice.
func TestReplicatedPartition(t *testing.T) {
	ctx := context.Background()
	opts := testOptions(t, clock.NewFake(t0))
	s := openStore(t, opts)
	mustCreate(t, s, "orders", TopicConfig{Partitions: 2})
	sub := mustCreateSub(t, s, "orders", "audit", []byte("config"), "", "")
	l := mustRaftLog(t, s, 1)
	mustSave(t, l, nil, nil, snapshotAt(1, 1, nil, 1)) // bootstrap: one voter
	rp := startRaftProposer(t, s, "orders", 0, l)

	// No leader yet: Raft drops the proposal, the append fails, nothing is stored.
	if _, err := s.Append(ctx, "orders", 0, []Message{{ID: "early", Payload: []byte("x")}}); !errors.Is(err, raft.ErrProposalDropped) {
		t.Fatalf("append before the group has a leader: %v, want raft.ErrProposalDropped", err)
	}

	rp.campaign()
	waitLeader := time.Now().Add(10 * time.Second)
	var res []AppendResult
	var err error
	for {
		res, err = s.Append(ctx, "orders", 0, []Message{{ID: "a", Payload: []byte("1")}, {ID: "b", Payload: []byte("2")}, {ID: "a", Payload: []byte("3")}})
		if err == nil || time.Now().After(waitLeader) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("append once the group elected itself: %v", err)
	}
	want := []AppendResult{{Offset: 0}, {Offset: 1}, {Offset: 0, Duplicate: true}}
	if !equalResults(res, want) {
		t.Fatalf("append: %+v, want %+v", res, want)
	}
	msgs, err := s.Read(ctx, "orders", 0, 0, 10, 1<<20)
	if err != nil || len(msgs) != 2 || msgs[0].ID != "a" || msgs[1].ID != "b" || string(msgs[1].Payload) != "2" {
		t.Fatalf("read: %v, %+v", err, msgs)
	}
	applied := rp.rep.Applied()
	if applied < 2 {
		t.Fatalf("applied index %d after an entry was applied", applied)
	}

	// Cursors go through the group too; across partitions, nothing goes.
	if _, err := s.Write(ctx, Write{Topic: "orders", Subscription: sub.ID, Cursors: []CursorWrite{{Partition: 0, State: []byte("c0")}}}); err != nil {
		t.Fatalf("a cursor write on the replicated partition: %v", err)
	}
	// Across partitions, a write is made in order — outputs, then the
	// cursors — and needs an id on every message, so that making it again
	// stores nothing twice.
	commit := Write{Topic: "orders", Subscription: sub.ID,
		Cursors: []CursorWrite{{Partition: 0, State: []byte("c1")}},
		Appends: []AppendBatch{{Topic: "orders", Partition: 1, Messages: []Message{{Payload: []byte("z")}}}}}
	if _, err := s.Write(ctx, commit); !errors.Is(err, ErrNeedIDs) {
		t.Fatalf("a write across partitions with a message without an id: %v, want ErrNeedIDs", err)
	}
	if ps, _ := s.Partitions("orders"); ps[1].Head != 0 {
		t.Fatalf("the refused write stored %d messages in partition 1", ps[1].Head)
	}
	commit.Appends[0].Messages[0].ID = "out-1"
	for i, dup := range []bool{false, true} {
		res, err := s.Write(ctx, commit)
		if err != nil {
			t.Fatalf("write across partitions, try %d: %v", i, err)
		}
		if want := []AppendResult{{Offset: 0, Duplicate: dup}}; !equalResults(res[0], want) {
			t.Fatalf("write across partitions, try %d: %+v, want %+v", i, res[0], want)
		}
	}
	if ps, _ := s.Partitions("orders"); ps[1].Head != 1 {
		t.Fatalf("partition 1 head %d after the same write twice, want 1", ps[1].Head)
	}
	if cs, err := s.Cursors("orders", sub.ID); err != nil || string(cs[0]) != "c1" {
		t.Fatalf("cursors after the write: %q, %v", cs, err)
	}
	applied = rp.rep.Applied()

	// Restart: the partition knows what it applied, the group replays
	// nothing twice, and offsets and dedup go on.
	rp.close()
	s = reopenStore(t, s, opts)
	l = mustRaftLog(t, s, 1)
	rp = startRaftProposer(t, s, "orders", 0, l)
	if got := rp.rep.Applied(); got != applied {
		t.Fatalf("applied %d after a restart, want %d", got, applied)
	}
	rp.campaign()
	for {
		res, err = s.Append(ctx, "orders", 0, []Message{{ID: "b", Payload: []byte("again")}, {ID: "c", Payload: []byte("4")}})
		if err == nil || time.Now().After(waitLeader.Add(10*time.Second)) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	want = []AppendResult{{Offset: 1, Duplicate: true}, {Offset: 2}}
	if err != nil || !equalResults(res, want) {
		t.Fatalf("append after the restart: %+v, %v, want %+v", res, err, want)
	}
	if ps, _ := s.Partitions("orders"); ps[0].Head != 3 {
		t.Fatalf("head %d after the restart, want 3", ps[0].Head)
	}
}

func equalResults(a, b []AppendResult) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
