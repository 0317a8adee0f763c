package broker

import (
	"context"
	"strings"
	"sync"

	"google.golang.org/grpc/stats"
)

// Connections per principal (Options.Limits.Connections, quotas.go). A
// principal is known per call, not per connection (a token arrives with
// each call, and calls with different tokens may share a connection), so
// a connection counts against a principal from the first call that
// principal makes on it until the connection closes:
//
//   - connQuota is a stats.Handler of the public server: TagConn puts a
//     small *connHold in the connection's context, which every call's
//     context derives from (grpc-go's serveStreams hands the context
//     TagConn returned to the transport, which derives each stream's
//     from it); HandleConn's ConnEnd releases what the hold counted.
//   - quotas' interceptors, after auth, call hold: a principal's first
//     call on a connection takes one of its connections
//     (limits.OpenConnection), or is refused and changes nothing — its
//     next call on that connection asks again. Calls of principals
//     already counted on it go on.
//
// A hold is a slice of the principals counted on one connection, nearly
// always one; the principals counted at all are bounded by MaxPrincipals
// (limits.OpenConnection), so a hold is too.
type connQuota struct{ q *quotas }

// connHold is what one connection counts against: its principals, each
// with the function that releases its count.
type connHold struct {
	mu     sync.Mutex // guards closed, held
	closed bool       // ConnEnd ran: nothing more is counted
	held   []heldConn
}

type heldConn struct {
	principal string
	release   func()
}

type connHoldKey struct{}

// TagConn gives the connection its hold.
func (c connQuota) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context {
	return context.WithValue(ctx, connHoldKey{}, &connHold{})
}

// HandleConn releases, at ConnEnd, the connections the hold counted.
func (c connQuota) HandleConn(ctx context.Context, s stats.ConnStats) {
	if _, ok := s.(*stats.ConnEnd); !ok {
		return
	}
	h, _ := ctx.Value(connHoldKey{}).(*connHold)
	if h == nil {
		return
	}
	h.mu.Lock()
	held := h.held
	h.closed, h.held = true, nil
	h.mu.Unlock()
	for _, hc := range held {
		hc.release()
	}
}

// TagRPC and HandleRPC: calls are seen by the interceptors.
func (c connQuota) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context { return ctx }
func (c connQuota) HandleRPC(context.Context, stats.RPCStats)                       {}

// hold counts the call's connection against principal if this is
// principal's first call on it, or answers the refusal. Health and
// reflection calls count nothing.
func (q *quotas) hold(ctx context.Context, method, principal string) error {
	if q.lim.Options().Connections <= 0 || !strings.HasPrefix(method, "/ferry.v1.") {
		return nil
	}
	h, _ := ctx.Value(connHoldKey{}).(*connHold)
	if h == nil {
		return nil
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return nil // the call's connection is gone: nothing to count
	}
	for _, hc := range h.held {
		if hc.principal == principal {
			return nil
		}
	}
	release, err := q.lim.OpenConnection(principal)
	if err != nil {
		return q.refuse(principal, err)
	}
	h.held = append(h.held, heldConn{principal: principal, release: release})
	return nil
}
