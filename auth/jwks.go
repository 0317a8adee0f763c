package auth

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-jose/go-jose/v4"
	"golang.org/x/time/rate"

	"github.com/ferrymq/ferry/internal/clock"
	"github.com/ferrymq/ferry/internal/echo"
)

// KeySet is a parsed JWK set (RFC 7517): the public signing keys JWTs are
// verified with. It is immutable and safe for concurrent use.
type KeySet struct {
	keys []jwk
}

type jwk struct {
	kid, alg string
	key      crypto.PublicKey // *rsa.PublicKey, *ecdsa.PublicKey or ed25519.PublicKey
}

// minRSABits is the smallest RSA key accepted.
const minRSABits = 2048

// ParseJWKS parses a JWK set's JSON. Keys that cannot verify JWTs here
// are skipped (RFC 7517 §5): symmetric ("oct") keys, keys of an unknown
// type, keys whose use is not "sig", private keys (a JWKS is published:
// one holding a private key is a leak), and RSA keys under 2048 bits. A
// set left with no key is refused, with ErrInvalidJWKS.
func ParseJWKS(b []byte) (*KeySet, error) {
	if len(b) > MaxFileBytes {
		return nil, fmt.Errorf("%d bytes, over the limit of %d: %w", len(b), MaxFileBytes, ErrInvalidJWKS)
	}
	var raw struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if err := json.Unmarshal(b, &raw); err != nil {
		return nil, fmt.Errorf("not a JWK set (a JSON object with a \"keys\" array): %w", ErrInvalidJWKS)
	}
	s := &KeySet{}
	for _, r := range raw.Keys {
		var k jose.JSONWebKey
		if err := k.UnmarshalJSON(r); err != nil || !k.Valid() || !k.IsPublic() {
			continue
		}
		if k.Use != "" && k.Use != "sig" {
			continue
		}
		if pk, ok := k.Key.(*rsa.PublicKey); ok && pk.N.BitLen() < minRSABits {
			continue
		}
		s.keys = append(s.keys, jwk{kid: k.KeyID, alg: k.Algorithm, key: k.Key})
	}
	if len(s.keys) == 0 {
		return nil, fmt.Errorf("no usable public signing key among its %d keys (RSA of 2048 bits or more, EC, Ed25519): %w", len(raw.Keys), ErrInvalidJWKS)
	}
	return s, nil
}

// Len is how many keys the set holds.
func (s *KeySet) Len() int { return len(s.keys) }

// fits reports whether key can verify a JWT signed with alg.
func fits(key crypto.PublicKey, alg string) bool {
	switch k := key.(type) {
	case *rsa.PublicKey:
		return strings.HasPrefix(alg, "RS") || strings.HasPrefix(alg, "PS")
	case *ecdsa.PublicKey:
		return alg == "ES256" && k.Curve == elliptic.P256() ||
			alg == "ES384" && k.Curve == elliptic.P384() ||
			alg == "ES512" && k.Curve == elliptic.P521()
	case ed25519.PublicKey:
		return alg == "EdDSA"
	}
	return false
}

// errUnknownKid is find's answer for a key id the set does not hold: the
// set may be refreshed (the issuer rotated its keys) and asked again.
var errUnknownKid = errors.New("unknown key id")

// find is the key to verify a JWT with the header's kid and alg. Without
// a kid, the set's one key for alg (several: refused).
func (s *KeySet) find(kid, alg string) (crypto.PublicKey, error) {
	var match []crypto.PublicKey
	sameKid := false
	for _, k := range s.keys {
		if kid != "" && k.kid != kid {
			continue
		}
		sameKid = true
		if fits(k.key, alg) && (k.alg == "" || k.alg == alg) {
			match = append(match, k.key)
		}
	}
	switch {
	case len(match) == 1 || kid != "" && len(match) > 0:
		return match[0], nil
	case kid == "" && len(match) > 1:
		return nil, fmt.Errorf("the JWT names no key id (kid) and the key set holds %d keys for %s", len(match), echo.Quote(alg))
	case kid != "" && !sameKid:
		return nil, fmt.Errorf("key id %s: %w", echo.Quote(kid), errUnknownKid)
	}
	return nil, fmt.Errorf("no key %sof the key set verifies algorithm %s", kidText(kid), echo.Quote(alg))
}

func kidText(kid string) string {
	if kid == "" {
		return ""
	}
	return "with id " + echo.Quote(kid) + " "
}

// jwksSource is a key set loaded from a file (reloaded when it changes)
// or an https URL (fetched again every refresh, and when a JWT names a
// key id the set lacks, at most once per minRefresh). A load that fails
// keeps the last good set.
type jwksSource struct {
	name, where string // name: the metric label ("jwks", "kubernetes"); where: the file or URL
	url         bool
	client      *http.Client
	bearer      func() (string, error) // nil, or the token a fetch sends (Kubernetes)
	clk         clock.Clock
	refresh     time.Duration // URL: how often it is fetched again
	minRefresh  time.Duration // URL: how soon after a failed fetch; any: between unknown-kid loads
	unknownKid  *rate.Limiter
	report      func(changed bool, name string, err error)

	cur atomic.Pointer[KeySet]

	mu      sync.Mutex // guards the fields below; held through a load
	stamp   stamp      // file
	sum     [sha256.Size]byte
	due     time.Time // URL: when check fetches again
	loadErr error     // the last load's error
}

// newHTTPClient is an https client trusting caFile's CAs (PEM), or the
// system's when caFile is empty.
func newHTTPClient(caFile string) (*http.Client, error) {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("CA file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("CA file %s holds no PEM certificate: %w", caFile, ErrInvalidJWKS)
		}
		tr.TLSClientConfig.RootCAs = pool
	}
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}, nil
}

// open loads the set once: a set that does not load refuses the start.
func (s *jwksSource) open() error {
	s.unknownKid = rate.NewLimiter(rate.Every(s.minRefresh), 1)
	s.mu.Lock()
	defer s.mu.Unlock()
	_, err := s.load(context.Background())
	return err
}

// load reads the set again; whether it changed. Called with mu held.
func (s *jwksSource) load(ctx context.Context) (bool, error) {
	b, st, err := s.read(ctx)
	if s.url {
		s.due = s.clk.Now().Add(s.refresh)
		if err != nil {
			s.due = s.clk.Now().Add(s.minRefresh)
		}
	} else if err == nil || !errors.Is(err, os.ErrNotExist) {
		s.stamp = st // a bad version is retried at its next change
	}
	var ks *KeySet
	if err == nil {
		if ks, err = ParseJWKS(b); err != nil {
			err = fmt.Errorf("%s %s: %w", s.name, s.where, err)
		}
	}
	s.loadErr = err
	if err != nil {
		return false, err
	}
	sum := sha256.Sum256(b)
	if sum == s.sum {
		return false, nil // the same set: the JWTs verified under it stand
	}
	s.sum = sum
	s.cur.Store(ks)
	return true, nil
}

func (s *jwksSource) read(ctx context.Context) ([]byte, stamp, error) {
	if !s.url {
		f, err := os.Open(s.where)
		if err != nil {
			return nil, stamp{}, fmt.Errorf("%s file: %w: %w", s.name, ErrInvalidJWKS, err)
		}
		defer f.Close()
		fi, err := f.Stat()
		if err != nil {
			return nil, stamp{}, fmt.Errorf("%s file: %w: %w", s.name, ErrInvalidJWKS, err)
		}
		b, err := io.ReadAll(io.LimitReader(f, MaxFileBytes+1))
		if err != nil {
			err = fmt.Errorf("%s file: %w: %w", s.name, ErrInvalidJWKS, err)
		}
		return b, stamp{size: fi.Size(), mod: fi.ModTime()}, err
	}
	b, err := s.fetch(ctx, s.where)
	return b, stamp{}, err
}

// fetch GETs url (with the bearer token, if any): its body, at most
// MaxFileBytes+1 bytes.
func (s *jwksSource) fetch(ctx context.Context, url string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, fmt.Errorf("%s: %w: %w", s.name, ErrInvalidJWKS, err)
	}
	req.Header.Set("Accept", "application/json, application/jwk-set+json")
	if s.bearer != nil {
		tok, err := s.bearer()
		if err != nil {
			return nil, fmt.Errorf("%s: %w: %w", s.name, ErrInvalidJWKS, err)
		}
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%s: %w: %w", s.name, ErrInvalidJWKS, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, MaxFileBytes+1))
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w: %w", s.name, url, ErrInvalidJWKS, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s %s answered %s: %w", s.name, url, resp.Status, ErrInvalidJWKS)
	}
	return b, nil
}

// check loads the set again when it is due: a file that changed (size
// or modification time), a URL every refresh (every minRefresh after a
// failed fetch). Whether a new set took, the source's name, and why a
// load failed.
func (s *jwksSource) check() (bool, string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.url {
		if s.clk.Now().Before(s.due) {
			return false, s.name, nil
		}
	} else {
		fi, err := os.Stat(s.where)
		if err == nil && fi.Size() == s.stamp.size && fi.ModTime().Equal(s.stamp.mod) {
			return false, s.name, nil
		}
		if err != nil && s.loadErr != nil {
			return false, s.name, nil // still missing: counted once
		}
	}
	changed, err := s.load(context.Background())
	return changed, s.name, err
}

// key is the key to verify a JWT with kid and alg. A kid the set lacks
// loads the set again first (at most once per minRefresh, whoever asks:
// a flood of made-up kids costs one load per minRefresh); callers that
// find a load under way wait for it.
func (s *jwksSource) key(ctx context.Context, kid, alg string) (crypto.PublicKey, error) {
	k, err := s.cur.Load().find(kid, alg)
	if !errors.Is(err, errUnknownKid) {
		return k, err
	}
	var ks *KeySet
	if s.unknownKid.AllowN(s.clk.Now(), 1) {
		s.mu.Lock()
		changed, lerr := s.load(ctx)
		ks = s.cur.Load()
		s.mu.Unlock()
		s.report(changed, s.name, lerr)
	} else {
		s.mu.Lock() // after a load under way
		ks = s.cur.Load()
		s.mu.Unlock()
	}
	return ks.find(kid, alg)
}
