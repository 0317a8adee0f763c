package cluster

import (
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"

	"github.com/ferrymq/ferry/internal/clock"
	"github.com/ferrymq/ferry/internal/tlsfiles"
	"github.com/ferrymq/ferry/storage"
)

// Options configures a Host. Start from DefaultOptions.
type Options struct {
	// NodeID is this node's id in every group it runs; never 0. Required.
	NodeID uint64
	// Addr is the node-to-node listen address. Default "localhost:7422":
	// loopback only, so a node reachable by other machines is one whose
	// operator said so (":7422"). Unused when Listener is set.
	Addr string
	// Listener, if set, is where the node-to-node server listens instead
	// of Addr. The Host closes it.
	Listener net.Listener
	// Peers maps the other nodes' ids to their node-to-node addresses
	// (host:port). An entry for NodeID itself is ignored.
	Peers map[uint64]string
	// Store keeps the groups' Raft logs. Required; the Host does not close
	// it, and it must stay open until the Host is closed.
	Store *storage.Store
	// Clock drives the Raft ticks and the transport's reconnect backoff.
	// Default the wall clock.
	Clock clock.Clock
	// Logger receives the host's logs and Raft's. Default slog.Default().
	Logger *slog.Logger

	// TickInterval is the length of one Raft tick. Default 100ms.
	TickInterval time.Duration
	// ElectionTicks is how many ticks a follower waits without hearing
	// from a leader before it campaigns (randomized up to twice that), and
	// how long a leader stays leader without hearing from a quorum (check
	// quorum). Default 10: an election timeout of 1s to 2s.
	ElectionTicks int
	// HeartbeatTicks is how many ticks pass between a leader's heartbeats.
	// Default 1.
	HeartbeatTicks int

	// Register, if set, registers more services on the node-to-node gRPC
	// server before it serves: a broker serves its API there too, for the
	// requests other nodes forward to it.
	Register func(*grpc.Server)
	// ServerOptions, if set, are more options for the node-to-node gRPC
	// server: a broker passes its request codec and interceptors, so that
	// what it serves there is answered as on its own port.
	ServerOptions []grpc.ServerOption
	// Registerer, if set, is where the host registers its metrics
	// (ferry_raft_groups_quiesced, ferry_raft_group_wakes_total,
	// ferry_raft_peers_live). Default none.
	Registerer prometheus.Registerer
	// ForwardProposals makes a follower forward proposals to its group's
	// leader, as Raft can, instead of failing them with a *NotLeaderError:
	// every node then takes writes for every group it is a voter of. A
	// forwarded proposal fails with ErrLeadershipLost if the leader or the
	// term changes before it is applied, or if it has not come back in an
	// append within three election timeouts (the leader may drop it
	// silently); with a *NotLeaderError (Leader 0) when no leader is known.
	ForwardProposals bool

	// SnapshotEntries is how many entries a group applies between two
	// snapshots of its state machine; each snapshot lets the log be
	// compacted. Default 10000.
	SnapshotEntries uint64
	// SnapshotKeepEntries is how many applied entries the log keeps behind
	// a snapshot, so a follower a little behind catches up from the log
	// rather than from a snapshot. Default 5000.
	SnapshotKeepEntries uint64
	// MaxEntryBytes bounds the data of one proposal, in bytes. Default
	// 8 MiB. It must leave room in a frame: at most MaxFrameBytes - 64 KiB.
	MaxEntryBytes int

	// PeerQueueLength is how many messages may wait for one peer's stream;
	// more are dropped (Raft resends). Default 4096.
	PeerQueueLength int
	// MaxFrameBytes bounds one node-to-node frame (a batch of messages, or
	// a snapshot chunk), in bytes, sent or received. Default 16 MiB.
	MaxFrameBytes int
	// SnapshotChunkBytes is the size of the chunks a snapshot is sent in.
	// Default 1 MiB, at most 4 MiB.
	SnapshotChunkBytes int
	// MaxSnapshotBytes bounds the data of a snapshot received from a peer,
	// which is held in memory while it arrives. Default 1 GiB.
	MaxSnapshotBytes int64
	// ReconnectMin and ReconnectMax bound the wait before reopening a
	// peer's stream after it failed: it starts at ReconnectMin and doubles
	// up to ReconnectMax while the peer stays unreachable. Defaults 50ms
	// and 2s.
	ReconnectMin, ReconnectMax time.Duration

	// TLS, if set, makes the node-to-node port mutually authenticated
	// (docs/security.md): both ends present certificates chaining to
	// its peer CAs and naming their node (ferry://node/<id>); a caller
	// whose certificate names no member, or a frame whose from_node is
	// not the caller's node, is refused. Default nil: plaintext.
	TLS *tlsfiles.Files
}

// DefaultOptions returns the defaults for node id with the given peers and
// store.
func DefaultOptions(id uint64, peers map[uint64]string, st *storage.Store) Options {
	return Options{
		NodeID:              id,
		Addr:                "localhost:7422",
		Peers:               peers,
		Store:               st,
		Clock:               clock.Real(),
		Logger:              slog.Default(),
		TickInterval:        100 * time.Millisecond,
		ElectionTicks:       10,
		HeartbeatTicks:      1,
		SnapshotEntries:     10000,
		SnapshotKeepEntries: 5000,
		MaxEntryBytes:       8 << 20,
		PeerQueueLength:     4096,
		MaxFrameBytes:       16 << 20,
		SnapshotChunkBytes:  1 << 20,
		MaxSnapshotBytes:    1 << 30,
		ReconnectMin:        50 * time.Millisecond,
		ReconnectMax:        2 * time.Second,
	}
}

// maxChunkBytes bounds a snapshot chunk on the wire (raft.proto says so).
const maxChunkBytes = 4 << 20

// frameOverhead is the room MaxEntryBytes leaves in a frame for the rest
// of a message and the batch around it.
const frameOverhead = 64 << 10

// Validate reports the first field that is not acceptable.
func (o *Options) Validate() error {
	switch {
	case o.NodeID == 0:
		return fmt.Errorf("option NodeID is 0: %w", ErrInvalidConfig)
	case o.Addr == "" && o.Listener == nil:
		return fmt.Errorf("option Addr is empty and no Listener is set: %w", ErrInvalidConfig)
	case o.Store == nil:
		return fmt.Errorf("option Store is nil: %w", ErrInvalidConfig)
	case o.Clock == nil:
		return fmt.Errorf("option Clock is nil: %w", ErrInvalidConfig)
	case o.Logger == nil:
		return fmt.Errorf("option Logger is nil: %w", ErrInvalidConfig)
	case o.TickInterval <= 0:
		return fmt.Errorf("option TickInterval %v must be positive: %w", o.TickInterval, ErrInvalidConfig)
	case o.HeartbeatTicks <= 0:
		return fmt.Errorf("option HeartbeatTicks %d must be positive: %w", o.HeartbeatTicks, ErrInvalidConfig)
	case o.ElectionTicks <= o.HeartbeatTicks:
		return fmt.Errorf("option ElectionTicks %d must be above HeartbeatTicks %d: %w", o.ElectionTicks, o.HeartbeatTicks, ErrInvalidConfig)
	case o.SnapshotEntries == 0:
		return fmt.Errorf("option SnapshotEntries is 0: %w", ErrInvalidConfig)
	case o.MaxEntryBytes <= 0 || o.MaxEntryBytes > o.MaxFrameBytes-frameOverhead:
		return fmt.Errorf("option MaxEntryBytes %d must be positive and at most MaxFrameBytes - 64 KiB: %w", o.MaxEntryBytes, ErrInvalidConfig)
	}
	to := o.transportOptions()
	return to.Validate()
}

func (o *Options) transportOptions() TransportOptions {
	return TransportOptions{
		NodeID:             o.NodeID,
		Addr:               o.Addr,
		Listener:           o.Listener,
		Peers:              o.Peers,
		Clock:              o.Clock,
		Logger:             o.Logger,
		PeerQueueLength:    o.PeerQueueLength,
		MaxFrameBytes:      o.MaxFrameBytes,
		SnapshotChunkBytes: o.SnapshotChunkBytes,
		MaxSnapshotBytes:   o.MaxSnapshotBytes,
		ReconnectMin:       o.ReconnectMin,
		ReconnectMax:       o.ReconnectMax,
		Register:           o.Register,
		ServerOptions:      o.ServerOptions,
		TLS:                o.TLS,
	}
}

// TransportOptions configures a Transport; the fields mean what Options'
// fields of the same names do. Start from DefaultTransportOptions.
type TransportOptions struct {
	NodeID                     uint64
	Addr                       string
	Listener                   net.Listener
	Peers                      map[uint64]string
	Clock                      clock.Clock
	Logger                     *slog.Logger
	PeerQueueLength            int
	MaxFrameBytes              int
	SnapshotChunkBytes         int
	MaxSnapshotBytes           int64
	ReconnectMin, ReconnectMax time.Duration
	Register                   func(*grpc.Server)
	ServerOptions              []grpc.ServerOption
	TLS                        *tlsfiles.Files
}

// DefaultTransportOptions returns the defaults for node id with the given
// peers.
func DefaultTransportOptions(id uint64, peers map[uint64]string) TransportOptions {
	o := DefaultOptions(id, peers, nil)
	return o.transportOptions()
}

// Validate reports the first field that is not acceptable.
func (o *TransportOptions) Validate() error {
	switch {
	case o.NodeID == 0:
		return fmt.Errorf("option NodeID is 0: %w", ErrInvalidConfig)
	case o.Addr == "" && o.Listener == nil:
		return fmt.Errorf("option Addr is empty and no Listener is set: %w", ErrInvalidConfig)
	case o.Clock == nil:
		return fmt.Errorf("option Clock is nil: %w", ErrInvalidConfig)
	case o.Logger == nil:
		return fmt.Errorf("option Logger is nil: %w", ErrInvalidConfig)
	case o.PeerQueueLength <= 0:
		return fmt.Errorf("option PeerQueueLength %d must be positive: %w", o.PeerQueueLength, ErrInvalidConfig)
	case o.MaxFrameBytes < 2*frameOverhead:
		return fmt.Errorf("option MaxFrameBytes %d must be at least 128 KiB: %w", o.MaxFrameBytes, ErrInvalidConfig)
	case o.SnapshotChunkBytes <= 0 || o.SnapshotChunkBytes > maxChunkBytes || o.SnapshotChunkBytes > o.MaxFrameBytes-frameOverhead:
		return fmt.Errorf("option SnapshotChunkBytes %d must be positive, at most 4 MiB and at most MaxFrameBytes - 64 KiB: %w", o.SnapshotChunkBytes, ErrInvalidConfig)
	case o.MaxSnapshotBytes <= 0:
		return fmt.Errorf("option MaxSnapshotBytes %d must be positive: %w", o.MaxSnapshotBytes, ErrInvalidConfig)
	case o.ReconnectMin <= 0 || o.ReconnectMax < o.ReconnectMin:
		return fmt.Errorf("option ReconnectMin %v and ReconnectMax %v must be positive and in order: %w", o.ReconnectMin, o.ReconnectMax, ErrInvalidConfig)
	}
	for id, addr := range o.Peers {
		if id == 0 {
			return fmt.Errorf("option Peers names node 0 (%q): %w", addr, ErrInvalidConfig)
		}
		if id != o.NodeID && addr == "" {
			return fmt.Errorf("option Peers: node %d has no address: %w", id, ErrInvalidConfig)
		}
	}
	return nil
}
