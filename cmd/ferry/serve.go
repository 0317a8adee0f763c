package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/ferrymq/ferry/broker"
	"github.com/ferrymq/ferry/storage"
)

func newServeCommand() *cobra.Command {
	o := broker.DefaultOptions("./ferry-data")
	o.ShutdownTimeout = 10 * time.Second
	var (
		fsync       = "always"
		logLevel    = "info"
		logFormat   = "text"
		memLimit    = "auto"
		configPath  string
		printConfig bool
		cf          clusterFlags
		tf          broker.TLSOptions
		af          authFlags
	)
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the broker",
		Long: `Run the broker: gRPC on --grpc-addr, /healthz and /readyz on --http-addr,
data in --data-dir. SIGTERM or SIGINT stops it gracefully: it stops taking
requests, finishes the writes under way and closes the store.

Every port listens on loopback (localhost) unless told otherwise: gRPC on
localhost:7420, HTTP on localhost:7421, node-to-node on localhost:7422. To
serve other machines, say so (--grpc-addr :7420, --http-addr :7421,
--peer-addr :7422); a port that listens beyond loopback without TLS, or
with auth off, is logged at start as a WARN naming what it exposes
(docs/security.md).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if configPath != "" {
				if err := applyConfigFile(cmd.Flags(), configPath); err != nil {
					return err
				}
			}
			if printConfig {
				return printConfigTo(cmd.OutOrStdout(), cmd.Flags())
			}
			var err error
			if o.Storage.Fsync, err = storage.ParseFsyncPolicy(fsync); err != nil {
				return err
			}
			if o.Logger, err = newLogger(logLevel, logFormat); err != nil {
				return err
			}
			if o.Cluster, err = cf.options(os.Hostname); err != nil {
				return err
			}
			if o.TLS, err = serveTLS(tf); err != nil {
				return err
			}
			if o.Auth, err = af.options(); err != nil {
				return err
			}
			source := ""
			if o.MemoryLimit, source, err = resolveMemoryLimit(memLimit, "/"); err != nil {
				return err
			}
			goLimit := setGoMemoryLimit(o.MemoryLimit)
			o.Logger.Info("memory limit", "limit_bytes", o.MemoryLimit, "source", source, "go_memory_limit_bytes", goLimit)
			return serve(cmd.Context(), o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.GRPCAddr, "grpc-addr", o.GRPCAddr, "gRPC listen address; loopback by default (:7420 for every interface)")
	f.StringVar(&o.HTTPAddr, "http-addr", o.HTTPAddr, "HTTP listen address for /healthz, /readyz and /metrics (empty: off); loopback by default (:7421 for every interface)")
	f.BoolVar(&o.Pprof, "pprof", o.Pprof, "serve Go's profiles under /debug/pprof/ on --http-addr (they show the command line and every goroutine's stack; with auth on, for the admin permission on every topic)")
	f.BoolVar(&o.MetricsAuth, "metrics-auth", o.MetricsAuth, "with auth on, serve /metrics only to a bearer token granted the cluster permission")
	f.StringVar(&o.Storage.Dir, "data-dir", o.Storage.Dir, "data directory")
	f.StringVar(&fsync, "fsync", fsync, "when to fsync appends: always (before every ack, grouped) or never (leave it to the OS)")
	f.DurationVar(&o.Storage.RetentionInterval, "retention-interval", o.Storage.RetentionInterval, "how often retention and dedup expiry run")
	f.Var(diskReserveFlag{&o.Storage.DiskReserve}, "disk-reserve",
		"free space kept on the data directory's filesystem, a size (512MiB) or a percentage of it (5%); below it publishes are refused, below half of it every write but deletes; at least four memtables and two value-log files (192MiB)")
	f.DurationVar(&o.ShutdownTimeout, "shutdown-timeout", o.ShutdownTimeout, "grace period of a shutdown: how long it waits for open RPCs")
	f.DurationVar(&o.ShutdownDelay, "shutdown-delay", o.ShutdownDelay, "at shutdown, how long /readyz says not ready while the broker still serves (for load balancers)")
	f.StringVar(&memLimit, "memory-limit", memLimit, "memory budget: a size (512MiB, 2GiB), none, or auto: the container's cgroup limit if it has one; sizes Badger's caches and memtables, sets GOMEMLIMIT below it unless GOMEMLIMIT is set, and refuses publishes with RESOURCE_EXHAUSTED near it")
	f.StringVar(&logLevel, "log-level", logLevel, "debug, info, warn or error")
	f.StringVar(&logFormat, "log-format", logFormat, "text or json")
	cf.add(f)
	addLimitFlags(f, &o.Limits)
	o.ClientSeries, o.MaxTrackedClients = 100, 10_000
	f.IntVar(&o.ClientSeries, "client-series", o.ClientSeries,
		"principals with their own principal label in the ferry_client_* metrics; the rest are summed under \"_other\" (a label idle 10m is given to the next new principal)")
	f.IntVar(&o.MaxTrackedClients, "max-tracked-clients", o.MaxTrackedClients,
		"connections tracked for ferry clients; more are served but only counted")
	f.StringVar(&tf.CertFile, "tls-cert", "", "serve every port over TLS with this PEM certificate (chain); in a cluster it must name the node (URI ferry://node/<id>), see docs/security.md")
	f.StringVar(&tf.KeyFile, "tls-key", "", "the private key (PEM) of --tls-cert")
	f.StringVar(&tf.ClientCAFile, "tls-client-ca", "", "require client certificates on the gRPC port, signed by a CA of this PEM file")
	f.StringVar(&tf.PeerCAFile, "tls-peer-ca", "", "CAs (PEM) that node certificates must chain to on the node-to-node port (default --tls-client-ca)")
	f.DurationVar(&tf.ReloadInterval, "tls-reload-interval", 5*time.Second, "how often the --tls-* files are checked for changes and reloaded")
	af.add(f)
	addConfigFlags(cmd, &configPath, &printConfig)
	return cmd
}

func serve(ctx context.Context, o broker.Options) error {
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	start := time.Now()
	srv, err := broker.Open(o)
	if err != nil {
		return err
	}
	lg := o.Logger
	httpAddr := ""
	if a := srv.HTTPAddr(); a != nil {
		httpAddr = a.String()
	}
	lg.Info("ferry serving", "grpc_addr", srv.GRPCAddr().String(), "http_addr", httpAddr,
		"data_dir", o.Storage.Dir, "fsync", o.Storage.Fsync.String(), "disk", srv.Store().Disk().String(),
		"startup", time.Since(start).Round(time.Millisecond).String())
	served := make(chan error, 1)
	go func() { served <- srv.Serve() }()
	select {
	case <-ctx.Done():
		stop() // a second signal exits at once
		lg.Info("shutting down", "grace", o.ShutdownTimeout.String())
	case err := <-served:
		// A server failed: stop the rest.
		_ = srv.Shutdown(context.Background())
		return err
	case <-srv.Store().Reopen():
		// Opened read-only on a full disk, and space is back: the store
		// must be opened again, read-write. The simplest correct way is
		// the way a start takes: stop gracefully and start again, in
		// place (same process, same flags and environment).
		lg.Info("restarting in place to open the store read-write")
		if err := shutdown(srv, served, o); err != nil {
			return err
		}
		exe, err := os.Executable()
		if err != nil {
			return fmt.Errorf("restart in place: %w", err)
		}
		return syscall.Exec(exe, os.Args, os.Environ())
	}
	if err := shutdown(srv, served, o); err != nil {
		return err
	}
	lg.Info("stopped cleanly")
	return nil
}

// shutdown stops srv gracefully and waits for Serve to return.
func shutdown(srv *broker.Server, served <-chan error, o broker.Options) error {
	sctx, cancel := context.WithTimeout(context.Background(), o.ShutdownDelay+o.ShutdownTimeout+5*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	return <-served
}

// serveTLS is the broker's TLS options from the --tls-* flags: nil when
// neither --tls-cert nor --tls-key is given.
func serveTLS(tf broker.TLSOptions) (*broker.TLSOptions, error) {
	if tf.CertFile == "" && tf.KeyFile == "" {
		if tf.ClientCAFile != "" || tf.PeerCAFile != "" {
			return nil, fmt.Errorf("--tls-client-ca and --tls-peer-ca need --tls-cert and --tls-key")
		}
		return nil, nil
	}
	if tf.CertFile == "" || tf.KeyFile == "" {
		return nil, fmt.Errorf("--tls-cert and --tls-key go together")
	}
	return &tf, nil
}

// diskReserveFlag is --disk-reserve: a size or a percentage.
type diskReserveFlag struct{ r *storage.DiskReserve }

func (f diskReserveFlag) String() string { return f.r.String() }
func (f diskReserveFlag) Type() string   { return "size|pct" }
func (f diskReserveFlag) Set(s string) error {
	r, err := storage.ParseDiskReserve(s)
	if err != nil {
		return err
	}
	*f.r = r
	return nil
}

func newLogger(level, format string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", level)
	}
	hopts := &slog.HandlerOptions{Level: lv}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(os.Stderr, hopts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(os.Stderr, hopts)), nil
	}
	return nil, fmt.Errorf("--log-format %q: want text or json", format)
}
