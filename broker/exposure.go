package broker

import (
	"fmt"
	"net"
	"strings"
)

// Every port listens on loopback unless its address says otherwise
// (Options.GRPCAddr, HTTPAddr, ClusterOptions.Addr). A port that listens
// beyond loopback without TLS, or with auth off, is open to whoever
// reaches it: Open logs one WARN per such port, naming it and what it
// gives away (docs/security.md, "Ports and who may call them"). It does
// not refuse to start: a Kubernetes pod listens on every interface and
// may leave TLS to a mesh.

// exposure is one port that listens beyond loopback without TLS or auth.
type exposure struct {
	port string // "gRPC", "HTTP" or "node-to-node"
	addr string // where it listens
	what string // what whoever reaches it gets
	fix  string // how to close it
}

// message is the exposure's log line: the port, its address and what it
// exposes.
func (e exposure) message() string { return e.port + " on " + e.addr + " " + e.what }

// exposures lists o's ports that listen beyond loopback without TLS or
// with auth off: grpc, http (nil: no HTTP port) and peer (nil: a single
// node) are the addresses they are bound to.
func exposures(o *Options, grpc, http, peer net.Addr) []exposure {
	tlsOn, authOn := o.TLS != nil, o.Auth != nil
	var out []exposure
	if beyondLoopback(grpc) {
		var what []string
		if !tlsOn {
			what = append(what, "without TLS: tokens and messages travel in plaintext")
		}
		if !authOn {
			what = append(what, "without auth: whoever connects may publish, read and delete every topic")
		}
		if len(what) > 0 {
			out = append(out, exposure{"gRPC", grpc.String(), strings.Join(what, "; "),
				"listen on localhost (the default --grpc-addr), or give --tls-cert/--tls-key and --auth-policy"})
		}
	}
	if http != nil && beyondLoopback(http) {
		served := "/metrics (topic and subscription names)"
		if o.Pprof {
			served += " and /debug/pprof (the command line, every goroutine's stack, heap and CPU profiles)"
		}
		what := ""
		switch {
		case !tlsOn && !authOn:
			what = "without TLS or auth: serves " + served + " to whoever connects, in plaintext"
		case !authOn:
			what = "without auth: serves " + served + " to whoever connects"
		case !tlsOn:
			what = "without TLS: /metrics and the bearer tokens sent to this port travel in plaintext"
		}
		if what != "" {
			out = append(out, exposure{"HTTP", http.String(), what,
				"listen on localhost (the default --http-addr), or give --tls-cert/--tls-key and --auth-policy"})
		}
	}
	if peer != nil && beyondLoopback(peer) && !tlsOn {
		out = append(out, exposure{"node-to-node", peer.String(),
			"without TLS: whoever connects may send Raft messages as any node, fetch partitions with their payloads and make forwarded subscriber and admin calls",
			"give --tls-cert/--tls-key and --tls-peer-ca: nodes then prove who they are"})
	}
	return out
}

// unreachablePeer says, for a node whose node-to-node port listens on
// loopback (peer) while the peer map gives it an address other machines
// dial, that they cannot reach it; "" when that is not so.
func unreachablePeer(c *ClusterOptions, peer net.Addr) string {
	if c == nil || peer == nil || beyondLoopback(peer) {
		return ""
	}
	self := c.Peers[c.NodeID]
	host, _, err := net.SplitHostPort(self)
	if err != nil || host == "localhost" {
		return ""
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
		return ""
	}
	return fmt.Sprintf("node-to-node on %s listens on loopback only, but the other nodes dial this one at %s: from another machine they cannot reach it; give --peer-addr :PORT", peer, self)
}

// beyondLoopback reports whether a listener on a takes connections from
// other machines: any address but a loopback one (0.0.0.0 and :: take
// them from everywhere).
func beyondLoopback(a net.Addr) bool {
	if a == nil {
		return false
	}
	if t, ok := a.(*net.TCPAddr); ok {
		return !t.IP.IsLoopback()
	}
	host, _, err := net.SplitHostPort(a.String())
	if err != nil {
		return true
	}
	ip := net.ParseIP(host)
	return ip == nil || !ip.IsLoopback()
}

// warnExposures logs exposures and unreachablePeer for s's ports, once, at
// start.
func (s *Server) warnExposures() {
	var peer net.Addr
	if s.node != nil {
		peer = s.node.Addr()
	}
	for _, e := range exposures(&s.opts, s.GRPCAddr(), s.HTTPAddr(), peer) {
		s.log.Warn(e.message(), "port", e.port, "addr", e.addr, "fix", e.fix)
	}
	if m := unreachablePeer(s.opts.Cluster, peer); m != "" {
		s.log.Warn(m, "port", "node-to-node", "addr", peer.String())
	}
}
