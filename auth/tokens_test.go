package auth

import (
	"context"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"testing"
)

func tokenFileOf(entries ...string) []byte {
	return []byte("tokens:\n" + strings.Join(entries, ""))
}

func entry(name, tok string, groups ...string) string {
	s := fmt.Sprintf("  - name: %s\n    sha256: %s\n", name, HashToken(tok))
	if len(groups) > 0 {
		s += "    groups: [" + strings.Join(groups, ", ") + "]\n"
	}
	return s
}

func TestTokens(t *testing.T) {
	set, err := ParseTokens(tokenFileOf(entry("kitchen", "k-secret", "pizza"), entry("kitchen", "k-new"), entry("till", "t-secret")))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, c := range []struct {
		tok, want string
	}{
		{"k-secret", "kitchen"},
		{"k-new", "kitchen"}, // a second token for the same principal: rotation
		{"t-secret", "till"},
	} {
		id, err := set.Authenticate(ctx, Credentials{Bearer: c.tok})
		if err != nil || id.Principal != c.want || id.Method != "token" {
			t.Errorf("token %q = %+v, %v; want %s", c.tok, id, err, c.want)
		}
	}
	if id, _ := set.Authenticate(ctx, Credentials{Bearer: "k-secret"}); len(id.Groups) != 1 || id.Groups[0] != "pizza" {
		t.Errorf("groups = %v, want [pizza]", id.Groups)
	}
	for _, tok := range []string{"", "k-secre", "k-secret ", "K-SECRET", HashToken("k-secret")} {
		if _, err := set.Authenticate(ctx, Credentials{Bearer: tok}); !errors.Is(err, ErrNotApplicable) {
			t.Errorf("token %q = %v, want ErrNotApplicable", tok, err)
		}
	}
	// Through a chain, an unknown token is refused, and so is nothing.
	ch := Chain{set, Certificates{}}
	for _, c := range []Credentials{{Bearer: "nope"}, {}, {Bearer: strings.Repeat("x", 5000)}} {
		if _, err := ch.Authenticate(ctx, c); !errors.Is(err, ErrUnauthenticated) {
			t.Errorf("chain(%.10q) = %v, want ErrUnauthenticated", c.Bearer, err)
		}
	}
}

func TestParseTokensRefuses(t *testing.T) {
	for name, file := range map[string][]byte{
		"empty":          nil,
		"no tokens key":  []byte("token: []\n"),
		"unknown key":    []byte("tokens:\n  - name: a\n    sha265: " + HashToken("x") + "\n"),
		"short hash":     []byte("tokens:\n  - name: a\n    sha256: abcd\n"),
		"not hex":        []byte("tokens:\n  - name: a\n    sha256: " + strings.Repeat("z", 64) + "\n"),
		"no name":        []byte("tokens:\n  - sha256: " + HashToken("x") + "\n"),
		"same hash":      tokenFileOf(entry("a", "x"), entry("b", "x")),
		"bad group":      []byte("tokens:\n  - name: a\n    sha256: " + HashToken("x") + "\n    groups: [\"\"]\n"),
		"tokens not map": []byte("tokens: [1, 2]\n"),
	} {
		if _, err := ParseTokens(file); !errors.Is(err, ErrInvalidFile) {
			t.Errorf("%s: ParseTokens = %v, want ErrInvalidFile", name, err)
		}
	}
	if s, err := ParseTokens([]byte("tokens: []\n")); err != nil || s.Len() != 0 {
		t.Errorf("tokens: [] = %v, %v", s, err)
	}
}

func TestCertificates(t *testing.T) {
	ctx := context.Background()
	spiffe, _ := url.Parse("spiffe://cluster.local/ns/pizza/sa/kitchen")
	for _, c := range []struct {
		name   string
		cert   *x509.Certificate
		bearer string
		want   string
		groups []string
		err    error
	}{
		{"CN", &x509.Certificate{Subject: pkix.Name{CommonName: "kitchen", Organization: []string{"pizza", "ops"}}}, "", "kitchen", []string{"pizza", "ops"}, nil},
		{"URI when no CN", &x509.Certificate{URIs: []*url.URL{spiffe}}, "", spiffe.String(), nil, nil},
		{"neither", &x509.Certificate{}, "", "", nil, ErrUnauthenticated},
		{"a token decides", &x509.Certificate{Subject: pkix.Name{CommonName: "kitchen"}}, "tok", "", nil, ErrNotApplicable},
		{"no certificate", nil, "", "", nil, ErrNotApplicable},
	} {
		id, err := Certificates{}.Authenticate(ctx, Credentials{Certificate: c.cert, Bearer: c.bearer})
		if c.err != nil {
			if !errors.Is(err, c.err) {
				t.Errorf("%s: %v, want %v", c.name, err, c.err)
			}
			continue
		}
		if err != nil || id.Principal != c.want || fmt.Sprint(id.Groups) != fmt.Sprint(c.groups) || id.Method != "certificate" {
			t.Errorf("%s: %+v, %v; want %s %v", c.name, id, err, c.want, c.groups)
		}
	}
}
