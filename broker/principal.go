package broker

import (
	"context"
	"net"

	"google.golang.org/grpc/peer"
)

// principalOf is who a call counts against for the rate limits and quotas
// (quotas.go): the IP address the call came from. With auth on, the
// authenticated principal.
func principalOf(ctx context.Context) string {
	p, ok := peer.FromContext(ctx)
	if !ok || p.Addr == nil {
		return "unknown"
	}
	if host, _, err := net.SplitHostPort(p.Addr.String()); err == nil {
		return host
	}
	return p.Addr.String()
}
