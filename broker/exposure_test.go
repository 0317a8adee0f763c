package broker

import (
	"net"
	"strings"
	"testing"
)

// TestExposures: a port is reported exactly when it listens beyond
// loopback without TLS or with auth off, and the report names the port,
// its address and what it gives away.
func TestExposures(t *testing.T) {
	tcp := func(s string) net.Addr {
		a, err := net.ResolveTCPAddr("tcp", s)
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	all4, all6, lo4, lo6, lan := tcp("0.0.0.0:7420"), tcp("[::]:7421"), tcp("127.0.0.1:7420"), tcp("[::1]:7421"), tcp("10.1.2.3:7422")
	tlsOn, authOn := &TLSOptions{CertFile: "c", KeyFile: "k"}, &AuthOptions{PolicyFile: "p"}
	for _, tc := range []struct {
		name             string
		o                Options
		grpc, http, peer net.Addr
		want             []string // one substring per expected exposure, in order
	}{
		{"loopback, nothing on", Options{Pprof: true}, lo4, lo6, tcp("127.0.0.1:7422"), nil},
		{"loopback http off", Options{}, lo6, nil, nil, nil},
		{"everything beyond loopback, nothing on", Options{Pprof: true}, all4, all6, lan, []string{
			"gRPC on 0.0.0.0:7420 without TLS: tokens and messages travel in plaintext; without auth: whoever connects may publish, read and delete every topic",
			"HTTP on [::]:7421 without TLS or auth: serves /metrics (topic and subscription names) and /debug/pprof (the command line",
			"node-to-node on 10.1.2.3:7422 without TLS: whoever connects may send Raft messages as any node, fetch partitions"}},
		{"no pprof: only /metrics", Options{}, lo4, all6, nil, []string{"HTTP on [::]:7421 without TLS or auth: serves /metrics (topic and subscription names) to whoever connects, in plaintext"}},
		{"TLS and auth: nothing", Options{TLS: tlsOn, Auth: authOn, Pprof: true}, all4, all6, lan, nil},
		{"TLS, auth off", Options{TLS: tlsOn, Pprof: true}, all4, all6, lan, []string{
			"gRPC on 0.0.0.0:7420 without auth: whoever connects may publish",
			"HTTP on [::]:7421 without auth: serves /metrics (topic and subscription names) and /debug/pprof"}},
		{"auth, TLS off", Options{Auth: authOn}, all4, all6, lan, []string{
			"gRPC on 0.0.0.0:7420 without TLS: tokens and messages travel in plaintext",
			"HTTP on [::]:7421 without TLS: /metrics and the bearer tokens sent to this port travel in plaintext",
			"node-to-node on 10.1.2.3:7422 without TLS"}},
		{"only gRPC beyond loopback", Options{}, tcp("10.0.0.1:7420"), lo4, tcp("[::1]:7422"), []string{"gRPC on 10.0.0.1:7420 without TLS"}},
	} {
		got := exposures(&tc.o, tc.grpc, tc.http, tc.peer)
		if len(got) != len(tc.want) {
			t.Errorf("%s: %d exposures %v, want %d", tc.name, len(got), got, len(tc.want))
			continue
		}
		for i, e := range got {
			if !strings.HasPrefix(e.message(), tc.want[i]) {
				t.Errorf("%s: exposure %d %q, want it to start %q", tc.name, i, e.message(), tc.want[i])
			}
			if e.fix == "" {
				t.Errorf("%s: exposure %d says no fix", tc.name, i)
			}
		}
	}
}

// TestUnreachablePeer: a node listening on loopback while the peer map
// gives it a non-loopback address is told the other nodes cannot reach
// it; on a loopback address, or listening beyond loopback, it is not.
func TestUnreachablePeer(t *testing.T) {
	lo, all := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 7422}, &net.TCPAddr{IP: net.IPv6unspecified, Port: 7422}
	for _, tc := range []struct {
		self string
		peer net.Addr
		warn bool
	}{
		{"127.0.0.1:17422", lo, false},
		{"[::1]:17422", lo, false},
		{"localhost:7422", lo, false},
		{"ferry-1:7422", lo, true},
		{"10.0.0.7:7422", lo, true},
		{"ferry-1:7422", all, false},
	} {
		c := &ClusterOptions{NodeID: 2, Peers: map[uint64]string{1: "x:1", 2: tc.self}}
		m := unreachablePeer(c, tc.peer)
		if (m != "") != tc.warn || (tc.warn && !strings.Contains(m, tc.self)) {
			t.Errorf("self %s listening on %v: %q, want a warning: %v", tc.self, tc.peer, m, tc.warn)
		}
	}
	if m := unreachablePeer(nil, lo); m != "" {
		t.Errorf("a single node: %q", m)
	}
}
