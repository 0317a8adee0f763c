package broker

import (
	"net"
	"net/http"

	"google.golang.org/grpc/peer"

	"github.com/ferrymq/ferry/auth"
	"github.com/ferrymq/ferry/internal/echo"
)

// The HTTP port's guarded paths (docs/security.md): with auth on, Go's
// profiles (--pprof) need the admin permission on every topic, as
// ListClients does — they show every goroutine's stack and the command
// line — and /metrics, with --metrics-auth, the cluster permission, as
// GetClusterStatus does. The caller proves its identity with an
// "Authorization: Bearer <token>" header (a token of the token file, a
// JWT, a service-account token); the HTTP port asks for no client
// certificate. A refusal is counted and audited as a call's is. Health
// (/healthz, /readyz) stays open.

// httpGuarded returns h behind perm on res, or h itself with auth off.
func (gd *guard) httpGuarded(path string, perm auth.Permission, res auth.Resource, h http.Handler) http.Handler {
	if gd == nil {
		return h
	}
	method := "HTTP " + path
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx := r.Context()
		if a, err := net.ResolveTCPAddr("tcp", r.RemoteAddr); err == nil {
			ctx = peer.NewContext(ctx, &peer.Peer{Addr: a}) // for the audit line
		}
		var c auth.Credentials
		var err error
		if v := r.Header.Get("Authorization"); v != "" {
			c.Bearer, err = bearerOf(v)
		}
		var id auth.Identity
		if err == nil {
			id, err = gd.g.Authenticate(ctx, c)
		}
		if err != nil {
			_ = gd.refuse(ctx, reasonUnauthenticated, method, id, err)
			w.Header().Set("WWW-Authenticate", `Bearer realm="ferry"`)
			http.Error(w, "unauthenticated: send \"Authorization: Bearer <token>\"", http.StatusUnauthorized)
			return
		}
		if err := gd.g.Policy().Authorize(id, perm, res); err != nil {
			_ = gd.refuse(ctx, reasonDenied, method, id, err)
			http.Error(w, echo.Cut(err.Error(), 300), http.StatusForbidden)
			return
		}
		h.ServeHTTP(w, r)
	})
}
