package cluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"

	clusterv1 "github.com/ferrymq/ferry/proto/ferry/cluster/v1"
)

// Handler is what a Transport delivers to: the Raft groups of its node.
// Its methods are called from the transport's goroutines, concurrently.
type Handler interface {
	// Receive hands m, a message for group, to the group's Raft node. It
	// must not block: when the group cannot take m now it drops it, and
	// Raft resends. m is the handler's.
	Receive(group uint64, m *raftpb.Message)
	// ReceiveSnapshot hands m, a MsgSnap with its data, to the group and
	// returns once the group has stepped it, or with an error if it could
	// not (no such group, closing, ctx done). m is the handler's.
	ReceiveSnapshot(ctx context.Context, group uint64, m *raftpb.Message) error
	// ReportUnreachable tells group that a message to node to was dropped
	// unsent: its stream is down, or its queue full. It must not block.
	ReportUnreachable(group, to uint64)
	// ReportSnapshot tells group how sending it a snapshot to node to
	// ended. Every MsgSnap given to Send gets exactly one report. It must
	// not block.
	ReportSnapshot(group, to uint64, st raft.SnapshotStatus)
}

// Transport carries Raft messages between this node and its peers over
// gRPC (the RaftTransportService of raft.proto). It serves the node-to-node
// address, keeping one inbound stream per peer that sends, and keeps one
// outbound stream to each peer, fed by a bounded queue: Send never blocks,
// and drops (reporting to the group) what the queue cannot take or a
// stream that is down cannot send. Snapshots go on their own streams, in
// chunks. Send, Addr and Close are safe for concurrent use.
type Transport struct {
	opts  TransportOptions
	log   *slog.Logger
	h     Handler
	lis   net.Listener
	srv   *grpc.Server
	peers map[uint64]*peer // fixed at NewTransport

	ctx    context.Context // ends at Close: outbound streams stop
	cancel context.CancelFunc
	wg     sync.WaitGroup // the server, peer loops and snapshot sends

	goMu      sync.Mutex // guards closed, so no goroutine starts once Close waits
	closed    bool
	closeOnce sync.Once

	// Counters, for tests and the report of Close.
	queued   atomic.Uint64 // outbound messages given to Send
	dropped  atomic.Uint64 // outbound messages dropped
	rejected atomic.Uint64 // inbound frames refused
}

// NewTransport listens on opts.Listener (or opts.Addr), serves peers'
// streams to h and starts a stream to each peer. Close stops it all.
func NewTransport(opts TransportOptions, h Handler) (*Transport, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	lis := opts.Listener
	if lis == nil {
		var err error
		if lis, err = net.Listen("tcp", opts.Addr); err != nil {
			return nil, fmt.Errorf("listen node-to-node: %w", err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	t := &Transport{
		opts:   opts,
		log:    opts.Logger.With("node", opts.NodeID),
		h:      h,
		lis:    lis,
		peers:  make(map[uint64]*peer, len(opts.Peers)),
		ctx:    ctx,
		cancel: cancel,
	}
	secure, err := t.serverOptions()
	if err != nil {
		cancel()
		lis.Close()
		return nil, err
	}
	t.srv = grpc.NewServer(append(append(secure,
		grpc.MaxRecvMsgSize(opts.MaxFrameBytes),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: time.Second, PermitWithoutStream: true}),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 5 * time.Second, Timeout: 5 * time.Second}),
	), opts.ServerOptions...)...)
	clusterv1.RegisterRaftTransportServiceServer(t.srv, &transportServer{t: t})
	if opts.Register != nil {
		opts.Register(t.srv)
	}
	for id, addr := range opts.Peers {
		if id == opts.NodeID {
			continue
		}
		p, err := newPeer(t, id, addr)
		if err != nil {
			cancel()
			lis.Close()
			for _, p := range t.peers {
				p.conn.Close()
			}
			return nil, err
		}
		t.peers[id] = p
	}
	t.wg.Go(func() {
		if err := t.srv.Serve(lis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			t.log.Error("node-to-node server stopped", "err", err)
		}
	})
	for _, p := range t.peers {
		t.wg.Go(p.run)
	}
	return t, nil
}

// Addr is the node-to-node address the transport listens on.
func (t *Transport) Addr() net.Addr { return t.lis.Addr() }

// Send queues msgs, all of group, for their peers and returns at once.
// A message whose peer is unknown or unreachable, or whose queue is full,
// is dropped and reported with ReportUnreachable (ReportSnapshot with
// SnapshotFailure for a MsgSnap). The messages must not be modified
// afterwards.
func (t *Transport) Send(group uint64, msgs []*raftpb.Message) {
	t.queued.Add(uint64(len(msgs)))
	for _, m := range msgs {
		p := t.peers[m.GetTo()]
		if p == nil || t.ctx.Err() != nil {
			t.drop(group, m, "unknown peer or closed")
			continue
		}
		if m.GetType() == raftpb.MsgSnap {
			p.sendSnapshot(group, m)
			continue
		}
		p.enqueue(group, m)
	}
}

// beat sends each peer a beat, an empty batch, unless a batch went to it
// since the last beat: the peer's liveness (liveness.go) counts batches,
// one per node pair whatever the number of groups.
func (t *Transport) beat() {
	if t.ctx.Err() != nil {
		return
	}
	for _, p := range t.peers {
		if !p.sent.Swap(false) {
			p.enqueueBeat()
		}
	}
}

// drop reports an unsent message to its group.
func (t *Transport) drop(group uint64, m *raftpb.Message, why string) {
	t.dropped.Add(1)
	if m.GetType() == raftpb.MsgSnap {
		t.log.Debug("raft snapshot not sent", "group", group, "to", m.GetTo(), "reason", why)
		t.h.ReportSnapshot(group, m.GetTo(), raft.SnapshotFailure)
		return
	}
	t.h.ReportUnreachable(group, m.GetTo())
}

// Close stops the server (cutting inbound streams), ends the outbound
// streams, drops what is queued and waits for every goroutine, or for ctx.
// Idempotent.
func (t *Transport) Close(ctx context.Context) error {
	t.closeOnce.Do(func() {
		t.goMu.Lock()
		t.closed = true
		t.goMu.Unlock()
		t.srv.Stop() // streams are long-lived: GracefulStop would wait for the peers to hang up
		t.cancel()
		for _, p := range t.peers {
			p.conn.Close()
		}
	})
	done := make(chan struct{})
	go func() {
		t.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("close transport: %w", ctx.Err())
	}
}

// goAsync runs f in a goroutine Close waits for; false if Close began.
func (t *Transport) goAsync(f func()) bool {
	t.goMu.Lock()
	defer t.goMu.Unlock()
	if t.closed {
		return false
	}
	t.wg.Go(f)
	return true
}

// transportServer serves peers' streams.
type transportServer struct {
	clusterv1.UnimplementedRaftTransportServiceServer
	t *Transport
}

// Send takes a peer's batches until it hangs up. A batch that does not
// decode ends the stream, and nothing of it is delivered.
func (s *transportServer) Send(stream grpc.ClientStreamingServer[clusterv1.SendRequest, clusterv1.SendResponse]) error {
	for {
		req, err := stream.Recv()
		if err == io.EOF {
			return stream.SendAndClose(&clusterv1.SendResponse{})
		}
		if err != nil {
			return err
		}
		if err := callerIs(stream.Context(), req.GetFromNode()); err != nil {
			return s.t.refuse(err)
		}
		msgs, err := decodeBatch(s.t.opts.NodeID, req)
		if err != nil {
			return s.t.refuse(err)
		}
		if bh, ok := s.t.h.(beatHandler); ok {
			bh.heard(req.GetFromNode()) // a beat (no messages) or any batch: the peer is live
		}
		for _, in := range msgs {
			s.t.h.Receive(in.group, in.m)
		}
	}
}

// SendSnapshot reassembles one snapshot and hands it to its group.
func (s *transportServer) SendSnapshot(stream grpc.ClientStreamingServer[clusterv1.SendSnapshotRequest, clusterv1.SendSnapshotResponse]) error {
	a := snapshotAssembler{self: s.t.opts.NodeID, maxBytes: s.t.opts.MaxSnapshotBytes}
	for {
		req, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		if h := req.GetHeader(); h != nil {
			if err := callerIs(stream.Context(), h.GetFromNode()); err != nil {
				return s.t.refuse(err)
			}
		}
		if err := a.add(req); err != nil {
			return s.t.refuse(err)
		}
	}
	group, m, err := a.finish()
	if err != nil {
		return s.t.refuse(err)
	}
	if err := s.t.h.ReceiveSnapshot(stream.Context(), group, m); err != nil {
		return grpcError(fmt.Errorf("group %d did not take the snapshot at index %d; the leader retries later: %w",
			group, m.GetSnapshot().GetMetadata().GetIndex(), err))
	}
	s.t.log.Info("raft snapshot received", "group", group, "from", m.GetFrom(),
		"index", m.GetSnapshot().GetMetadata().GetIndex(), "bytes", len(m.GetSnapshot().GetData()))
	return stream.SendAndClose(&clusterv1.SendSnapshotResponse{})
}

// partitionExporter is the part of a Handler that serves FetchPartition
// (the Host): it streams the partition of req's group through send.
type partitionExporter interface {
	exportPartition(ctx context.Context, req *clusterv1.FetchPartitionRequest, send func(*clusterv1.FetchPartitionResponse) error) error
}

// FetchPartition streams a partition to a peer restoring its snapshot.
func (s *transportServer) FetchPartition(req *clusterv1.FetchPartitionRequest, stream grpc.ServerStreamingServer[clusterv1.FetchPartitionResponse]) error {
	if err := callerIs(stream.Context(), req.GetFromNode()); err != nil {
		return s.t.refuse(err)
	}
	if err := checkFetchRequest(s.t.opts.NodeID, req); err != nil {
		return s.t.refuse(err)
	}
	ex, ok := s.t.h.(partitionExporter)
	if !ok {
		return status.Error(codes.Unimplemented, "this node's transport serves no partitions")
	}
	if err := ex.exportPartition(stream.Context(), req, stream.Send); err != nil {
		s.t.log.Info("partition fetch not served", "group", req.GetGroupId(), "from", req.GetFromNode(), "err", err)
		return grpcError(fmt.Errorf("group %d: %w", req.GetGroupId(), err))
	}
	s.t.log.Info("partition fetch served", "group", req.GetGroupId(), "to", req.GetFromNode(), "min_applied", req.GetMinAppliedIndex())
	return nil
}

// fetchPartition asks node peer for a partition; see partitionFetcher.
func (t *Transport) fetchPartition(ctx context.Context, peer uint64, req *clusterv1.FetchPartitionRequest) (func() (*clusterv1.FetchPartitionResponse, error), error) {
	p := t.peers[peer]
	if p == nil {
		return nil, fmt.Errorf("node %d is not a peer of node %d", peer, t.opts.NodeID)
	}
	req.FromNode, req.ToNode = t.opts.NodeID, peer
	st, err := p.client.FetchPartition(ctx, req, grpc.MaxCallRecvMsgSize(t.opts.MaxFrameBytes))
	if err != nil {
		return nil, fmt.Errorf("fetch group %d's partition from node %d: %w", req.GetGroupId(), peer, err)
	}
	check := fetchCheck{minApplied: req.GetMinAppliedIndex()}
	return func() (*clusterv1.FetchPartitionResponse, error) {
		resp, err := st.Recv()
		if err == io.EOF {
			return nil, err
		}
		if err == nil {
			err = check.add(resp)
		}
		if err != nil {
			return nil, fmt.Errorf("fetch group %d's partition from node %d: %w", req.GetGroupId(), peer, err)
		}
		return resp, nil
	}, nil
}

// refuse counts and logs a frame a peer should not have sent, and returns
// the status that ends its stream.
func (t *Transport) refuse(err error) error {
	t.rejected.Add(1)
	t.log.Warn("node-to-node frame refused", "err", err)
	return grpcError(err)
}

// grpcError is the status a node-to-node stream ends with for err: the one
// place this package sets gRPC codes.
func grpcError(err error) error {
	switch {
	case errors.Is(err, errWrongNode):
		return status.Errorf(codes.FailedPrecondition, "%v: check the peer map of the sending node", err)
	case errors.Is(err, errWrongPartition):
		return status.Errorf(codes.FailedPrecondition, "%v: the nodes disagree on the topic's id; check the metadata group", err)
	case errors.Is(err, errNotMember):
		return status.Errorf(codes.Unauthenticated, "%v", err)
	case errors.Is(err, errImpersonation):
		return status.Errorf(codes.PermissionDenied, "%v", err)
	case errors.Is(err, ErrInvalidFrame):
		return status.Errorf(codes.InvalidArgument, "%v", err)
	}
	return status.Errorf(codes.Unavailable, "%v", err)
}
