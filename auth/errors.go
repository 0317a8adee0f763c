package auth

import "errors"

// ErrUnauthenticated is returned, wrapped with the reason, by
// Authenticate when a call presents no credentials or credentials that
// prove no identity (an unknown token, a certificate naming nobody).
var ErrUnauthenticated = errors.New("auth: unauthenticated")

// ErrDenied is returned, as a *DeniedError, by Authorize when no rule of
// the policy grants the permission on the resource.
var ErrDenied = errors.New("auth: permission denied")

// ErrNotApplicable is returned by an Authenticator whose kind of
// credential the call does not carry, or does not recognise it: the next
// authenticator of the chain is asked.
var ErrNotApplicable = errors.New("auth: credential not for this authenticator")

// ErrInvalidFile is returned, wrapped with the file, the place and the
// reason, when a token or policy file does not parse or breaks a rule of
// its format.
var ErrInvalidFile = errors.New("auth: invalid file")

// ErrInvalidJWKS is returned, wrapped with the source and the reason, when
// a JWK set (ferry serve --auth-jwks, --auth-k8s-audience) does not load:
// unreadable, unreachable, not a JWK set, or without a usable key; and
// when the options of a JWT verifier are wrong.
var ErrInvalidJWKS = errors.New("auth: invalid key set")
