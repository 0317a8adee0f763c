package main

import (
	"context"
	"fmt"
	"strings"
	"testing"

	toxiproxy "github.com/Shopify/toxiproxy/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
)

// peerNetwork is the node-to-node network of a testCluster: one toxiproxy
// proxy (used as a library) per ordered pair of nodes, where the first
// dials the second — Raft's streams and forwarded calls alike. A link is
// cut with a latency toxic of an hour on both of its proxies and both
// directions of each: nothing crosses, as with packets dropped by a
// firewall, and nothing is lost either — what was held back flows on, in
// order, once the toxic is removed, as TCP would retransmit it.
type peerNetwork struct {
	proxies map[[2]uint64]*toxiproxy.Proxy // by (from, to)
}

// cutToxics are the toxics of a cut link, one per direction of a proxy.
var cutToxics = []string{"cut_upstream", "cut_downstream"}

func newPeerNetwork(tb testing.TB, nodes []*clusterNode) *peerNetwork {
	tb.Helper()
	server := toxiproxy.NewServer(toxiproxy.NewMetricsContainer(prometheus.NewRegistry()), zerolog.Nop())
	pn := &peerNetwork{proxies: map[[2]uint64]*toxiproxy.Proxy{}}
	for _, from := range nodes {
		for _, to := range nodes {
			if from == to {
				continue
			}
			p := toxiproxy.NewProxy(server, fmt.Sprintf("%d-to-%d", from.id, to.id), "127.0.0.1:0", to.peerAddr)
			if err := p.Start(); err != nil {
				tb.Fatal(err)
			}
			tb.Cleanup(p.Stop)
			pn.proxies[[2]uint64{from.id, to.id}] = p
		}
	}
	return pn
}

// addr is where node from reaches node to.
func (pn *peerNetwork) addr(from, to uint64) string { return pn.proxies[[2]uint64{from, to}].Listen }

// links returns the proxies of the links to and from node id.
func (pn *peerNetwork) links(id uint64) map[[2]uint64]*toxiproxy.Proxy {
	l := make(map[[2]uint64]*toxiproxy.Proxy)
	for pair, p := range pn.proxies {
		if pair[0] == id || pair[1] == id {
			l[pair] = p
		}
	}
	return l
}

// isolate cuts every link between node id and the others.
func (pn *peerNetwork) isolate(tb testing.TB, id uint64) {
	tb.Helper()
	for pair, p := range pn.links(id) {
		for _, name := range cutToxics {
			stream := strings.TrimPrefix(name, "cut_")
			js := fmt.Sprintf(`{"name":%q,"type":"latency","stream":%q,"attributes":{"latency":3600000}}`, name, stream)
			if _, err := p.Toxics.AddToxicJson(strings.NewReader(js)); err != nil {
				tb.Fatalf("cut %d→%d %s: %v", pair[0], pair[1], stream, err)
			}
		}
	}
}

// heal undoes isolate.
func (pn *peerNetwork) heal(tb testing.TB, id uint64) {
	tb.Helper()
	for pair, p := range pn.links(id) {
		for _, name := range cutToxics {
			if err := p.Toxics.RemoveToxic(context.Background(), name); err != nil {
				tb.Fatalf("heal %d→%d %s: %v", pair[0], pair[1], name, err)
			}
		}
	}
}
