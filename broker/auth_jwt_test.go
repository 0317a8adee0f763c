package broker

import (
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/golang-jwt/jwt/v5"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ferrymq/ferry/auth"
	ferryv1 "github.com/ferrymq/ferry/proto/ferry/v1"
)

// jwtKey is a key a test issuer signs JWTs with.
type jwtKey struct {
	kid string
	key *rsa.PrivateKey
}

func newJWTKey(t testing.TB, kid string) jwtKey {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	return jwtKey{kid, k}
}

// jwks is the JWK set of the keys' public halves.
func jwks(t testing.TB, ks ...jwtKey) []byte {
	t.Helper()
	var set jose.JSONWebKeySet
	for _, k := range ks {
		set.Keys = append(set.Keys, jose.JSONWebKey{Key: &k.key.PublicKey, KeyID: k.kid, Algorithm: "RS256", Use: "sig"})
	}
	b, err := json.Marshal(set)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func (k jwtKey) sign(t testing.TB, c jwt.MapClaims) string {
	t.Helper()
	tok := jwt.NewWithClaims(jwt.SigningMethodRS256, c)
	tok.Header["kid"] = k.kid
	s, err := tok.SignedString(k.key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// The test issuers: an identity provider whose keys are in a JWKS file,
// and a Kubernetes API server (an httptest TLS server serving its
// discovery document and its keys, as /openid/v1/jwks does).
const (
	idpIssuer = "https://idp.test"
	k8sIssuer = "https://kubernetes.default.svc.cluster.local"
)

const jwtAuthPolicy = `
rules:
  - groups: [ops]
    permissions: [publish, subscribe, read, admin, cluster]
    topics: ["*"]
  - principals: [kitchen, "system:serviceaccount:pizza:till"]
    permissions: [read]
    topics: [orders]
`

func idpClaims(sub string, groups ...string) jwt.MapClaims {
	now := time.Now()
	return jwt.MapClaims{"iss": idpIssuer, "aud": "ferry", "sub": sub, "groups": groups,
		"iat": now.Unix(), "nbf": now.Unix(), "exp": now.Add(time.Hour).Unix()}
}

func TestAuthJWT(t *testing.T) {
	dir := t.TempDir()
	key1, key2, k8sKey := newJWTKey(t, "key-1"), newJWTKey(t, "key-2"), newJWTKey(t, "sa-1")
	jwksFile, policy := filepath.Join(dir, "jwks.json"), filepath.Join(dir, "policy.yaml")
	writeAtomically(t, jwksFile, jwks(t, key1))
	writeAtomically(t, policy, []byte(jwtAuthPolicy))

	apiServer := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer pod-token" {
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
		switch r.URL.Path {
		case "/.well-known/openid-configuration":
			_ = json.NewEncoder(w).Encode(map[string]string{"issuer": k8sIssuer})
		case "/openid/v1/jwks":
			_, _ = w.Write(jwks(t, k8sKey))
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(apiServer.Close)
	caFile, tokenFile := filepath.Join(dir, "ca.crt"), filepath.Join(dir, "token")
	writeAtomically(t, caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: apiServer.Certificate().Raw}))
	writeAtomically(t, tokenFile, []byte("pod-token"))

	ts := startServer(t, func(o *Options) {
		o.Auth = &AuthOptions{PolicyFile: policy, ReloadInterval: 20 * time.Millisecond,
			JWT:        &auth.JWTOptions{JWKS: jwksFile, Issuer: idpIssuer, Audiences: []string{"ferry"}},
			Kubernetes: &auth.KubernetesOptions{Audience: "ferry", APIServer: apiServer.URL, CAFile: caFile, TokenFile: tokenFile},
		}
	})
	addr := ts.srv.GRPCAddr().String()
	ctx := testContext(t)
	admin := func(tok string) ferryv1.AdminServiceClient {
		return ferryv1.NewAdminServiceClient(dialToken(t, addr, tok))
	}
	create := func(tok, name string) codes.Code {
		_, err := admin(tok).CreateTopic(ctx, &ferryv1.CreateTopicRequest{Name: name, Config: &ferryv1.TopicConfig{Partitions: 1}})
		return status.Code(err)
	}
	getOrders := func(tok string) codes.Code {
		_, err := admin(tok).GetTopic(ctx, &ferryv1.GetTopicRequest{Name: "orders"})
		return status.Code(err)
	}

	// Granted by policy: an operator by group, kitchen by principal.
	ops := key1.sign(t, idpClaims("alice", "ops"))
	if code := create(ops, "orders"); code != codes.OK {
		t.Fatalf("an ops JWT's CreateTopic = %v", code)
	}
	kitchen := key1.sign(t, idpClaims("kitchen"))
	if code := getOrders(kitchen); code != codes.OK {
		t.Fatalf("kitchen's GetTopic = %v", code)
	}
	if code := create(kitchen, "kitchen.new"); code != codes.PermissionDenied {
		t.Fatalf("kitchen's CreateTopic = %v, want PERMISSION_DENIED", code)
	}

	// Refused, each one: claims that would grant admin, in a JWT that
	// does not hold.
	with := func(k string, v any) jwt.MapClaims {
		c := idpClaims("alice", "ops")
		c[k] = v
		return c
	}
	hs, _ := jwt.NewWithClaims(jwt.SigningMethodHS256, idpClaims("alice", "ops")).SignedString(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: key1.key.PublicKey.N.Bytes()}))
	none, _ := jwt.NewWithClaims(jwt.SigningMethodNone, idpClaims("alice", "ops")).SignedString(jwt.UnsafeAllowNoneSignatureType)
	bad := map[string]string{
		"expired":       key1.sign(t, with("exp", time.Now().Add(-time.Hour).Unix())),
		"not yet valid": key1.sign(t, with("nbf", time.Now().Add(time.Hour).Unix())),
		"wrong aud":     key1.sign(t, with("aud", "billing")),
		"wrong iss":     key1.sign(t, with("iss", "https://evil.test")),
		"unknown kid":   newJWTKey(t, "key-9").sign(t, idpClaims("alice", "ops")),
		"HS256":         hs,
		"none":          none,
		"malformed":     "eyJhbGciOiJSUzI1NiJ9.e30.AAAA",
		"k8s wrong aud": k8sKey.sign(t, jwt.MapClaims{"iss": k8sIssuer, "aud": "https://kubernetes.default.svc", "sub": "system:serviceaccount:pizza:till", "iat": time.Now().Unix(), "exp": time.Now().Add(time.Hour).Unix()}),
	}
	for name, tok := range bad {
		if code := create(tok, "forged"); code != codes.Unauthenticated {
			t.Errorf("%s: CreateTopic = %v, want UNAUTHENTICATED", name, code)
		}
	}
	if _, err := admin(ops).GetTopic(ctx, &ferryv1.GetTopicRequest{Name: "forged"}); status.Code(err) != codes.NotFound {
		t.Errorf("after the refused calls, GetTopic(forged) = %v, want NOT_FOUND", err)
	}

	// A Kubernetes service-account token, against the API server's keys.
	till := k8sKey.sign(t, jwt.MapClaims{"iss": k8sIssuer, "aud": []string{"ferry"}, "sub": "system:serviceaccount:pizza:till",
		"iat": time.Now().Unix(), "exp": time.Now().Add(time.Hour).Unix(),
		"kubernetes.io": map[string]any{"namespace": "pizza", "serviceaccount": map[string]string{"name": "till"}}})
	if code := getOrders(till); code != codes.OK {
		t.Fatalf("the service account's GetTopic = %v", code)
	}
	if code := create(till, "till.new"); code != codes.PermissionDenied {
		t.Fatalf("the service account's CreateTopic = %v, want PERMISSION_DENIED", code)
	}

	// Rotation: key-2 is served beside key-1, then key-1 is dropped.
	ops2 := key2.sign(t, idpClaims("alice", "ops"))
	writeAtomically(t, jwksFile, jwks(t, key1, key2))
	eventuallyB(t, "the new key is accepted", func() bool { return getOrders(ops2) == codes.OK })
	writeAtomically(t, jwksFile, jwks(t, key2))
	eventuallyB(t, "the dropped key is refused", func() bool { return getOrders(ops) == codes.Unauthenticated })
	// A JWKS that does not load: counted, the last good one kept.
	writeAtomically(t, jwksFile, []byte(`{"keys": "gone"}`))
	eventuallyB(t, "the bad JWKS is counted", func() bool {
		return labeledCounter(t, ts.srv.Registry(), "ferry_auth_reload_failures_total", "file", "jwks") == 1
	})
	if code := getOrders(ops2); code != codes.OK {
		t.Errorf("after a bad JWKS, key-2's GetTopic = %v", code)
	}
}

// writeAtomically replaces path's content at once (a rename).
func writeAtomically(t testing.TB, path string, b []byte) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// TestAuthJWTKeyDropEndsStream: a PublishStream opened with a JWT of a
// key the JWKS then drops is refused UNAUTHENTICATED at its next frame,
// once the set is reloaded (fails when a key set change does not make
// open streams prove their credentials again).
func TestAuthJWTKeyDropEndsStream(t *testing.T) {
	dir := t.TempDir()
	key1, key2 := newJWTKey(t, "key-1"), newJWTKey(t, "key-2")
	jwksFile, policy := filepath.Join(dir, "jwks.json"), filepath.Join(dir, "policy.yaml")
	writeAtomically(t, jwksFile, jwks(t, key1, key2))
	writeAtomically(t, policy, []byte(jwtAuthPolicy))
	ts := startServer(t, func(o *Options) {
		o.Auth = &AuthOptions{PolicyFile: policy, ReloadInterval: 20 * time.Millisecond,
			JWT: &auth.JWTOptions{JWKS: jwksFile, Issuer: idpIssuer, Audiences: []string{"ferry"}}}
	})
	addr := ts.srv.GRPCAddr().String()
	ctx := testContext(t)
	conn := dialToken(t, addr, key1.sign(t, idpClaims("alice", "ops")))
	if _, err := ferryv1.NewAdminServiceClient(conn).CreateTopic(ctx, &ferryv1.CreateTopicRequest{Name: "orders", Config: &ferryv1.TopicConfig{Partitions: 1}}); err != nil {
		t.Fatal(err)
	}
	ps, err := ferryv1.NewPublisherServiceClient(conn).PublishStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	seq := uint64(0)
	frame := func() codes.Code {
		t.Helper()
		seq++
		if err := ps.Send(&ferryv1.PublishStreamRequest{Sequence: seq, Topic: "orders", Messages: []*ferryv1.PublishMessage{{Payload: []byte("pizza")}}}); err != nil {
			_, err = ps.Recv()
			return status.Code(err)
		}
		r, err := ps.Recv()
		if err != nil {
			return status.Code(err)
		}
		return codes.Code(r.GetError().GetCode())
	}
	if code := frame(); code != codes.OK {
		t.Fatalf("the first frame = %v", code)
	}
	writeAtomically(t, jwksFile, jwks(t, key2))
	eventuallyB(t, "the JWKS is reloaded", func() bool {
		return labeledCounter(t, ts.srv.Registry(), "ferry_auth_reloads_total", "file", "jwks") == 1
	})
	if code := frame(); code != codes.Unauthenticated {
		t.Fatalf("a frame after the stream's key was dropped = %v, want UNAUTHENTICATED", code)
	}
}
