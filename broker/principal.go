package broker

import (
	"context"
	"net"

	"google.golang.org/grpc/peer"

	"github.com/ferrymq/ferry/auth"
)

// principalOf is who a call counts against for the rate limits and quotas
// (quotas.go): with auth on, the authenticated principal (the guard,
// auth.go, runs before the limits and puts it in the context); with auth
// off, the IP address the call came from.
func principalOf(ctx context.Context) string {
	if id, ok := auth.FromContext(ctx); ok && id.Principal != "" {
		return id.Principal
	}
	p, ok := peer.FromContext(ctx)
	if !ok || p.Addr == nil {
		return "unknown"
	}
	if host, _, err := net.SplitHostPort(p.Addr.String()); err == nil {
		return host
	}
	return p.Addr.String()
}
