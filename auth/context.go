package auth

import "context"

// identityKey is the context key of a call's Identity.
type identityKey struct{}

// NewContext returns ctx carrying id, the identity of the call ctx belongs
// to.
func NewContext(ctx context.Context, id Identity) context.Context {
	return context.WithValue(ctx, identityKey{}, id)
}

// FromContext is the identity NewContext put in ctx; false when the call
// was not authenticated (auth is off).
func FromContext(ctx context.Context) (Identity, bool) {
	id, ok := ctx.Value(identityKey{}).(Identity)
	return id, ok
}
