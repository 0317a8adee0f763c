package auth

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"strings"
)

// Identity is who a call comes from.
type Identity struct {
	// Principal is the caller's name, which policy rules name.
	Principal string
	// Groups are the groups the caller belongs to, which rules may name
	// instead of principals.
	Groups []string
	// Method is how the identity was proven: "token", "certificate", or
	// "forwarded" (by a member node, for a call it forwards).
	Method string
}

// Credentials are what a call presents.
type Credentials struct {
	// Bearer is the token of an "authorization: Bearer <token>" header;
	// empty if none.
	Bearer string
	// Certificate is the client certificate the TLS handshake verified
	// (the leaf of the first verified chain); nil if none.
	Certificate *x509.Certificate
}

// Authenticator proves identities from one kind of credential. Its
// methods are safe for concurrent use.
type Authenticator interface {
	// Authenticate returns the identity c proves. It returns
	// ErrNotApplicable when c does not carry its kind of credential or it
	// does not recognise it (the chain asks the next authenticator), and
	// an error wrapping ErrUnauthenticated when the credential is its kind
	// but invalid (the chain stops: an expired JWT is not tried
	// elsewhere).
	Authenticate(ctx context.Context, c Credentials) (Identity, error)
}

// Chain asks its authenticators in order; the first whose answer is not
// ErrNotApplicable decides.
type Chain []Authenticator

// maxBearerBytes bounds a bearer token: a longer one is refused unread.
const maxBearerBytes = 4096

// Authenticate is the first decisive answer of the chain, or an error
// wrapping ErrUnauthenticated that says what was missing.
func (ch Chain) Authenticate(ctx context.Context, c Credentials) (Identity, error) {
	if len(c.Bearer) > maxBearerBytes {
		return Identity{}, fmt.Errorf("the bearer token is %d bytes, over the limit of %d: %w", len(c.Bearer), maxBearerBytes, ErrUnauthenticated)
	}
	why := "revoked, mistyped, or for another broker"
	for _, a := range ch {
		id, err := a.Authenticate(ctx, c)
		if err == nil || !isNotApplicable(err) {
			return id, err
		}
		if err != ErrNotApplicable { // wrapped with a reason (a JWT of another issuer)
			why = strings.TrimSuffix(err.Error(), ": "+ErrNotApplicable.Error())
		}
	}
	switch {
	case c.Bearer != "":
		return Identity{}, fmt.Errorf("the bearer token is not recognised (%s): %w", why, ErrUnauthenticated)
	case c.Certificate != nil:
		return Identity{}, fmt.Errorf("the client certificate proves no identity here and no bearer token was sent: %w", ErrUnauthenticated)
	}
	return Identity{}, fmt.Errorf("no credentials: send a bearer token (ferry --token, client.WithToken) or a client certificate: %w", ErrUnauthenticated)
}

func isNotApplicable(err error) bool { return errors.Is(err, ErrNotApplicable) }

// Certificates authenticates verified client certificates (ferry serve
// --tls-client-ca). The principal is the certificate's subject common
// name or, when it has none, its first URI subject alternative name (a
// SPIFFE id, say); the groups are its subject organizations (O), as
// Kubernetes reads client certificates. A bearer token, when one is sent,
// decides instead: Certificates then defers, so a token that is not
// recognised is refused even over a valid certificate.
type Certificates struct{}

// Authenticate is Authenticator's.
func (Certificates) Authenticate(_ context.Context, c Credentials) (Identity, error) {
	if c.Certificate == nil || c.Bearer != "" {
		return Identity{}, ErrNotApplicable
	}
	name := c.Certificate.Subject.CommonName
	if name == "" && len(c.Certificate.URIs) > 0 {
		name = c.Certificate.URIs[0].String()
	}
	if err := checkName("principal", name); err != nil {
		return Identity{}, fmt.Errorf("the client certificate names no usable principal (subject CN or URI SAN): %w", ErrUnauthenticated)
	}
	id := Identity{Principal: name, Method: "certificate"}
	for _, o := range c.Certificate.Subject.Organization {
		if checkName("group", o) == nil {
			id.Groups = append(id.Groups, o)
		}
	}
	return id, nil
}
