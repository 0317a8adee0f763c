package main

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/golang-jwt/jwt/v5"

	"github.com/ferrymq/ferry/internal/tlsfiles/tlstest"
)

// TestAuthJWTProcess: `ferry serve --auth-jwks F --auth-jwt-issuer
// --auth-jwt-audience` refuses to start without a policy, with an http
// JWKS URL or a JWKS that does not load; running, the CLI's --token is a
// JWT the policy grants by principal, and an expired or misaddressed one
// is UNAUTHENTICATED.
func TestAuthJWTProcess(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	dir := t.TempDir()
	ca := tlstest.NewCA(t, dir, "ca")
	cert, key := ca.Issue(t, dir, "server", 0)
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	set, err := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &k.PublicKey, KeyID: "k1", Algorithm: "RS256", Use: "sig"}}})
	if err != nil {
		t.Fatal(err)
	}
	jwksFile, policy, badJWKS := filepath.Join(dir, "jwks.json"), filepath.Join(dir, "policy.yaml"), filepath.Join(dir, "bad.json")
	for path, body := range map[string]string{
		jwksFile: string(set),
		policy:   "rules:\n  - principals: [admin]\n    permissions: [publish, subscribe, read, admin, cluster]\n    topics: [\"*\"]\n",
		badJWKS:  `{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}`,
	} {
		if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	jwtArgs := []string{"--tls-cert", cert, "--tls-key", key, "--auth-jwt-issuer", "https://idp.test", "--auth-jwt-audience", "ferry"}
	for _, tc := range []struct {
		name, want string
		args       []string
	}{
		{"no policy", "need --auth-policy", []string{"--auth-jwks", jwksFile}},
		{"an http URL", "must be https", []string{"--auth-jwks", "http://idp.test/jwks", "--auth-policy", policy}},
		{"a JWKS that does not load", "no usable public signing key", []string{"--auth-jwks", badJWKS, "--auth-policy", policy}},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		out, err := exec.CommandContext(ctx, buildFerry(t), append([]string{"serve", "--data-dir", t.TempDir(), "--grpc-addr", "127.0.0.1:0", "--http-addr", ""}, append(tc.args, jwtArgs...)...)...).CombinedOutput()
		cancel()
		if err == nil || !strings.Contains(string(out), tc.want) {
			t.Errorf("ferry serve with %s = %v, want %q: %s", tc.name, err, tc.want, out)
		}
	}

	p := startFerry(t, t.TempDir(), append([]string{"--auth-jwks", jwksFile, "--auth-policy", policy}, jwtArgs...)...)
	sign := func(aud string, exp time.Time) string {
		tok := jwt.NewWithClaims(jwt.SigningMethodRS256, jwt.MapClaims{"iss": "https://idp.test", "aud": aud, "sub": "admin", "iat": time.Now().Unix(), "exp": exp.Unix()})
		tok.Header["kid"] = "k1"
		s, err := tok.SignedString(k)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	run := func(tok string, args ...string) (string, bool) {
		_, errOut, ok := cliEnv(t, p, []string{"FERRY_TOKEN=" + tok}, append(args, "--tls-ca", ca.File)...)
		return errOut, ok
	}
	if errOut, ok := run(sign("ferry", time.Now().Add(time.Hour)), "topic", "create", "orders"); !ok {
		t.Fatalf("admin's topic create with a JWT: %s", errOut)
	}
	for name, tok := range map[string]string{
		"expired":   sign("ferry", time.Now().Add(-time.Hour)),
		"wrong aud": sign("billing", time.Now().Add(time.Hour)),
	} {
		if errOut, ok := run(tok, "topic", "list"); ok || !strings.Contains(errOut, "Unauthenticated") {
			t.Errorf("topic list with an %s JWT: ok=%v %s", name, ok, errOut)
		}
	}
}
