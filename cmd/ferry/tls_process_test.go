package main

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/ferrymq/ferry/client"
	"github.com/ferrymq/ferry/internal/tlsfiles/tlstest"
)

// TestClusterTLSProcesses: three `ferry serve` processes with TLS on every
// port, client certificates required and the node-to-node links mutually
// authenticated. The CLI with --tls-ca/--tls-cert/--tls-key creates a
// topic and publishes through node 1 and reads it through node 3; a
// subscription consumed through each node (two of them forwarding to the
// owner over the node-to-node port) delivers; the SDK, given every node's
// address, publishes over TLS; the CLI without TLS, or without a client
// certificate, is refused.
func TestClusterTLSProcesses(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	dir := t.TempDir()
	ca := tlstest.NewCA(t, dir, "ca")
	cert, key := ca.Issue(t, dir, "client", 0)
	c := newTestClusterWith(t, 3, clusterSetup{prepare: func(nd *clusterNode) {
		nc, nk := ca.Issue(t, dir, fmt.Sprintf("node%d", nd.id), nd.id)
		nd.args = append(nd.args, "--tls-cert", nc, "--tls-key", nk, "--tls-client-ca", ca.File, "--tls-peer-ca", ca.File)
	}})
	tlsArgs := []string{"--tls-ca", ca.File, "--tls-cert", cert, "--tls-key", key}
	cli := func(id uint64, args ...string) string {
		t.Helper()
		return mustCLI(t, c.node(id).process(), "", append(args, tlsArgs...)...)
	}

	cli(1, "topic", "create", "orders", "--partitions", "1")
	cli(1, "pub", "orders", "hello")
	waitFor(t, 20*time.Second, "node 3 reads what node 1 took", func() bool {
		out, _, ok := ferryCLI(t, c.node(3).process(), "", append([]string{"read", "orders", "-o", "json"}, tlsArgs...)...)
		return ok && strings.Contains(out, "hello")
	})
	for id := uint64(1); id <= 3; id++ {
		sub := fmt.Sprintf("s%d", id)
		cli(id, "sub", "create", "orders", sub, "--guarantee", "at-least-once", "--start", "earliest")
		if n := len(jsonLines(t, cli(id, "consume", "orders", sub, "--max", "1", "--timeout", "10s", "-o", "json"))); n != 1 {
			t.Errorf("consume through node %d got %d messages, want 1", id, n)
		}
	}

	creds, err := client.TLSFromFiles(ca.File, cert, key)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sdk, err := client.Dial(ctx, c.grpcAddrs(), client.WithTLS(creds))
	if err != nil {
		t.Fatalf("SDK Dial over TLS to %s: %v", c.grpcAddrs(), err)
	}
	defer sdk.Close()
	if _, err := sdk.NewProducer("orders", client.ProducerOptions{}).Publish(ctx, &client.Message{Payload: []byte("sdk")}); err != nil {
		t.Fatalf("SDK publish over TLS: %v", err)
	}

	for _, tc := range []struct {
		name string
		args []string
		hint string
	}{
		{"plaintext", nil, "give --tls-ca"},
		{"no client certificate", []string{"--tls-ca", ca.File}, "TLS refused"},
	} {
		_, errOut, ok := ferryCLI(t, c.node(1).process(), "", append([]string{"topic", "create", "refused", "--rpc-timeout", "3s"}, tc.args...)...)
		switch {
		case ok:
			t.Errorf("%s: topic create succeeded", tc.name)
		case !strings.Contains(errOut, tc.hint):
			t.Errorf("%s: refused with %q, want the hint %q", tc.name, errOut, tc.hint)
		}
	}
	if out, _, ok := ferryCLI(t, c.node(1).process(), "", append([]string{"topic", "list", "-o", "json"}, tlsArgs...)...); !ok || strings.Contains(out, "refused") {
		t.Errorf("topic list after refused clients: ok %v, %s", ok, out)
	}

}
