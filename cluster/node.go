package cluster

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"maps"
	"net"
	"slices"
	"sync"

	"github.com/ferrymq/ferry/internal/clock"
	"github.com/ferrymq/ferry/storage"
)

// Node is one node of a ferry cluster (docs/cluster.md): the Host with its
// Raft groups, run over the node's storage.Store. Every node's store holds
// every topic, changed only through the metadata group, and every
// partition is a Raft group over all the nodes. A Node owns:
//
//   - Placement: which group replicates a partition (topic id << 32 |
//     partition), and which node owns a subscription's delivery — the
//     leader of the partition its name hashes to (OwnerPartition).
//   - Group lifecycle: the metadata group, and a group for every
//     partition of the store's topics, started as the metadata group
//     creates topics and removed as it deletes them (reconcile); a
//     partition takes no write before its group runs
//     (storage.Options.Replicated).
//   - Metadata changes: topic and subscription changes proposed to the
//     metadata group from any node, retried while their outcome is unknown
//     (an election); a topic create answers once its partitions have
//     leaders.
//   - Barriers: SyncMeta, SyncTopic and SyncPartition return once every
//     change committed before the call is applied here, for linearizable
//     reads and for a new owner's cursors.
//   - Ownership: Own takes a subscription over, fencing off its earlier
//     owners in every partition at an owner epoch (the term this node
//     leads the owner partition in); when this node stops leading a
//     partition, the subscriptions it owned are released (Releaser).
//   - Hand-off and close, and the groups' status (LocalStatus).
//
// The gRPC layer (package broker) routes calls on a subscription to its
// owner (Owner) and serves the API; a Node knows nothing of it.
//
// Writes to partitions do not go through the Node: each partition writer
// proposes its entries to its group (PartitionProposer), and a follower's
// proposals are forwarded to the leader by Raft (Options.ForwardProposals).
//
// Methods are safe for concurrent use once Start returned.
type Node struct {
	opts   Options
	id     uint64
	voters []uint64
	store  *storage.Store
	clk    clock.Clock
	log    *slog.Logger

	host *Host
	meta *Metadata
	rel  Releaser

	partsMu sync.Mutex                 // guards parts
	parts   map[uint64]*replicatedPart // by group id
	stop    chan struct{}
	wg      sync.WaitGroup

	closeOnce sync.Once
	closeErr  error
}

// Releaser runs the delivery of the subscriptions this node owns (in a
// broker, the consumer engine). A Node calls it from its own goroutines.
type Releaser interface {
	// StopTopic stops the delivery of every subscription of topic, which
	// was deleted.
	StopTopic(topic string)
	// Release stops the delivery of topic's subscriptions for which match
	// reports true, which this node no longer owns, detaching their
	// consumers with err (it wraps ErrNotOwner), and waits for their
	// writes to land.
	Release(topic string, match func(sub string) bool, err error)
}

// replicatedPart is a partition whose group runs on this node.
type replicatedPart struct {
	topic   string
	part    uint32
	group   *Group
	unwatch func()
}

// partGroupID is the Raft group of topic tid's partition part. Topic ids
// are below 1<<31, so it is never 0 or MetadataGroup.
func partGroupID(tid, part uint32) uint64 { return uint64(tid)<<32 | uint64(part) }

// OwnerPartition is the partition whose leader owns subscription sub's
// delivery, among n: a hash of the name (FNV-1a) spreads subscriptions
// over the leaders.
func OwnerPartition(sub string, n uint32) uint32 {
	h := fnv.New32a()
	h.Write([]byte(sub))
	return h.Sum32() % n
}

// NewNode returns the node opts describe; Start starts it. opts are a
// Host's (see OpenHost), with Peers naming every node, this one included:
// every node is a voter of every group. A Node forwards a follower's
// proposals to the leader (ForwardProposals is set).
func NewNode(opts Options) (*Node, error) {
	if _, ok := opts.Peers[opts.NodeID]; !ok || opts.NodeID == 0 {
		return nil, fmt.Errorf("option Peers has no address for this node, %d: %w", opts.NodeID, ErrInvalidConfig)
	}
	if opts.Store == nil || opts.Clock == nil || opts.Logger == nil {
		return nil, fmt.Errorf("options Store, Clock and Logger are required: %w", ErrInvalidConfig)
	}
	opts.Peers = maps.Clone(opts.Peers)
	opts.ForwardProposals = true
	return &Node{
		opts:   opts,
		id:     opts.NodeID,
		voters: slices.Sorted(maps.Keys(opts.Peers)),
		store:  opts.Store,
		clk:    opts.Clock,
		log:    opts.Logger,
		parts:  make(map[uint64]*replicatedPart),
		stop:   make(chan struct{}),
	}, nil
}

// ID returns this node's id.
func (n *Node) ID() uint64 { return n.id }

// Addr is the address the node-to-node port listens on; nil before Start.
func (n *Node) Addr() net.Addr {
	if n.host == nil {
		return nil
	}
	return n.host.Addr()
}

// Voters returns every node's id, in order; the caller may keep it.
func (n *Node) Voters() []uint64 { return slices.Clone(n.voters) }

// Start starts the node's Host, the metadata group and the groups of the
// partitions the store holds, and follows the metadata group from then
// on. rel hears of the subscriptions this node stops owning; nil if
// nothing runs their delivery here.
func (n *Node) Start(rel Releaser) error {
	if rel == nil {
		rel = noReleaser{}
	}
	n.rel = rel
	h, err := OpenHost(n.opts)
	if err != nil {
		return err
	}
	n.host = h
	if n.meta, err = OpenMetadata(h, n.voters); err != nil {
		_ = h.Close(context.Background())
		return err
	}
	if err := n.reconcile(); err != nil {
		_ = h.Close(context.Background())
		return err
	}
	n.wg.Go(n.watchMetadata)
	return nil
}

// noReleaser is the Releaser of a node that delivers nothing.
type noReleaser struct{}

func (noReleaser) StopTopic(string)                         {}
func (noReleaser) Release(string, func(string) bool, error) {}

// watchMetadata reconciles the partitions' groups with the store's topics
// after each metadata change.
func (n *Node) watchMetadata() {
	for {
		select {
		case <-n.stop:
			return
		case <-n.meta.Changed():
			if err := n.reconcile(); err != nil {
				n.log.Error("starting the groups of new partitions failed", "err", err)
			}
		}
	}
}

// reconcile starts the group of every partition of the store's topics that
// has none running, and removes the groups of deleted topics.
func (n *Node) reconcile() error {
	gone, err := n.startParts()
	// Stopping the delivery of a deleted topic waits for its loops, which
	// may be loading cursors through PartitionGroup: not under partsMu.
	for gid, rp := range gone {
		n.rel.StopTopic(rp.topic)
		ctx, cancel := context.WithTimeout(context.Background(), leaderWait)
		rerr := n.host.RemoveGroup(ctx, gid)
		cancel()
		if rerr != nil {
			n.log.Warn("removing a deleted partition's group failed", "topic", rp.topic, "partition", rp.part, "err", rerr)
		}
	}
	return err
}

// startParts starts the groups reconcile wants, and forgets and returns
// the running groups of topics that are gone.
func (n *Node) startParts() (map[uint64]*replicatedPart, error) {
	n.partsMu.Lock()
	defer n.partsMu.Unlock()
	live := make(map[uint64]bool)
	for _, t := range n.store.Topics() {
		for p := range t.Config.Partitions {
			gid := partGroupID(t.ID(), p)
			live[gid] = true
			if n.parts[gid] != nil {
				continue
			}
			if err := n.startPart(t, p, gid); err != nil {
				if errors.Is(err, storage.ErrTopicNotFound) {
					continue // deleted meanwhile
				}
				return nil, fmt.Errorf("topic %q partition %d: %w", t.Name, p, err)
			}
		}
	}
	gone := make(map[uint64]*replicatedPart)
	for gid, rp := range n.parts {
		if !live[gid] {
			rp.unwatch()
			delete(n.parts, gid)
			gone[gid] = rp
		}
	}
	return gone, nil
}

// startPart makes topic t's partition p replicated and runs its group.
// partsMu is held.
func (n *Node) startPart(t storage.Topic, p uint32, gid uint64) error {
	ctx := context.Background()
	prop := &PartitionProposer{}
	rep, err := n.store.Replicate(ctx, t.Name, p, prop)
	if err != nil {
		return err
	}
	g, err := n.host.AddGroup(gid, n.voters, NewPartitionStateMachine(rep))
	if err != nil {
		return err
	}
	prop.SetGroup(g)
	changes, unwatch := g.WatchLeader()
	rp := &replicatedPart{topic: t.Name, part: p, group: g, unwatch: unwatch}
	n.parts[gid] = rp
	n.wg.Go(func() { n.watchLeader(rp, changes) })
	return nil
}

// watchLeader releases the subscriptions rp's leadership owned once this
// node no longer leads rp.
func (n *Node) watchLeader(rp *replicatedPart, changes <-chan LeaderChange) {
	led := false
	for c := range changes {
		switch {
		case c.Leader == n.id:
			led = true
		case led:
			led = false
			n.log.Info("partition leadership lost; releasing its subscriptions", "topic", rp.topic, "partition", rp.part, "leader", c.Leader, "term", c.Term)
			n.release(rp)
		}
	}
}

// release releases the subscriptions of rp's topic whose owner partition
// is rp.
func (n *Node) release(rp *replicatedPart) {
	t, err := n.store.Topic(rp.topic)
	if err != nil {
		n.rel.StopTopic(rp.topic)
		return
	}
	parts := t.Config.Partitions
	n.rel.Release(rp.topic, func(sub string) bool { return OwnerPartition(sub, parts) == rp.part },
		fmt.Errorf("node %d no longer leads topic %q partition %d, which owns the subscription: %w", n.id, rp.topic, rp.part, ErrNotOwner))
}

// HandOff moves this node's leaderships to other nodes, before a graceful
// stop (Host.HandOffLeadership).
func (n *Node) HandOff(ctx context.Context) error { return n.host.HandOffLeadership(ctx) }

// Close stops the node: its groups and the Host. Whatever writes through
// the groups (the delivery engine's last cursor writes) must be stopped
// first, and the store closed after. Idempotent.
func (n *Node) Close(ctx context.Context) error {
	n.closeOnce.Do(func() {
		close(n.stop)
		if n.host != nil {
			n.closeErr = n.host.Close(ctx)
		}
		n.partsMu.Lock()
		for _, rp := range n.parts {
			rp.unwatch()
		}
		n.partsMu.Unlock()
		n.wg.Wait()
	})
	return n.closeErr
}
