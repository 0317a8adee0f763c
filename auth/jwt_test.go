package auth

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/golang-jwt/jwt/v5"

	"github.com/ferrymq/ferry/internal/clock"
)

// t0 is the fake clock's start in the JWT tests.
var t0 = time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)

// signer is a key pair a test issuer signs with.
type signer struct {
	kid string
	alg jwt.SigningMethod
	key crypto.Signer
}

var (
	keysOnce sync.Once
	rsaKeys  [2]*rsa.PrivateKey
	ecKey    *ecdsa.PrivateKey
)

// testSigners are two RSA keys and an EC key, made once per test binary.
func testSigners(t testing.TB) (rsa1, rsa2, ec signer) {
	keysOnce.Do(func() {
		for i := range rsaKeys {
			k, err := rsa.GenerateKey(rand.Reader, 2048)
			if err != nil {
				panic(err)
			}
			rsaKeys[i] = k
		}
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			panic(err)
		}
		ecKey = k
	})
	return signer{"rsa-1", jwt.SigningMethodRS256, rsaKeys[0]}, signer{"rsa-2", jwt.SigningMethodRS256, rsaKeys[1]}, signer{"ec-1", jwt.SigningMethodES256, ecKey}
}

// jwksOf is the JWK set of the signers' public keys.
func jwksOf(t testing.TB, ss ...signer) []byte {
	t.Helper()
	var set jose.JSONWebKeySet
	for _, s := range ss {
		set.Keys = append(set.Keys, jose.JSONWebKey{Key: s.key.Public(), KeyID: s.kid, Algorithm: s.alg.Alg(), Use: "sig"})
	}
	b, err := json.Marshal(set)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// sign is a JWT of claims signed by s, its kid in the header.
func (s signer) sign(t testing.TB, claims jwt.MapClaims) string {
	t.Helper()
	tok := jwt.NewWithClaims(s.alg, claims)
	tok.Header["kid"] = s.kid
	str, err := tok.SignedString(s.key)
	if err != nil {
		t.Fatal(err)
	}
	return str
}

// claimsAt are valid claims at now: issued now, for an hour.
func claimsAt(now time.Time, sub string) jwt.MapClaims {
	return jwt.MapClaims{"iss": "https://idp.test", "aud": []string{"ferry"}, "sub": sub, "groups": []string{"pizza"},
		"iat": now.Unix(), "nbf": now.Unix(), "exp": now.Add(time.Hour).Unix()}
}

// reports records the key set loads a verifier reports.
type reports struct {
	mu              sync.Mutex
	loads, failures int
}

func (r *reports) report(changed bool, _ string, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	switch {
	case err != nil:
		r.failures++
	case changed:
		r.loads++
	}
}

func (r *reports) counts() (int, int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.loads, r.failures
}

// writeJWKS replaces path's content at once (a rename), with a
// modification time of its own so the change is seen.
func writeJWKS(t testing.TB, path string, b []byte, mod time.Time) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(tmp, mod, mod); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// fileVerifier is a verifier of the JWKS file path holds.
func fileVerifier(t testing.TB, o JWTOptions, clk clock.Clock, r *reports) *JWTVerifier {
	t.Helper()
	v, err := newJWTVerifier(o, "jwks", clk, r.report)
	if err != nil {
		t.Fatal(err)
	}
	if err := v.open(); err != nil {
		t.Fatal(err)
	}
	return v
}

func TestJWTVerify(t *testing.T) {
	rsa1, rsa2, ec := testSigners(t)
	path := filepath.Join(t.TempDir(), "jwks.json")
	writeJWKS(t, path, jwksOf(t, rsa1, ec), t0)
	clk := clock.NewFake(t0)
	v := fileVerifier(t, JWTOptions{JWKS: path, Issuer: "https://idp.test", Audiences: []string{"ferry"}}, clk, &reports{})
	now := clk.Now()
	with := func(k string, val any) jwt.MapClaims {
		c := claimsAt(now, "kitchen")
		if val == nil {
			delete(c, k)
		} else {
			c[k] = val
		}
		return c
	}
	hs := jwt.NewWithClaims(jwt.SigningMethodHS256, claimsAt(now, "kitchen"))
	hs.Header["kid"] = rsa1.kid
	pub, _ := x509.MarshalPKIXPublicKey(rsa1.key.Public())
	hsTok, _ := hs.SignedString(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub}))
	none, _ := jwt.NewWithClaims(jwt.SigningMethodNone, claimsAt(now, "kitchen")).SignedString(jwt.UnsafeAllowNoneSignatureType)
	good := rsa1.sign(t, claimsAt(now, "kitchen"))
	parts := strings.Split(good, ".")
	admin, _ := json.Marshal(claimsAt(now, "admin"))
	tampered := parts[0] + "." + base64.RawURLEncoding.EncodeToString(admin) + "." + parts[2]
	swappedKid := rsa1
	swappedKid.kid = ec.kid // an RS256 JWT naming the EC key
	for _, tc := range []struct {
		name, tok string
		want      string // "" granted, else a piece of the refusal
	}{
		{"rsa", good, ""},
		{"ec", ec.sign(t, claimsAt(now, "kitchen")), ""},
		{"within the leeway", rsa1.sign(t, with("exp", now.Add(-20*time.Second).Unix())), ""},
		{"expired", rsa1.sign(t, with("exp", now.Add(-time.Minute).Unix())), "expired"},
		{"no exp", rsa1.sign(t, with("exp", nil)), "lacks a required claim"},
		{"not yet valid", rsa1.sign(t, with("nbf", now.Add(time.Minute).Unix())), "not valid yet"},
		{"issued in the future", rsa1.sign(t, with("iat", now.Add(time.Minute).Unix())), "issued in the future"},
		{"exp a string", rsa1.sign(t, with("exp", "tomorrow")), "claims are not valid"},
		{"wrong audience", rsa1.sign(t, with("aud", "billing")), "not for this broker"},
		{"no audience", rsa1.sign(t, with("aud", nil)), "not for this broker"},
		{"wrong issuer", rsa1.sign(t, with("iss", "https://evil.test")), "issuer"},
		{"no issuer", rsa1.sign(t, with("iss", nil)), "issuer"},
		{"unknown kid", rsa2.sign(t, claimsAt(now, "kitchen")), "unknown key id"},
		{"kid of another key type", swappedKid.sign(t, claimsAt(now, "kitchen")), "verifies algorithm"},
		{"HS256 with the public key", hsTok, "algorithm \"HS256\" is not accepted"},
		{"none", none, "algorithm \"none\" is not accepted"},
		{"bad signature", parts[0] + "." + parts[1] + "." + strings.Repeat("A", len(parts[2])), "signature does not verify"},
		{"other claims, same signature", tampered, "signature does not verify"},
		{"malformed", "a.b.c", "not a well-formed JWT"},
		{"empty sub", rsa1.sign(t, with("sub", "")), "not a usable principal"},
		{"kid a number", func() string {
			tok := jwt.NewWithClaims(rsa1.alg, claimsAt(now, "kitchen"))
			tok.Header["kid"] = 7
			s, _ := tok.SignedString(rsa1.key)
			return s
		}(), "kid is not a string"},
		{"huge kid", signer{strings.Repeat("k", 2000), rsa1.alg, rsa1.key}.sign(t, claimsAt(now, "kitchen")), "unknown key id"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id, err := Chain{v}.Authenticate(context.Background(), Credentials{Bearer: tc.tok})
			if tc.want == "" {
				if err != nil || id.Principal != "kitchen" || id.Method != "jwt" || len(id.Groups) != 1 || id.Groups[0] != "pizza" {
					t.Fatalf("Authenticate = %+v, %v; want kitchen of group pizza", id, err)
				}
				return
			}
			if !errors.Is(err, ErrUnauthenticated) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Authenticate = %+v, %v; want ErrUnauthenticated saying %q", id, err, tc.want)
			}
			if len(err.Error()) > 400 {
				t.Errorf("the refusal is %d bytes: %.100s…", len(err.Error()), err)
			}
		})
	}
}

func TestJWKSFileRotation(t *testing.T) {
	rsa1, rsa2, _ := testSigners(t)
	path := filepath.Join(t.TempDir(), "jwks.json")
	writeJWKS(t, path, jwksOf(t, rsa1), t0)
	clk := clock.NewFake(t0)
	var r reports
	v := fileVerifier(t, JWTOptions{JWKS: path}, clk, &r)
	auth := func(s signer) error {
		_, err := v.Authenticate(context.Background(), Credentials{Bearer: s.sign(t, claimsAt(clk.Now(), "kitchen"))})
		return err
	}
	if err := auth(rsa1); err != nil {
		t.Fatal(err)
	}
	// The new key is served beside the old one, then the old one dropped.
	writeJWKS(t, path, jwksOf(t, rsa1, rsa2), t0.Add(time.Second))
	if changed, _, err := v.keys.check(); !changed || err != nil {
		t.Fatalf("check = %v, %v after the new key", changed, err)
	}
	if err := auth(rsa2); err != nil {
		t.Fatalf("the new key: %v", err)
	}
	writeJWKS(t, path, jwksOf(t, rsa2), t0.Add(2*time.Second))
	v.keys.check()
	if err := auth(rsa1); !errors.Is(err, ErrUnauthenticated) {
		t.Fatalf("the dropped key: %v", err)
	}
	// A JWKS that does not load keeps the last good one.
	writeJWKS(t, path, []byte(`{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}`), t0.Add(3*time.Second))
	if _, _, err := v.keys.check(); !errors.Is(err, ErrInvalidJWKS) {
		t.Fatalf("check of a set of one symmetric key = %v", err)
	}
	if err := auth(rsa2); err != nil {
		t.Fatalf("after a bad JWKS, the last good one: %v", err)
	}
}

// issuer is an httptest TLS server serving a JWK set (and, as the
// Kubernetes API server does, its discovery document), counting fetches.
type issuer struct {
	srv     *httptest.Server
	caFile  string
	mu      sync.Mutex
	jwks    []byte
	status  int
	fetches int
	bearer  string // the Authorization header of the last fetch
}

func newIssuer(t testing.TB, jwks []byte) *issuer {
	t.Helper()
	is := &issuer{jwks: jwks, status: http.StatusOK}
	is.srv = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		is.mu.Lock()
		defer is.mu.Unlock()
		switch r.URL.Path {
		case "/.well-known/openid-configuration":
			_ = json.NewEncoder(w).Encode(map[string]string{"issuer": "https://kubernetes.default.svc.cluster.local", "jwks_uri": "https://203.0.113.1/openid/v1/jwks"})
		case "/openid/v1/jwks":
			is.fetches++
			is.bearer = r.Header.Get("Authorization")
			w.WriteHeader(is.status)
			_, _ = w.Write(is.jwks)
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(is.srv.Close)
	is.caFile = filepath.Join(t.TempDir(), "ca.pem")
	ca := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: is.srv.Certificate().Raw})
	if err := os.WriteFile(is.caFile, ca, 0o600); err != nil {
		t.Fatal(err)
	}
	return is
}

func (is *issuer) serve(jwks []byte, status int) {
	is.mu.Lock()
	defer is.mu.Unlock()
	is.jwks, is.status = jwks, status
}

func (is *issuer) count() (int, string) {
	is.mu.Lock()
	defer is.mu.Unlock()
	return is.fetches, is.bearer
}

func TestJWKSURLRefresh(t *testing.T) {
	rsa1, rsa2, _ := testSigners(t)
	is := newIssuer(t, jwksOf(t, rsa1))
	clk := clock.NewFake(t0)
	var r reports
	v := fileVerifier(t, JWTOptions{JWKS: is.srv.URL + "/openid/v1/jwks", CAFile: is.caFile}, clk, &r)
	auth := func(s signer) error {
		_, err := v.Authenticate(context.Background(), Credentials{Bearer: s.sign(t, claimsAt(clk.Now(), "kitchen"))})
		return err
	}
	if err := auth(rsa1); err != nil {
		t.Fatal(err)
	}
	// A new key, and a JWT signed by it: the unknown kid fetches the set
	// at once, but not again within MinRefreshInterval.
	is.serve(jwksOf(t, rsa2), http.StatusOK)
	clk.Advance(31 * time.Second)
	if err := auth(rsa2); err != nil {
		t.Fatalf("a JWT of the new key: %v", err)
	}
	n, _ := is.count()
	for range 5 {
		_, _ = v.Authenticate(context.Background(), Credentials{Bearer: signer{"made-up", rsa1.alg, rsa1.key}.sign(t, claimsAt(clk.Now(), "x"))})
	}
	if m, _ := is.count(); m != n {
		t.Fatalf("5 unknown kids within the interval fetched %d times", m-n)
	}
	if err := auth(rsa1); !errors.Is(err, ErrUnauthenticated) {
		t.Fatalf("the dropped key: %v", err)
	}
	// A fetch that fails keeps the last good set, counted, and is tried
	// again after MinRefreshInterval, the set after RefreshInterval.
	is.serve([]byte("<html>"), http.StatusBadGateway)
	clk.Advance(5 * time.Minute)
	if _, _, err := v.keys.check(); !errors.Is(err, ErrInvalidJWKS) || !strings.Contains(err.Error(), "502") {
		t.Fatalf("check with the issuer down = %v", err)
	}
	if err := auth(rsa2); err != nil {
		t.Fatalf("with the issuer down, the last good set: %v", err)
	}
	is.serve(jwksOf(t, rsa1, rsa2), http.StatusOK)
	if changed, _, _ := v.keys.check(); changed {
		t.Fatal("fetched again before MinRefreshInterval")
	}
	clk.Advance(30 * time.Second)
	if changed, _, err := v.keys.check(); !changed || err != nil {
		t.Fatalf("check after MinRefreshInterval = %v, %v", changed, err)
	}
	if err := auth(rsa1); err != nil {
		t.Fatalf("the key served again: %v", err)
	}
	if loads, failures := r.counts(); loads != 1 || failures != 0 {
		t.Errorf("reported %d loads and %d failures from unknown kids, want 1 and 0", loads, failures)
	}
}

func TestKubernetesVerifier(t *testing.T) {
	rsa1, _, _ := testSigners(t)
	is := newIssuer(t, jwksOf(t, rsa1))
	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokenFile, []byte("pod-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	clk := clock.NewFake(t0)
	v, err := newKubernetesVerifier(KubernetesOptions{Audience: "ferry", APIServer: is.srv.URL, CAFile: is.caFile, TokenFile: tokenFile}, clk, (&reports{}).report)
	if err != nil {
		t.Fatal(err)
	}
	if err := v.open(); err != nil {
		t.Fatal(err)
	}
	if _, bearer := is.count(); bearer != "Bearer pod-token" {
		t.Errorf("the JWKS was fetched with authorization %q, want the pod's token", bearer)
	}
	sa := func(sub, aud string) jwt.MapClaims {
		c := claimsAt(clk.Now(), sub)
		c["iss"], c["aud"] = "https://kubernetes.default.svc.cluster.local", []string{aud}
		c["kubernetes.io"] = map[string]any{"namespace": "pizza", "serviceaccount": map[string]string{"name": "kitchen"}}
		return c
	}
	id, err := v.Authenticate(context.Background(), Credentials{Bearer: rsa1.sign(t, sa("system:serviceaccount:pizza:kitchen", "ferry"))})
	if err != nil || id.Principal != "system:serviceaccount:pizza:kitchen" || id.Method != "kubernetes" ||
		strings.Join(id.Groups, ",") != "system:serviceaccounts,system:serviceaccounts:pizza" {
		t.Fatalf("Authenticate = %+v, %v", id, err)
	}
	for _, tc := range []struct{ sub, aud, want string }{
		{"system:serviceaccount:pizza:kitchen", "https://kubernetes.default.svc", "not for this broker"},
		{"kitchen", "ferry", "not system:serviceaccount"},
		{"system:serviceaccount:pizza", "ferry", "not system:serviceaccount"},
		{"system:serviceaccount:pizza:a:b", "ferry", "not system:serviceaccount"},
	} {
		if _, err := v.Authenticate(context.Background(), Credentials{Bearer: rsa1.sign(t, sa(tc.sub, tc.aud))}); !errors.Is(err, ErrUnauthenticated) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("sub %q aud %q: %v, want %q", tc.sub, tc.aud, err, tc.want)
		}
	}
	// A JWT of another issuer is not the Kubernetes verifier's to decide.
	if _, err := v.Authenticate(context.Background(), Credentials{Bearer: rsa1.sign(t, claimsAt(clk.Now(), "kitchen"))}); !errors.Is(err, ErrNotApplicable) {
		t.Errorf("a JWT of another issuer: %v, want ErrNotApplicable", err)
	}
}

// TestKubernetesVerifierInCluster: with nothing but the audience given, a
// pod's verifier finds the API server from KUBERNETES_SERVICE_HOST and
// _PORT, trusts the pod's CA and reads the keys with the pod's token, both
// from the service account directory. A real pod showed the token's path
// lost (every fetch failed "open : no such file") while a test giving
// every path passed.
func TestKubernetesVerifierInCluster(t *testing.T) {
	rsa1, _, _ := testSigners(t)
	is := newIssuer(t, jwksOf(t, rsa1))
	dir := t.TempDir()
	ca, err := os.ReadFile(is.caFile)
	if err != nil {
		t.Fatal(err)
	}
	for name, b := range map[string][]byte{"ca.crt": ca, "token": []byte("pod-token\n")} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	old := serviceAccountDir
	serviceAccountDir = dir + "/"
	t.Cleanup(func() { serviceAccountDir = old })
	u, err := url.Parse(is.srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("KUBERNETES_SERVICE_HOST", u.Hostname())
	t.Setenv("KUBERNETES_SERVICE_PORT", u.Port())
	v, err := newKubernetesVerifier(KubernetesOptions{Audience: "ferry"}, clock.NewFake(t0), (&reports{}).report)
	if err != nil {
		t.Fatal(err)
	}
	if err := v.open(); err != nil {
		t.Fatalf("reading the keys in a pod: %v", err)
	}
	if _, bearer := is.count(); bearer != "Bearer pod-token" {
		t.Errorf("the JWKS was fetched with authorization %q, want the pod's token", bearer)
	}
}

func TestJWTOptionsRefused(t *testing.T) {
	clk := clock.NewFake(t0)
	path := filepath.Join(t.TempDir(), "jwks.json")
	for _, o := range []JWTOptions{
		{},
		{JWKS: "http://idp.test/jwks"},
		{JWKS: path, Algorithms: []string{"HS256"}},
		{JWKS: path, Algorithms: []string{"none"}},
		{JWKS: path, Leeway: -time.Second},
	} {
		if _, err := newJWTVerifier(o, "jwks", clk, nil); !errors.Is(err, ErrInvalidJWKS) {
			t.Errorf("%+v: %v, want ErrInvalidJWKS", o, err)
		}
	}
	for _, b := range []string{"", "{}", `{"keys": []}`, `{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}`, "[1,2]", `{"keys": [{"kty": "RSA", "n": "AQAB", "e": "AQAB"}]}`} {
		if _, err := ParseJWKS([]byte(b)); !errors.Is(err, ErrInvalidJWKS) {
			t.Errorf("ParseJWKS(%s) = %v, want ErrInvalidJWKS", b, err)
		}
	}
	if _, err := newKubernetesVerifier(KubernetesOptions{Audience: "ferry", APIServer: "https://127.0.0.1:1", CAFile: "/nonexistent"}, clk, nil); err == nil {
		t.Error("a Kubernetes verifier without its CA file started")
	}
}

// go test -run '^$' -bench JWTAuthenticate ./auth
func BenchmarkJWTAuthenticate(b *testing.B) {
	rsa1, _, ec := testSigners(b)
	path := filepath.Join(b.TempDir(), "jwks.json")
	writeJWKS(b, path, jwksOf(b, rsa1, ec), t0)
	clk := clock.NewFake(t0)
	v := fileVerifier(b, JWTOptions{JWKS: path, Issuer: "https://idp.test", Audiences: []string{"ferry"}}, clk, &reports{})
	for _, s := range []signer{rsa1, ec} {
		tok := s.sign(b, claimsAt(t0, "kitchen"))
		for _, remembered := range []bool{false, true} {
			b.Run(fmt.Sprintf("%s/remembered=%v", s.alg.Alg(), remembered), func(b *testing.B) {
				for b.Loop() {
					if !remembered {
						v.verified.Purge()
					}
					if _, err := v.Authenticate(context.Background(), Credentials{Bearer: tok}); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
	set, err := ParseTokens(tokenFileOf(entry("kitchen", "k")))
	if err != nil {
		b.Fatal(err)
	}
	b.Run("static token", func(b *testing.B) {
		for b.Loop() {
			_, _ = set.Authenticate(context.Background(), Credentials{Bearer: "k"})
		}
	})
}

// TestJWTRemembered: a JWT that verified is remembered (the signature is
// not checked again) only until its exp and while the key set is the same.
func TestJWTRemembered(t *testing.T) {
	rsa1, rsa2, _ := testSigners(t)
	path := filepath.Join(t.TempDir(), "jwks.json")
	writeJWKS(t, path, jwksOf(t, rsa1), t0)
	clk := clock.NewFake(t0)
	v := fileVerifier(t, JWTOptions{JWKS: path}, clk, &reports{})
	tok := Credentials{Bearer: rsa1.sign(t, claimsAt(t0, "kitchen"))}
	for range 2 {
		if _, err := v.Authenticate(context.Background(), tok); err != nil {
			t.Fatal(err)
		}
	}
	if v.verified.Len() != 1 {
		t.Fatalf("%d JWTs remembered, want 1", v.verified.Len())
	}
	clk.Advance(time.Hour + 29*time.Second) // exp, within the leeway
	if _, err := v.Authenticate(context.Background(), tok); err != nil {
		t.Fatalf("within the leeway: %v", err)
	}
	clk.Advance(2 * time.Second)
	if _, err := v.Authenticate(context.Background(), tok); !errors.Is(err, ErrUnauthenticated) || !strings.Contains(err.Error(), "expired") {
		t.Fatalf("a remembered JWT past its exp: %v", err)
	}
	tok = Credentials{Bearer: rsa1.sign(t, claimsAt(clk.Now(), "kitchen"))}
	if _, err := v.Authenticate(context.Background(), tok); err != nil {
		t.Fatal(err)
	}
	// The same set written again is no change: what verified stands.
	before := v.keys.cur.Load()
	writeJWKS(t, path, jwksOf(t, rsa1), t0.Add(500*time.Millisecond))
	if changed, _, err := v.keys.check(); changed || err != nil || v.keys.cur.Load() != before {
		t.Fatalf("the same set again: check = %v, %v; set replaced: %v", changed, err, v.keys.cur.Load() != before)
	}
	writeJWKS(t, path, jwksOf(t, rsa2), t0.Add(time.Second))
	v.keys.check()
	if _, err := v.Authenticate(context.Background(), tok); !errors.Is(err, ErrUnauthenticated) {
		t.Fatalf("a remembered JWT of a dropped key: %v", err)
	}
}
