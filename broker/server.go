package broker

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/reflection"

	"github.com/ferrymq/ferry/auth"
	"github.com/ferrymq/ferry/cluster"
	"github.com/ferrymq/ferry/consumer"
	"github.com/ferrymq/ferry/internal/clock"
	"github.com/ferrymq/ferry/internal/tlsfiles"
	ferryv1 "github.com/ferrymq/ferry/proto/ferry/v1"
	"github.com/ferrymq/ferry/storage"
)

// HTTP/2 flow-control windows of the gRPC server, in bytes: the most a
// client may send on one stream, and on one connection, that the broker
// has not read yet.
const (
	streamWindowBytes = 256 << 10
	connWindowBytes   = 4 << 20
)

// maxReplicatedGroupBytes bounds the messages a partition writer gathers
// into one group in a cluster.
const maxReplicatedGroupBytes = 2 << 20

// badInputLogInterval is the least time between two WARN lines about
// requests that do not decode.
const badInputLogInterval = 10 * time.Second

// Server is a running broker: the store, the gRPC server and the HTTP
// server.
type Server struct {
	opts     Options
	log      *slog.Logger
	store    *storage.Store
	node     *node // nil on a single node
	engine   *consumer.Engine
	registry *prometheus.Registry
	grpc     *grpc.Server
	health   *health.Server
	http     *http.Server

	grpcLis net.Listener
	httpLis net.Listener
	tls     *tlsfiles.Files // nil without TLS
	guard   *guard          // nil without auth
	clients *clients        // the public port's connections and per-principal metrics
	ready   atomic.Bool

	draining     chan struct{} // closed when Shutdown begins: streams finish up
	shutdownOnce sync.Once
	shutdownErr  error
	stopped      chan struct{} // closed when Shutdown has finished
}

// Open opens the store and binds both listeners; the broker is ready once
// Open returns. Call Serve to serve and Shutdown to stop.
func Open(opts Options) (*Server, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	reg := prometheus.NewRegistry()
	m := newMetrics(reg)
	sopts := storageOptions(opts, reg)
	grpcLis, httpLis, err := listen(opts)
	if err != nil {
		return nil, err
	}
	st, err := storage.Open(sopts)
	if err != nil {
		grpcLis.Close()
		if httpLis != nil {
			httpLis.Close()
		}
		return nil, err
	}
	s := &Server{
		opts:     opts,
		log:      opts.Logger,
		store:    st,
		health:   health.NewServer(),
		grpcLis:  grpcLis,
		httpLis:  httpLis,
		stopped:  make(chan struct{}),
		draining: make(chan struct{}),
	}
	s.registry = reg
	// closeAll undoes Open so far, on an error: every step nil-safe.
	closeAll := func() {
		s.tls.Stop()
		s.guard.stop()
		grpcLis.Close()
		if httpLis != nil {
			httpLis.Close()
		}
		_ = st.Close(context.Background())
	}
	badInput := newRateLog(s.log, opts.Clock, badInputLogInterval)
	if s.tls, err = loadTLS(opts.TLS, opts.Clock, opts, reg); err == nil {
		s.guard, err = openGuard(opts, opts.Clock, reg)
	}
	if err != nil {
		closeAll()
		return nil, err
	}
	quotas, err := newQuotas(opts, st, reg)
	if err != nil {
		closeAll()
		return nil, err
	}
	s.clients = newClients(opts, reg)
	s.grpc = s.newGRPCServer(m, badInput, quotas)
	var log consumer.Log = st
	var topics topicAdmin = st
	// The node-to-node port serves the services too; they are built
	// below, on the engine, whose log is the node's.
	var register func(*grpc.Server)
	if opts.Cluster != nil {
		if s.node, err = newNode(opts.Cluster, st, opts.Clock, s.log, reg, func(g *grpc.Server) { register(g) }, s.peerServerOptions(badInput), s.tls); err != nil {
			closeAll()
			return nil, fmt.Errorf("cluster node %d: %w", opts.Cluster.NodeID, err)
		}
		log, topics = clusterLog{Store: st, n: s.node.Node}, s.node.Node
	}
	s.engine = consumer.New(consumer.EngineOptions{Log: log, Clock: opts.Clock, Logger: opts.Logger, Route: storeRouter(st)})
	mem := newMemoryBudget(opts.MemoryLimit, opts.publishBytesInFlight(), opts.Clock, reg)
	s.log.Info("memory budget", "limit_bytes", opts.MemoryLimit, "badger_bytes", sopts.Footprint(),
		"memtable_bytes", sopts.MemTableBytes, "block_cache_bytes", sopts.BlockCacheBytes, "index_cache_bytes", sopts.IndexCacheBytes,
		"tail_cache_bytes_per_partition", sopts.TailCacheBytes, "publish_inflight_bytes", opts.publishBytesInFlight())
	pub := newPublisher(st, m, opts.Clock, s.log, s.draining, mem)
	pub.node = s.node
	sub := &subscriber{engine: s.engine, metrics: m, pub: pub, draining: s.draining, node: s.node}
	adm := &admin{store: st, topics: topics, engine: s.engine, clk: opts.Clock, log: s.log, node: s.node, clients: s.clients}
	register = func(g *grpc.Server) {
		ferryv1.RegisterPublisherServiceServer(g, pub)
		ferryv1.RegisterSubscriberServiceServer(g, sub)
		ferryv1.RegisterAdminServiceServer(g, adm)
	}
	register(s.grpc)
	if s.node != nil {
		if err := s.node.Start(s.engine); err != nil {
			closeAll()
			return nil, fmt.Errorf("start cluster node %d: %w", opts.Cluster.NodeID, err)
		}
	}
	s.registerServices(m, reg)
	if httpLis != nil {
		s.serveHTTP(httpLis, reg)
	}
	s.warnExposures()
	s.ready.Store(true)
	return s, nil
}

// storageOptions is opts.Storage sized for opts.MemoryLimit, with the
// broker's clock, logger and metrics, and for a cluster replicated.
func storageOptions(opts Options, reg prometheus.Registerer) storage.Options {
	sopts := opts.Storage.SizeFor(opts.MemoryLimit)
	sopts.Clock = opts.Clock
	sopts.Logger = opts.Logger
	sopts.Metrics = storage.NewMetrics(reg)
	if opts.Cluster != nil {
		sopts.Replicated = true
		// A group becomes one Raft entry, which must stay under the
		// entry limit (cluster.Options.MaxEntryBytes, 8 MiB) even when a
		// full batch (MaxBatchBytes) lands on top of a gathered group.
		sopts.MaxGroupBytes = min(sopts.MaxGroupBytes, maxReplicatedGroupBytes)
	}
	return sopts
}

// listen binds the gRPC port and, unless opts.HTTPAddr is empty, the HTTP
// one (httpLis nil then).
func listen(opts Options) (grpcLis, httpLis net.Listener, err error) {
	grpcLis, err = net.Listen("tcp", opts.GRPCAddr)
	if err != nil {
		return nil, nil, fmt.Errorf("listen grpc: %w", err)
	}
	if opts.HTTPAddr != "" {
		if httpLis, err = net.Listen("tcp", opts.HTTPAddr); err != nil {
			grpcLis.Close()
			return nil, nil, fmt.Errorf("listen http: %w", err)
		}
	}
	return grpcLis, httpLis, nil
}

// newGRPCServer is the public port's server: TLS, the request codec, and
// the interceptors in order — metrics, connection stats, decoding checks,
// auth, audit, then the quotas.
func (s *Server) newGRPCServer(m *metrics, badInput *rateLog, quotas *quotas) *grpc.Server {
	return grpc.NewServer(append(append(tlsServerOption(s.tls),
		grpc.ForceServerCodecV2(newRequestCodec()),
		grpc.StatsHandler(s.clients), // connections, for ListClients (clients.go)
		// s.guard (auth.go), when auth is on, authenticates the caller,
		// then checks the permission the call needs; s.clients counts
		// each call by principal around it, and audits admin actions.
		grpc.ChainUnaryInterceptor(m.grpc.UnaryServerInterceptor(), s.clients.unary, refuseUndecodable(badInput), s.guard.unary, s.clients.innerUnary, logInternal(s.log)),
		grpc.ChainStreamInterceptor(m.grpc.StreamServerInterceptor(), s.clients.stream, refuseUndecodableStream(badInput), s.guard.stream, s.clients.innerStream, logInternalStream(s.log)),
		grpc.ChainStreamInterceptor(brokenStreams...), // none but in a ferry_broken_* test build
		grpc.MaxRecvMsgSize(maxRecvMsgBytes),
		// A fixed window per stream (gRPC's default grows it with the
		// bandwidth-delay product, up to 16 MiB): what a client sends on a
		// stream the broker has stopped reading — an effectively-once
		// stream with its confirmations unread — waits at the client,
		// beyond this much.
		grpc.InitialWindowSize(streamWindowBytes),
		grpc.InitialConnWindowSize(connWindowBytes),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
	), quotas.interceptors()...)...) // the limits last: after the metrics, the decoding checks and auth
}

// peerServerOptions are the node-to-node port's: it serves the API too
// (forwarded requests), refuses what does not decode the same way, and
// believes a forwarded caller's identity only from a member node.
func (s *Server) peerServerOptions(badInput *rateLog) []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.ForceServerCodecV2(newRequestCodec()),
		grpc.ChainUnaryInterceptor(peerOnlyUnary, refuseUndecodable(badInput), s.guard.peerUnary),
		grpc.ChainStreamInterceptor(peerOnlyStream, refuseUndecodableStream(badInput), s.guard.peerStream),
	}
}

// registerServices registers health and reflection on the public port,
// and the broker's collectors and health statuses.
func (s *Server) registerServices(m *metrics, reg *prometheus.Registry) {
	healthpb.RegisterHealthServer(s.grpc, s.health)
	reflection.Register(s.grpc)
	m.grpc.InitializeMetrics(s.grpc)
	reg.MustRegister(newStoreCollector(s.store, s.opts.Storage.Dir), newSubscriptionCollector(s.store, s.engine, s.opts.Clock))
	reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "ferry_subscribe_dropped_messages_total",
		Help: "Messages NONE subscriptions skipped because their consumers fell behind (skipped forward to the head).",
	}, func() float64 { return float64(s.engine.Dropped()) }))
	if s.node != nil {
		reg.MustRegister(cluster.NewCollector(s.node.Node))
	}
	s.health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	for _, svc := range []string{ferryv1.PublisherService_ServiceDesc.ServiceName, ferryv1.SubscriberService_ServiceDesc.ServiceName, ferryv1.AdminService_ServiceDesc.ServiceName} {
		s.health.SetServingStatus(svc, healthpb.HealthCheckResponse_SERVING)
	}
}

// serveHTTP builds the HTTP server on httpLis: /healthz, /readyz, /metrics
// and, with Options.Pprof, the profiles.
func (s *Server) serveHTTP(httpLis net.Listener, reg *prometheus.Registry) {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if !s.ready.Load() {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
			return
		}
		if s.node != nil && !s.node.Ready() {
			http.Error(w, "not ready: a raft group has no leader yet", http.StatusServiceUnavailable)
			return
		}
		// A broker short of disk is still ready: it serves reads,
		// acks and deletes; the detail says what it refuses.
		if d := s.store.Disk(); d.Low {
			detail := "ready\nstorage " + d.String() + "\n"
			if s.node != nil && s.node.RefusingAppends() {
				detail += "raft appends refused: this node takes no entries until disk space is back, and leaders do not count it towards a quorum\n"
			}
			_, _ = w.Write([]byte(detail))
			return
		}
		_, _ = w.Write([]byte("ready\n"))
	})
	var metrics http.Handler = promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorLog: slog.NewLogLogger(s.log.Handler(), slog.LevelWarn)})
	if s.opts.MetricsAuth {
		metrics = s.guard.httpGuarded("/metrics", auth.Cluster, auth.Resource{}, metrics)
	}
	mux.Handle("GET /metrics", metrics)
	if s.opts.Pprof {
		// Profiles for operators who asked for them (--pprof), behind
		// the admin permission with auth on (http_auth.go):
		// go tool pprof http://HOST:7421/debug/pprof/heap
		for path, h := range map[string]http.HandlerFunc{"/debug/pprof/": pprof.Index, "/debug/pprof/cmdline": pprof.Cmdline,
			"/debug/pprof/profile": pprof.Profile, "/debug/pprof/symbol": pprof.Symbol, "/debug/pprof/trace": pprof.Trace} {
			mux.Handle("GET "+path, s.guard.httpGuarded(path, auth.Admin, auth.Resource{Topic: "*"}, h))
		}
	}
	// Refused handshakes (plaintext to the TLS port) at DEBUG: anyone
	// who reaches the port could flood the log otherwise.
	s.http = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, ErrorLog: slog.NewLogLogger(s.log.Handler(), slog.LevelDebug)}
	if s.tls != nil {
		s.httpLis = tls.NewListener(httpLis, s.tls.HTTPConfig())
	}
}

// GRPCAddr is the address the gRPC server listens on.
func (s *Server) GRPCAddr() net.Addr { return s.grpcLis.Addr() }

// HTTPAddr is the address the HTTP server listens on, or nil.
func (s *Server) HTTPAddr() net.Addr {
	if s.httpLis == nil {
		return nil
	}
	return s.httpLis.Addr()
}

// Registry returns the registry the broker's metrics are on (served at
// /metrics).
func (s *Server) Registry() *prometheus.Registry { return s.registry }

// Store returns the server's store.
func (s *Server) Store() *storage.Store { return s.store }

// Serve serves gRPC and HTTP until Shutdown, then returns once Shutdown has
// finished. If a server fails, Serve shuts the broker down and returns the
// failure.
func (s *Server) Serve() error {
	errc := make(chan error, 2)
	servers := 1
	go func() {
		if err := s.grpc.Serve(s.grpcLis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			errc <- fmt.Errorf("serve grpc: %w", err)
			return
		}
		errc <- nil
	}()
	if s.http != nil {
		servers++
		go func() {
			if err := s.http.Serve(s.httpLis); err != nil && !errors.Is(err, http.ErrServerClosed) {
				errc <- fmt.Errorf("serve http: %w", err)
				return
			}
			errc <- nil
		}()
	}
	var first error
	for range servers {
		if err := <-errc; err != nil && first == nil {
			first = err
			s.log.Error("server failed; shutting down", "err", err)
			go func() { _ = s.Shutdown(context.Background()) }()
		}
	}
	<-s.stopped
	return first
}

// Shutdown stops the broker: it reports NOT_SERVING (and, for
// ShutdownDelay, goes on serving), stops taking RPCs,
// ends publish streams once their answered requests are sent, waits up to
// ShutdownTimeout (or ctx) for other open RPCs, lets every queued
// write finish and closes the store. Idempotent.
func (s *Server) Shutdown(ctx context.Context) error {
	s.shutdownOnce.Do(func() {
		defer close(s.stopped)
		s.ready.Store(false)
		s.health.Shutdown()
		if s.opts.ShutdownDelay > 0 {
			s.log.Info("not ready; still serving", "delay", s.opts.ShutdownDelay.String())
			clock.Sleep(s.opts.Clock, s.opts.ShutdownDelay, ctx.Done())
		}
		if s.node != nil {
			// Hand the leaderships over first, so the others take over
			// at once instead of after an election timeout.
			hctx, cancel := context.WithTimeout(ctx, s.opts.ShutdownTimeout)
			if err := s.node.HandOff(hctx); err != nil {
				s.log.Warn("shutdown: leadership hand-off incomplete", "err", err)
			}
			cancel()
		}
		close(s.draining)
		done := make(chan struct{})
		go func() {
			s.grpc.GracefulStop()
			close(done)
		}()
		wait, cancel := context.WithTimeout(ctx, s.opts.ShutdownTimeout)
		select {
		case <-done:
		case <-wait.Done():
			s.log.Warn("shutdown: cutting off open RPCs", "timeout", s.opts.ShutdownTimeout)
			s.grpc.Stop()
		}
		cancel()
		<-done
		if s.http != nil {
			if err := s.http.Shutdown(ctx); err != nil {
				s.http.Close()
			}
		}
		s.engine.Close() // its last cursor writes land before the store closes
		if s.node != nil {
			if err := s.node.close(ctx); err != nil {
				s.log.Warn("shutdown: cluster node", "err", err)
			}
		}
		s.tls.Stop()
		s.guard.stop()
		s.shutdownErr = s.store.Close(ctx)
	})
	return s.shutdownErr
}
