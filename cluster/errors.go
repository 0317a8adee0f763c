package cluster

import (
	"errors"
	"fmt"
)

var (
	// ErrInvalidConfig is returned, wrapped with the field at fault, by
	// OpenHost and NewTransport for options that are not acceptable, and by
	// AddGroup for a group id of 0 or voters that do not name this node and
	// known peers.
	ErrInvalidConfig = errors.New("cluster: invalid config")
	// ErrClosed is returned by every call made after Close began, and by a
	// Propose or TransferLeadership still waiting when it did.
	ErrClosed = errors.New("cluster: closed")
	// ErrGroupExists is returned by AddGroup for a group the host already
	// runs.
	ErrGroupExists = errors.New("cluster: group exists")
	// ErrNotLeader is what every *NotLeaderError matches with errors.Is:
	// Propose and TransferLeadership on a node that is not the group's
	// leader.
	ErrNotLeader = errors.New("cluster: not the leader")
	// ErrLeadershipLost is returned by Propose when this node stopped being
	// the group's leader, or its term changed, before the entry was
	// applied. The entry may still commit under the new leader: a retry
	// must be idempotent (publishes carry dedup ids for this).
	ErrLeadershipLost = errors.New("cluster: leadership lost before the proposal was applied; it may still commit")
	// ErrProposalDropped is returned by Propose when Raft refused the entry
	// without appending it: a leadership transfer is under way, or too many
	// bytes are proposed and not yet committed. Retrying later is safe.
	ErrProposalDropped = errors.New("cluster: proposal dropped by raft")
	// ErrTooLarge is returned by Propose for data over Options.MaxEntryBytes.
	ErrTooLarge = errors.New("cluster: proposal too large")
	// ErrTransferFailed is returned by TransferLeadership when the leader
	// gave up the transfer (the target did not catch up within an election
	// timeout) or another node became leader instead.
	ErrTransferFailed = errors.New("cluster: leadership transfer failed")
	// ErrGroupFailed is returned, wrapped with the cause, by every call on
	// a group whose loop stopped on an error it cannot go on from: the
	// state machine's Apply, Snapshot or Restore failed, or its Raft log
	// could not be written. The other groups of the host go on.
	ErrGroupFailed = errors.New("cluster: group failed")
	// ErrNoSnapshots is what a StateMachine's Snapshot returns if it
	// cannot take snapshots: the group then keeps its whole log, and never
	// asks again.
	ErrNoSnapshots = errors.New("cluster: the state machine takes no snapshots")
	// ErrInvalidFrame is returned, wrapped with what is wrong, by the
	// transport's decoders for a batch or snapshot frame from a peer that
	// is malformed, too large or addressed to another node. The receiver
	// ends the stream with it; nothing of the frame reaches a group.
	ErrInvalidFrame = errors.New("cluster: invalid frame")
	// ErrNotOwner is returned, wrapped with the subscription and the
	// partition, by Node.Own when this node does not lead the
	// subscription's owner partition; and it is what the error a Node
	// hands to Releaser.Release wraps, once it stopped leading one. The
	// subscription's consumers reconnect, to its owner.
	ErrNotOwner = errors.New("cluster: not the subscription's owner")
)

// NotLeaderError is returned by Propose and TransferLeadership on a node
// that is not the group's leader. Leader is the leader this node knows of,
// 0 if it knows of none (an election is under way, or this node is cut off
// from the majority): callers forward the request to Leader, or retry.
// errors.Is(err, ErrNotLeader) reports true for it.
type NotLeaderError struct {
	Group  uint64 // the Raft group
	Leader uint64 // the leader's node id; 0 if unknown
}

func (e *NotLeaderError) Error() string {
	if e.Leader == 0 {
		return fmt.Sprintf("cluster: group %d: not the leader; no leader is known", e.Group)
	}
	return fmt.Sprintf("cluster: group %d: not the leader; the leader is node %d", e.Group, e.Leader)
}

// Is makes errors.Is(err, ErrNotLeader) true.
func (e *NotLeaderError) Is(target error) bool { return target == ErrNotLeader }
