package auth

import (
	"context"
	"errors"
	"path/filepath"
	"testing"

	"github.com/golang-jwt/jwt/v5"

	"github.com/ferrymq/ferry/internal/clock"
)

// go test -run '^$' -fuzz FuzzParseTokens ./auth
func FuzzParseTokens(f *testing.F) {
	f.Add(tokenFileOf(entry("kitchen", "k", "pizza"), entry("till", "t")))
	f.Add([]byte("tokens: []\n"))
	f.Add([]byte("tokens:\n  - name: a\n    sha256: 00\n"))
	f.Add([]byte("tokens: {a: b}\n---\nx"))
	f.Add([]byte("&a [*a, *a]"))
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := ParseTokens(b)
		if err != nil {
			return
		}
		// Whatever parsed authenticates without panicking, and each
		// entry's principal passes the name rules.
		for _, tok := range s.tokens {
			if checkName("name", tok.id.Principal) != nil {
				t.Fatalf("accepted principal %q", tok.id.Principal)
			}
		}
		_, _ = s.Authenticate(context.Background(), Credentials{Bearer: string(b)})
	})
}

// go test -run '^$' -fuzz FuzzParsePolicy ./auth
func FuzzParsePolicy(f *testing.F) {
	f.Add([]byte(testPolicy))
	f.Add([]byte("rules: []\n"))
	f.Add([]byte("rules:\n  - principals: [a]\n    permissions: [publish]\n    topics: [x]\n    subscriptions: [s]\n"))
	f.Add([]byte("rules:\n  - groups: [g]\n    permissions: [cluster]\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		pol, err := ParsePolicy(b)
		if err != nil {
			return
		}
		// Whatever parsed decides without panicking; nobody (no
		// principal) is ever allowed anything.
		for _, p := range Permissions {
			for _, r := range []Resource{{}, {Topic: "orders"}, {Topic: "orders", Subscription: "kitchen"}} {
				if pol.Allowed(Identity{Groups: []string{"g"}}, p, r) {
					t.Fatalf("an identity without a principal is allowed %s on %s", p, r)
				}
				pol.Allowed(Identity{Principal: "a", Groups: []string{"g"}}, p, r)
			}
		}
	})
}

// go test -run '^$' -fuzz FuzzJWT ./auth
func FuzzJWT(f *testing.F) {
	rsa1, rsa2, ec := testSigners(f)
	path := filepath.Join(f.TempDir(), "jwks.json")
	writeJWKS(f, path, jwksOf(f, rsa1, ec), t0)
	clk := clock.NewFake(t0)
	v := fileVerifier(f, JWTOptions{JWKS: path, Issuer: "https://idp.test", Audiences: []string{"ferry"}}, clk, &reports{})
	f.Add(rsa1.sign(f, claimsAt(t0, "kitchen")))
	f.Add(ec.sign(f, claimsAt(t0, "kitchen")))
	f.Add(rsa2.sign(f, claimsAt(t0, "kitchen")))
	f.Add(rsa1.sign(f, jwt.MapClaims{"iss": "https://idp.test", "exp": []int{1}, "aud": 7, "groups": map[string]int{"a": 1}}))
	f.Add("eyJhbGciOiJub25lIn0.e30.")
	f.Add("a.b.c")
	f.Add("..")
	f.Fuzz(func(t *testing.T, tok string) {
		id, err := Chain{v}.Authenticate(context.Background(), Credentials{Bearer: tok})
		switch {
		case err == nil:
			if checkName("principal", id.Principal) != nil || id.Method != "jwt" {
				t.Fatalf("granted %+v", id)
			}
		case !errors.Is(err, ErrUnauthenticated):
			t.Fatalf("refused with %v, not ErrUnauthenticated", err)
		case len(err.Error()) > 600:
			t.Fatalf("a refusal of %d bytes: %.200s", len(err.Error()), err)
		}
	})
}

// go test -run '^$' -fuzz FuzzParseJWKS ./auth
func FuzzParseJWKS(f *testing.F) {
	rsa1, _, ec := testSigners(f)
	f.Add(jwksOf(f, rsa1, ec))
	f.Add([]byte(`{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}`))
	f.Add([]byte(`{"keys": [{"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"}]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := ParseJWKS(b)
		if err != nil {
			return
		}
		for _, k := range s.keys {
			_, _ = s.find(k.kid, "RS256")
			_, _ = s.find("", "ES256")
		}
	})
}
