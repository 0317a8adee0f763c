package broker

import (
	"context"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/stats"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/ferrymq/ferry/internal/clock"
	ferryv1 "github.com/ferrymq/ferry/proto/ferry/v1"
)

// Per-client statistics of the public port (docs/security.md, "Clients
// and their statistics"):
//
//   - clients is the public gRPC server's stats.Handler: each accepted
//     connection (TagConn) gets a *conn in its context, kept in a set of
//     at most Options.MaxTrackedClients until it closes (HandleConn);
//     beyond the cap a connection is served but not tracked, and counted.
//   - Two interceptors per call: clients.unary/stream, before auth, see
//     every call and its result, refusals included; clients.inner*,
//     after auth and before the limits, learn the call's principal
//     (principalOf, as the limits count it), count the open streams and
//     write the audit line of an admin action (audit.go).
//   - The ferry_client_* metrics are labelled by principal, for at most
//     Options.ClientSeries principals (principalSeries); the rest are
//     summed under "_other".
type clients struct {
	clk     clock.Clock
	max     int
	series  *principalSeries
	audit   *auditor
	connsMu sync.Mutex // guards conns, nextID
	conns   map[uint64]*conn
	nextID  uint64

	untracked      atomic.Uint64 // connections open but not tracked
	untrackedTotal prometheus.Counter
}

// rateWindow is the window of a connection's recent rates.
const rateWindow = 10 * time.Second

// conn is one connection of the public port.
type conn struct {
	id      uint64 // 0: not tracked
	remote  string
	since   time.Time
	calls   atomic.Uint64
	pubs    atomic.Int32 // PublishStream streams open
	subs    atomic.Int32 // Subscribe streams open
	statsMu sync.Mutex   // guards principal, in, out
	princ   string
	in, out window
}

// window counts messages and keeps the rate of the last complete
// rateWindow.
type window struct {
	total uint64
	start time.Time
	cur   uint64
	rate  float64 // messages/s over the last complete window
}

func (w *window) roll(now time.Time) {
	if w.start.IsZero() {
		w.start = now
		return
	}
	el := now.Sub(w.start)
	if el < rateWindow {
		return
	}
	w.rate = 0
	if el < 2*rateWindow {
		w.rate = float64(w.cur) / el.Seconds()
	}
	w.cur, w.start = 0, now
}

func (w *window) add(now time.Time, n int) {
	w.roll(now)
	w.cur += uint64(n)
	w.total += uint64(n)
}

type connKey struct{}
type callKey struct{}

// call is what the inner interceptor learns of a call for the outer one.
type call struct{ principal atomic.Pointer[string] }

func newClients(o Options, reg prometheus.Registerer) *clients {
	c := &clients{clk: o.Clock, max: o.MaxTrackedClients, conns: make(map[uint64]*conn),
		series: newPrincipalSeries(o.ClientSeries, o.Clock, reg), audit: &auditor{log: o.Logger},
		untrackedTotal: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ferry_client_untracked_connections_total",
			Help: "Connections served but not tracked for ListClients, because MaxTrackedClients were tracked already.",
		}),
	}
	if c.max == 0 {
		c.max = 10_000
	}
	reg.MustRegister(c.untrackedTotal, prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "ferry_client_connections",
		Help: "Connections open on the public port and tracked for ListClients.",
	}, func() float64 {
		c.connsMu.Lock()
		defer c.connsMu.Unlock()
		return float64(len(c.conns))
	}))
	return c
}

// TagConn tracks a new connection, if under the cap.
func (c *clients) TagConn(ctx context.Context, info *stats.ConnTagInfo) context.Context {
	cn := &conn{since: c.clk.Now()}
	if info.RemoteAddr != nil {
		cn.remote = info.RemoteAddr.String()
	}
	c.connsMu.Lock()
	if len(c.conns) < c.max {
		c.nextID++
		cn.id = c.nextID
		c.conns[cn.id] = cn
	}
	c.connsMu.Unlock()
	if cn.id == 0 {
		c.untracked.Add(1)
		c.untrackedTotal.Inc()
	}
	return context.WithValue(ctx, connKey{}, cn)
}

// HandleConn forgets a connection that ended.
func (c *clients) HandleConn(ctx context.Context, s stats.ConnStats) {
	if _, ok := s.(*stats.ConnEnd); !ok {
		return
	}
	cn, _ := ctx.Value(connKey{}).(*conn)
	switch {
	case cn == nil:
	case cn.id == 0:
		c.untracked.Add(^uint64(0))
	default:
		c.connsMu.Lock()
		delete(c.conns, cn.id)
		c.connsMu.Unlock()
	}
}

// TagRPC and HandleRPC: calls are seen by the interceptors.
func (c *clients) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context { return ctx }
func (c *clients) HandleRPC(context.Context, stats.RPCStats)                       {}

func connOf(ctx context.Context) *conn {
	cn, _ := ctx.Value(connKey{}).(*conn)
	return cn
}

// principalSeen is the call's principal as the inner interceptor saw it,
// else (refused before it) as principalOf sees it now.
func principalSeen(ctx context.Context, cl *call) string {
	if p := cl.principal.Load(); p != nil {
		return *p
	}
	return principalOf(ctx)
}

// unary counts a call, its refusal and, answered, the messages it
// published.
func (c *clients) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	cl := &call{}
	ctx = context.WithValue(ctx, callKey{}, cl)
	if cn := connOf(ctx); cn != nil {
		cn.calls.Add(1)
	}
	resp, err := h(ctx, req)
	principal := principalSeen(ctx, cl)
	c.series.call(principal, err)
	if err == nil {
		if n, b := publishedIn(req); n > 0 {
			c.published(ctx, principal, n, b)
		}
	}
	return resp, err
}

// stream counts a stream, its refusal, the messages published on it as
// they are received and those delivered as they are sent.
func (c *clients) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
	cl := &call{}
	ctx := context.WithValue(ss.Context(), callKey{}, cl)
	if cn := connOf(ctx); cn != nil {
		cn.calls.Add(1)
	}
	err := h(srv, &countedStream{ServerStream: ss, ctx: ctx, c: c, call: cl})
	c.series.call(principalSeen(ctx, cl), err)
	return err
}

// countedStream counts what a stream publishes and delivers.
type countedStream struct {
	grpc.ServerStream
	ctx  context.Context
	c    *clients
	call *call
}

func (s *countedStream) Context() context.Context { return s.ctx }

func (s *countedStream) RecvMsg(m any) error {
	err := s.ServerStream.RecvMsg(m)
	if err == nil {
		if n, b := publishedIn(m); n > 0 {
			s.c.published(s.ctx, principalSeen(s.ctx, s.call), n, b)
		}
	}
	return err
}

func (s *countedStream) SendMsg(m any) error {
	err := s.ServerStream.SendMsg(m)
	if r, ok := m.(*ferryv1.SubscribeResponse); ok && err == nil {
		if ds := r.GetDeliveries().GetDeliveries(); len(ds) > 0 {
			b := 0
			for _, d := range ds {
				b += len(d.GetMessage().GetPayload())
			}
			principal := principalSeen(s.ctx, s.call)
			s.c.series.delivered(principal, len(ds), b)
			if cn := connOf(s.ctx); cn != nil {
				cn.statsMu.Lock()
				cn.out.add(s.c.clk.Now(), len(ds))
				cn.statsMu.Unlock()
			}
		}
	}
	return err
}

// published counts n messages of b payload bytes published by principal.
func (c *clients) published(ctx context.Context, principal string, n, b int) {
	c.series.published(principal, n, b)
	if cn := connOf(ctx); cn != nil {
		cn.statsMu.Lock()
		cn.in.add(c.clk.Now(), n)
		cn.statsMu.Unlock()
	}
}

// publishedIn is the messages and payload bytes a request publishes.
func publishedIn(req any) (n, b int) {
	var msgs []*ferryv1.PublishMessage
	switch r := req.(type) {
	case *ferryv1.PublishRequest:
		msgs = r.GetMessages()
	case *ferryv1.PublishStreamRequest:
		msgs = r.GetMessages()
	case *ferryv1.CommitRequest:
		for _, p := range r.GetPublishes() {
			n, b = addPayloads(n, b, p.GetMessages())
		}
		return n, b
	}
	return addPayloads(n, b, msgs)
}

func addPayloads(n, b int, msgs []*ferryv1.PublishMessage) (int, int) {
	for _, m := range msgs {
		b += len(m.GetPayload())
	}
	return n + len(msgs), b
}

// learn records the principal of an authenticated (or, auth off,
// addressed) call for the outer interceptor and its connection.
func learn(ctx context.Context) string {
	principal := principalOf(ctx)
	if cl, ok := ctx.Value(callKey{}).(*call); ok {
		cl.principal.Store(&principal)
	}
	if cn := connOf(ctx); cn != nil {
		cn.statsMu.Lock()
		cn.princ = principal
		cn.statsMu.Unlock()
	}
	return principal
}

// innerUnary runs after auth: it learns the principal and audits an
// admin action.
func (c *clients) innerUnary(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	principal := learn(ctx)
	if !audited[info.FullMethod] {
		return h(ctx, req)
	}
	resp, err := h(ctx, req)
	c.audit.action(ctx, principal, info.FullMethod, req, err)
	return resp, err
}

// innerStream runs after auth: it learns the principal and counts the
// connection's open streams.
func (c *clients) innerStream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
	learn(ss.Context())
	if cn := connOf(ss.Context()); cn != nil {
		var open *atomic.Int32
		switch info.FullMethod {
		case publisherSvc + "PublishStream":
			open = &cn.pubs
		case subscriberSvc + "Subscribe":
			open = &cn.subs
		}
		if open != nil {
			open.Add(1)
			defer open.Add(-1)
		}
	}
	return h(srv, ss)
}

// list answers ListClients: the tracked connections, oldest first.
func (c *clients) list() *ferryv1.ListClientsResponse {
	c.connsMu.Lock()
	cs := make([]*conn, 0, len(c.conns))
	for _, cn := range c.conns {
		cs = append(cs, cn)
	}
	c.connsMu.Unlock()
	sort.Slice(cs, func(i, j int) bool { return cs[i].id < cs[j].id })
	now := c.clk.Now()
	resp := &ferryv1.ListClientsResponse{Clients: make([]*ferryv1.ClientInfo, len(cs)), Untracked: c.untracked.Load()}
	for i, cn := range cs {
		cn.statsMu.Lock()
		cn.in.roll(now)
		cn.out.roll(now)
		resp.Clients[i] = &ferryv1.ClientInfo{
			Principal: cn.princ, RemoteAddr: cn.remote, ConnectedTime: timestamppb.New(cn.since),
			PublishStreams: uint32(cn.pubs.Load()), SubscribeStreams: uint32(cn.subs.Load()),
			MessagesInPerSecond: cn.in.rate, MessagesOutPerSecond: cn.out.rate,
			MessagesIn: cn.in.total, MessagesOut: cn.out.total, Calls: cn.calls.Load(),
		}
		cn.statsMu.Unlock()
	}
	return resp
}

// refusalReason is the reason label of a refused call, "" if err is not
// a refusal.
func refusalReason(err error) string {
	switch status.Code(err) {
	case codes.Unauthenticated:
		return reasonUnauthenticated
	case codes.PermissionDenied:
		return reasonDenied
	case codes.ResourceExhausted:
		return "resource_exhausted"
	}
	return ""
}

// codeName is a status code as a snake_case result: "ok",
// "permission_denied", ...
func codeName(err error) string {
	if err == nil {
		return "ok"
	}
	s := status.Code(err).String()
	var b strings.Builder
	for i, r := range s {
		if r >= 'A' && r <= 'Z' {
			if i > 0 {
				b.WriteByte('_')
			}
			r += 'a' - 'A'
		}
		b.WriteRune(r)
	}
	return b.String()
}
