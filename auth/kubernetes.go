package auth

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/ferrymq/ferry/internal/clock"
	"github.com/ferrymq/ferry/internal/echo"
)

// saPrefix starts the sub of a service-account token.
const saPrefix = "system:serviceaccount:"

// serviceAccountDir is where a pod finds its token and the cluster's CA
// (the in-cluster configuration); tests point it elsewhere.
var serviceAccountDir = "/var/run/secrets/kubernetes.io/serviceaccount/"

// KubernetesOptions make Kubernetes projected service-account tokens
// identities (ferry serve --auth-k8s-audience): tokens the kubelet mints
// for a pod with ferry's audience, verified against the cluster's service
// account issuer keys, which the API server serves at /openid/v1/jwks.
// The principal is the token's sub, system:serviceaccount:NS:NAME; the
// groups are system:serviceaccounts and system:serviceaccounts:NS, as
// Kubernetes gives them.
type KubernetesOptions struct {
	// Audience is the audience ferry's tokens are minted for (the pod's
	// projected volume's audience). Required.
	Audience string
	// APIServer is the API server's URL. Default
	// https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT.
	APIServer string
	// CAFile holds the CAs (PEM) of the API server's certificate. Default
	// the pod's, /var/run/secrets/kubernetes.io/serviceaccount/ca.crt.
	CAFile string
	// TokenFile is the token sent to the API server to read its keys
	// (read again at each fetch: the kubelet rotates it). Default the
	// pod's, /var/run/secrets/kubernetes.io/serviceaccount/token.
	TokenFile string
	// Issuer is the service account issuer tokens must carry as iss.
	// Default the one the API server announces at
	// /.well-known/openid-configuration.
	Issuer string
	// JWKS, if set, is where the keys are instead (a file or an https
	// URL; then APIServer is not asked for them). Default
	// APIServer/openid/v1/jwks.
	JWKS string
	// Leeway, RefreshInterval and MinRefreshInterval are JWTOptions'.
	Leeway, RefreshInterval, MinRefreshInterval time.Duration
}

// inCluster is o with the in-cluster defaults of what it leaves empty:
// the API server, its CA and the pod's token.
func (o KubernetesOptions) inCluster() (KubernetesOptions, error) {
	if o.Audience == "" {
		return o, errors.New("an Audience is required")
	}
	if o.APIServer == "" && (o.JWKS == "" || o.Issuer == "") {
		host, port := os.Getenv("KUBERNETES_SERVICE_HOST"), os.Getenv("KUBERNETES_SERVICE_PORT")
		if host == "" || port == "" {
			return o, errors.New("not in a Kubernetes pod (KUBERNETES_SERVICE_HOST and _PORT unset): give the API server")
		}
		o.APIServer = "https://" + net.JoinHostPort(host, port)
	}
	if o.CAFile == "" {
		o.CAFile = serviceAccountDir + "ca.crt"
	}
	if o.TokenFile == "" {
		o.TokenFile = serviceAccountDir + "token"
	}
	return o, nil
}

// jwtOptions turns o, with its defaults resolved (inCluster), into the
// JWTOptions of its verifier, discovering the issuer from the API server
// when it is not given.
func (o KubernetesOptions) jwtOptions(clk clock.Clock) (JWTOptions, error) {
	jo := JWTOptions{
		JWKS: o.JWKS, Issuer: o.Issuer, Audiences: []string{o.Audience}, PrincipalClaim: "sub",
		Leeway: o.Leeway, RefreshInterval: o.RefreshInterval, MinRefreshInterval: o.MinRefreshInterval,
	}
	if jo.JWKS == "" {
		jo.JWKS = strings.TrimSuffix(o.APIServer, "/") + "/openid/v1/jwks"
	}
	if strings.HasPrefix(jo.JWKS, "https://") || jo.Issuer == "" {
		var err error
		if jo.HTTPClient, err = newHTTPClient(o.CAFile); err != nil {
			return jo, err
		}
	}
	if jo.Issuer == "" {
		iss, err := discoverIssuer(jo, o, clk)
		if err != nil {
			return jo, err
		}
		jo.Issuer = iss
	}
	return jo, nil
}

// discoverIssuer reads the issuer the API server announces.
func discoverIssuer(jo JWTOptions, o KubernetesOptions, clk clock.Clock) (string, error) {
	src := &jwksSource{name: "kubernetes", client: jo.HTTPClient, bearer: tokenReader(o.TokenFile), clk: clk}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	b, err := src.fetch(ctx, strings.TrimSuffix(o.APIServer, "/")+"/.well-known/openid-configuration")
	if err != nil {
		return "", fmt.Errorf("discovering the service account issuer: %w", err)
	}
	var doc struct {
		Issuer string `json:"issuer"`
	}
	if err := json.Unmarshal(b, &doc); err != nil || doc.Issuer == "" {
		return "", fmt.Errorf("the API server's /.well-known/openid-configuration names no issuer: %w", ErrInvalidJWKS)
	}
	return doc.Issuer, nil
}

// tokenReader reads the pod's token at each call: the kubelet rotates it.
func tokenReader(path string) func() (string, error) {
	return func() (string, error) {
		b, err := os.ReadFile(path)
		if err != nil {
			return "", fmt.Errorf("the service account token: %w", err)
		}
		return strings.TrimSpace(string(b)), nil
	}
}

// newKubernetesVerifier is the JWT verifier of service-account tokens.
// The key set is read with the pod's token (o.TokenFile or its default):
// with o unresolved, a pod's default token path was lost and every fetch
// failed ("open : no such file"), which only a real pod showed.
func newKubernetesVerifier(o KubernetesOptions, clk clock.Clock, report func(bool, string, error)) (*JWTVerifier, error) {
	o, err := o.inCluster()
	if err != nil {
		return nil, fmt.Errorf("kubernetes: %w", err)
	}
	jo, err := o.jwtOptions(clk)
	if err != nil {
		return nil, fmt.Errorf("kubernetes: %w", err)
	}
	v, err := newJWTVerifier(jo, "kubernetes", clk, report)
	if err != nil {
		return nil, err
	}
	v.method = "kubernetes"
	if strings.HasPrefix(jo.JWKS, "https://") && o.JWKS == "" {
		v.keys.bearer = tokenReader(o.TokenFile)
	}
	v.identity = serviceAccountIdentity
	return v, nil
}

// serviceAccountIdentity is the identity of a service-account token: sub
// must be system:serviceaccount:NS:NAME.
func serviceAccountIdentity(claims jwt.MapClaims) (Identity, error) {
	sub, _ := claims["sub"].(string)
	ns, name, ok := strings.Cut(strings.TrimPrefix(sub, saPrefix), ":")
	if !strings.HasPrefix(sub, saPrefix) || !ok || ns == "" || name == "" || strings.Contains(name, ":") || checkName("principal", sub) != nil {
		return Identity{}, fmt.Errorf("the token's sub %s is not system:serviceaccount:NAMESPACE:NAME: %w", echo.Quote(sub), ErrUnauthenticated)
	}
	return Identity{Principal: sub, Groups: []string{"system:serviceaccounts", "system:serviceaccounts:" + ns}, Method: "kubernetes"}, nil
}
