package cluster

import (
	"encoding/binary"
	"fmt"
)

// A proposal's entry data is a header, then the caller's data. The header
// names the proposal, so the node that proposed it can tell its own entry
// when the entry is applied; it is stripped before the state machine sees
// the entry. Raft's own entries (a new leader's empty entry, configuration
// changes) have no header.
//
//	ver u8 (1) | proposer node u64 | proposal seq u64 | data
//
// A proposal is matched by node, seq and the index its entry was appended
// at: an entry from this node's previous life with the same seq (seqs
// start at a random number per Group, so that is unlikely anyway) sits at
// another index and matches nothing.
const (
	entryVersion   = 1
	entryHeaderLen = 1 + 8 + 8
)

// encodeEntry returns the entry data of proposal seq of node.
func encodeEntry(node, seq uint64, data []byte) []byte {
	b := make([]byte, entryHeaderLen, entryHeaderLen+len(data))
	b[0] = entryVersion
	binary.BigEndian.PutUint64(b[1:], node)
	binary.BigEndian.PutUint64(b[9:], seq)
	return append(b, data...)
}

// decodeEntry splits a proposal's entry data into its header and the
// caller's data, which aliases b.
func decodeEntry(b []byte) (node, seq uint64, data []byte, err error) {
	if len(b) < entryHeaderLen {
		return 0, 0, nil, fmt.Errorf("entry data of %d bytes is shorter than a proposal header", len(b))
	}
	if b[0] != entryVersion {
		return 0, 0, nil, fmt.Errorf("entry header version %d; this node knows %d", b[0], entryVersion)
	}
	return binary.BigEndian.Uint64(b[1:]), binary.BigEndian.Uint64(b[9:]), b[entryHeaderLen:], nil
}

// forwardTimeoutElections is how many election timeouts a proposal
// forwarded to the leader may take to come back in an append before it
// fails (Group.expireForwarded).
const forwardTimeoutElections = 3

// proposal is a Propose or ProposeAsync call waiting for its entry to be
// applied.
type proposal struct {
	seq   uint64
	data  []byte // the entry data, header included; nil once stepped
	index uint64 // where the entry was appended; 0 until then (owned by run)
	// forwardedAt is 1 + the group's tick count when the proposal was
	// forwarded to the leader; 0 for one this node appended as leader.
	forwardedAt uint64
	done        chan proposalResult           // Propose's answer, capacity 1: finish never blocks
	cb          func(index uint64, err error) // ProposeAsync's answer, instead of done
}

type proposalResult struct {
	index uint64
	err   error
}

// finish answers the proposal. Each proposal is finished once.
func (p *proposal) finish(index uint64, err error) {
	if p.cb != nil {
		p.cb(index, err)
		return
	}
	p.done <- proposalResult{index: index, err: err}
}
