package cluster

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	grpcpeer "google.golang.org/grpc/peer"

	"github.com/ferrymq/ferry/internal/tlsfiles"
)

// The node-to-node port with TLS on (Options.TLS, docs/security.md): the
// handshake requires a client certificate chaining to the peer CAs; the
// interceptors below then require that it names a member node other than
// this one, and put that node in the call's context; the transport's
// handlers check every frame's from_node against it (callerIs).

// errNotMember is a caller whose certificate names no member node.
var errNotMember = errors.New("node-to-node caller is not a member of the cluster")

// errImpersonation is a frame whose from_node is not the caller's node.
var errImpersonation = errors.New("node-to-node frame speaks for another node")

// callerKey is the context key of the caller's node id.
type callerKey struct{}

// dialCreds are the credentials for dialing node id's node-to-node port.
func (t *Transport) dialCreds(id uint64) (credentials.TransportCredentials, error) {
	return DialCredentials(t.opts.TLS, id)
}

// DialCredentials are the credentials for dialing node id's node-to-node
// port: plaintext when files is nil, else mutual TLS that accepts only
// node id's certificate.
func DialCredentials(files *tlsfiles.Files, id uint64) (credentials.TransportCredentials, error) {
	if files == nil {
		return insecure.NewCredentials(), nil
	}
	cfg, err := files.PeerClientConfig(id)
	if err != nil {
		return nil, fmt.Errorf("peer %d: %w: %w", id, ErrInvalidConfig, err)
	}
	return credentials.NewTLS(cfg), nil
}

// serverOptions are the node-to-node server's credentials and identity
// checks: none when TLS is off.
func (t *Transport) serverOptions() ([]grpc.ServerOption, error) {
	if t.opts.TLS == nil {
		return nil, nil
	}
	cfg, err := t.opts.TLS.PeerServerConfig()
	if err != nil {
		return nil, fmt.Errorf("node-to-node TLS: %w: %w", ErrInvalidConfig, err)
	}
	return []grpc.ServerOption{
		grpc.Creds(credentials.NewTLS(cfg)),
		grpc.ChainUnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			ctx, err := t.authenticate(ctx)
			if err != nil {
				return nil, err
			}
			return h(ctx, req)
		}),
		grpc.ChainStreamInterceptor(func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
			ctx, err := t.authenticate(ss.Context())
			if err != nil {
				return err
			}
			return h(srv, &callerStream{ServerStream: ss, ctx: ctx})
		}),
	}, nil
}

// authenticate returns ctx with the caller's node, or the status refusing
// a caller that is not a member.
func (t *Transport) authenticate(ctx context.Context) (context.Context, error) {
	id, err := t.caller(ctx)
	if err != nil {
		return ctx, t.refuse(err)
	}
	return context.WithValue(ctx, callerKey{}, id), nil
}

func (t *Transport) caller(ctx context.Context) (uint64, error) {
	p, ok := grpcpeer.FromContext(ctx)
	if !ok {
		return 0, fmt.Errorf("%w: no peer", errNotMember)
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok {
		return 0, fmt.Errorf("%w: %s did not connect over TLS", errNotMember, p.Addr)
	}
	id, err := tlsfiles.PeerNode(info.State)
	if err != nil {
		return 0, fmt.Errorf("%w: %s: %w", errNotMember, p.Addr, err)
	}
	if _, member := t.opts.Peers[id]; !member || id == t.opts.NodeID {
		return 0, fmt.Errorf("%w: %s presented a certificate for node %d, not a peer of node %d", errNotMember, p.Addr, id, t.opts.NodeID)
	}
	return id, nil
}

// callerIs checks that a frame claiming to come from node from came over a
// connection authenticated as that node. Without TLS there is no identity
// to check, and every frame passes.
func callerIs(ctx context.Context, from uint64) error {
	id, ok := ctx.Value(callerKey{}).(uint64)
	if !ok || id == from {
		return nil
	}
	return fmt.Errorf("%w: a frame from node %d over a connection authenticated as node %d", errImpersonation, from, id)
}

// CallerNode is the node that made the call ctx belongs to on a TLS
// node-to-node port; false without TLS.
func CallerNode(ctx context.Context) (uint64, bool) {
	id, ok := ctx.Value(callerKey{}).(uint64)
	return id, ok
}

// callerStream is a server stream whose context carries the caller's node.
type callerStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *callerStream) Context() context.Context { return s.ctx }
