package broker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/ferrymq/ferry/cluster"
	"github.com/ferrymq/ferry/consumer"
	"github.com/ferrymq/ferry/internal/clock"
	"github.com/ferrymq/ferry/internal/tlsfiles"
	ferryv1 "github.com/ferrymq/ferry/proto/ferry/v1"
	"github.com/ferrymq/ferry/storage"
)

// A broker in a cluster (docs/cluster.md) is one node of it: a
// cluster.Node runs the Raft groups, the placement, the metadata changes,
// the barriers and the subscriptions' ownership (cluster/node.go). What
// the broker adds is the gRPC side:
//
//   - Routing. Each subscription has one owner, the node that leads the
//     partition its name hashes to (cluster.Node.Owner). Only the owner
//     runs the subscription's delivery loop; other nodes forward the
//     subscriber calls to it over the node-to-node port, which serves the
//     broker's API too (route, forward, proxySubscribe). When the owner
//     loses that leadership the node releases the subscription (the
//     engine is its cluster.Releaser): its consumers' streams end with
//     UNAVAILABLE and reconnect, to the new owner.
//   - The engine's log. clusterLog makes subscription changes through the
//     metadata group and loads cursors through the Node (Own, Cursors);
//     the Node makes topic changes (topicAdmin).
//   - Status. GetClusterStatus asks every node for its cluster.NodeStatus
//     and turns them into the API's messages.

// ClusterOptions runs the broker as one node of a cluster.
type ClusterOptions struct {
	// NodeID is this node's id, 1 or more; the same across restarts.
	NodeID uint64
	// Addr is the node-to-node listen address. Default (empty)
	// cluster.DefaultOptions': "localhost:7422", loopback only; the other
	// nodes reach this one only where it listens on their network
	// (":7422").
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

// node is the broker's side of a cluster node: the cluster.Node, and the
// connections to the other nodes' ports that calls are forwarded over.
type node struct {
	*cluster.Node
	peers map[uint64]string
	tls   *tlsfiles.Files // nil without TLS

	connsMu sync.Mutex // guards conns
	conns   map[uint64]*grpc.ClientConn
}

// newNode returns the node over st, serving register's services on the
// node-to-node port too, with srvOpts, and the hosts' metrics on reg; its
// Start starts it.
func newNode(o *ClusterOptions, st *storage.Store, clk clock.Clock, lg *slog.Logger, reg prometheus.Registerer, register func(*grpc.Server), srvOpts []grpc.ServerOption, files *tlsfiles.Files) (*node, error) {
	co := cluster.DefaultOptions(o.NodeID, o.Peers, st)
	if o.Addr != "" {
		co.Addr = o.Addr
	}
	co.Clock, co.Logger, co.Registerer = clk, lg, reg
	co.Register = register
	co.ServerOptions = srvOpts
	co.TLS = files
	if o.Tune != nil {
		o.Tune(&co)
	}
	cn, err := cluster.NewNode(co)
	if err != nil {
		return nil, err
	}
	return &node{Node: cn, peers: maps.Clone(o.Peers), tls: files, conns: make(map[uint64]*grpc.ClientConn)}, nil
}

// route decides where a call on subscription sub of topic is served: nil
// here, else the connection to the owner, with ctx marked as forwarded. A
// call another node forwarded is served here or refused, never forwarded
// again: ownership moved while it travelled, and the client retries.
func (n *node) route(ctx context.Context, topic, sub string) (*grpc.ClientConn, context.Context, error) {
	if err := validateSubName(topic, sub); err != nil {
		return nil, ctx, err
	}
	owner, err := n.Owner(topic, sub)
	if err != nil {
		return nil, ctx, err
	}
	if owner == n.ID() {
		return nil, ctx, nil
	}
	if md, ok := metadata.FromIncomingContext(ctx); ok && len(md.Get(forwardedKey)) > 0 {
		return nil, ctx, fmt.Errorf("subscription %q of topic %q moved to node %d: %w", sub, topic, owner, consumer.ErrDetached)
	}
	conn, err := n.conn(owner)
	if err != nil {
		return nil, ctx, err
	}
	return conn, metadata.AppendToOutgoingContext(forwardIdentity(ctx), forwardedKey, fmt.Sprint(n.ID())), nil
}

// conn returns the connection to node id's node-to-node port.
func (n *node) conn(id uint64) (*grpc.ClientConn, error) {
	n.connsMu.Lock()
	defer n.connsMu.Unlock()
	if c := n.conns[id]; c != nil {
		return c, nil
	}
	addr, ok := n.peers[id]
	if !ok {
		return nil, fmt.Errorf("node %d is not a peer: %w", id, storage.ErrInvalidConfig)
	}
	// passthrough, as for the Raft peers (cluster/peer.go): every
	// connection attempt resolves the name anew.
	creds, err := cluster.DialCredentials(n.tls, id)
	if err != nil {
		return nil, err
	}
	c, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(creds),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxRecvMsgBytes)))
	if err != nil {
		return nil, err
	}
	n.conns[id] = c
	return c, nil
}

// close stops the node, then closes the connections. The engine must be
// closed first (its last cursor writes go through the groups), and the
// store after.
func (n *node) close(ctx context.Context) error {
	err := n.Close(ctx)
	n.connsMu.Lock()
	for _, c := range n.conns {
		c.Close()
	}
	n.connsMu.Unlock()
	return err
}

// clusterLog is the consumer engine's log on a cluster node: the store,
// with subscription changes made through the metadata group, and cursors
// read only once every write committed before is applied here; an Owner.
type clusterLog struct {
	*storage.Store
	n *cluster.Node
}

func (l clusterLog) CreateSubscription(ctx context.Context, topic, name string, config []byte, cursors [][]byte) (storage.Subscription, error) {
	return l.n.CreateSubscription(ctx, topic, name, config, cursors)
}

func (l clusterLog) UpdateSubscription(ctx context.Context, topic, name string, config []byte) (storage.Subscription, error) {
	return l.n.UpdateSubscription(ctx, topic, name, config)
}

func (l clusterLog) DeleteSubscription(ctx context.Context, topic, name string) error {
	return l.n.DeleteSubscription(ctx, topic, name)
}

func (l clusterLog) Cursors(topic string, sid uint32) ([][]byte, error) {
	return l.n.Cursors(topic, sid)
}

// Own is consumer.Owner's: cluster.Node.Own.
func (l clusterLog) Own(ctx context.Context, topic, name string, sid uint32) (uint64, [][]byte, error) {
	return l.n.Own(ctx, topic, name, sid)
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
