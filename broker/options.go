package broker

import (
	"fmt"
	"log/slog"
	"time"

	"github.com/ferrymq/ferry/internal/clock"
	"github.com/ferrymq/ferry/internal/limits"
	"github.com/ferrymq/ferry/storage"
)

// Options configures a Server. Start from DefaultOptions.
type Options struct {
	// GRPCAddr is the gRPC listen address. Default "localhost:7420":
	// loopback only, as etcd's client port; serving other machines is
	// asked for (":7420"), and Open logs a WARN for a port beyond
	// loopback without TLS or auth (exposure.go). Port 0 picks a free
	// port (see Server.GRPCAddr).
	GRPCAddr string
	// HTTPAddr is the HTTP listen address for /healthz, /readyz and
	// /metrics. Default "localhost:7421", loopback only (as GRPCAddr).
	// Empty disables HTTP.
	HTTPAddr string
	// Pprof serves Go's profiles under /debug/pprof/ on the HTTP port.
	// Default false: a profile names the command line and the goroutines'
	// stacks, and a CPU profile or trace costs the broker CPU, so it is
	// for an operator who asks for it (docs/security.md).
	Pprof bool
	// MetricsAuth puts /metrics behind the cluster permission (a bearer
	// token whose principal the policy grants it), as GetClusterStatus
	// is. Default false: Prometheus scrapes without credentials. Needs
	// Auth. With Auth on, Pprof's profiles need the admin permission on
	// every topic either way.
	MetricsAuth bool
	// Storage configures the store; its Clock and Logger are set from
	// this Options' Clock and Logger.
	Storage storage.Options
	// ShutdownTimeout bounds Shutdown's wait for open RPCs before they are
	// cut off. Default 5s.
	ShutdownTimeout time.Duration
	// ShutdownDelay is how long Shutdown reports not ready (on /readyz and
	// the health service) while still serving, before it stops taking
	// requests: time for load balancers to stop sending new work. Default
	// 0.
	ShutdownDelay time.Duration
	// Cluster, if set, runs the broker as one node of a cluster
	// (docs/cluster.md); nil is a single node.
	Cluster *ClusterOptions
	// TLS, if set, serves every port over TLS (docs/security.md); nil is
	// plaintext.
	TLS *TLSOptions
	// Auth, if set, turns authentication and authorization on
	// (docs/security.md); nil lets every caller do everything.
	Auth *AuthOptions
	// Clock is the time source of the broker and its store. Default the wall
	// clock.
	Clock clock.Clock
	// Logger receives the broker's logs. Default slog.Default().
	Logger *slog.Logger
	// MemoryLimit is the broker's memory budget in bytes (ferry serve
	// --memory-limit; by default the container's cgroup limit). Open sizes
	// the store from it (storage.Options.SizeFor) and refuses publishes
	// with RESOURCE_EXHAUSTED while the memory in use nears it (memory.go).
	// Default 0: no limit, the store keeps its own sizes.
	MemoryLimit int64
	// MaxPublishBytesInFlight caps the bytes of publishes held from their
	// arrival until they are durable, over all streams; more wait. Default
	// 0: MemoryLimit/8 (16 to 256 MiB), or 64 MiB without a limit.
	MaxPublishBytesInFlight int64
	// Limits are the rate limits and quotas per principal (quotas.go,
	// connquota.go, docs/security.md): publish messages/s and bytes/s,
	// open streams, connections held, subscriptions created; and the
	// quota of bytes on disk per topic. Default: all 0, unlimited.
	Limits limits.Options
	// ClientSeries is how many principals get their own principal label
	// in the ferry_client_* metrics (clients.go, docs/security.md); the
	// rest are summed under principal="_other". A labelled principal idle
	// for 10 minutes gives its label up to the next new one. Default (0)
	// 100.
	ClientSeries int
	// MaxTrackedClients caps the connections the public port tracks for
	// ListClients (ferry clients); more are served but not listed, and
	// counted (ListClientsResponse.untracked). Default (0) 10,000.
	MaxTrackedClients int
}

// MinMemoryLimit is the smallest Options.MemoryLimit accepted.
const MinMemoryLimit = 128 << 20

// publishBytesInFlight is MaxPublishBytesInFlight or its default.
func (o *Options) publishBytesInFlight() int64 {
	switch {
	case o.MaxPublishBytesInFlight > 0:
		return o.MaxPublishBytesInFlight
	case o.MemoryLimit > 0:
		return max(16<<20, min(o.MemoryLimit/8, 256<<20))
	}
	return 64 << 20
}

// DefaultOptions returns the defaults, with data in dir.
func DefaultOptions(dir string) Options {
	return Options{
		GRPCAddr:        "localhost:7420",
		HTTPAddr:        "localhost:7421",
		Storage:         storage.DefaultOptions(dir),
		ShutdownTimeout: 5 * time.Second,
		Clock:           clock.Real(),
		Logger:          slog.Default(),
	}
}

// Validate reports the first field that is not acceptable.
func (o *Options) Validate() error {
	switch {
	case o.GRPCAddr == "":
		return fmt.Errorf("option GRPCAddr is empty: %w", storage.ErrInvalidConfig)
	case o.ShutdownTimeout <= 0:
		return fmt.Errorf("option ShutdownTimeout %v must be positive: %w", o.ShutdownTimeout, storage.ErrInvalidConfig)
	case o.ShutdownDelay < 0:
		return fmt.Errorf("option ShutdownDelay %v must not be negative: %w", o.ShutdownDelay, storage.ErrInvalidConfig)
	case o.Clock == nil:
		return fmt.Errorf("option Clock is nil: %w", storage.ErrInvalidConfig)
	case o.Logger == nil:
		return fmt.Errorf("option Logger is nil: %w", storage.ErrInvalidConfig)
	case o.MemoryLimit != 0 && o.MemoryLimit < MinMemoryLimit:
		return fmt.Errorf("option MemoryLimit %d must be 0 (none) or at least %d (128 MiB): %w", o.MemoryLimit, MinMemoryLimit, storage.ErrInvalidConfig)
	case o.MaxPublishBytesInFlight < 0:
		return fmt.Errorf("option MaxPublishBytesInFlight %d is negative: %w", o.MaxPublishBytesInFlight, storage.ErrInvalidConfig)
	case o.ClientSeries < 0:
		return fmt.Errorf("option ClientSeries %d is negative: %w", o.ClientSeries, storage.ErrInvalidConfig)
	case o.MaxTrackedClients < 0:
		return fmt.Errorf("option MaxTrackedClients %d is negative: %w", o.MaxTrackedClients, storage.ErrInvalidConfig)
	case o.MetricsAuth && o.Auth == nil:
		return fmt.Errorf("option MetricsAuth needs Auth (--auth-policy): %w", storage.ErrInvalidConfig)
	}
	if err := o.Limits.Validate(); err != nil {
		return fmt.Errorf("option Limits: %w: %w", err, storage.ErrInvalidConfig)
	}
	if c := o.Cluster; c != nil {
		switch {
		case c.NodeID == 0:
			return fmt.Errorf("option Cluster.NodeID is 0; node ids start at 1: %w", storage.ErrInvalidConfig)
		case c.Peers[c.NodeID] == "":
			return fmt.Errorf("option Cluster.Peers has no address for this node, %d: %w", c.NodeID, storage.ErrInvalidConfig)
		}
	}
	if t := o.TLS; t != nil {
		switch {
		case t.CertFile == "" || t.KeyFile == "":
			return fmt.Errorf("option TLS needs both CertFile and KeyFile: %w", storage.ErrInvalidConfig)
		case o.Cluster != nil && t.PeerCAFile == "" && t.ClientCAFile == "":
			return fmt.Errorf("option TLS: a cluster node needs PeerCAFile (or ClientCAFile) to authenticate its peers: %w", storage.ErrInvalidConfig)
		case t.ReloadInterval < 0:
			return fmt.Errorf("option TLS.ReloadInterval %v is negative: %w", t.ReloadInterval, storage.ErrInvalidConfig)
		}
	}
	if a := o.Auth; a != nil {
		switch {
		case a.PolicyFile == "":
			return fmt.Errorf("option Auth needs a PolicyFile: %w", storage.ErrInvalidConfig)
		case !a.bearers() && (o.TLS == nil || o.TLS.ClientCAFile == ""):
			return fmt.Errorf("option Auth needs TokensFile, JWT, Kubernetes or client certificates (TLS.ClientCAFile) to authenticate callers: %w", storage.ErrInvalidConfig)
		case o.Cluster != nil && o.TLS == nil:
			return fmt.Errorf("option Auth in a cluster needs TLS: nodes trust each other's forwarded callers only over mutual TLS: %w", storage.ErrInvalidConfig)
		case a.ReloadInterval < 0:
			return fmt.Errorf("option Auth.ReloadInterval %v is negative: %w", a.ReloadInterval, storage.ErrInvalidConfig)
		}
	}
	return nil
}
