package auth

import (
	"context"
	"testing"
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
