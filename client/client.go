package client

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"strings"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"
	"google.golang.org/grpc/status"

	ferryv1 "github.com/ferrymq/ferry/proto/ferry/v1"
)

// maxRecvBytes is the largest answer the client accepts: a 4 MiB message
// with room for its framing.
const maxRecvBytes = 8 << 20

// Client is a connection to a ferry broker. It is safe for concurrent use.
type Client struct {
	conn  *grpc.ClientConn
	opts  options
	log   *slog.Logger
	pub   ferryv1.PublisherServiceClient
	sub   ferryv1.SubscriberServiceClient
	admin ferryv1.AdminServiceClient
}

type options struct {
	creds       credentials.TransportCredentials
	callTimeout time.Duration
	logger      *slog.Logger
	keepalive   *keepalive.ClientParameters
	// token, if set, gives the bearer token of each call (WithToken).
	token              func(context.Context) (string, error)
	tokenOverPlaintext bool
	lazy               bool
}

// Option configures Dial.
type Option func(*options)

// WithTLS sets the transport credentials. Default: plaintext.
func WithTLS(creds credentials.TransportCredentials) Option {
	return func(o *options) { o.creds = creds }
}

// WithCallTimeout bounds each unary call (publish, ack, commit, admin).
// Default 30s.
func WithCallTimeout(d time.Duration) Option {
	return func(o *options) { o.callTimeout = d }
}

// WithLogger sets where the client logs reconnects and retries. Default
// slog.Default().
func WithLogger(l *slog.Logger) Option {
	return func(o *options) { o.logger = l }
}

// WithKeepalive sets gRPC keepalive pings. Default: gRPC's (none).
func WithKeepalive(kp keepalive.ClientParameters) Option {
	return func(o *options) { o.keepalive = &kp }
}

// WithLazyConnect makes Dial return at once, without waiting for the
// connection: the first call connects, and a call made while the broker
// cannot be reached fails at once with UNAVAILABLE and the transport's
// reason (a refused connection, a TLS handshake error). Default: Dial
// waits until the connection is ready. One-shot tools (the ferry CLI)
// use it to report why a broker is unreachable.
func WithLazyConnect() Option {
	return func(o *options) { o.lazy = true }
}

// Dial connects to the broker at addr (host:port) and waits until the
// connection is ready or ctx ends. Later the connection reconnects by
// itself. For a cluster, addr may list several nodes, comma-separated
// ("n1:7420,n2:7420,n3:7420"): the client uses one and moves to the
// next when it cannot reach it; any node serves any call.
func Dial(ctx context.Context, addr string, opts ...Option) (*Client, error) {
	o := options{creds: insecure.NewCredentials(), callTimeout: 30 * time.Second, logger: slog.Default()}
	for _, opt := range opts {
		opt(&o)
	}
	dopts := []grpc.DialOption{
		grpc.WithTransportCredentials(o.creds),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxRecvBytes)),
	}
	if o.keepalive != nil {
		dopts = append(dopts, grpc.WithKeepaliveParams(*o.keepalive))
	}
	if o.token != nil {
		dopts = append(dopts, grpc.WithPerRPCCredentials(TokenCredentials(o.token, o.tokenOverPlaintext)))
	}
	target := addr
	if strings.Contains(addr, ",") {
		r := manual.NewBuilderWithScheme("ferry-nodes")
		var st resolver.State
		for _, a := range strings.Split(addr, ",") {
			a = strings.TrimSpace(a)
			// With TLS, each node's certificate is checked against the
			// host it is dialed by, not the target's made-up authority.
			host, _, err := net.SplitHostPort(a)
			if err != nil {
				host = a
			}
			st.Addresses = append(st.Addresses, resolver.Address{Addr: a, ServerName: host})
		}
		r.InitialState(st)
		target = r.Scheme() + ":///nodes"
		dopts = append(dopts, grpc.WithResolvers(r))
	}
	conn, err := grpc.NewClient(target, dopts...)
	if err != nil {
		return nil, fmt.Errorf("client: dial %s: %w", addr, err)
	}
	conn.Connect()
	for !o.lazy {
		s := conn.GetState()
		if s == connectivity.Ready {
			break
		}
		if !conn.WaitForStateChange(ctx, s) {
			conn.Close()
			return nil, fmt.Errorf("client: connect to %s (%v): %w", addr, s, ctx.Err())
		}
	}
	return &Client{
		conn:  conn,
		opts:  o,
		log:   o.logger,
		pub:   ferryv1.NewPublisherServiceClient(conn),
		sub:   ferryv1.NewSubscriberServiceClient(conn),
		admin: ferryv1.NewAdminServiceClient(conn),
	}, nil
}

// Close closes the connection. Producers and consumers on it stop working;
// close them first.
func (c *Client) Close() error { return c.conn.Close() }

// call runs f under the per-call timeout.
func (c *Client) call(ctx context.Context, f func(ctx context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, c.opts.callTimeout)
	defer cancel()
	return f(ctx)
}

// callWaiting is call, again after each RESOURCE_EXHAUSTED with a
// RetryInfo (the call changed nothing) once its delay has passed, while
// the time spent fits in the call timeout.
func (c *Client) callWaiting(ctx context.Context, f func(ctx context.Context) error) error {
	start := time.Now()
	for {
		err := c.call(ctx, f)
		d, ok := retryDelay(err)
		if !ok || time.Since(start)+d > c.opts.callTimeout || !sleep(ctx, d) {
			return err
		}
		c.log.Debug("ferry client: the broker asked to retry later", "retry_in", d.String(), "err", err)
	}
}

// retryable reports whether an error is worth trying again on the same or
// a new stream: the broker is shutting down, restarting or unreachable.
func retryable(err error) bool {
	switch status.Code(err) {
	case codes.Unavailable, codes.Aborted:
		return true
	}
	return false
}

// maxRetryDelay caps a RetryInfo delay the client honours.
const maxRetryDelay = time.Minute

// retryDelay is how long the broker asked the client to wait before it
// tries again: the RetryInfo of a RESOURCE_EXHAUSTED status (the broker is
// at a limit, such as its memory limit, and the call changed nothing).
func retryDelay(err error) (time.Duration, bool) {
	st, ok := status.FromError(err)
	if !ok || st.Code() != codes.ResourceExhausted {
		return 0, false
	}
	for _, d := range st.Details() {
		if ri, ok := d.(*errdetails.RetryInfo); ok && ri.GetRetryDelay() != nil {
			return min(max(ri.GetRetryDelay().AsDuration(), time.Millisecond), maxRetryDelay), true
		}
	}
	return 0, false
}

// StatusCode returns the gRPC code of an error returned by the client, such
// as codes.FailedPrecondition for a stale delivery.
func StatusCode(err error) codes.Code {
	var se interface{ GRPCStatus() *status.Status }
	if errors.As(err, &se) {
		return se.GRPCStatus().Code()
	}
	return status.Code(err)
}

// backoff is an exponential backoff with full jitter.
type backoff struct {
	min, max time.Duration
	n        int
}

// next returns how long to wait before the next attempt.
func (b *backoff) next() time.Duration {
	d := b.min << min(b.n, 30)
	if d <= 0 || d > b.max {
		d = b.max
	}
	b.n++
	return time.Duration(rand.Int64N(int64(d)) + 1)
}

func (b *backoff) reset() { b.n = 0 }

// sleep waits d or until ctx ends, and reports whether the wait ran out.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
