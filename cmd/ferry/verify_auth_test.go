package main

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferrymq/ferry/auth"
	"github.com/ferrymq/ferry/internal/tlsfiles/tlstest"
)

// TestVerifySecured: against `ferry serve` with TLS, --auth-tokens and a
// policy granting the verifier publish, subscribe, read and admin on
// the topics verify-* (and their subscriptions), ferry verify with --tls-ca and the verifier's token runs
// clean; without TLS, without a token, with a wrong one, with a token over
// plaintext or as a principal without those permissions, it exits
// non-zero at once saying why, having created nothing.
func TestVerifySecured(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	dir := t.TempDir()
	ca := tlstest.NewCA(t, dir, "ca")
	cert, key := ca.Issue(t, dir, "server", 0)
	tokens, policy := filepath.Join(dir, "tokens.yaml"), filepath.Join(dir, "policy.yaml")
	for path, body := range map[string]string{
		tokens: "tokens:\n  - name: verifier\n    sha256: " + auth.HashToken("verifier-token") +
			"\n  - name: outsider\n    sha256: " + auth.HashToken("outsider-token") + "\n",
		policy: "rules:\n  - principals: [verifier]\n    permissions: [publish, subscribe, read, admin]\n" +
			"    topics: [\"verify-*\"]\n" +
			"  - principals: [outsider]\n    permissions: [read]\n    topics: [\"orders\"]\n",
	} {
		if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	p := startFerry(t, t.TempDir(), "--tls-cert", cert, "--tls-key", key, "--auth-tokens", tokens, "--auth-policy", policy)
	secure := []string{"--server", p.grpcAddr, "--tls-ca", ca.File}

	for _, tc := range []struct {
		name string
		env  []string
		args []string
		want string
	}{
		{"plaintext to the TLS port", nil, []string{"--server", p.grpcAddr}, "give --tls-ca"},
		{"no token", nil, secure, "Unauthenticated"},
		{"a wrong FERRY_TOKEN", []string{"FERRY_TOKEN=wrong"}, secure, "Unauthenticated"},
		{"a token without TLS", nil, []string{"--server", p.grpcAddr, "--token", "verifier-token"}, "sent over TLS only"},
		{"a principal without the permissions", []string{"FERRY_TOKEN=outsider-token"}, secure, "PermissionDenied"},
	} {
		start := time.Now()
		errOut, code := runVerifyRefused(t, tc.env, append(tc.args, "--duration", "2s")...)
		took := time.Since(start)
		if code == 0 || !strings.Contains(errOut, tc.want) {
			t.Errorf("%s: exit %d, stderr %q, want non-zero and %q", tc.name, code, errOut, tc.want)
		}
		// The SDK's Dial alone would wait 30s for a connection.
		if took > 20*time.Second {
			t.Errorf("%s: refused after %v, want at once", tc.name, took)
		}
		t.Logf("%s: exit %d after %v: %s", tc.name, code, took.Round(time.Millisecond), lastLines(errOut, 1))
	}
	if out := listTopics(t, p, ca.File); out != "" {
		t.Errorf("refused runs created topics:\n%s", out)
	}

	tokFile := filepath.Join(dir, "verifier.token")
	if err := os.WriteFile(tokFile, []byte("verifier-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	res, code := runVerifyCLI(t, append(secure, "--token-file", tokFile, "--duration", "3s")...)
	requireClean(t, res, code)
	if out := listTopics(t, p, ca.File); out != "" {
		t.Errorf("verify left topics behind:\n%s", out)
	}
}

// runVerifyRefused runs ferry verify with env and args and returns its
// stderr and exit code.
func runVerifyRefused(t *testing.T, env []string, args ...string) (string, int) {
	t.Helper()
	cmd := exec.Command(buildFerry(t), append([]string{"verify"}, args...)...)
	cmd.Env = append(cmd.Environ(), env...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err := cmd.Run()
	var exit *exec.ExitError
	switch {
	case errors.As(err, &exit):
		return stderr.String(), exit.ExitCode()
	case err != nil:
		t.Fatal(err)
	}
	return stderr.String(), 0
}

// listTopics is `ferry topic list` as the verifier, who sees verify-*.
func listTopics(t *testing.T, p *process, caFile string) string {
	t.Helper()
	out, errOut, ok := cliEnv(t, p, nil, "topic", "list", "--tls-ca", caFile, "--token", "verifier-token")
	if !ok {
		t.Fatalf("topic list: %s", errOut)
	}
	return strings.TrimSpace(out)
}
