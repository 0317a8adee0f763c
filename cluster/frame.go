package cluster

import (
	"errors"
	"fmt"
	"hash/crc32"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"

	clusterv1 "github.com/ferrymq/ferry/proto/ferry/cluster/v1"
)

// The decoders of what peers send. Everything a peer sends is checked here
// before any of it reaches a group: the framing, the ids, and that each
// message is one raft may take from the network. What raft.Step does with
// a well-formed message is raft's business; the node-to-node network is
// trusted with that much (see doc.go).

// maxBatchMessages bounds the messages of one SendRequest (raft.proto).
const maxBatchMessages = 1 << 16

// errWrongNode marks a frame addressed to another node id: the sender's
// peer map is wrong, which is a configuration error, not a bad frame.
var errWrongNode = errors.New("addressed to another node")

// errWrongPartition marks a FetchPartition for a group that replicates
// another partition on the node asked: the nodes' topics disagree.
var errWrongPartition = errors.New("the group replicates another partition")

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// inbound is one decoded message of a batch and its group.
type inbound struct {
	group uint64
	m     *raftpb.Message
}

// decodeBatch decodes and checks a batch sent to node self. It returns the
// messages in order, or an error wrapping ErrInvalidFrame and nothing.
func decodeBatch(self uint64, req *clusterv1.SendRequest) ([]inbound, error) {
	from, to := req.GetFromNode(), req.GetToNode()
	switch {
	case from == 0:
		return nil, fmt.Errorf("batch from node 0: %w", ErrInvalidFrame)
	case to != self:
		return nil, fmt.Errorf("batch for node %d reached node %d: %w: %w", to, self, ErrInvalidFrame, errWrongNode)
	case len(req.GetMessages()) > maxBatchMessages:
		return nil, fmt.Errorf("batch of %d messages; at most %d: %w", len(req.GetMessages()), maxBatchMessages, ErrInvalidFrame)
	}
	out := make([]inbound, 0, len(req.GetMessages()))
	for i, gm := range req.GetMessages() {
		m, err := decodeMessage(gm.GetGroupId(), gm.GetMessage(), from, to)
		if err != nil {
			return nil, fmt.Errorf("batch from node %d, message %d: %w", from, i, err)
		}
		if m.GetType() == raftpb.MsgSnap {
			return nil, fmt.Errorf("batch from node %d, message %d: a MsgSnap outside SendSnapshot: %w", from, i, ErrInvalidFrame)
		}
		if !raft.IsEmptySnap(m.GetSnapshot()) {
			return nil, fmt.Errorf("batch from node %d, message %d: a %v carries a snapshot: %w", from, i, m.GetType(), ErrInvalidFrame)
		}
		out = append(out, inbound{group: gm.GetGroupId(), m: m})
	}
	return out, nil
}

// decodeMessage decodes one raft message of group and checks that raft
// may take it from the network, from node from to node to.
func decodeMessage(group uint64, b []byte, from, to uint64) (*raftpb.Message, error) {
	if group == 0 {
		return nil, fmt.Errorf("group 0: %w", ErrInvalidFrame)
	}
	m := new(raftpb.Message)
	if err := proto.Unmarshal(b, m); err != nil {
		return nil, fmt.Errorf("group %d: decode raft message: %w: %w", group, ErrInvalidFrame, err)
	}
	if m.Type == nil {
		return nil, fmt.Errorf("group %d: raft message without a type: %w", group, ErrInvalidFrame)
	}
	if _, ok := raftpb.MessageType_name[int32(m.GetType())]; !ok {
		return nil, fmt.Errorf("group %d: unknown raft message type %d: %w", group, int32(m.GetType()), ErrInvalidFrame)
	}
	if raft.IsLocalMsg(m.GetType()) {
		return nil, fmt.Errorf("group %d: %v is local to a node: %w", group, m.GetType(), ErrInvalidFrame)
	}
	// A MsgProp keeps the node that proposed it as From: a follower that
	// took a proposal forwarded to it when it was leader forwards it again,
	// so a proposal may arrive from a node other than its From.
	relayed := m.GetType() == raftpb.MsgProp && m.GetFrom() != 0
	if (m.GetFrom() != from && !relayed) || m.GetTo() != to {
		return nil, fmt.Errorf("group %d: %v from node %d to node %d in a frame from node %d to node %d: %w",
			group, m.GetType(), m.GetFrom(), m.GetTo(), from, to, ErrInvalidFrame)
	}
	if len(m.GetResponses()) > 0 {
		return nil, fmt.Errorf("group %d: %v carries local responses: %w", group, m.GetType(), ErrInvalidFrame)
	}
	return m, nil
}

// checkFetchRequest checks a FetchPartition request sent to node self.
// An error wraps ErrInvalidFrame.
func checkFetchRequest(self uint64, req *clusterv1.FetchPartitionRequest) error {
	switch {
	case req.GetFromNode() == 0:
		return fmt.Errorf("partition fetch from node 0: %w", ErrInvalidFrame)
	case req.GetToNode() != self:
		return fmt.Errorf("partition fetch for node %d reached node %d: %w: %w", req.GetToNode(), self, ErrInvalidFrame, errWrongNode)
	case req.GetGroupId() == 0:
		return fmt.Errorf("partition fetch for group 0: %w", ErrInvalidFrame)
	}
	return nil
}

// fetchCheck checks the responses of one FetchPartition stream: a chunk
// in each, and the same applied index, at least the one asked for. The
// chunks themselves are storage's to check (storage.ErrInvalidExport).
type fetchCheck struct {
	minApplied uint64
	applied    uint64 // of the first response; 0 before it
}

// add checks the next response. An error wraps ErrInvalidFrame.
func (c *fetchCheck) add(resp *clusterv1.FetchPartitionResponse) error {
	switch {
	case resp.GetAppliedIndex() < c.minApplied:
		return fmt.Errorf("partition copy at applied index %d, below the %d asked for: %w", resp.GetAppliedIndex(), c.minApplied, ErrInvalidFrame)
	case c.applied != 0 && resp.GetAppliedIndex() != c.applied:
		return fmt.Errorf("partition copy's applied index went from %d to %d: %w", c.applied, resp.GetAppliedIndex(), ErrInvalidFrame)
	case len(resp.GetChunk()) == 0:
		return fmt.Errorf("partition copy with an empty chunk: %w", ErrInvalidFrame)
	}
	c.applied = resp.GetAppliedIndex()
	return nil
}

// encodeSnapshotHeader makes the header frame of MsgSnap m of group: m
// without its snapshot's data, the data's length and checksum.
func encodeSnapshotHeader(group uint64, m *raftpb.Message) (*clusterv1.SendSnapshotRequest, error) {
	data := m.GetSnapshot().GetData()
	hm := &raftpb.Message{
		Type:       m.Type,
		To:         m.To,
		From:       m.From,
		Term:       m.Term,
		LogTerm:    m.LogTerm,
		Index:      m.Index,
		Commit:     m.Commit,
		Vote:       m.Vote,
		Reject:     m.Reject,
		RejectHint: m.RejectHint,
		Context:    m.Context,
		Snapshot:   &raftpb.Snapshot{Metadata: m.GetSnapshot().GetMetadata()},
	}
	b, err := proto.Marshal(hm)
	if err != nil {
		return nil, fmt.Errorf("encode snapshot message: %w", err)
	}
	return &clusterv1.SendSnapshotRequest{Frame: &clusterv1.SendSnapshotRequest_Header{Header: &clusterv1.SnapshotHeader{
		FromNode:   m.GetFrom(),
		ToNode:     m.GetTo(),
		GroupId:    group,
		Message:    b,
		DataBytes:  uint64(len(data)),
		DataCrc32C: crc32.Checksum(data, castagnoli),
	}}}, nil
}

// snapshotAssembler puts a snapshot back together from the frames of one
// SendSnapshot stream to node self: a header, then chunks of data.
type snapshotAssembler struct {
	self     uint64
	maxBytes int64 // largest data accepted
	hdr      *clusterv1.SnapshotHeader
	m        *raftpb.Message
	data     []byte
}

// assemblerPrealloc bounds the buffer allocated up front from a header's
// data_bytes: a lying header must not allocate a gigabyte by itself.
const assemblerPrealloc = 16 << 20

// add takes the next frame. An error wraps ErrInvalidFrame; the transfer
// is then over.
func (a *snapshotAssembler) add(req *clusterv1.SendSnapshotRequest) error {
	switch f := req.GetFrame().(type) {
	case *clusterv1.SendSnapshotRequest_Header:
		if a.hdr != nil {
			return fmt.Errorf("snapshot: a second header: %w", ErrInvalidFrame)
		}
		h := f.Header
		switch {
		case h == nil:
			return fmt.Errorf("snapshot: empty header: %w", ErrInvalidFrame)
		case h.GetFromNode() == 0:
			return fmt.Errorf("snapshot from node 0: %w", ErrInvalidFrame)
		case h.GetToNode() != a.self:
			return fmt.Errorf("snapshot for node %d reached node %d: %w: %w", h.GetToNode(), a.self, ErrInvalidFrame, errWrongNode)
		case h.GetDataBytes() > uint64(a.maxBytes):
			return fmt.Errorf("snapshot of %d bytes; at most %d are accepted: %w", h.GetDataBytes(), a.maxBytes, ErrInvalidFrame)
		}
		m, err := decodeMessage(h.GetGroupId(), h.GetMessage(), h.GetFromNode(), h.GetToNode())
		if err != nil {
			return fmt.Errorf("snapshot header: %w", err)
		}
		if m.GetType() != raftpb.MsgSnap {
			return fmt.Errorf("snapshot header carries a %v: %w", m.GetType(), ErrInvalidFrame)
		}
		if raft.IsEmptySnap(m.GetSnapshot()) {
			return fmt.Errorf("snapshot header: MsgSnap without a snapshot: %w", ErrInvalidFrame)
		}
		if len(m.GetSnapshot().GetData()) > 0 {
			return fmt.Errorf("snapshot header: data outside the chunks: %w", ErrInvalidFrame)
		}
		a.hdr, a.m = h, m
		a.data = make([]byte, 0, min(h.GetDataBytes(), assemblerPrealloc))
	case *clusterv1.SendSnapshotRequest_Chunk:
		switch {
		case a.hdr == nil:
			return fmt.Errorf("snapshot: a chunk before the header: %w", ErrInvalidFrame)
		case len(f.Chunk) > maxChunkBytes:
			return fmt.Errorf("snapshot: a chunk of %d bytes; at most %d: %w", len(f.Chunk), maxChunkBytes, ErrInvalidFrame)
		case uint64(len(a.data))+uint64(len(f.Chunk)) > a.hdr.GetDataBytes():
			return fmt.Errorf("snapshot: more than the %d bytes of data announced: %w", a.hdr.GetDataBytes(), ErrInvalidFrame)
		}
		a.data = append(a.data, f.Chunk...)
	default:
		return fmt.Errorf("snapshot: a frame with neither header nor chunk: %w", ErrInvalidFrame)
	}
	return nil
}

// finish checks that the data is complete and intact and returns the
// group and its MsgSnap, data included.
func (a *snapshotAssembler) finish() (uint64, *raftpb.Message, error) {
	switch {
	case a.hdr == nil:
		return 0, nil, fmt.Errorf("snapshot: no header: %w", ErrInvalidFrame)
	case uint64(len(a.data)) != a.hdr.GetDataBytes():
		return 0, nil, fmt.Errorf("snapshot: %d of %d bytes of data arrived: %w", len(a.data), a.hdr.GetDataBytes(), ErrInvalidFrame)
	case crc32.Checksum(a.data, castagnoli) != a.hdr.GetDataCrc32C():
		return 0, nil, fmt.Errorf("snapshot: data checksum mismatch: %w", ErrInvalidFrame)
	}
	a.m.Snapshot.Data = a.data
	return a.hdr.GetGroupId(), a.m, nil
}
