package main

import (
	"context"
	"flag"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/ferrymq/ferry/broker"
)

// memTableBytes is the broker's smallest memtable (storage's
// MinMemTableBytes): the demo runs several processes on one machine.
const memTableBytes = 32 << 20

// runBroker runs a ferry broker in this process, the way `ferry serve`
// does, so that chaos can kill it with SIGKILL and start it again on the
// same data directory and address.
func runBroker(args []string) error {
	fs := flag.NewFlagSet("broker", flag.ExitOnError)
	dir := fs.String("data-dir", "ferry-data", "data directory")
	addr := fs.String("grpc-addr", "127.0.0.1:7420", "gRPC listen address")
	supervised := fs.Bool("supervised", false, "started by the supervisor: stop gracefully when standard input closes")
	certFile := fs.String("tls-cert", "", "TLS certificate (PEM); with --tls-key, serve TLS")
	keyFile := fs.String("tls-key", "", "TLS key (PEM)")
	tokensFile := fs.String("auth-tokens", "", "token file (docs/security.md); with --auth-policy, turn auth on")
	policyFile := fs.String("auth-policy", "", "policy file (docs/security.md)")
	_ = fs.Parse(args)

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if *supervised {
		go func() {
			_, _ = io.Copy(io.Discard, os.Stdin)
			stop()
		}()
	}
	lg := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})).With("service", "broker")
	o := broker.DefaultOptions(*dir)
	o.GRPCAddr = *addr
	o.HTTPAddr = ""
	o.Logger = lg
	o.Storage.MemTableBytes = memTableBytes
	o.Storage.BlockCacheBytes = 16 << 20
	if *certFile != "" || *keyFile != "" {
		o.TLS = &broker.TLSOptions{CertFile: *certFile, KeyFile: *keyFile}
	}
	if *tokensFile != "" || *policyFile != "" {
		o.Auth = &broker.AuthOptions{TokensFile: *tokensFile, PolicyFile: *policyFile}
	}
	srv, err := broker.Open(o)
	if err != nil {
		return err
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve() }()
	select {
	case <-ctx.Done():
	case err := <-served:
		_ = srv.Shutdown(context.Background())
		return err
	}
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		return err
	}
	return <-served
}
