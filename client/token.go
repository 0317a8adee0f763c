package client

import (
	"context"
	"errors"

	"google.golang.org/grpc/credentials"
)

// tokenCreds sends a bearer token with every call.
type tokenCreds struct {
	token     func(ctx context.Context) (string, error)
	plaintext bool
}

func (t tokenCreds) GetRequestMetadata(ctx context.Context, _ ...string) (map[string]string, error) {
	tok, err := t.token(ctx)
	if err != nil {
		return nil, err
	}
	if tok == "" {
		return nil, errors.New("client: empty bearer token")
	}
	return map[string]string{"authorization": "Bearer " + tok}, nil
}

// RequireTransportSecurity makes gRPC refuse to send the token over a
// plaintext connection, unless allowed.
func (t tokenCreds) RequireTransportSecurity() bool { return !t.plaintext }

// TokenCredentials are per-RPC credentials that send token(ctx) as a
// bearer token (the "authorization: Bearer <token>" header) with every
// call, for a broker with --auth-tokens (docs/security.md). token is
// called for each call, so it may follow a file that is rotated; it must
// be safe for concurrent use. Unless allowPlaintext, gRPC refuses to send
// them over a connection without TLS: whoever can read the traffic could
// replay the token.
func TokenCredentials(token func(ctx context.Context) (string, error), allowPlaintext bool) credentials.PerRPCCredentials {
	return tokenCreds{token: token, plaintext: allowPlaintext}
}

// WithToken sends tok as a bearer token with every call (ferry serve
// --auth-tokens). Dial fails on a plaintext connection (no WithTLS)
// unless WithTokenOverPlaintext is given too.
func WithToken(tok string) Option {
	return WithTokenFunc(func(context.Context) (string, error) { return tok, nil })
}

// WithTokenFunc is WithToken with the token from f at each call: f may
// read a file that is rotated. f must be safe for concurrent use.
func WithTokenFunc(f func(ctx context.Context) (string, error)) Option {
	return func(o *options) { o.token = f }
}

// WithTokenOverPlaintext lets WithToken send its token over a connection
// without TLS: for tests and loopback only, as anyone who reads the
// traffic can replay the token.
func WithTokenOverPlaintext() Option {
	return func(o *options) { o.tokenOverPlaintext = true }
}
