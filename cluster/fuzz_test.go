package cluster

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"testing"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"

	clusterv1 "github.com/ferrymq/ferry/proto/ferry/cluster/v1"
	"github.com/ferrymq/ferry/storage"
)

// Fuzz targets for the decoders of what peers send: the inbound path of
// the transport. Plain `go test` runs the seeds; to search further:
//
//	go test -run '^$' -fuzz FuzzDecodeBatch -fuzztime 30s ./cluster
//
// A decoder must never panic, must fail only with ErrInvalidFrame, and
// must hand on only messages raft may take from the network, from and to
// the nodes the frame names.

func FuzzDecodeBatch(f *testing.F) {
	app := &raftpb.Message{Type: raftpb.MsgApp.Enum(), From: new(uint64(1)), To: new(uint64(2)), Term: new(uint64(5)),
		Index: new(uint64(9)), LogTerm: new(uint64(4)), Commit: new(uint64(8)),
		Entries: []*raftpb.Entry{{Index: new(uint64(10)), Term: new(uint64(5)), Data: []byte("entry")}}}
	for _, req := range []*clusterv1.SendRequest{
		{FromNode: 1, ToNode: 2, Messages: []*clusterv1.GroupMessage{
			{GroupId: 3, Message: mustMarshal(f, heartbeat(1, 2))},
			{GroupId: 4, Message: mustMarshal(f, app)},
		}},
		{FromNode: 1, ToNode: 2},
		{FromNode: 1, ToNode: 3, Messages: []*clusterv1.GroupMessage{{GroupId: 3, Message: mustMarshal(f, heartbeat(1, 3))}}},
		{FromNode: 1, ToNode: 2, Messages: []*clusterv1.GroupMessage{{GroupId: 3, Message: []byte{0x08, 0xff}}}},
	} {
		f.Add(mustMarshal(f, req))
	}
	f.Add([]byte{})
	f.Add([]byte{0x1a, 0x05, 0x08, 0x01, 0x12, 0x01, 0xff}) // a message with a truncated raft message
	f.Fuzz(func(t *testing.T, b []byte) {
		req := new(clusterv1.SendRequest)
		if proto.Unmarshal(b, req) != nil {
			return // gRPC refuses it before decodeBatch
		}
		msgs, err := decodeBatch(2, req)
		if err != nil {
			if !errors.Is(err, ErrInvalidFrame) {
				t.Fatalf("decodeBatch: %v, want ErrInvalidFrame", err)
			}
			return
		}
		if len(msgs) != len(req.GetMessages()) {
			t.Fatalf("%d messages decoded of %d", len(msgs), len(req.GetMessages()))
		}
		for _, in := range msgs {
			m := in.m
			switch {
			case in.group == 0:
				t.Fatal("group 0 accepted")
			case m.GetFrom() != req.GetFromNode() || m.GetTo() != 2:
				t.Fatalf("message from %d to %d in a batch from %d to 2", m.GetFrom(), m.GetTo(), req.GetFromNode())
			case m.Type == nil || raft.IsLocalMsg(m.GetType()) || m.GetType() == raftpb.MsgSnap:
				t.Fatalf("accepted a %v", m.GetType())
			case !raft.IsEmptySnap(m.GetSnapshot()):
				t.Fatal("accepted a snapshot outside SendSnapshot")
			}
			if _, err := proto.Marshal(m); err != nil {
				t.Fatalf("accepted message does not encode: %v", err)
			}
		}
	})
}

// FuzzSnapshotAssembler feeds a stream of frames, each a u16 length and a
// SendSnapshotRequest, to a snapshot assembler for node 2.
func FuzzSnapshotAssembler(f *testing.F) {
	frames := func(reqs ...*clusterv1.SendSnapshotRequest) []byte {
		var b []byte
		for _, r := range reqs {
			v := mustMarshal(f, r)
			b = binary.BigEndian.AppendUint16(b, uint16(len(v)))
			b = append(b, v...)
		}
		return b
	}
	data := []byte("some snapshot data, in three chunks")
	m := &raftpb.Message{Type: raftpb.MsgSnap.Enum(), From: new(uint64(1)), To: new(uint64(2)), Term: new(uint64(3)),
		Snapshot: &raftpb.Snapshot{Data: data, Metadata: &raftpb.SnapshotMetadata{Index: new(uint64(50)), Term: new(uint64(2)),
			ConfState: &raftpb.ConfState{Voters: []uint64{1, 2, 3}}}}}
	hdr, err := encodeSnapshotHeader(7, m)
	if err != nil {
		f.Fatal(err)
	}
	chunk := func(b []byte) *clusterv1.SendSnapshotRequest {
		return &clusterv1.SendSnapshotRequest{Frame: &clusterv1.SendSnapshotRequest_Chunk{Chunk: b}}
	}
	f.Add(frames(hdr, chunk(data[:10]), chunk(data[10:20]), chunk(data[20:])))
	f.Add(frames(hdr))
	f.Add(frames(chunk(data), hdr))
	f.Add(frames(hdr, chunk(data), chunk(data)))
	f.Add([]byte{0, 3, 0x0a, 0x01, 0x08})
	f.Fuzz(func(t *testing.T, b []byte) {
		a := snapshotAssembler{self: 2, maxBytes: 1 << 20}
		for len(b) >= 2 {
			n := int(binary.BigEndian.Uint16(b))
			b = b[2:]
			if n > len(b) {
				n = len(b)
			}
			req := new(clusterv1.SendSnapshotRequest)
			err := proto.Unmarshal(b[:n], req)
			b = b[n:]
			if err != nil {
				continue // gRPC refuses it before the assembler
			}
			if err := a.add(req); err != nil {
				if !errors.Is(err, ErrInvalidFrame) {
					t.Fatalf("add: %v, want ErrInvalidFrame", err)
				}
				return
			}
		}
		group, m, err := a.finish()
		if err != nil {
			if !errors.Is(err, ErrInvalidFrame) {
				t.Fatalf("finish: %v, want ErrInvalidFrame", err)
			}
			return
		}
		got := m.GetSnapshot().GetData()
		switch {
		case group == 0:
			t.Fatal("group 0 accepted")
		case m.GetType() != raftpb.MsgSnap || m.GetTo() != 2 || m.GetFrom() == 0:
			t.Fatalf("accepted a %v from %d to %d", m.GetType(), m.GetFrom(), m.GetTo())
		case raft.IsEmptySnap(m.GetSnapshot()):
			t.Fatal("accepted an empty snapshot")
		case uint64(len(got)) != a.hdr.GetDataBytes() || crc32.Checksum(got, castagnoli) != a.hdr.GetDataCrc32C():
			t.Fatalf("accepted %d bytes that do not match the header", len(got))
		}
	})
}

// FuzzFetchPartition feeds a FetchPartition exchange to node 2's checks:
// the request (a u16 length and a FetchPartitionRequest), then responses
// (each a u16 length and a FetchPartitionResponse) to a request for at
// least applied index 10. What is accepted names node 2 and a group, and
// every accepted response has a chunk and the same applied index, at least
// 10; every refusal is ErrInvalidFrame.
func FuzzFetchPartition(f *testing.F) {
	frames := func(msgs ...proto.Message) []byte {
		var b []byte
		for _, m := range msgs {
			v := mustMarshal(f, m)
			b = binary.BigEndian.AppendUint16(b, uint16(len(v)))
			b = append(b, v...)
		}
		return b
	}
	req := &clusterv1.FetchPartitionRequest{FromNode: 1, ToNode: 2, GroupId: 7, TopicId: 3, Partition: 1, MinAppliedIndex: 10}
	resp := func(applied uint64, chunk string) *clusterv1.FetchPartitionResponse {
		return &clusterv1.FetchPartitionResponse{AppliedIndex: applied, Chunk: []byte(chunk)}
	}
	f.Add(frames(req, resp(12, "a"), resp(12, "b")))
	f.Add(frames(req, resp(9, "a")))
	f.Add(frames(req, resp(12, "a"), resp(13, "b")))
	f.Add(frames(req, resp(12, "")))
	f.Add(frames(&clusterv1.FetchPartitionRequest{FromNode: 1, ToNode: 3, GroupId: 7}))
	f.Add(frames(&clusterv1.FetchPartitionRequest{ToNode: 2, GroupId: 7}))
	f.Fuzz(func(t *testing.T, b []byte) {
		next := func() []byte {
			if len(b) < 2 {
				return nil
			}
			n := min(int(binary.BigEndian.Uint16(b)), len(b)-2)
			v := b[2 : 2+n]
			b = b[2+n:]
			return v
		}
		req := new(clusterv1.FetchPartitionRequest)
		if proto.Unmarshal(next(), req) != nil {
			return // gRPC refuses it before the check
		}
		if err := checkFetchRequest(2, req); err != nil {
			if !errors.Is(err, ErrInvalidFrame) {
				t.Fatalf("request refused with %v, want ErrInvalidFrame", err)
			}
		} else if req.GetFromNode() == 0 || req.GetToNode() != 2 || req.GetGroupId() == 0 {
			t.Fatalf("accepted a request from %d to %d for group %d", req.GetFromNode(), req.GetToNode(), req.GetGroupId())
		}
		c := fetchCheck{minApplied: 10}
		var applied uint64
		for len(b) > 0 {
			resp := new(clusterv1.FetchPartitionResponse)
			if proto.Unmarshal(next(), resp) != nil {
				continue
			}
			if err := c.add(resp); err != nil {
				if !errors.Is(err, ErrInvalidFrame) {
					t.Fatalf("response refused with %v, want ErrInvalidFrame", err)
				}
				return
			}
			if applied == 0 {
				applied = resp.GetAppliedIndex()
			}
			if len(resp.GetChunk()) == 0 || resp.GetAppliedIndex() < 10 || resp.GetAppliedIndex() != applied {
				t.Fatalf("accepted a response at %d with %d bytes after one at %d", resp.GetAppliedIndex(), len(resp.GetChunk()), applied)
			}
		}
	})
}

// FuzzDecodePartitionMarker: a partition snapshot's marker decodes only
// as storage.ErrCorrupt or as what encodes back to the same bytes.
func FuzzDecodePartitionMarker(f *testing.F) {
	f.Add(encodePartitionMarker(3, 1, 42))
	f.Add(encodePartitionMarker(0, 0, 0)[:9])
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		tid, part, applied, err := decodePartitionMarker(b)
		if err != nil {
			if !errors.Is(err, storage.ErrCorrupt) {
				t.Fatalf("decode %x: %v, want ErrCorrupt", b, err)
			}
			return
		}
		if got := encodePartitionMarker(tid, part, applied); !bytes.Equal(got, b) {
			t.Fatalf("marker %x decodes to %d %d %d, which encode to %x", b, tid, part, applied, got)
		}
	})
}
