package broker

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"

	"github.com/ferrymq/ferry/auth"
	"github.com/ferrymq/ferry/cluster"
	"github.com/ferrymq/ferry/internal/clock"
	"github.com/ferrymq/ferry/internal/echo"
)

// AuthOptions turn authentication and authorization on (ferry serve
// --auth-tokens, --auth-policy; docs/security.md). Once on, every call of
// the public port but health needs an identity, and every call the
// permission its rpcTable entry names; the rest is denied.
type AuthOptions struct {
	// TokensFile is the token file (auth.ParseTokens): bearer tokens are
	// identities. Default none; then client certificates
	// (TLSOptions.ClientCAFile) must be.
	TokensFile string
	// PolicyFile is the policy file (auth.ParsePolicy). Required.
	PolicyFile string
	// JWT, if set, makes JWTs signed by the keys of its JWKS identities
	// (--auth-jwks). Default none.
	JWT *auth.JWTOptions
	// Kubernetes, if set, makes Kubernetes service-account tokens with its
	// audience identities (--auth-k8s-audience). Default none.
	Kubernetes *auth.KubernetesOptions
	// ReloadInterval is how often the files (and a JWKS file) are checked
	// for changes, and whether a JWKS URL is due. Default (0) 5s.
	ReloadInterval time.Duration
}

// bearers reports whether a bearer token can prove an identity.
func (a *AuthOptions) bearers() bool {
	return a.TokensFile != "" || a.JWT != nil || a.Kubernetes != nil
}

// Metadata keys of a forwarded call: the caller's principal and groups,
// which the receiving node believes only from a member node over mutual
// TLS (peerGuard).
const (
	principalKey = "ferry-principal"
	groupsKey    = "ferry-groups"
)

// guard is the broker's side of auth: the interceptors of the public
// port and the node-to-node port. A nil *guard (auth off) lets
// everything through.
type guard struct {
	g        *auth.Guard
	log      *slog.Logger
	refusals *prometheus.CounterVec
}

// Reasons of ferry_auth_refusals_total and of the audit log.
const (
	reasonUnauthenticated = "unauthenticated"
	reasonDenied          = "permission_denied"
	reasonUnknownMethod   = "unknown_method"
	reasonUntrustedFwd    = "untrusted_forward"
)

// openGuard loads the auth files and starts watching them; nil, nil when
// o.Auth is nil.
func openGuard(o Options, clk clock.Clock, reg prometheus.Registerer) (*guard, error) {
	if o.Auth == nil {
		return nil, nil
	}
	g, err := auth.Open(auth.Options{
		TokensFile: o.Auth.TokensFile, PolicyFile: o.Auth.PolicyFile, JWT: o.Auth.JWT, Kubernetes: o.Auth.Kubernetes,
		ClientCertificates: o.TLS != nil && o.TLS.ClientCAFile != "",
		Interval:           o.Auth.ReloadInterval, Clock: clk, Logger: o.Logger, Registerer: reg,
	})
	if err != nil {
		return nil, fmt.Errorf("auth: %w", err)
	}
	gd := &guard{g: g, log: o.Logger, refusals: prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ferry_auth_refusals_total",
		Help: "Calls refused by authentication or authorization, by reason and method.",
	}, []string{"reason", "method"})}
	if err := reg.Register(gd.refusals); err != nil {
		return nil, fmt.Errorf("auth metrics: %w", err)
	}
	if o.TLS == nil && o.Auth.bearers() {
		o.Logger.Warn("auth: bearer tokens are accepted over plaintext: anyone who reads the traffic can replay them; serve with --tls-cert and --tls-key")
	}
	g.Start()
	return gd, nil
}

func (gd *guard) stop() {
	if gd != nil {
		gd.g.Stop()
	}
}

// shortMethod is a method's label: its name, or "other" for a method
// not in the table (bounded either way).
func shortMethod(full string) string {
	if _, ok := rpcTable[full]; !ok {
		return "other"
	}
	return full[strings.LastIndexByte(full, '/')+1:]
}

// refuse counts and audits a refusal and returns its status.
func (gd *guard) refuse(ctx context.Context, reason, method string, id auth.Identity, err error) error {
	gd.refusals.WithLabelValues(reason, shortMethod(method)).Inc()
	addr := ""
	if p, ok := peer.FromContext(ctx); ok {
		addr = p.Addr.String()
	}
	gd.log.LogAttrs(ctx, slog.LevelInfo, "audit: call refused",
		slog.String("principal", id.Principal), slog.String("auth_method", id.Method),
		slog.String("peer", addr), slog.String("method", method),
		slog.String("result", reason), slog.String("reason", err.Error()))
	return toStatus(err)
}

// credentialsOf reads a call's credentials: its bearer token and its
// verified client certificate.
func credentialsOf(ctx context.Context) (auth.Credentials, error) {
	var c auth.Credentials
	if md, ok := metadata.FromIncomingContext(ctx); ok {
		if vs := md.Get("authorization"); len(vs) > 0 {
			tok, err := bearerOf(vs[0])
			if err != nil {
				return c, err
			}
			c.Bearer = tok
		}
	}
	if p, ok := peer.FromContext(ctx); ok {
		if info, ok := p.AuthInfo.(credentials.TLSInfo); ok && len(info.State.VerifiedChains) > 0 && len(info.State.VerifiedChains[0]) > 0 {
			c.Certificate = info.State.VerifiedChains[0][0]
		}
	}
	return c, nil
}

// bearerOf is the token of an authorization header's value, which must
// be "Bearer <token>" (gRPC metadata or HTTP).
func bearerOf(v string) (string, error) {
	scheme, tok, _ := strings.Cut(v, " ")
	if !strings.EqualFold(scheme, "bearer") || tok == "" {
		return "", fmt.Errorf("the authorization header is not \"Bearer <token>\": %w", auth.ErrUnauthenticated)
	}
	return tok, nil
}

// authenticate finds the call's entry and proves its caller's identity;
// ctx comes back carrying it.
func (gd *guard) authenticate(ctx context.Context, method string) (context.Context, *session, error) {
	s := &session{gd: gd, method: method}
	acc, ok := rpcTable[method]
	s.acc = acc
	if !ok {
		err := fmt.Errorf("%s is not open to clients: %w", echo.Quote(method), auth.ErrDenied)
		return ctx, s, gd.refuse(ctx, reasonUnknownMethod, method, auth.Identity{}, err)
	}
	if acc.open {
		return ctx, s, nil
	}
	s.gen.Store(gd.g.Generation()) // before the files are read: a reload meanwhile is seen
	c, err := credentialsOf(ctx)
	var id auth.Identity
	if err == nil {
		id, err = gd.g.Authenticate(ctx, c)
	}
	if err != nil {
		return ctx, s, gd.refuse(ctx, reasonUnauthenticated, method, id, err)
	}
	s.creds, s.id = c, id
	s.ctx = auth.NewContext(ctx, id)
	learn(s.ctx) // the per-client statistics count a refusal below against id (clients.go)
	return s.ctx, s, nil
}

// authorize checks the needs of req under pol.
func (gd *guard) authorize(ctx context.Context, pol *auth.Policy, method string, acc rpcAccess, id auth.Identity, req any) error {
	if acc.needs == nil {
		if acc.list != "" && !pol.GrantsAny(id, acc.list) {
			err := &auth.DeniedError{Principal: id.Principal, Permission: acc.list, Resource: auth.Resource{Topic: "*"}}
			return gd.refuse(ctx, reasonDenied, method, id, err)
		}
		return nil
	}
	for _, n := range acc.needs(req) {
		if err := pol.Authorize(id, n.perm, n.res); err != nil {
			return gd.refuse(ctx, reasonDenied, method, id, err)
		}
	}
	return nil
}

// unary is the public port's unary interceptor.
func (gd *guard) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	if gd == nil {
		return h(ctx, req)
	}
	ctx, s, err := gd.authenticate(ctx, info.FullMethod)
	switch {
	case err != nil:
		return nil, err
	case s.acc.open:
		return h(ctx, req)
	}
	acc, id, pol := s.acc, s.id, gd.g.Policy()
	if err := gd.authorize(ctx, pol, info.FullMethod, acc, id, req); err != nil {
		return nil, err
	}
	resp, err := h(ctx, req)
	if err == nil && acc.filter != nil {
		acc.filter(resp, func(r auth.Resource) bool { return pol.Allowed(id, acc.list, r) })
	}
	return resp, err
}

// stream is the public port's stream interceptor: it authenticates the
// stream before the handler runs, and checks its first frame or, for a
// perFrame stream, hands the handler a check of each frame (checkFrame).
func (gd *guard) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
	if gd == nil {
		return h(srv, ss)
	}
	ctx, s, err := gd.authenticate(ss.Context(), info.FullMethod)
	switch {
	case err != nil:
		return err
	case s.acc.open:
		return h(srv, ss)
	case s.acc.needs == nil:
		return h(srv, &ctxStream{ServerStream: ss, ctx: ctx})
	case s.acc.perFrame:
		fc := &frameChecker{session: s}
		return h(srv, &ctxStream{ServerStream: ss, ctx: context.WithValue(ctx, frameCheckKey{}, fc)})
	}
	return h(srv, &firstFrameStream{ServerStream: ss, session: s})
}

// session is an open stream's standing: the credentials it was opened
// with and the identity they proved, and what its first frame was
// allowed. Once either auth file changed (auth.Guard.Generation), they
// are proven again at the stream's next frame, either way: a token or a
// grant revoked ends the streams that relied on it.
type session struct {
	gd     *guard
	ctx    context.Context
	creds  auth.Credentials
	acc    rpcAccess
	method string
	gen    atomic.Uint64 // the guard's generation id and needs were last proven under

	mu      sync.Mutex // guards id, needs, refused
	id      auth.Identity
	needs   []need
	refused error // sticky: a stream refused once stays refused
}

// identity is the caller's identity, as last proven.
func (s *session) identity() auth.Identity {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.id
}

// allow records what the stream's first frame was allowed.
func (s *session) allow(ns []need) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.needs = ns
}

// current is nil while the stream's caller still proves its identity and
// holds what the stream was allowed; else the status refusing it.
func (s *session) current() error {
	gen := s.gd.g.Generation()
	if s.gen.Load() == gen {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.refused != nil || s.gen.Load() == gen {
		return s.refused
	}
	id, err := s.gd.g.Authenticate(s.ctx, s.creds)
	if err == nil && id.Principal != s.id.Principal {
		err = fmt.Errorf("the stream's credentials now prove principal %s, not %s: %w", echo.Quote(id.Principal), echo.Quote(s.id.Principal), auth.ErrUnauthenticated)
	}
	if err != nil {
		s.refused = s.gd.refuse(s.ctx, reasonUnauthenticated, s.method, s.id, err)
		return s.refused
	}
	pol := s.gd.g.Policy()
	for _, n := range s.needs {
		if err := pol.Authorize(id, n.perm, n.res); err != nil {
			s.refused = s.gd.refuse(s.ctx, reasonDenied, s.method, id, err)
			return s.refused
		}
	}
	s.id = id
	s.gen.Store(gen)
	return nil
}

// firstFrameStream checks a stream's first frame: refused, it ends the
// stream before the handler sees it. Later frames, and what the handler
// sends, are held to the session (current).
type firstFrameStream struct {
	grpc.ServerStream
	*session
	checked atomic.Bool
}

func (s *firstFrameStream) Context() context.Context { return s.ctx }

func (s *firstFrameStream) RecvMsg(m any) error {
	if err := s.ServerStream.RecvMsg(m); err != nil {
		return err
	}
	if s.checked.Load() {
		return s.current()
	}
	if err := s.gd.authorize(s.ctx, s.gd.g.Policy(), s.method, s.acc, s.identity(), m); err != nil {
		return err
	}
	s.allow(s.acc.needs(m))
	s.checked.Store(true)
	return s.current() // a reload while the frame was checked
}

func (s *firstFrameStream) SendMsg(m any) error {
	if s.checked.Load() {
		if err := s.current(); err != nil {
			return err
		}
	}
	return s.ServerStream.SendMsg(m)
}

// frameCheckKey is the context key of a perFrame stream's frameChecker.
type frameCheckKey struct{}

// frameChecker checks the frames of one perFrame stream. A frame needing
// what the last one allowed needed, with neither auth file changed since,
// is not checked again. Used by the stream's one receiving goroutine.
type frameChecker struct {
	*session
	lastGen uint64 // the generation last was allowed under, + 1 (0: none)
	last    need
}

// checkFrame is nil if the caller of the stream ctx belongs to may send
// frame m (auth off: always), else the status refusing it. A handler
// that answers frame by frame (PublishStream) calls it for each, and
// answers a refused frame with the refusal; the stream goes on.
func checkFrame(ctx context.Context, m any) error {
	fc, ok := ctx.Value(frameCheckKey{}).(*frameChecker)
	if !ok {
		return nil
	}
	if err := fc.current(); err != nil {
		return err
	}
	gen := fc.gen.Load() + 1
	ns := fc.acc.needs(m)
	if len(ns) == 1 && ns[0] == fc.last && gen == fc.lastGen {
		return nil
	}
	if err := fc.gd.authorize(fc.ctx, fc.gd.g.Policy(), fc.method, fc.acc, fc.identity(), m); err != nil {
		return err
	}
	if len(ns) == 1 {
		fc.lastGen, fc.last = gen, ns[0]
	}
	return nil
}

// forwardIdentity adds the caller's identity, if any, to the outgoing
// metadata of a call forwarded to another node.
func forwardIdentity(ctx context.Context) context.Context {
	id, ok := auth.FromContext(ctx)
	if !ok {
		return ctx
	}
	kv := []string{principalKey, id.Principal}
	for _, g := range id.Groups {
		kv = append(kv, groupsKey, g)
	}
	return metadata.AppendToOutgoingContext(ctx, kv...)
}

// peerIdentity is the identity a forwarded call carries, believed only
// from a member node authenticated by mutual TLS (cluster.CallerNode):
// the node that forwarded it authorized it already, by the same rules,
// and it is not checked again here.
func (gd *guard) peerIdentity(ctx context.Context, method string) (context.Context, error) {
	if strings.HasPrefix(method, raftService) {
		return ctx, nil
	}
	node, member := cluster.CallerNode(ctx)
	if !member {
		err := fmt.Errorf("a forwarded call is accepted only from a member node over mutual TLS: %w", auth.ErrUnauthenticated)
		return ctx, gd.refuse(ctx, reasonUntrustedFwd, method, auth.Identity{}, err)
	}
	md, _ := metadata.FromIncomingContext(ctx)
	ps := md.Get(principalKey)
	if len(ps) != 1 || ps[0] == "" {
		err := fmt.Errorf("node %d forwarded a call without its caller's principal (does it run with auth on?): %w", node, auth.ErrUnauthenticated)
		return ctx, gd.refuse(ctx, reasonUntrustedFwd, method, auth.Identity{}, err)
	}
	return auth.NewContext(ctx, auth.Identity{Principal: ps[0], Groups: md.Get(groupsKey), Method: "forwarded"}), nil
}

func (gd *guard) peerUnary(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	if gd == nil {
		return h(ctx, req)
	}
	ctx, err := gd.peerIdentity(ctx, info.FullMethod)
	if err != nil {
		return nil, err
	}
	return h(ctx, req)
}

func (gd *guard) peerStream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
	if gd == nil {
		return h(srv, ss)
	}
	ctx, err := gd.peerIdentity(ss.Context(), info.FullMethod)
	if err != nil {
		return err
	}
	return h(srv, &ctxStream{ServerStream: ss, ctx: ctx})
}

// ctxStream is a server stream with another context.
type ctxStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *ctxStream) Context() context.Context { return s.ctx }
