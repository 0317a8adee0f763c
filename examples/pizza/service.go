package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/ferrymq/ferry/client"
)

// serviceFlags are the flags every service subcommand takes.
type serviceFlags struct {
	server     string
	dir        string
	supervised bool
	tlsCA      string
	tokenFile  string
}

func (f *serviceFlags) register(fs *flag.FlagSet, name string) {
	fs.StringVar(&f.server, "server", envOr("FERRY_SERVER", "localhost:7420"), "broker address (env FERRY_SERVER)")
	fs.StringVar(&f.dir, "dir", name, "state directory: the service's own durable records")
	fs.BoolVar(&f.supervised, "supervised", false, "started by the supervisor: stop gracefully when standard input closes")
	fs.StringVar(&f.tlsCA, "tls-ca", "", "CA of the broker's certificate: dial with TLS (empty: plaintext)")
	fs.StringVar(&f.tokenFile, "token-file", "", "file holding this service's bearer token (else env FERRY_TOKEN; neither: no token)")
}

// start makes the state directory and returns the service's context and
// logger. The context ends on SIGINT or SIGTERM and, when supervised, once
// standard input closes: the supervisor asks for a stop that way, and a
// supervisor that died closes it too, so no service outlives it.
func (f *serviceFlags) start(name string) (context.Context, context.CancelFunc, *slog.Logger, error) {
	if err := os.MkdirAll(f.dir, 0o755); err != nil {
		return nil, nil, nil, err
	}
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	if f.supervised {
		go func() {
			_, _ = io.Copy(io.Discard, os.Stdin)
			cancel()
		}()
	}
	lg := slog.New(slog.NewTextHandler(os.Stderr, nil)).With("service", name)
	return ctx, cancel, lg, nil
}

// connect dials the broker, waiting for it as long as ctx lasts: a
// service may start while chaos has the broker down.
func connect(ctx context.Context, f serviceFlags, lg *slog.Logger) (*client.Client, error) {
	sec, err := loadSecurity(f.tlsCA, f.tokenFile)
	if err != nil {
		return nil, err
	}
	c, err := client.Dial(ctx, f.server, append(sec.dialOptions(), client.WithCallTimeout(5*time.Second), client.WithLogger(lg))...)
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", f.server, err)
	}
	return c, nil
}

// security is how a process proves itself to the broker: the broker's CA
// and its own token. Zero is plaintext without a token (--insecure).
type security struct {
	creds credentials.TransportCredentials // nil: plaintext
	token string                           // "": none
}

// loadSecurity reads the CA file and the token (from tokenFile, else
// FERRY_TOKEN); empty names are none.
func loadSecurity(caFile, tokenFile string) (security, error) {
	var s security
	if caFile != "" {
		creds, err := client.TLSFromFiles(caFile, "", "")
		if err != nil {
			return s, err
		}
		s.creds = creds
	}
	s.token = os.Getenv("FERRY_TOKEN")
	if tokenFile != "" {
		b, err := os.ReadFile(tokenFile)
		if err != nil {
			return s, fmt.Errorf("token: %w", err)
		}
		s.token = strings.TrimSpace(string(b))
	}
	return s, nil
}

// dialOptions are the client options that present s.
func (s security) dialOptions() []client.Option {
	var opts []client.Option
	if s.creds != nil {
		opts = append(opts, client.WithTLS(s.creds))
	}
	if s.token != "" {
		opts = append(opts, client.WithToken(s.token))
	}
	return opts
}

// grpcOptions are the same for a raw gRPC connection.
func (s security) grpcOptions() []grpc.DialOption {
	creds := s.creds
	if creds == nil {
		creds = insecure.NewCredentials()
	}
	opts := []grpc.DialOption{grpc.WithTransportCredentials(creds)}
	if s.token != "" {
		tok := s.token
		opts = append(opts, grpc.WithPerRPCCredentials(client.TokenCredentials(
			func(context.Context) (string, error) { return tok, nil }, false)))
	}
	return opts
}

// subscribeOptions are the consumer options every service uses: quick
// reconnects, since chaos restarts the broker, and a short drain.
func subscribeOptions(concurrency int) []client.SubscribeOption {
	return []client.SubscribeOption{
		client.WithConcurrency(concurrency),
		client.WithReconnectBackoff(50*time.Millisecond, time.Second),
		client.WithDrainTimeout(5 * time.Second),
	}
}

// serveHTTP serves h on addr until ctx ends. Requests' contexts end with
// ctx, so long-lived ones (the board's event stream) end too.
func serveHTTP(ctx context.Context, addr string, h http.Handler) error {
	srv := &http.Server{Addr: addr, Handler: h, ReadHeaderTimeout: 5 * time.Second,
		BaseContext: func(net.Listener) context.Context { return ctx }}
	errc := make(chan error, 1)
	go func() { errc <- srv.ListenAndServe() }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	return srv.Shutdown(sctx)
}

// sleepCtx waits d or until ctx ends, and reports whether the wait ran out.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}
