package auth

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"fmt"
	"strings"

	"github.com/ferrymq/ferry/internal/echo"
)

// TokenSet is a parsed token file: each token's SHA-256 hash and the
// principal (and groups) it proves. The tokens themselves are never
// stored. A TokenSet is immutable and safe for concurrent use.
type TokenSet struct {
	tokens []token
}

type token struct {
	hash [sha256.Size]byte
	id   Identity
}

// tokenFile is the YAML form:
//
//	tokens:
//	  - name: kitchen                 # the principal
//	    sha256: 9f86d0…               # hex SHA-256 of the token
//	    groups: [pizza]               # optional
type tokenFile struct {
	Tokens *[]tokenEntry `yaml:"tokens"`
}

type tokenEntry struct {
	Name   string   `yaml:"name"`
	SHA256 string   `yaml:"sha256"`
	Groups []string `yaml:"groups"`
}

// HashToken is the hex SHA-256 of a token, as a token file lists it
// (printf %s "$TOKEN" | sha256sum).
func HashToken(tok string) string {
	h := sha256.Sum256([]byte(tok))
	return hex.EncodeToString(h[:])
}

// ParseTokens parses a token file's bytes. Any fault (an unknown key, a
// hash that is not 64 hex digits, the same hash twice) refuses the whole
// file, with ErrInvalidFile. A principal may have several tokens: that is
// how a token is rotated.
func ParseTokens(b []byte) (*TokenSet, error) {
	var f tokenFile
	if err := decodeStrict(b, &f); err != nil {
		return nil, err
	}
	if f.Tokens == nil {
		return nil, fmt.Errorf("tokens: no tokens key (a file with no token is \"tokens: []\"): %w", ErrInvalidFile)
	}
	s := &TokenSet{tokens: make([]token, 0, len(*f.Tokens))}
	seen := make(map[[sha256.Size]byte]bool, len(*f.Tokens))
	for i, e := range *f.Tokens {
		if err := checkName("name", e.Name); err != nil {
			return nil, fmt.Errorf("tokens: entry %d: %w: %w", i+1, err, ErrInvalidFile)
		}
		var t token
		raw, err := hex.DecodeString(strings.TrimSpace(e.SHA256))
		if err != nil || len(raw) != sha256.Size {
			return nil, fmt.Errorf("tokens: entry %d (%s): sha256 must be 64 hex digits, the SHA-256 of the token: %w", i+1, echo.Quote(e.Name), ErrInvalidFile)
		}
		copy(t.hash[:], raw)
		if seen[t.hash] {
			return nil, fmt.Errorf("tokens: entry %d (%s): the same token hash is listed twice: %w", i+1, echo.Quote(e.Name), ErrInvalidFile)
		}
		seen[t.hash] = true
		for _, g := range e.Groups {
			if err := checkName("group", g); err != nil {
				return nil, fmt.Errorf("tokens: entry %d: %w: %w", i+1, err, ErrInvalidFile)
			}
		}
		t.id = Identity{Principal: e.Name, Groups: e.Groups, Method: "token"}
		s.tokens = append(s.tokens, t)
	}
	return s, nil
}

// Len is how many tokens the set holds.
func (s *TokenSet) Len() int { return len(s.tokens) }

// Authenticate proves the identity of a bearer token in the set:
// ErrNotApplicable without a bearer token or for one not in the set. The
// token's hash is compared with every listed hash, in constant time and
// without stopping at a match, so the time taken says nothing of which
// entry (if any) matched.
func (s *TokenSet) Authenticate(_ context.Context, c Credentials) (Identity, error) {
	if c.Bearer == "" {
		return Identity{}, ErrNotApplicable
	}
	h := sha256.Sum256([]byte(c.Bearer))
	found := -1
	for i := range s.tokens {
		if subtle.ConstantTimeCompare(h[:], s.tokens[i].hash[:]) == 1 {
			found = i
		}
	}
	if found < 0 {
		return Identity{}, ErrNotApplicable
	}
	return s.tokens[found].id, nil
}
