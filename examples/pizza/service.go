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
	"syscall"
	"time"

	"github.com/ferrymq/ferry/client"
)

// serviceFlags are the flags every service subcommand takes.
type serviceFlags struct {
	server     string
	dir        string
	supervised bool
}

func (f *serviceFlags) register(fs *flag.FlagSet, name string) {
	fs.StringVar(&f.server, "server", envOr("FERRY_SERVER", "localhost:7420"), "broker address (env FERRY_SERVER)")
	fs.StringVar(&f.dir, "dir", name, "state directory: the service's own durable records")
	fs.BoolVar(&f.supervised, "supervised", false, "started by the supervisor: stop gracefully when standard input closes")
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
func connect(ctx context.Context, server string, lg *slog.Logger) (*client.Client, error) {
	c, err := client.Dial(ctx, server, client.WithCallTimeout(5*time.Second), client.WithLogger(lg))
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", server, err)
	}
	return c, nil
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
