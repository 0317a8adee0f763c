package broker

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/ferrymq/ferry/cluster"
	"github.com/ferrymq/ferry/consumer"
	"github.com/ferrymq/ferry/internal/clock"
	ferryv1 "github.com/ferrymq/ferry/proto/ferry/v1"
	"github.com/ferrymq/ferry/storage"
)

// A broker in a cluster (docs/cluster.md) is one node of it: every node's
// store holds every topic, changed only through the metadata group, and
// every partition is a Raft group over all the nodes. What a node does:
//
//   - Writes. Any node takes any publish, ack or cursor write: its
//     partition writers propose their entries to the partition's group, and
//     a follower's proposals are forwarded to the leader by Raft itself
//     (cluster.Options.ForwardProposals). A write is answered once its
//     entry is committed and applied on the node that took it.
//   - Topic and subscription changes are proposed to the metadata group the
//     same way, from any node.
//   - Delivery. Each subscription has one owner: the node that leads the
//     partition its name hashes to (ownerPartition). Only the owner runs the
//     subscription's delivery loop; other nodes forward the subscriber calls
//     to it over the node-to-node port, which serves the broker's API too.
//     When the owner loses that leadership it releases the subscription: its
//     consumers' streams end with UNAVAILABLE and reconnect, to the new
//     owner. A new owner first fences off the earlier ones in every
//     partition of the topic (Own: an owner epoch, the term it leads in,
//     raised by an entry in each partition) before it loads the cursors;
//     a write of an older epoch is refused wherever it lands.
//   - New topics. When the metadata group creates a topic, every node starts
//     the Raft groups of its partitions (reconcile); a partition takes no
//     write before its group runs (storage.Options.Replicated).

// ClusterOptions runs the broker as one node of a cluster.
type ClusterOptions struct {
	// NodeID is this node's id, 1 or more; the same across restarts.
	NodeID uint64
	// Addr is the node-to-node listen address. Default ":7422".
	Addr string
	// Peers maps every node's id to its node-to-node address (host:port),
	// this node's included. Every node must be given the same map.
	Peers map[uint64]string
	// Tune, if set, adjusts the Raft host's options (tests: faster ticks).
	Tune func(*cluster.Options)
}

// forwardedKey marks a call forwarded by another node; it is not forwarded
// again.
const forwardedKey = "ferry-forwarded-by"

// node is the broker's side of the cluster.
type node struct {
	id     uint64
	voters []uint64
	peers  map[uint64]string
	store  *storage.Store
	host   *cluster.Host
	meta   *cluster.Metadata
	engine *consumer.Engine
	clk    clock.Clock
	log    *slog.Logger

	mu    sync.Mutex                 // guards parts and conns
	parts map[uint64]*replicatedPart // by group id
	conns map[uint64]*grpc.ClientConn
	stop  chan struct{}
	wg    sync.WaitGroup
}

// replicatedPart is a partition whose group runs on this node.
type replicatedPart struct {
	topic   string
	part    uint32
	group   *cluster.Group
	unwatch func()
}

// partGroupID is the Raft group of topic tid's partition part. Topic ids
// are below 1<<31, so it is never 0 or cluster.MetadataGroup.
func partGroupID(tid, part uint32) uint64 { return uint64(tid)<<32 | uint64(part) }

// ownerPartition is the partition whose leader owns subscription sub's
// delivery, among n: a hash of the name spreads subscriptions over the
// leaders.
func ownerPartition(sub string, n uint32) uint32 {
	h := fnv.New32a()
	h.Write([]byte(sub))
	return h.Sum32() % n
}

// newNode returns the node over st; start starts it.
func newNode(o *ClusterOptions, st *storage.Store, clk clock.Clock, lg *slog.Logger) *node {
	return &node{
		id:     o.NodeID,
		voters: slices.Sorted(maps.Keys(o.Peers)),
		peers:  maps.Clone(o.Peers),
		store:  st,
		clk:    clk,
		log:    lg,
		parts:  make(map[uint64]*replicatedPart),
		conns:  make(map[uint64]*grpc.ClientConn),
		stop:   make(chan struct{}),
	}
}

// start starts the node's Raft host (serving register's services on the
// node-to-node port too), the metadata group, and the groups of the
// partitions the store holds. The engine must be set.
func (n *node) start(o *ClusterOptions, register func(*grpc.Server), srvOpts []grpc.ServerOption) error {
	co := cluster.DefaultOptions(n.id, n.peers, n.store)
	if o.Addr != "" {
		co.Addr = o.Addr
	}
	co.Clock, co.Logger = n.clk, n.log
	co.ForwardProposals = true
	co.Register = register
	co.ServerOptions = srvOpts
	if o.Tune != nil {
		o.Tune(&co)
	}
	h, err := cluster.OpenHost(co)
	if err != nil {
		return err
	}
	n.host = h
	if n.meta, err = cluster.OpenMetadata(h, n.voters); err != nil {
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

// watchMetadata reconciles the partitions' groups with the store's topics
// after each metadata change.
func (n *node) watchMetadata() {
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
func (n *node) reconcile() error {
	gone, err := n.startParts()
	// Stopping the delivery of a deleted topic waits for its loops, which
	// may be loading cursors through n.group: not under n.mu.
	for gid, rp := range gone {
		n.engine.StopTopic(rp.topic)
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
func (n *node) startParts() (map[uint64]*replicatedPart, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
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
// n.mu is held.
func (n *node) startPart(t storage.Topic, p uint32, gid uint64) error {
	ctx := context.Background()
	prop := &cluster.PartitionProposer{}
	rep, err := n.store.Replicate(ctx, t.Name, p, prop)
	if err != nil {
		return err
	}
	g, err := n.host.AddGroup(gid, n.voters, cluster.NewPartitionStateMachine(rep))
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
func (n *node) watchLeader(rp *replicatedPart, changes <-chan cluster.LeaderChange) {
	led := false
	for c := range changes {
		switch {
		case c.Leader == n.id:
			led = true
		case led:
			led = false
			n.log.Info("partition leadership lost; releasing its subscriptions", "topic", rp.topic, "partition", rp.part, "leader", c.Leader, "term", c.Term)
			t, err := n.store.Topic(rp.topic)
			if err != nil {
				n.engine.StopTopic(rp.topic)
				continue
			}
			parts := t.Config.Partitions
			n.engine.Release(rp.topic, func(sub string) bool { return ownerPartition(sub, parts) == rp.part },
				fmt.Errorf("node %d no longer leads topic %q partition %d, which owns the subscription: %w", n.id, rp.topic, rp.part, consumer.ErrDetached))
		}
	}
}

// group returns the group of topic's partition part on this node.
func (n *node) group(topic string, part uint32) (*cluster.Group, error) {
	t, err := n.store.Topic(topic)
	if err != nil {
		return nil, err
	}
	n.mu.Lock()
	rp := n.parts[partGroupID(t.ID(), part)]
	n.mu.Unlock()
	if rp == nil {
		return nil, fmt.Errorf("topic %q partition %d: %w", topic, part, storage.ErrNotReplicated)
	}
	return rp.group, nil
}

// ownerGroup returns the group of subscription sub's owner partition, and
// that partition.
func (n *node) ownerGroup(topic, sub string) (*cluster.Group, uint32, error) {
	t, err := n.store.Topic(topic)
	if err != nil {
		return nil, 0, err
	}
	part := ownerPartition(sub, t.Config.Partitions)
	g, err := n.group(topic, part)
	return g, part, err
}

// owner returns the node that owns subscription sub of topic: the leader
// of its owner partition, or an error wrapping cluster.ErrNotLeader while
// there is none.
func (n *node) owner(topic, sub string) (uint64, error) {
	g, _, err := n.ownerGroup(topic, sub)
	if err != nil {
		return 0, err
	}
	leader := g.Leader()
	if leader == 0 {
		return 0, &cluster.NotLeaderError{Group: g.ID()}
	}
	return leader, nil
}

// route decides where a call on subscription sub of topic is served: nil
// here, else the connection to the owner, with ctx marked as forwarded. A
// call another node forwarded is served here or refused, never forwarded
// again: ownership moved while it travelled, and the client retries.
func (n *node) route(ctx context.Context, topic, sub string) (*grpc.ClientConn, context.Context, error) {
	if err := validateSubName(topic, sub); err != nil {
		return nil, ctx, err
	}
	owner, err := n.owner(topic, sub)
	if err != nil {
		return nil, ctx, err
	}
	if owner == n.id {
		return nil, ctx, nil
	}
	if md, ok := metadata.FromIncomingContext(ctx); ok && len(md.Get(forwardedKey)) > 0 {
		return nil, ctx, fmt.Errorf("subscription %q of topic %q moved to node %d: %w", sub, topic, owner, consumer.ErrDetached)
	}
	conn, err := n.conn(owner)
	if err != nil {
		return nil, ctx, err
	}
	return conn, metadata.AppendToOutgoingContext(ctx, forwardedKey, fmt.Sprint(n.id)), nil
}

// conn returns the connection to node id's node-to-node port.
func (n *node) conn(id uint64) (*grpc.ClientConn, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if c := n.conns[id]; c != nil {
		return c, nil
	}
	addr, ok := n.peers[id]
	if !ok {
		return nil, fmt.Errorf("node %d is not a peer: %w", id, storage.ErrInvalidConfig)
	}
	// passthrough, as for the Raft peers (cluster/peer.go): every
	// connection attempt resolves the name anew.
	c, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxRecvMsgBytes)))
	if err != nil {
		return nil, err
	}
	n.conns[id] = c
	return c, nil
}

// syncTopic returns once every write committed to topic's partitions
// before the call is applied on this node: what a subscription's new owner
// waits for before it loads the cursors. The partitions' barriers go
// through their groups at once, not one round after another.
func (n *node) syncTopic(ctx context.Context, topic string) error {
	t, err := n.store.Topic(topic)
	if err != nil {
		return err
	}
	errs := make([]error, t.Config.Partitions)
	var wg sync.WaitGroup
	for p := range t.Config.Partitions {
		wg.Go(func() { errs[p] = n.syncPartition(ctx, topic, p) })
	}
	wg.Wait()
	return errors.Join(errs...)
}

// syncPartition returns once every write committed to topic's partition
// part before the call is applied on this node.
func (n *node) syncPartition(ctx context.Context, topic string, part uint32) error {
	t, err := n.store.Topic(topic)
	if err != nil {
		return err
	}
	if part >= t.Config.Partitions {
		return fmt.Errorf("topic %q has %d partitions, not %d: %w", topic, t.Config.Partitions, part, storage.ErrPartitionNotFound)
	}
	g, err := n.group(topic, part)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, leaderWait)
	defer cancel()
	if err := cluster.Barrier(ctx, g); err != nil {
		return fmt.Errorf("topic %q partition %d: %w", topic, part, err)
	}
	return nil
}

// syncMeta returns once every metadata change committed before the call
// is applied on this node, so that a read of topics or subscriptions here
// shows what was created through any other node (linearizable reads). It
// retries as metaChange does while the barrier's outcome is unknown.
func (n *node) syncMeta(ctx context.Context) error {
	return n.metaChange(ctx, func(ctx context.Context, _ bool) error {
		return cluster.Barrier(ctx, n.meta.Group())
	})
}

// waitLeaders waits until every partition of topic has a leader, so a
// topic create returns a topic that takes writes.
func (n *node) waitLeaders(ctx context.Context, topic string) error {
	if err := n.reconcile(); err != nil {
		return err
	}
	t, err := n.store.Topic(topic)
	if err != nil {
		return err
	}
	for p := range t.Config.Partitions {
		g, err := n.group(topic, p)
		if err != nil {
			return err
		}
		if err := waitLeader(ctx, g); err != nil {
			return fmt.Errorf("topic %q partition %d has no leader yet: %w", topic, p, err)
		}
	}
	return nil
}

// waitLeader waits until g knows a leader.
func waitLeader(ctx context.Context, g *cluster.Group) error {
	changes, unwatch := g.WatchLeader()
	defer unwatch()
	for {
		select {
		case c, ok := <-changes:
			if !ok {
				return cluster.ErrClosed
			}
			if c.Leader != 0 {
				return nil
			}
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// metaChange makes a change through the metadata group: it waits for a
// leader, and tries again while an attempt's outcome is unknown (the
// leader changed, or dropped the forwarded proposal), up to leaderWait in
// all. The changes are idempotent: an identical create answers with what
// exists, and change tells a retry, for a delete to take "not found" as
// done.
func (n *node) metaChange(ctx context.Context, change func(ctx context.Context, retry bool) error) error {
	ctx, cancel := context.WithTimeout(ctx, leaderWait)
	defer cancel()
	for attempt := 0; ; attempt++ {
		if err := waitLeader(ctx, n.meta.Group()); err != nil {
			return fmt.Errorf("the metadata group has no leader: %w", &cluster.NotLeaderError{Group: cluster.MetadataGroup})
		}
		err := change(ctx, attempt > 0)
		if !errors.Is(err, cluster.ErrLeadershipLost) && !errors.Is(err, cluster.ErrNotLeader) && !errors.Is(err, cluster.ErrProposalDropped) {
			return err
		}
		if !clock.Sleep(n.clk, retryPause, ctx.Done()) {
			return err
		}
	}
}

// retryPause is the pause between two attempts of a metadata change.
const retryPause = 50 * time.Millisecond

// leaderWait bounds how long a change waits for a group to elect a leader
// before it fails with UNAVAILABLE.
const leaderWait = 10 * time.Second

// handOff moves this node's leaderships to other nodes, before a graceful
// stop.
func (n *node) handOff(ctx context.Context) error { return n.host.HandOffLeadership(ctx) }

// close stops the node: the groups, then the connections. The engine must
// be closed first (its last cursor writes go through the groups), and the
// store after.
func (n *node) close(ctx context.Context) error {
	close(n.stop)
	err := n.host.Close(ctx)
	n.mu.Lock()
	for _, rp := range n.parts {
		rp.unwatch()
	}
	for _, c := range n.conns {
		c.Close()
	}
	n.mu.Unlock()
	n.wg.Wait()
	return err
}

// clusterLog is the consumer engine's log on a cluster node: the store,
// with subscription changes made through the metadata group, and cursors
// read only once every write committed before is applied here.
type clusterLog struct {
	*storage.Store
	n *node
}

func (l clusterLog) CreateSubscription(ctx context.Context, topic, name string, config []byte, cursors [][]byte) (sub storage.Subscription, err error) {
	err = l.n.metaChange(ctx, func(ctx context.Context, _ bool) error {
		sub, err = l.n.meta.CreateSubscription(ctx, topic, name, config, cursors)
		return err
	})
	return sub, err
}

func (l clusterLog) UpdateSubscription(ctx context.Context, topic, name string, config []byte) (sub storage.Subscription, err error) {
	err = l.n.metaChange(ctx, func(ctx context.Context, _ bool) error {
		sub, err = l.n.meta.UpdateSubscription(ctx, topic, name, config)
		return err
	})
	return sub, err
}

func (l clusterLog) DeleteSubscription(ctx context.Context, topic, name string) error {
	return l.n.metaChange(ctx, func(ctx context.Context, retry bool) error {
		err := l.n.meta.DeleteSubscription(ctx, topic, name)
		if retry && errors.Is(err, storage.ErrSubscriptionNotFound) {
			return nil // the lost attempt did it
		}
		return err
	})
}

// Cursors loads a subscription's cursors once the topic's partitions have
// applied every write committed before: the previous owner's last cursor
// writes included.
func (l clusterLog) Cursors(topic string, sid uint32) ([][]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := l.n.syncTopic(ctx, topic); err != nil {
		return nil, err
	}
	return l.Store.Cursors(topic, sid)
}

// Own takes subscription name of topic over as its owner
// (consumer.Owner). Its epoch is the Raft term in which this node leads the
// subscription's owner partition: one leader per term, and a later owner
// is elected in a later term, so epochs grow with every change of owner.
// The fence at that epoch goes through every partition of the topic, and
// once it is applied here, so is every write committed before it: the
// cursors read then hold every write an earlier owner made, and none it
// makes after can land (storage.ErrFenced).
func (l clusterLog) Own(ctx context.Context, topic, name string, sid uint32) (uint64, [][]byte, error) {
	epoch, err := l.n.ownerEpoch(topic, name)
	if err != nil {
		return 0, nil, err
	}
	if err := l.n.fence(ctx, topic, name, sid, epoch); err != nil {
		return 0, nil, err
	}
	cursors, err := l.Store.Cursors(topic, sid)
	return epoch, cursors, err
}

// ownerEpoch is the term in which this node leads subscription sub's owner
// partition; an error wrapping consumer.ErrDetached if it does not.
func (n *node) ownerEpoch(topic, sub string) (uint64, error) {
	g, part, err := n.ownerGroup(topic, sub)
	if err != nil {
		return 0, err
	}
	st := g.Status()
	if st.Err != nil {
		return 0, st.Err
	}
	if st.Leader != n.id {
		return 0, fmt.Errorf("node %d does not lead topic %q partition %d, which owns subscription %q: %w", n.id, topic, part, sub, consumer.ErrDetached)
	}
	return st.Term, nil
}

// fence raises subscription sid's owner epoch to epoch in every partition
// of topic, trying again while a partition's outcome is unknown (an
// election) as long as this node still owns the subscription in that
// epoch. A fence is idempotent.
func (n *node) fence(ctx context.Context, topic, sub string, sid uint32, epoch uint64) error {
	for {
		err := n.store.Fence(ctx, topic, sid, epoch)
		if !errors.Is(err, cluster.ErrLeadershipLost) && !errors.Is(err, cluster.ErrNotLeader) &&
			!errors.Is(err, cluster.ErrProposalDropped) && !errors.Is(err, storage.ErrNotReplicated) {
			return err
		}
		if now, oerr := n.ownerEpoch(topic, sub); oerr != nil || now != epoch {
			return err
		}
		if !clock.Sleep(n.clk, retryPause, ctx.Done()) {
			return err
		}
	}
}

// clusterTopics makes topic changes through the metadata group.
type clusterTopics struct{ n *node }

func (c clusterTopics) CreateTopic(ctx context.Context, name string, cfg storage.TopicConfig) (t storage.Topic, err error) {
	err = c.n.metaChange(ctx, func(ctx context.Context, _ bool) error {
		t, err = c.n.meta.CreateTopic(ctx, name, cfg) // an identical create is a no-op
		return err
	})
	if err != nil {
		return t, err
	}
	wctx, cancel := context.WithTimeout(ctx, leaderWait)
	defer cancel()
	return t, c.n.waitLeaders(wctx, name)
}

func (c clusterTopics) UpdateTopic(ctx context.Context, name string, change func(*storage.TopicConfig)) (storage.Topic, error) {
	t, err := c.n.store.Topic(name)
	if err != nil {
		return t, err
	}
	cfg := t.Config
	change(&cfg)
	err = c.n.metaChange(ctx, func(ctx context.Context, _ bool) error {
		t, err = c.n.meta.UpdateTopic(ctx, name, cfg)
		return err
	})
	return t, err
}

func (c clusterTopics) DeleteTopic(ctx context.Context, name string) error {
	return c.n.metaChange(ctx, func(ctx context.Context, retry bool) error {
		err := c.n.meta.DeleteTopic(ctx, name)
		if retry && errors.Is(err, storage.ErrTopicNotFound) {
			return nil // the lost attempt did it
		}
		return err
	})
}

// forward makes a call on subscription sub of topic at its owner when that
// is another node: forwarded reports whether it did (or failed to decide),
// and then resp and err are the answer. On a single node (n nil) or at the
// owner it does nothing.
func forward[C, Req, Resp any](ctx context.Context, n *node, topic, sub string,
	client func(grpc.ClientConnInterface) C, call func(C, context.Context, Req, ...grpc.CallOption) (Resp, error), req Req,
) (resp Resp, forwarded bool, err error) {
	if n == nil {
		return resp, false, nil
	}
	conn, fctx, err := n.route(ctx, topic, sub)
	if err != nil {
		return resp, true, toStatus(err)
	}
	if conn == nil {
		return resp, false, nil
	}
	resp, err = call(client(conn), fctx, req)
	return resp, true, err
}

// proxySubscribe serves a Subscribe stream from the subscription's owner,
// conn: frames go both ways unchanged, and the owner's status ends the
// stream. At shutdown the stream ends with UNAVAILABLE, as one served here
// does.
func (s *subscriber) proxySubscribe(ctx context.Context, conn *grpc.ClientConn, first *ferryv1.SubscribeRequest, stream ferryv1.SubscriberService_SubscribeServer) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	up, err := ferryv1.NewSubscriberServiceClient(conn).Subscribe(ctx)
	if err != nil {
		return toStatus(err)
	}
	if err := up.Send(first); err != nil && !errors.Is(err, io.EOF) {
		return toStatus(err)
	}
	go func() {
		for {
			m, err := stream.Recv()
			if err != nil {
				if errors.Is(err, io.EOF) {
					_ = up.CloseSend()
				} else {
					cancel()
				}
				return
			}
			if err := up.Send(m); err != nil {
				return // the owner ended the stream: up.Recv says why
			}
		}
	}()
	go func() {
		select {
		case <-s.draining:
			cancel()
		case <-ctx.Done():
		}
	}()
	for {
		m, err := up.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			select {
			case <-s.draining:
				return status.Error(codes.Unavailable, "the broker is shutting down; reconnect to resume")
			default:
			}
			return err
		}
		if err := stream.Send(m); err != nil {
			return err
		}
	}
}
