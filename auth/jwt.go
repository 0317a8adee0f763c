package auth

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
	lru "github.com/hashicorp/golang-lru/v2"

	"github.com/ferrymq/ferry/internal/clock"
	"github.com/ferrymq/ferry/internal/echo"
)

// JWTOptions make JWTs signed by the keys of a JWK set identities (ferry
// serve --auth-jwks).
type JWTOptions struct {
	// JWKS is where the keys are: a file (reloaded when it changes) or an
	// https:// URL (fetched again every RefreshInterval, and when a JWT
	// names a key id the set lacks). Required.
	JWKS string
	// CAFile holds the CAs (PEM) an https JWKS URL's certificate must
	// chain to. Default the system's.
	CAFile string
	// Issuer, if set, is the iss every JWT must carry; a JWT with another
	// is left to the chain's next authenticator. Default any.
	Issuer string
	// Audiences, if set, are accepted audiences: a JWT's aud must hold
	// one. Default any (a warning is logged: a JWT minted by the same
	// issuer for another service would be accepted).
	Audiences []string
	// PrincipalClaim is the claim naming the principal, a string. Default
	// "sub".
	PrincipalClaim string
	// GroupsClaim is the claim listing the groups, a string or an array
	// of strings; a JWT without it has no groups. Default "groups".
	GroupsClaim string
	// Algorithms are the signature algorithms accepted, among RS256,
	// RS384, RS512, PS256, PS384, PS512, ES256, ES384, ES512 and EdDSA
	// ("none" and the HMAC algorithms never are). Default all of those.
	Algorithms []string
	// Leeway is the clock skew allowed when exp, nbf and iat are checked.
	// Default 30s.
	Leeway time.Duration
	// RefreshInterval is how often a JWKS URL is fetched again. Default
	// 5m.
	RefreshInterval time.Duration
	// MinRefreshInterval bounds the loads a JWT with an unknown key id
	// causes (one per interval), and is how soon a failed fetch is tried
	// again. Default 30s.
	MinRefreshInterval time.Duration
	// HTTPClient fetches a JWKS URL. Default one trusting CAFile, with a
	// 10s timeout.
	HTTPClient *http.Client
}

// asymmetric are the algorithms a JWT may be signed with.
var asymmetric = []string{"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}

// withDefaults is o with its defaults filled in, or the field that is
// wrong.
func (o JWTOptions) withDefaults() (JWTOptions, error) {
	switch {
	case o.JWKS == "":
		return o, errors.New("JWKS (a file or an https URL) is required")
	case strings.Contains(o.JWKS, "://") && !strings.HasPrefix(o.JWKS, "https://"):
		return o, fmt.Errorf("JWKS %s: a URL must be https (keys fetched over plaintext could be swapped)", echo.Quote(o.JWKS))
	case o.Leeway < 0 || o.RefreshInterval < 0 || o.MinRefreshInterval < 0:
		return o, errors.New("the options Leeway, RefreshInterval and MinRefreshInterval may not be negative")
	}
	for _, a := range o.Algorithms {
		if !slices.Contains(asymmetric, a) {
			return o, fmt.Errorf("algorithm %s is not accepted (want some of %s)", echo.Quote(a), strings.Join(asymmetric, ", "))
		}
	}
	if len(o.Algorithms) == 0 {
		o.Algorithms = asymmetric
	}
	if o.PrincipalClaim == "" {
		o.PrincipalClaim = "sub"
	}
	if o.GroupsClaim == "" {
		o.GroupsClaim = "groups"
	}
	if o.Leeway == 0 {
		o.Leeway = 30 * time.Second
	}
	if o.RefreshInterval == 0 {
		o.RefreshInterval = 5 * time.Minute
	}
	if o.MinRefreshInterval == 0 {
		o.MinRefreshInterval = 30 * time.Second
	}
	return o, nil
}

// JWTVerifier authenticates bearer tokens that are JWTs: signed by a key
// of its key set with an accepted algorithm, within their exp, nbf and
// iat (give or take the leeway), from its issuer and for one of its
// audiences when those are set. Build it with Guard's Options (JWT,
// Kubernetes). Safe for concurrent use.
type JWTVerifier struct {
	o      JWTOptions
	method string // Identity.Method: "jwt" or "kubernetes"
	keys   *jwksSource
	parser *jwt.Parser
	// identity turns verified claims into an identity (Kubernetes adds
	// its own checks).
	identity func(jwt.MapClaims) (Identity, error)
	clk      clock.Clock
	// verified remembers the JWTs that verified (by SHA-256), so a client
	// sending the same JWT with each call pays for the signature once.
	verified *lru.Cache[[sha256.Size]byte, verifiedJWT]
}

// verifiedCacheSize bounds the JWTs remembered as verified.
const verifiedCacheSize = 1024

// verifiedJWT is a JWT that verified under keys: it stands while keys is
// the key set in force (a reload of the set makes it verify again) and
// until its exp (plus the leeway). Its nbf and iat, having passed, stay
// passed.
type verifiedJWT struct {
	id   Identity
	keys *KeySet
	exp  time.Time
}

// newJWTVerifier checks o and loads its key set.
func newJWTVerifier(o JWTOptions, name string, clk clock.Clock, report func(bool, string, error)) (*JWTVerifier, error) {
	o, err := o.withDefaults()
	if err != nil {
		return nil, fmt.Errorf("%s: %w: %w", name, err, ErrInvalidJWKS)
	}
	if o.HTTPClient == nil && strings.HasPrefix(o.JWKS, "https://") {
		if o.HTTPClient, err = newHTTPClient(o.CAFile); err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
	}
	v := &JWTVerifier{o: o, method: "jwt", keys: &jwksSource{
		name: name, where: o.JWKS, url: strings.HasPrefix(o.JWKS, "https://"), client: o.HTTPClient,
		clk: clk, refresh: o.RefreshInterval, minRefresh: o.MinRefreshInterval, report: report,
	}}
	opts := []jwt.ParserOption{
		jwt.WithValidMethods(o.Algorithms), jwt.WithLeeway(o.Leeway), jwt.WithTimeFunc(clk.Now),
		jwt.WithExpirationRequired(), jwt.WithIssuedAt(),
	}
	if o.Issuer != "" {
		opts = append(opts, jwt.WithIssuer(o.Issuer))
	}
	v.parser = jwt.NewParser(opts...)
	v.identity = v.claimsIdentity
	v.clk = clk
	if v.verified, err = lru.New[[sha256.Size]byte, verifiedJWT](verifiedCacheSize); err != nil {
		return nil, err
	}
	return v, nil
}

// open loads the key set once: a set that does not load refuses the
// start.
func (v *JWTVerifier) open() error { return v.keys.open() }

// looksLikeJWT: three base64url segments, two dots. Anything else is
// left to the other authenticators.
func looksLikeJWT(s string) bool { return strings.Count(s, ".") == 2 }

// Authenticate is Authenticator's: ErrNotApplicable for a bearer token
// that is not a JWT, or a JWT of another issuer (when Issuer is set).
func (v *JWTVerifier) Authenticate(ctx context.Context, c Credentials) (Identity, error) {
	if !looksLikeJWT(c.Bearer) {
		return Identity{}, ErrNotApplicable
	}
	sum := sha256.Sum256([]byte(c.Bearer))
	if e, ok := v.verified.Get(sum); ok && e.keys == v.keys.cur.Load() && !v.clk.Now().After(e.exp) {
		return e.id, nil
	}
	keys := v.keys.cur.Load() // before the verification: a reload meanwhile is not remembered
	id, exp, err := v.verify(ctx, c.Bearer)
	if err == nil {
		v.verified.Add(sum, verifiedJWT{id: id, keys: keys, exp: exp.Add(v.o.Leeway)})
	}
	return id, err
}

// verify checks a JWT and returns the identity it proves and its exp.
func (v *JWTVerifier) verify(ctx context.Context, bearer string) (Identity, time.Time, error) {
	id, claims, err := v.verifyClaims(ctx, bearer)
	if err != nil {
		return Identity{}, time.Time{}, err
	}
	exp, err := claims.GetExpirationTime()
	if err != nil || exp == nil {
		return Identity{}, time.Time{}, fmt.Errorf("the JWT lacks a required claim (exp): %w", ErrUnauthenticated)
	}
	return id, exp.Time, nil
}

func (v *JWTVerifier) verifyClaims(ctx context.Context, bearer string) (Identity, jwt.MapClaims, error) {
	peek := jwt.MapClaims{}
	tok, _, err := jwt.NewParser().ParseUnverified(bearer, peek)
	if err != nil {
		return Identity{}, nil, fmt.Errorf("the bearer token is not a well-formed JWT: %w", ErrUnauthenticated)
	}
	if iss, _ := peek["iss"].(string); v.o.Issuer != "" && iss != v.o.Issuer {
		return Identity{}, nil, fmt.Errorf("the JWT's issuer %s is not %s: %w", echo.Quote(iss), echo.Quote(v.o.Issuer), ErrNotApplicable)
	}
	alg, _ := tok.Header["alg"].(string)
	if !slices.Contains(v.o.Algorithms, alg) {
		return Identity{}, nil, fmt.Errorf("the JWT's algorithm %s is not accepted (%s): %w", echo.Quote(alg), strings.Join(v.o.Algorithms, ", "), ErrUnauthenticated)
	}
	claims := jwt.MapClaims{}
	_, err = v.parser.ParseWithClaims(bearer, claims, func(t *jwt.Token) (any, error) {
		kid, ok := t.Header["kid"].(string)
		if _, present := t.Header["kid"]; present && !ok {
			return nil, &keyError{errors.New("its kid is not a string")}
		}
		k, err := v.keys.key(ctx, kid, alg)
		if err != nil {
			return nil, &keyError{err}
		}
		return k, nil
	})
	if err != nil {
		return Identity{}, nil, fmt.Errorf("%s: %w", v.refusal(err), ErrUnauthenticated)
	}
	if err := v.checkAudience(claims); err != nil {
		return Identity{}, nil, err
	}
	id, err := v.identity(claims)
	return id, claims, err
}

// keyError carries the key set's answer through the JWT library.
type keyError struct{ err error }

func (e *keyError) Error() string { return e.err.Error() }

// refusal says why a JWT did not verify, in words of its own: the
// library's messages may repeat what the token holds.
func (v *JWTVerifier) refusal(err error) string {
	var ke *keyError
	switch {
	case errors.As(err, &ke):
		return "the JWT's key: " + ke.Error()
	case errors.Is(err, jwt.ErrTokenMalformed):
		return "the bearer token is not a well-formed JWT"
	case errors.Is(err, jwt.ErrTokenExpired):
		return fmt.Sprintf("the JWT has expired (exp, %v leeway)", v.o.Leeway)
	case errors.Is(err, jwt.ErrTokenNotValidYet):
		return fmt.Sprintf("the JWT is not valid yet (nbf, %v leeway)", v.o.Leeway)
	case errors.Is(err, jwt.ErrTokenUsedBeforeIssued):
		return fmt.Sprintf("the JWT is issued in the future (iat, %v leeway)", v.o.Leeway)
	case errors.Is(err, jwt.ErrTokenInvalidIssuer):
		return "the JWT's issuer is not " + echo.Quote(v.o.Issuer)
	case errors.Is(err, jwt.ErrTokenRequiredClaimMissing):
		return "the JWT lacks a required claim (exp; iss when an issuer is set)"
	case errors.Is(err, jwt.ErrTokenSignatureInvalid):
		return "the JWT's signature does not verify"
	case errors.Is(err, jwt.ErrTokenInvalidClaims):
		return "the JWT's claims are not valid (exp, nbf and iat must be numbers)"
	}
	return "the JWT does not verify"
}

// checkAudience wants one of the accepted audiences in aud.
func (v *JWTVerifier) checkAudience(claims jwt.MapClaims) error {
	if len(v.o.Audiences) == 0 {
		return nil
	}
	aud, err := claims.GetAudience()
	if err != nil {
		return fmt.Errorf("the JWT's aud is not a string or an array of strings: %w", ErrUnauthenticated)
	}
	for _, a := range aud {
		if slices.Contains(v.o.Audiences, a) {
			return nil
		}
	}
	return fmt.Errorf("the JWT is not for this broker: its aud does not hold %s: %w", echo.Quote(strings.Join(v.o.Audiences, " or ")), ErrUnauthenticated)
}

// claimsIdentity is the principal of PrincipalClaim and the groups of
// GroupsClaim (groups that are not usable names are left out).
func (v *JWTVerifier) claimsIdentity(claims jwt.MapClaims) (Identity, error) {
	p, _ := claims[v.o.PrincipalClaim].(string)
	if checkName("principal", p) != nil {
		return Identity{}, fmt.Errorf("the JWT's %s claim is not a usable principal (1 to %d bytes of printable UTF-8): %w", echo.Quote(v.o.PrincipalClaim), maxNameBytes, ErrUnauthenticated)
	}
	id := Identity{Principal: p, Method: v.method}
	var gs []any
	switch g := claims[v.o.GroupsClaim].(type) {
	case string:
		gs = []any{g}
	case []any:
		gs = g
	}
	for _, g := range gs {
		if s, ok := g.(string); ok && checkName("group", s) == nil {
			id.Groups = append(id.Groups, s)
		}
	}
	return id, nil
}
