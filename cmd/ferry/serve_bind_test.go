package main

import (
	"bufio"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ferrymq/ferry/auth"
	"github.com/ferrymq/ferry/internal/tlsfiles/tlstest"
)

// exposedWarn is a WARN line of broker/exposure.go.
type exposedWarn struct{ port, addr, msg string }

// startupWarnings runs `ferry serve` with args until it logs that it
// serves, kills it, and returns its WARN lines that name an exposed port
// (broker/exposure.go), and all its WARN messages.
func startupWarnings(t *testing.T, args ...string) (exposed []exposedWarn, warns []string) {
	t.Helper()
	cmd := exec.Command(buildFerry(t), append([]string{"serve", "--data-dir", t.TempDir(), "--log-format", "json"}, args...)...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		_ = cmd.Process.Signal(syscall.SIGKILL)
		_ = cmd.Wait()
	}()
	lines := make(chan map[string]any)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			var m map[string]any
			if json.Unmarshal(sc.Bytes(), &m) == nil {
				lines <- m
			}
		}
	}()
	timeout := time.After(30 * time.Second)
	for {
		select {
		case m, ok := <-lines:
			if !ok {
				t.Fatalf("ferry serve %v exited before serving", args)
			}
			msg, _ := m["msg"].(string)
			if msg == "ferry serving" {
				return exposed, warns
			}
			if m["level"] != "WARN" {
				continue
			}
			warns = append(warns, msg)
			if p, ok := m["port"].(string); ok {
				addr, _ := m["addr"].(string)
				exposed = append(exposed, exposedWarn{p, addr, msg})
			}
		case <-timeout:
			t.Fatalf("ferry serve %v did not serve within 30s", args)
		}
	}
}

// TestServeWarnsOfExposedPorts: real starts of `ferry serve`. On loopback
// nothing is reported, whatever is off; beyond loopback without TLS and
// auth, each port is reported once, naming its address and what it
// exposes; with TLS and auth on, nothing is. The defaults are loopback.
func TestServeWarnsOfExposedPorts(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	cfg := printedConfig(t)
	for k, want := range map[string]string{"grpc-addr": "localhost:7420", "http-addr": "localhost:7421", "peer-addr": "localhost:7422"} {
		if cfg[k] != want {
			t.Errorf("default %s = %q, want %q", k, cfg[k], want)
		}
	}

	dir := t.TempDir()
	ca := tlstest.NewCA(t, dir, "ca")
	cert, key := ca.Issue(t, dir, "node", 1)
	tokens, policy := filepath.Join(dir, "tokens.yaml"), filepath.Join(dir, "policy.yaml")
	for path, body := range map[string]string{
		tokens: "tokens:\n  - name: admin\n    sha256: " + auth.HashToken("admin-token") + "\n",
		policy: "rules:\n  - principals: [admin]\n    permissions: [admin]\n    topics: [\"*\"]\n",
	} {
		if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// A one-node cluster, so the node-to-node port listens too.
	cluster := func(peerAddr string) []string {
		return []string{"--node-id", "1", "--peers", "1=127.0.0.1:1", "--peer-addr", peerAddr}
	}
	secure := []string{"--tls-cert", cert, "--tls-key", key, "--tls-peer-ca", ca.File, "--auth-tokens", tokens, "--auth-policy", policy}
	for _, tc := range []struct {
		name string
		args []string
		want []string // the ports reported, in order
	}{
		{"loopback, nothing on", append([]string{"--grpc-addr", "localhost:0", "--http-addr", "127.0.0.1:0", "--pprof"}, cluster("localhost:0")...), nil},
		{"every interface, nothing on", append([]string{"--grpc-addr", ":0", "--http-addr", ":0", "--pprof"}, cluster(":0")...),
			[]string{"gRPC", "HTTP", "node-to-node"}},
		{"every interface, TLS and auth on", append(append([]string{"--grpc-addr", ":0", "--http-addr", ":0", "--pprof"}, cluster(":0")...), secure...), nil},
		{"gRPC beyond loopback, HTTP off", []string{"--grpc-addr", "0.0.0.0:0", "--http-addr", ""}, []string{"gRPC"}},
	} {
		exposed, warns := startupWarnings(t, tc.args...)
		var ports []string
		for _, e := range exposed {
			ports = append(ports, e.port)
			if !strings.HasPrefix(e.msg, e.port+" on "+e.addr+" without ") || !strings.Contains(e.msg, ": ") ||
				!(strings.HasPrefix(e.addr, "[::]:") || strings.HasPrefix(e.addr, "0.0.0.0:")) {
				t.Errorf("%s: warning %q (addr %s) does not name the port, its address and what is exposed", tc.name, e.msg, e.addr)
			}
		}
		if strings.Join(ports, ",") != strings.Join(tc.want, ",") {
			t.Errorf("%s: exposed ports reported %v, want %v (warnings: %q)", tc.name, ports, tc.want, warns)
		}
		t.Logf("%s: %q", tc.name, warns)
	}
}
