package broker

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/ferrymq/ferry/internal/clock"
	"github.com/ferrymq/ferry/internal/tlsfiles"
	ferryv1 "github.com/ferrymq/ferry/proto/ferry/v1"
)

// TLSOptions are the broker's certificate files (ferry serve --tls-*,
// docs/security.md). The files are checked for changes every
// ReloadInterval and loaded again when one changed.
type TLSOptions struct {
	// CertFile and KeyFile are the PEM certificate (chain) and key served
	// on every port; in a cluster, also the node's client certificate
	// towards its peers, naming it with a ferry://node/<id> URI. Required.
	CertFile, KeyFile string
	// ClientCAFile, if set, makes the public gRPC port require a client
	// certificate chaining to one of its PEM CAs. Default none.
	ClientCAFile string
	// PeerCAFile holds the PEM CAs that node certificates chain to, on
	// the node-to-node port. Default ClientCAFile; a cluster needs one.
	PeerCAFile string
	// ReloadInterval is how often the files are checked for changes.
	// Default (0) 5s.
	ReloadInterval time.Duration
}

// loadTLS loads o's files and starts watching them; nil, nil when o is nil.
func loadTLS(o *TLSOptions, clk clock.Clock, opts Options, reg prometheus.Registerer) (*tlsfiles.Files, error) {
	if o == nil {
		return nil, nil
	}
	peerCA := o.PeerCAFile
	if peerCA == "" {
		peerCA = o.ClientCAFile
	}
	f, err := tlsfiles.Load(tlsfiles.Options{
		CertFile: o.CertFile, KeyFile: o.KeyFile, ClientCAFile: o.ClientCAFile, PeerCAFile: peerCA,
		Interval: o.ReloadInterval, Clock: clk, Logger: opts.Logger, Registerer: reg,
	})
	if err != nil {
		return nil, fmt.Errorf("tls: %w", err)
	}
	if c := opts.Cluster; c != nil {
		id, err := tlsfiles.NodeID(f.Certificate())
		if err != nil || id != c.NodeID {
			return nil, fmt.Errorf("tls: %s must name this node with the URI %s (got node %d, %v)", o.CertFile, tlsfiles.NodeURI(c.NodeID), id, err)
		}
	}
	f.Start()
	return f, nil
}

// tlsServerOption is the public port's credentials, if any.
func tlsServerOption(f *tlsfiles.Files) []grpc.ServerOption {
	if f == nil {
		return nil
	}
	return []grpc.ServerOption{grpc.Creds(credentials.NewTLS(f.ServerConfig()))}
}

// peerMethods are the calls of the broker's API that nodes make on each
// other's node-to-node port (forward, proxySubscribe, peerStatus); the
// port refuses the rest of the API.
var peerMethods = map[string]bool{
	"/" + ferryv1.SubscriberService_ServiceDesc.ServiceName + "/Subscribe":         true,
	"/" + ferryv1.SubscriberService_ServiceDesc.ServiceName + "/Ack":               true,
	"/" + ferryv1.SubscriberService_ServiceDesc.ServiceName + "/Nack":              true,
	"/" + ferryv1.SubscriberService_ServiceDesc.ServiceName + "/ModifyAckDeadline": true,
	"/" + ferryv1.SubscriberService_ServiceDesc.ServiceName + "/Commit":            true,
	"/" + ferryv1.SubscriberService_ServiceDesc.ServiceName + "/Seek":              true,
	"/" + ferryv1.AdminService_ServiceDesc.ServiceName + "/CreateSubscription":     true,
	"/" + ferryv1.AdminService_ServiceDesc.ServiceName + "/GetSubscription":        true,
	"/" + ferryv1.AdminService_ServiceDesc.ServiceName + "/UpdateSubscription":     true,
	"/" + ferryv1.AdminService_ServiceDesc.ServiceName + "/DeleteSubscription":     true,
	"/" + ferryv1.AdminService_ServiceDesc.ServiceName + "/GetClusterStatus":       true,
}

// raftService is the node-to-node service proper, always served there.
const raftService = "/ferry.cluster.v1.RaftTransportService/"

// peerOnly refuses, on the node-to-node port, what nodes do not call.
func peerOnly(method string) error {
	if peerMethods[method] || strings.HasPrefix(method, raftService) {
		return nil
	}
	return toStatus(errPeerOnly)
}

// errPeerOnly is a call of the public API on the node-to-node port.
var errPeerOnly = errors.New("the node-to-node port serves only calls between nodes; use the public port")

func peerOnlyUnary(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	if err := peerOnly(info.FullMethod); err != nil {
		return nil, err
	}
	return h(ctx, req)
}

func peerOnlyStream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
	if err := peerOnly(info.FullMethod); err != nil {
		return err
	}
	return h(srv, ss)
}
