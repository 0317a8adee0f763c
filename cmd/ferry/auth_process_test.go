package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferrymq/ferry/auth"
	"github.com/ferrymq/ferry/internal/tlsfiles/tlstest"
)

// cliEnv runs the ferry CLI against p with env added to its environment.
func cliEnv(t *testing.T, p *process, env []string, args ...string) (stdout, stderr string, ok bool) {
	t.Helper()
	cmd := exec.Command(buildFerry(t), args...)
	cmd.Env = append(append(cmd.Environ(), "FERRY_SERVER="+p.grpcAddr), env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if _, isExit := err.(*exec.ExitError); err != nil && !isExit {
		t.Fatalf("run ferry %v: %v", args, err)
	}
	return out.String(), errb.String(), err == nil
}

// TestAuthProcess: `ferry serve` with TLS, --auth-tokens and
// --auth-policy refuses to start on an invalid policy; running, it
// answers the CLI according to the token it sends (--token, FERRY_TOKEN,
// --token-file): none is UNAUTHENTICATED, a reader's create is
// PERMISSION_DENIED, the admin's works; the CLI does not send a token
// without TLS.
func TestAuthProcess(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	dir := t.TempDir()
	ca := tlstest.NewCA(t, dir, "ca")
	cert, key := ca.Issue(t, dir, "server", 0)
	tokens, policy, bad := filepath.Join(dir, "tokens.yaml"), filepath.Join(dir, "policy.yaml"), filepath.Join(dir, "bad.yaml")
	write := func(path, body string) {
		if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(tokens, "tokens:\n  - name: admin\n    sha256: "+auth.HashToken("admin-token")+"\n  - name: reader\n    sha256: "+auth.HashToken("reader-token")+"\n")
	write(policy, "rules:\n  - principals: [admin]\n    permissions: [publish, subscribe, read, admin, cluster]\n    topics: [\"*\"]\n  - principals: [reader]\n    permissions: [read]\n    topics: [\"*\"]\n")
	write(bad, "rules:\n  - principals: [admin]\n    permissions: [everything]\n    topics: [\"*\"]\n")
	serveArgs := []string{"--tls-cert", cert, "--tls-key", key, "--auth-tokens", tokens}

	for name, args := range map[string][]string{
		"an invalid policy": append([]string{"--auth-policy", bad}, serveArgs...),
		"tokens, no policy": serveArgs,
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		out, err := exec.CommandContext(ctx, buildFerry(t), append([]string{"serve", "--data-dir", t.TempDir(), "--grpc-addr", "127.0.0.1:0", "--http-addr", ""}, args...)...).CombinedOutput()
		cancel()
		if err == nil || !strings.Contains(string(out), "policy") {
			t.Errorf("ferry serve with %s = %v: %s", name, err, out)
		}
	}

	p := startFerry(t, t.TempDir(), append([]string{"--auth-policy", policy}, serveArgs...)...)
	tlsCA := []string{"--tls-ca", ca.File}
	run := func(env []string, args ...string) (string, bool) {
		_, errOut, ok := cliEnv(t, p, env, append(args, tlsCA...)...)
		return errOut, ok
	}
	if errOut, ok := run(nil, "topic", "create", "orders", "--token", "admin-token"); !ok {
		t.Fatalf("admin's topic create: %s", errOut)
	}
	if errOut, ok := run(nil, "topic", "list"); ok || !strings.Contains(errOut, "Unauthenticated") {
		t.Errorf("topic list without a token: ok=%v %s", ok, errOut)
	}
	if errOut, ok := run([]string{"FERRY_TOKEN=wrong"}, "topic", "list"); ok || !strings.Contains(errOut, "Unauthenticated") {
		t.Errorf("topic list with a wrong FERRY_TOKEN: ok=%v %s", ok, errOut)
	}
	if errOut, ok := run([]string{"FERRY_TOKEN=reader-token"}, "topic", "list"); !ok {
		t.Errorf("reader's topic list (FERRY_TOKEN): %s", errOut)
	}
	if errOut, ok := run([]string{"FERRY_TOKEN=reader-token"}, "topic", "create", "refused"); ok || !strings.Contains(errOut, `PermissionDenied: principal "reader" lacks the admin permission on topic "refused"`) {
		t.Errorf("reader's topic create: ok=%v %s", ok, errOut)
	}
	tokFile := filepath.Join(dir, "admin.token")
	write(tokFile, "admin-token\n")
	if errOut, ok := run(nil, "pub", "orders", "hello", "--token-file", tokFile); !ok {
		t.Errorf("admin's pub with --token-file: %s", errOut)
	}
	if _, errOut, ok := cliEnv(t, p, nil, "topic", "list", "--token", "admin-token"); ok || !strings.Contains(errOut, "sent over TLS only") {
		t.Errorf("a token without TLS: ok=%v %s", ok, errOut)
	}
}
