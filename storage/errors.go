package storage

import (
	"errors"
	"fmt"
)

var (
	// ErrTopicNotFound is returned when no topic has the given name.
	ErrTopicNotFound = errors.New("storage: topic not found")
	// ErrTopicExists is returned by CreateTopic when the topic exists with
	// another config. An identical create succeeds and changes nothing.
	ErrTopicExists = errors.New("storage: topic exists with a different config")
	// ErrPartitionNotFound is returned when a partition number is not below
	// the topic's partition count.
	ErrPartitionNotFound = errors.New("storage: partition not found")
	// ErrInvalidConfig is returned, wrapped with the field at fault, when a
	// topic config or a topic name is not acceptable.
	ErrInvalidConfig = errors.New("storage: invalid config")
	// ErrInvalidMessage is returned, wrapped with what is wrong, by Append
	// and Enqueue for a message the log cannot store (an id over MaxIDBytes).
	ErrInvalidMessage = errors.New("storage: invalid message")
	// ErrClosed is returned by every call made after Close began, by
	// appends to a partition whose topic was deleted meanwhile, and by a
	// RaftLog's methods once its group was dropped.
	ErrClosed = errors.New("storage: closed")
	// ErrSubscriptionNotFound is returned when a topic has no subscription
	// of the given name or id.
	ErrSubscriptionNotFound = errors.New("storage: subscription not found")
	// ErrSubscriptionExists is returned by CreateSubscription when the name
	// is taken, with the existing subscription.
	ErrSubscriptionExists = errors.New("storage: subscription exists")
	// ErrIDTaken is returned by CreateTopicAt and CreateSubscriptionAt for
	// a Stamp.ID that a live topic or subscription has, or whose deleted
	// one's data is still being dropped.
	ErrIDTaken = errors.New("storage: id taken")
	// ErrTooLarge is returned by Write, RaftLog.Save and
	// RaftLog.CreateSnapshot when their changes do not fit in one
	// transaction.
	ErrTooLarge = errors.New("storage: write too large for one transaction")
	// ErrInvalidRaftRequest is returned, wrapped with what is wrong, by the
	// Raft log calls for group 0, for entries that are not consecutive,
	// whose terms go down or that would leave a gap after the last entry,
	// for a hard state committing beyond the last entry, and for Entries
	// with lo > hi. Nothing is written then.
	ErrInvalidRaftRequest = errors.New("storage: invalid raft log request")
	// ErrReplicatedMulti is returned by Write for an atomic write across
	// partitions whose barrier reached a partition that became replicated
	// while it waited (a write planned with a replicated partition is made
	// in order instead). Nothing is written then.
	ErrReplicatedMulti = errors.New("storage: atomic write across partitions reached a replicated partition")
	// ErrNotReplicated is returned by the writes to a partition of a
	// replicated store (Options.Replicated) that has no Raft group yet:
	// its topic was just created, or the node is starting. Retry.
	ErrNotReplicated = errors.New("storage: partition has no raft group on this node yet")
	// ErrNeedIDs is returned by Write for a write across partitions, some
	// replicated, with a message without an id: made in order, a retry
	// could store it twice. Nothing is written then.
	ErrNeedIDs = errors.New("storage: write across replicated partitions without an id on every message")
	// ErrInvalidExport is returned, wrapped with what is wrong, by
	// Import.Add and Import.Finish for an export chunk that is malformed,
	// holds a key of another partition or out of order, or leaves the
	// partition inconsistent (offsets missing, sizes that do not add up),
	// and for an export whose applied index is below the one asked for.
	// The import is aborted then.
	ErrInvalidExport = errors.New("storage: invalid partition export")
	// ErrReplaced is returned for a write this node proposed to a
	// replicated partition whose state was replaced by an import before
	// the write was applied here: the imported state may hold it or not,
	// so its outcome is unknown, as a timeout's is. A retry with the same
	// ids is answered as duplicates if it was stored.
	ErrReplaced = errors.New("storage: partition replaced by an import; the write's outcome is unknown")
	// ErrFenced is returned by Write for a write of a subscription's
	// cursors or acked ids decided under an owner epoch (Write.Epoch)
	// below one a partition of its topic has seen, and by Fence for such
	// an epoch: a newer owner of the subscription took over (fence.go).
	// Nothing of the refused partition's part is written, its messages
	// included; the caller is no longer the owner.
	ErrFenced = errors.New("storage: subscription owner fenced off by a newer owner")
	// ErrCorrupt is returned when a stored key or value cannot be decoded.
	ErrCorrupt = errors.New("storage: corrupt record")
)

// OffsetOutOfRangeError is returned by Read for an offset below the first
// retained offset or above the head.
type OffsetOutOfRangeError struct {
	Offset uint64 // the offset asked for
	First  uint64 // first retained offset
	Head   uint64 // offset the next message will get
}

func (e *OffsetOutOfRangeError) Error() string {
	if e.Offset < e.First {
		return fmt.Sprintf("storage: offset %d was removed by retention; first retained offset is %d", e.Offset, e.First)
	}
	return fmt.Sprintf("storage: offset %d is beyond the head offset %d", e.Offset, e.Head)
}
