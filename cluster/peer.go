package cluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync/atomic"
	"time"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/ferrymq/ferry/internal/clock"
	clusterv1 "github.com/ferrymq/ferry/proto/ferry/cluster/v1"
)

// maxSnapshotsPerPeer bounds the snapshots being sent to one peer at once;
// each holds its data in memory. A MsgSnap beyond it fails at once, and
// Raft asks again later.
const maxSnapshotsPerPeer = 2

// peer is the outbound side of the link to one node: a queue, the loop
// that keeps a Send stream open and feeds it, and the snapshot sends.
type peer struct {
	t      *Transport
	id     uint64
	addr   string
	conn   *grpc.ClientConn
	client clusterv1.RaftTransportServiceClient
	queue  chan outbound
	down   atomic.Bool   // the stream failed and is not open again yet: drop at once
	sent   atomic.Bool   // a batch went out since the last beat (Transport.beat)
	snaps  chan struct{} // a slot per snapshot being sent

	carry      *clusterv1.GroupMessage // encoded, did not fit the last batch; owned by run
	carryGroup uint64
}

// outbound is a queued message and its group; a beat if m is nil.
type outbound struct {
	group uint64
	m     *raftpb.Message
}

func newPeer(t *Transport, id uint64, addr string) (*peer, error) {
	// passthrough: each connection attempt resolves the host name anew
	// (in the dialer), so a peer that comes back at another address (a
	// Kubernetes pod restarted) is found at once; gRPC's DNS resolver
	// would re-resolve at most every 30 s.
	creds, err := t.dialCreds(id)
	if err != nil {
		return nil, err
	}
	conn, err := grpc.NewClient("passthrough:///"+addr,
		grpc.WithTransportCredentials(creds),
		grpc.WithDefaultCallOptions(grpc.MaxCallSendMsgSize(t.opts.MaxFrameBytes)),
		// gRPC redials a lost connection on its own (wall-clock) backoff;
		// keep it as short as ours so a healed link is used soon.
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: t.opts.ReconnectMin, Multiplier: 1.6, Jitter: 0.2, MaxDelay: t.opts.ReconnectMax},
			MinConnectTimeout: 5 * time.Second,
		}),
		// Notice a peer gone silent (no RST) within about 15s; the
		// minimum gRPC allows is a 10s ping interval.
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 10 * time.Second, Timeout: 5 * time.Second, PermitWithoutStream: true}),
	)
	if err != nil {
		return nil, fmt.Errorf("peer %d at %q: %w", id, addr, err)
	}
	return &peer{
		t:      t,
		id:     id,
		addr:   addr,
		conn:   conn,
		client: clusterv1.NewRaftTransportServiceClient(conn),
		queue:  make(chan outbound, t.opts.PeerQueueLength),
		snaps:  make(chan struct{}, maxSnapshotsPerPeer),
	}, nil
}

// enqueue queues m, or drops it if the stream is down or the queue full.
func (p *peer) enqueue(group uint64, m *raftpb.Message) {
	if p.down.Load() {
		p.t.drop(group, m, "peer unreachable")
		return
	}
	select {
	case p.queue <- outbound{group: group, m: m}:
	default:
		p.t.drop(group, m, "peer queue full")
	}
}

// enqueueBeat queues a beat, unless the stream is down or the queue full:
// then the peer does not hear from this node, as it should not.
func (p *peer) enqueueBeat() {
	if p.down.Load() {
		return
	}
	select {
	case p.queue <- outbound{}:
	default:
	}
}

// run keeps a stream to the peer open until the transport closes: after a
// failure it drops what is queued, waits (ReconnectMin, doubling up to
// ReconnectMax while the peer stays unreachable) and opens a new one.
func (p *peer) run() {
	wait := p.t.opts.ReconnectMin
	for {
		sent, err := p.stream()
		if p.t.ctx.Err() != nil {
			p.drainQueue()
			return
		}
		p.down.Store(true)
		p.drainQueue()
		if sent {
			wait = p.t.opts.ReconnectMin // it worked for a while: a fresh failure
		}
		level := slog.LevelDebug // peers come and go
		if c := status.Code(err); c == codes.InvalidArgument || c == codes.FailedPrecondition {
			level = slog.LevelWarn // the peer refused what this node sent: a bug or a wrong peer map
		}
		p.t.log.Log(p.t.ctx, level, "peer stream down", "peer", p.id, "addr", p.addr, "err", err, "retry_in", wait.String())
		if !p.sleep(wait) {
			p.drainQueue()
			return
		}
		wait = min(2*wait, p.t.opts.ReconnectMax)
	}
}

// sleep waits d on the transport's clock; false if the transport closed.
func (p *peer) sleep(d time.Duration) bool { return clock.Sleep(p.t.opts.Clock, d, p.t.ctx.Done()) }

// stream opens a Send stream and feeds it batches from the queue until a
// send fails or the transport closes. sent says whether a batch got out.
func (p *peer) stream() (sent bool, err error) {
	ctx, cancel := context.WithCancel(p.t.ctx)
	defer cancel()
	st, err := p.client.Send(ctx)
	if err != nil {
		return false, err
	}
	p.down.Store(false)
	for {
		req, groups, beat := p.batch(ctx)
		if req == nil {
			return sent, ctx.Err()
		}
		if len(req.Messages) == 0 && !beat {
			continue // all dropped as too large
		}
		if err := st.Send(req); err != nil {
			if err == io.EOF { // the server ended the stream: its status says why
				_, err = st.CloseAndRecv()
			}
			p.t.dropped.Add(uint64(len(req.Messages)))
			for g := range groups {
				p.t.h.ReportUnreachable(g, p.id)
			}
			return sent, err
		}
		sent = true
		if len(req.Messages) > 0 {
			p.sent.Store(true)
		}
	}
}

// batch waits for a message, then takes what else is queued, up to half a
// frame, and encodes them; beat says a beat was among them. It returns nil
// when ctx ends first.
func (p *peer) batch(ctx context.Context) (req *clusterv1.SendRequest, groups map[uint64]struct{}, beat bool) {
	req = &clusterv1.SendRequest{FromNode: p.t.opts.NodeID, ToNode: p.id}
	groups = make(map[uint64]struct{})
	limit := p.t.opts.MaxFrameBytes - frameOverhead
	size := 0
	if p.carry != nil {
		req.Messages = append(req.Messages, p.carry)
		groups[p.carryGroup] = struct{}{}
		size += len(p.carry.Message)
		p.carry = nil
	} else {
		select {
		case <-ctx.Done():
			return nil, nil, false
		case o := <-p.queue:
			beat = beat || o.m == nil
			size += p.add(req, groups, o, limit)
		}
	}
	for size < limit/2 && len(req.Messages) < maxBatchMessages && p.carry == nil {
		select {
		case o := <-p.queue:
			beat = beat || o.m == nil
			size += p.add(req, groups, o, limit-size)
		default:
			return req, groups, beat
		}
	}
	return req, groups, beat
}

// add encodes o into req if it fits in room bytes, or keeps it for the
// next batch; a message larger than a frame is dropped. It returns the
// bytes added.
func (p *peer) add(req *clusterv1.SendRequest, groups map[uint64]struct{}, o outbound, room int) int {
	if o.m == nil {
		return 0 // a beat: the batch itself is the sign of life
	}
	// Raft's doc asks to marshal messages on the Raft loop, as a later
	// append could change the entries under them. In raft v3.7 entries
	// are pointers never changed once made, and the slices it hands out
	// are capped (log_unstable.go), so marshaling here, off the loop, is
	// safe, and keeps the encoding work off the group's loop.
	b, err := proto.Marshal(o.m)
	limit := p.t.opts.MaxFrameBytes - frameOverhead
	if err == nil && len(b) > limit {
		err = fmt.Errorf("%d bytes; a frame holds at most %d", len(b), limit)
	}
	if err != nil {
		p.t.log.Error("raft message dropped: cannot send it", "group", o.group, "to", p.id, "type", o.m.GetType().String(), "err", err)
		p.t.drop(o.group, o.m, "cannot encode")
		return 0
	}
	gm := &clusterv1.GroupMessage{GroupId: o.group, Message: b}
	if len(b) > room {
		p.carry, p.carryGroup = gm, o.group
		return 0
	}
	req.Messages = append(req.Messages, gm)
	groups[o.group] = struct{}{}
	return len(b)
}

// drainQueue drops everything queued, telling each group once.
func (p *peer) drainQueue() {
	reported := make(map[uint64]struct{})
	if p.carry != nil {
		reported[p.carryGroup] = struct{}{}
		p.carry = nil
		p.t.dropped.Add(1)
	}
	for {
		select {
		case o := <-p.queue:
			if o.m == nil {
				continue // a beat
			}
			p.t.dropped.Add(1)
			reported[o.group] = struct{}{}
		default:
			for g := range reported {
				p.t.h.ReportUnreachable(g, p.id)
			}
			return
		}
	}
}

// sendSnapshot streams MsgSnap m to the peer in its own goroutine and
// reports to the group how it ended.
func (p *peer) sendSnapshot(group uint64, m *raftpb.Message) {
	select {
	case p.snaps <- struct{}{}:
	default:
		p.t.drop(group, m, "too many snapshots in flight to the peer")
		return
	}
	started := p.t.goAsync(func() {
		defer func() { <-p.snaps }()
		st := raft.SnapshotFinish
		if err := p.streamSnapshot(group, m); err != nil {
			p.t.log.Warn("raft snapshot not sent", "group", group, "to", p.id,
				"index", m.GetSnapshot().GetMetadata().GetIndex(), "err", err)
			st = raft.SnapshotFailure
		}
		p.t.h.ReportSnapshot(group, p.id, st)
	})
	if !started {
		<-p.snaps
		p.t.drop(group, m, "closed")
	}
}

// streamSnapshot sends the header and the data in chunks, and waits for
// the peer's group to take the snapshot.
func (p *peer) streamSnapshot(group uint64, m *raftpb.Message) error {
	hdr, err := encodeSnapshotHeader(group, m)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(p.t.ctx)
	defer cancel()
	st, err := p.client.SendSnapshot(ctx)
	if err != nil {
		return err
	}
	send := func(req *clusterv1.SendSnapshotRequest) error {
		if err := st.Send(req); err != io.EOF {
			return err
		}
		if _, err := st.CloseAndRecv(); err != nil { // the server ended the stream: its status says why
			return err
		}
		return errors.New("the receiver ended the snapshot stream early")
	}
	if err := send(hdr); err != nil {
		return err
	}
	data := m.GetSnapshot().GetData()
	for len(data) > 0 {
		n := min(len(data), p.t.opts.SnapshotChunkBytes)
		if err := send(&clusterv1.SendSnapshotRequest{Frame: &clusterv1.SendSnapshotRequest_Chunk{Chunk: data[:n]}}); err != nil {
			return err
		}
		data = data[n:]
	}
	_, err = st.CloseAndRecv()
	return err
}
