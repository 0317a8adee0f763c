package auth

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ferrymq/ferry/internal/clock"
)

// Options are the files a Guard serves and how they are watched.
type Options struct {
	// TokensFile, if set, is the token file (ParseTokens): bearer tokens
	// are identities. Default none.
	TokensFile string
	// PolicyFile is the policy file (ParsePolicy). Required.
	PolicyFile string
	// ClientCertificates makes verified client certificates identities
	// (Certificates): set it when the public port requires them. Default
	// false.
	ClientCertificates bool
	// JWT, if set, makes JWTs signed by its key set identities. Default
	// none.
	JWT *JWTOptions
	// Kubernetes, if set, makes Kubernetes service-account tokens
	// identities. Default none.
	Kubernetes *KubernetesOptions
	// Interval is how often the files are checked for changes (size and
	// modification time). Default 5s.
	Interval time.Duration
	// Clock drives the checks. Default the wall clock.
	Clock clock.Clock
	// Logger receives reloads and failed reloads. Default slog.Default().
	Logger *slog.Logger
	// Registerer, if set, gets ferry_auth_reloads_total and
	// ferry_auth_reload_failures_total, by file (tokens, policy, jwks,
	// kubernetes: the key sets).
	Registerer prometheus.Registerer
}

// Guard authenticates and authorizes calls from a token file and a policy
// file, reloaded when they change. Its methods are safe for concurrent
// use.
type Guard struct {
	opts   Options
	tokens *watched[TokenSet] // nil without a token file
	policy *watched[Policy]
	jwts   []*JWTVerifier // Kubernetes first: its issuer is always set

	poll *clock.Poll // Check every Interval, from Start

	gen atomic.Uint64 // reloads that took, of either file

	reloads, failures *prometheus.CounterVec
}

// Open loads the files once: a file that does not load refuses the start.
// Start watches them.
func Open(o Options) (*Guard, error) {
	if o.PolicyFile == "" {
		return nil, fmt.Errorf("a policy file is needed: %w", ErrInvalidFile)
	}
	if o.TokensFile == "" && !o.ClientCertificates && o.JWT == nil && o.Kubernetes == nil {
		return nil, fmt.Errorf("no way to authenticate: give a token file, a JWKS, a Kubernetes audience, or require client certificates: %w", ErrInvalidFile)
	}
	if o.Interval <= 0 {
		o.Interval = 5 * time.Second
	}
	if o.Clock == nil {
		o.Clock = clock.Real()
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	g := &Guard{
		opts: o,
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ferry_auth_reloads_total", Help: "Token and policy files reloaded after a change, by file."}, []string{"file"}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ferry_auth_reload_failures_total", Help: "Changed token and policy files that did not load (the previous one is kept), by file."}, []string{"file"}),
	}
	g.poll = clock.NewPoll(o.Clock, o.Interval, func() { g.Check() })
	var err error
	if g.policy, err = load("policy", o.PolicyFile, ParsePolicy); err != nil {
		return nil, err
	}
	if o.TokensFile != "" {
		if g.tokens, err = load("tokens", o.TokensFile, ParseTokens); err != nil {
			return nil, err
		}
	}
	if err := g.openJWTs(); err != nil {
		return nil, err
	}
	for _, f := range []string{"policy", "tokens", "jwks", "kubernetes"} {
		g.reloads.WithLabelValues(f)
		g.failures.WithLabelValues(f)
	}
	if o.Registerer != nil {
		for _, c := range []prometheus.Collector{g.reloads, g.failures} {
			if err := o.Registerer.Register(c); err != nil {
				return nil, fmt.Errorf("auth metrics: %w", err)
			}
		}
	}
	return g, nil
}

// Start checks the files every Interval until Stop.
func (g *Guard) Start() { g.poll.Start() }

// Stop ends the checks. Idempotent; nothing on a nil Guard.
func (g *Guard) Stop() {
	if g == nil {
		return
	}
	g.poll.Stop()
}

// Check loads each file again if it changed since it was last read. A
// file that does not load is not used (the previous one stays): it is
// logged, counted in ferry_auth_reload_failures_total, and tried again at
// its next change.
func (g *Guard) Check() {
	g.report(g.policy.check())
	if g.tokens != nil {
		g.report(g.tokens.check())
	}
	for _, v := range g.jwts {
		g.report(v.keys.check())
	}
}

// openJWTs builds the JWT verifiers and loads their key sets.
func (g *Guard) openJWTs() error {
	if o := g.opts.Kubernetes; o != nil {
		v, err := newKubernetesVerifier(*o, g.opts.Clock, g.report)
		if err != nil {
			return err
		}
		g.jwts = append(g.jwts, v)
	}
	if o := g.opts.JWT; o != nil {
		v, err := newJWTVerifier(*o, "jwks", g.opts.Clock, g.report)
		if err != nil {
			return err
		}
		if len(v.o.Audiences) == 0 {
			g.opts.Logger.Warn("auth: JWTs are accepted for any audience: one its issuer minted for another service works here too; set an audience")
		}
		g.jwts = append(g.jwts, v)
	}
	for _, v := range g.jwts {
		if err := v.open(); err != nil {
			return err
		}
	}
	return nil
}

func (g *Guard) report(changed bool, name string, err error) {
	switch {
	case err != nil:
		g.failures.WithLabelValues(name).Inc()
		g.opts.Logger.Warn("auth reload failed; keeping the previous file", "file", name, "err", err)
	case changed:
		g.gen.Add(1)
		g.reloads.WithLabelValues(name).Inc()
		g.opts.Logger.Info("auth file reloaded", "file", name)
	}
}

// Generation counts the reloads that took, of either file: a caller that
// proved an identity or a permission under one generation proves it again
// once it changed (an open stream whose token or grant was revoked).
func (g *Guard) Generation() uint64 { return g.gen.Load() }

// Policy is the policy in force. It changes (a new pointer) at each
// reload: callers that cache a decision keep the pointer it was made
// under.
func (g *Guard) Policy() *Policy { return g.policy.cur.Load() }

// Authenticate returns the identity c proves: a bearer token of the token
// file, else a JWT (Kubernetes, then JWT), else (with ClientCertificates)
// the client certificate. The error
// wraps ErrUnauthenticated.
func (g *Guard) Authenticate(ctx context.Context, c Credentials) (Identity, error) {
	ch := make(Chain, 0, 2+len(g.jwts))
	if g.tokens != nil {
		ch = append(ch, g.tokens.cur.Load())
	}
	for _, v := range g.jwts {
		ch = append(ch, v)
	}
	if g.opts.ClientCertificates {
		ch = append(ch, Certificates{})
	}
	return ch.Authenticate(ctx, c)
}

// watched is a file parsed into a T, reloaded when it changes.
type watched[T any] struct {
	name, path string
	parse      func([]byte) (*T, error)
	cur        atomic.Pointer[T]

	mu    sync.Mutex // guards stamp
	stamp stamp
}

// stamp tells whether a file changed.
type stamp struct {
	size int64
	mod  time.Time
}

func load[T any](name, path string, parse func([]byte) (*T, error)) (*watched[T], error) {
	w := &watched[T]{name: name, path: path, parse: parse}
	st, v, err := w.read()
	if err != nil {
		return nil, err
	}
	w.stamp = st
	w.cur.Store(v)
	return w, nil
}

func (w *watched[T]) read() (stamp, *T, error) {
	f, err := os.Open(w.path)
	if err != nil {
		return stamp{}, nil, fmt.Errorf("%s file: %w: %w", w.name, ErrInvalidFile, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return stamp{}, nil, fmt.Errorf("%s file: %w: %w", w.name, ErrInvalidFile, err)
	}
	st := stamp{size: fi.Size(), mod: fi.ModTime()}
	b, err := io.ReadAll(io.LimitReader(f, MaxFileBytes+1))
	if err != nil {
		return st, nil, fmt.Errorf("%s file %s: %w: %w", w.name, w.path, ErrInvalidFile, err)
	}
	v, err := w.parse(b)
	if err != nil {
		return st, nil, fmt.Errorf("%s file %s: %w", w.name, w.path, err)
	}
	return st, v, nil
}

// check reloads the file if its stamp changed: whether a new version
// took, the file's name, and why a changed file did not load.
func (w *watched[T]) check() (bool, string, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	fi, err := os.Stat(w.path)
	if err == nil && fi.Size() == w.stamp.size && fi.ModTime().Equal(w.stamp.mod) {
		return false, w.name, nil
	}
	st, v, err := w.read()
	if errors.Is(err, os.ErrNotExist) && w.stamp == (stamp{}) {
		return false, w.name, nil // still missing: counted once
	}
	w.stamp = st // a bad version is retried at its next change only
	if err != nil {
		return false, w.name, err
	}
	w.cur.Store(v)
	return true, w.name, nil
}
