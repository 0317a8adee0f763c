package cluster

import (
	"bytes"
	"context"
	"errors"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/ferrymq/ferry/internal/clock"
	clusterv1 "github.com/ferrymq/ferry/proto/ferry/cluster/v1"
)

// testHandler records what a Transport delivers and reports.
type testHandler struct {
	mu          sync.Mutex // guards the fields below
	received    []inbound
	snapshots   []inbound
	unreachable map[uint64]int // by group
	snapReports []raft.SnapshotStatus
	snapErr     error // ReceiveSnapshot's answer
}

func newTestHandler() *testHandler { return &testHandler{unreachable: make(map[uint64]int)} }

func (h *testHandler) Receive(group uint64, m *raftpb.Message) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.received = append(h.received, inbound{group: group, m: m})
}

func (h *testHandler) ReceiveSnapshot(_ context.Context, group uint64, m *raftpb.Message) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.snapshots = append(h.snapshots, inbound{group: group, m: m})
	return h.snapErr
}

func (h *testHandler) ReportUnreachable(group, _ uint64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.unreachable[group]++
}

func (h *testHandler) ReportSnapshot(_, _ uint64, st raft.SnapshotStatus) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.snapReports = append(h.snapReports, st)
}

func (h *testHandler) counts() (received, snapshots, unreachable int, reports []raft.SnapshotStatus) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, n := range h.unreachable {
		unreachable += n
	}
	return len(h.received), len(h.snapshots), unreachable, append([]raft.SnapshotStatus(nil), h.snapReports...)
}

// newTestTransport starts a transport for node id on loopback.
func newTestTransport(tb testing.TB, id uint64, peers map[uint64]string, h Handler, tweak func(*TransportOptions)) *Transport {
	tb.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	opts := DefaultTransportOptions(id, peers)
	opts.Listener = lis
	opts.Clock = clock.Real() // only reconnect backoff uses it here
	opts.Logger = testLogger(tb)
	if tweak != nil {
		tweak(&opts)
	}
	tr, err := NewTransport(opts, h)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), waitLong)
		defer cancel()
		if err := tr.Close(ctx); err != nil {
			tb.Error(err)
		}
	})
	return tr
}

func heartbeat(from, to uint64) *raftpb.Message {
	return &raftpb.Message{Type: raftpb.MsgHeartbeat.Enum(), From: new(from), To: new(to), Term: new(uint64(3))}
}

func mustMarshal(tb testing.TB, m proto.Message) []byte {
	tb.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

// TestTransportRefusesBadFrames: a peer sending what no ferry node sends
// gets its stream ended with a status saying what was wrong; nothing of
// the frame reaches a group, the server stays up.
func TestTransportRefusesBadFrames(t *testing.T) {
	h := newTestHandler()
	tr := newTestTransport(t, 2, nil, h, func(o *TransportOptions) {
		o.MaxFrameBytes = 256 << 10
		o.SnapshotChunkBytes = 64 << 10
		o.MaxSnapshotBytes = 1 << 20
	})
	conn, err := grpc.NewClient(tr.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := clusterv1.NewRaftTransportServiceClient(conn)
	hb := mustMarshal(t, heartbeat(1, 2))
	batch := func(from, to uint64, msgs ...*clusterv1.GroupMessage) *clusterv1.SendRequest {
		return &clusterv1.SendRequest{FromNode: from, ToNode: to, Messages: msgs}
	}
	gm := func(group uint64, b []byte) *clusterv1.GroupMessage {
		return &clusterv1.GroupMessage{GroupId: group, Message: b}
	}
	msg := func(m *raftpb.Message) []byte { return mustMarshal(t, m) }
	snap := &raftpb.Message{Type: raftpb.MsgSnap.Enum(), From: new(uint64(1)), To: new(uint64(2)),
		Snapshot: &raftpb.Snapshot{Metadata: &raftpb.SnapshotMetadata{Index: new(uint64(10)), Term: new(uint64(2))}}}

	for _, tc := range []struct {
		name string
		req  *clusterv1.SendRequest
		code codes.Code
		says string
	}{
		{"garbage", batch(1, 2, gm(1, []byte{0xff, 0xff, 0xff})), codes.InvalidArgument, "decode raft message"},
		{"wrong node", batch(1, 3, gm(1, hb)), codes.FailedPrecondition, "for node 3 reached node 2"},
		{"from node 0", batch(0, 2, gm(1, hb)), codes.InvalidArgument, "from node 0"},
		{"group 0", batch(1, 2, gm(0, hb)), codes.InvalidArgument, "group 0"},
		{"no type", batch(1, 2, gm(1, msg(&raftpb.Message{From: new(uint64(1)), To: new(uint64(2))}))), codes.InvalidArgument, "without a type"},
		{"unknown type", batch(1, 2, gm(1, msg(&raftpb.Message{Type: raftpb.MessageType(99).Enum(), From: new(uint64(1)), To: new(uint64(2))}))), codes.InvalidArgument, "unknown raft message type 99"},
		{"local", batch(1, 2, gm(1, msg(&raftpb.Message{Type: raftpb.MsgHup.Enum(), From: new(uint64(1)), To: new(uint64(2))}))), codes.InvalidArgument, "local to a node"},
		{"impostor", batch(1, 2, gm(1, msg(heartbeat(3, 2)))), codes.InvalidArgument, "from node 3 to node 2 in a frame from node 1"},
		{"snapshot inline", batch(1, 2, gm(1, msg(snap))), codes.InvalidArgument, "MsgSnap outside SendSnapshot"},
		{"too large", batch(1, 2, gm(1, make([]byte, 300<<10))), codes.ResourceExhausted, "larger than max"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// A good message first: a bad one later in the batch still
			// spoils all of it.
			tc.req.Messages = append([]*clusterv1.GroupMessage{gm(1, hb)}, tc.req.Messages...)
			st, err := client.Send(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			_ = st.Send(tc.req)
			_, err = st.CloseAndRecv()
			if s, _ := status.FromError(err); s.Code() != tc.code || !strings.Contains(s.Message(), tc.says) {
				t.Fatalf("status %v, want %v saying %q", err, tc.code, tc.says)
			}
			if n, _, _, _ := h.counts(); n != 0 {
				t.Fatalf("%d messages reached the handler", n)
			}
		})
	}

	chunk := func(b []byte) *clusterv1.SendSnapshotRequest {
		return &clusterv1.SendSnapshotRequest{Frame: &clusterv1.SendSnapshotRequest_Chunk{Chunk: b}}
	}
	header := func(data []byte, mutate func(*clusterv1.SnapshotHeader)) *clusterv1.SendSnapshotRequest {
		snap.Snapshot.Data = data
		req, err := encodeSnapshotHeader(5, snap)
		snap.Snapshot.Data = nil
		if err != nil {
			t.Fatal(err)
		}
		if mutate != nil {
			mutate(req.GetHeader())
		}
		return req
	}
	data := []byte("snapshot data")
	for _, tc := range []struct {
		name   string
		frames []*clusterv1.SendSnapshotRequest
		says   string
	}{
		{"chunk first", []*clusterv1.SendSnapshotRequest{chunk(data)}, "a chunk before the header"},
		{"no frame", []*clusterv1.SendSnapshotRequest{{}}, "neither header nor chunk"},
		{"two headers", []*clusterv1.SendSnapshotRequest{header(data, nil), header(data, nil)}, "a second header"},
		{"truncated", []*clusterv1.SendSnapshotRequest{header(data, nil), chunk(data[:4])}, "4 of 13 bytes"},
		{"too much", []*clusterv1.SendSnapshotRequest{header(data, nil), chunk(data), chunk(data)}, "more than the 13 bytes"},
		{"checksum", []*clusterv1.SendSnapshotRequest{header(data, nil), chunk(bytes.ToUpper(data))}, "checksum mismatch"},
		{"over the limit", []*clusterv1.SendSnapshotRequest{header(data, func(h *clusterv1.SnapshotHeader) { h.DataBytes = 2 << 20 })}, "at most 1048576"},
		{"not a snapshot", []*clusterv1.SendSnapshotRequest{header(data, func(h *clusterv1.SnapshotHeader) { h.Message = hb })}, "carries a MsgHeartbeat"},
		{"empty", nil, "no header"},
	} {
		t.Run("snapshot/"+tc.name, func(t *testing.T) {
			st, err := client.SendSnapshot(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			for _, f := range tc.frames {
				if err := st.Send(f); err != nil {
					break
				}
			}
			_, err = st.CloseAndRecv()
			if s, _ := status.FromError(err); s.Code() != codes.InvalidArgument || !strings.Contains(s.Message(), tc.says) {
				t.Fatalf("status %v, want InvalidArgument saying %q", err, tc.says)
			}
			if _, n, _, _ := h.counts(); n != 0 {
				t.Fatalf("%d snapshots reached the handler", n)
			}
		})
	}

	// The server still takes good frames, a proposal relayed by a former
	// leader (proposed on node 3, forwarded again by node 1) among them.
	relayed := msg(&raftpb.Message{Type: raftpb.MsgProp.Enum(), From: new(uint64(3)), To: new(uint64(2)),
		Entries: []*raftpb.Entry{{Data: []byte("p")}}})
	st, err := client.Send(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Send(batch(1, 2, gm(7, hb), gm(8, hb), gm(8, relayed))); err != nil {
		t.Fatal(err)
	}
	if _, err := st.CloseAndRecv(); err != nil {
		t.Fatal(err)
	}
	if n, _, _, _ := h.counts(); n != 3 {
		t.Fatalf("%d messages received, want 3", n)
	}
	if got := tr.rejected.Load(); got == 0 {
		t.Fatal("no frame counted as rejected")
	}
}

// TestTransportSendsSnapshotInChunks: a MsgSnap whose data spans many
// chunks arrives whole, and the sender's group hears how it went.
func TestTransportSendsSnapshotInChunks(t *testing.T) {
	hb := newTestHandler()
	b := newTestTransport(t, 2, nil, hb, nil)
	ha := newTestHandler()
	a := newTestTransport(t, 1, map[uint64]string{2: b.Addr().String()}, ha, func(o *TransportOptions) {
		o.SnapshotChunkBytes = 16 << 10
	})
	data := bytes.Repeat([]byte("0123456789abcdef"), 300<<10/16+3) // 300 KiB and change: 19 chunks
	snap := func() *raftpb.Message {
		return &raftpb.Message{Type: raftpb.MsgSnap.Enum(), From: new(uint64(1)), To: new(uint64(2)), Term: new(uint64(4)),
			Snapshot: &raftpb.Snapshot{Data: data, Metadata: &raftpb.SnapshotMetadata{Index: new(uint64(77)), Term: new(uint64(3)),
				ConfState: &raftpb.ConfState{Voters: []uint64{1, 2, 3}}}}}
	}
	a.Send(9, []*raftpb.Message{snap()})
	eventually(t, waitLong, "the sender hears the snapshot was taken", func() bool {
		_, _, _, r := ha.counts()
		return len(r) == 1
	})
	if _, _, _, r := ha.counts(); r[0] != raft.SnapshotFinish {
		t.Fatalf("report %v, want SnapshotFinish", r)
	}
	hb.mu.Lock()
	got := hb.snapshots[0]
	hb.mu.Unlock()
	if got.group != 9 || !proto.Equal(got.m, snap()) {
		t.Fatalf("received group %d, message %v (%d bytes of data)", got.group, got.m.GetType(), len(got.m.GetSnapshot().GetData()))
	}

	// A receiver that cannot take it: the sender's group hears of that.
	hb.mu.Lock()
	hb.snapErr = errors.New("busy")
	hb.mu.Unlock()
	a.Send(9, []*raftpb.Message{snap()})
	eventually(t, waitLong, "the sender hears the snapshot failed", func() bool {
		_, _, _, r := ha.counts()
		return len(r) == 2
	})
	if _, _, _, r := ha.counts(); r[1] != raft.SnapshotFailure {
		t.Fatalf("report %v, want SnapshotFailure", r)
	}
}

// TestTransportDrops: Send never blocks. A message too large for a frame
// is dropped with a report and the stream goes on; a peer that does not
// answer fills its queue and the rest is dropped with a report; a peer
// nobody listens for is reported unreachable.
func TestTransportDrops(t *testing.T) {
	hb := newTestHandler()
	b := newTestTransport(t, 2, nil, hb, nil)
	silent, err := net.Listen("tcp", "127.0.0.1:0") // accepts, never speaks HTTP/2
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	nobody, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	nobody.Close()
	ha := newTestHandler()
	a := newTestTransport(t, 1, map[uint64]string{2: b.Addr().String(), 3: silent.Addr().String(), 4: nobody.Addr().String()}, ha,
		func(o *TransportOptions) {
			o.MaxFrameBytes = 256 << 10
			o.SnapshotChunkBytes = 64 << 10
			o.PeerQueueLength = 8
		})

	big := heartbeat(1, 2)
	big.Type = raftpb.MsgApp.Enum()
	big.Entries = []*raftpb.Entry{{Index: new(uint64(1)), Term: new(uint64(1)), Data: make([]byte, 300<<10)}}
	a.Send(5, []*raftpb.Message{big})
	a.Send(6, []*raftpb.Message{heartbeat(1, 2)})
	eventually(t, waitLong, "the small message arrives", func() bool {
		n, _, _, _ := hb.counts()
		return n == 1
	})
	hb.mu.Lock()
	if g := hb.received[0].group; g != 6 {
		t.Fatalf("received a message of group %d, want 6", g)
	}
	hb.mu.Unlock()
	ha.mu.Lock()
	if ha.unreachable[5] != 1 {
		t.Fatalf("unreachable reports %v, want one for group 5", ha.unreachable)
	}
	ha.mu.Unlock()

	start := time.Now()
	for i := range 100 {
		a.Send(uint64(100+i), []*raftpb.Message{heartbeat(1, 3), heartbeat(1, 4)})
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("Send blocked for %v", d)
	}
	eventually(t, waitLong, "drops reported", func() bool {
		ha.mu.Lock()
		defer ha.mu.Unlock()
		n := 0
		for g, c := range ha.unreachable {
			if g >= 100 {
				n += c
			}
		}
		return n >= 100+100-8 // all of node 4's, all but a queue of node 3's
	})
	t.Logf("dropped %d messages", a.dropped.Load())
}

// TestOptionsValidate: each bad field is named.
func TestOptionsValidate(t *testing.T) {
	ok := DefaultOptions(1, map[uint64]string{2: "b:7422"}, nil)
	ok.Store = newStoreForTest(t)
	if err := ok.Validate(); err != nil {
		t.Fatalf("defaults: %v", err)
	}
	for _, tc := range []struct {
		field string
		bad   func(*Options)
	}{
		{"NodeID", func(o *Options) { o.NodeID = 0 }},
		{"Addr", func(o *Options) { o.Addr = "" }},
		{"Store", func(o *Options) { o.Store = nil }},
		{"Clock", func(o *Options) { o.Clock = nil }},
		{"Logger", func(o *Options) { o.Logger = nil }},
		{"TickInterval", func(o *Options) { o.TickInterval = 0 }},
		{"HeartbeatTicks", func(o *Options) { o.HeartbeatTicks = 0 }},
		{"ElectionTicks", func(o *Options) { o.ElectionTicks = 1 }},
		{"SnapshotEntries", func(o *Options) { o.SnapshotEntries = 0 }},
		{"MaxEntryBytes", func(o *Options) { o.MaxEntryBytes = o.MaxFrameBytes }},
		{"PeerQueueLength", func(o *Options) { o.PeerQueueLength = 0 }},
		{"MaxFrameBytes", func(o *Options) { o.MaxFrameBytes = 1000; o.MaxEntryBytes = 10 }},
		{"SnapshotChunkBytes", func(o *Options) { o.SnapshotChunkBytes = 5 << 20 }},
		{"MaxSnapshotBytes", func(o *Options) { o.MaxSnapshotBytes = 0 }},
		{"ReconnectMin", func(o *Options) { o.ReconnectMax = o.ReconnectMin / 2 }},
		{"Peers", func(o *Options) { o.Peers = map[uint64]string{0: "x:1"} }},
		{"Peers", func(o *Options) { o.Peers = map[uint64]string{2: ""} }},
	} {
		t.Run(tc.field, func(t *testing.T) {
			o := ok
			tc.bad(&o)
			err := o.Validate()
			if !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), tc.field) {
				t.Fatalf("Validate: %v, want ErrInvalidConfig naming %s", err, tc.field)
			}
		})
	}
}
