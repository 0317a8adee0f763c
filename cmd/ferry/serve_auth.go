package main

import (
	"fmt"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/ferrymq/ferry/auth"
	"github.com/ferrymq/ferry/broker"
)

// authFlags are ferry serve's --auth-* flags.
type authFlags struct {
	broker.AuthOptions
	jwt                   auth.JWTOptions
	k8s                   auth.KubernetesOptions
	audiences, algorithms string // comma-separated (a plain string prints and reads back in a config file)
}

func (af *authFlags) add(f *pflag.FlagSet) {
	f.StringVar(&af.TokensFile, "auth-tokens", "", "YAML file of bearer tokens (tokens: [{name: PRINCIPAL, sha256: HEX}]), reloaded on change; needs --auth-policy (docs/security.md)")
	f.StringVar(&af.PolicyFile, "auth-policy", "", "YAML policy (rules: [{principals, groups, permissions, topics, subscriptions}]), reloaded on change: turns authorization on, denying what it does not grant; needs --auth-tokens, --auth-jwks, --auth-k8s-audience or --tls-client-ca")
	f.DurationVar(&af.ReloadInterval, "auth-reload-interval", 5*time.Second, "how often the --auth-* files are checked for changes and reloaded")

	f.StringVar(&af.jwt.JWKS, "auth-jwks", "", "JWTs sent as bearer tokens are identities when signed by a key of this JWK set: a file (reloaded on change) or an https URL (refetched every --auth-jwks-refresh and on an unknown key id); needs --auth-policy")
	f.StringVar(&af.jwt.CAFile, "auth-jwks-ca", "", "CAs (PEM) the --auth-jwks URL's certificate must chain to (default the system's)")
	f.DurationVar(&af.jwt.RefreshInterval, "auth-jwks-refresh", 5*time.Minute, "how often an --auth-jwks URL is fetched again")
	f.StringVar(&af.jwt.Issuer, "auth-jwt-issuer", "", "the iss a JWT must carry (default any)")
	f.StringVar(&af.audiences, "auth-jwt-audience", "", "audiences accepted, comma-separated: a JWT's aud must hold one (default any)")
	f.StringVar(&af.jwt.PrincipalClaim, "auth-jwt-principal-claim", "sub", "the JWT claim naming the principal")
	f.StringVar(&af.jwt.GroupsClaim, "auth-jwt-groups-claim", "groups", "the JWT claim listing the principal's groups")
	f.StringVar(&af.algorithms, "auth-jwt-algorithms", "", "signature algorithms accepted, comma-separated (default RS256,RS384,RS512,PS256,PS384,PS512,ES256,ES384,ES512,EdDSA; never none or HS*)")
	f.DurationVar(&af.jwt.Leeway, "auth-jwt-leeway", 30*time.Second, "clock skew allowed on a JWT's exp, nbf and iat (also for --auth-k8s-audience)")

	f.StringVar(&af.k8s.Audience, "auth-k8s-audience", "", "Kubernetes service-account tokens projected with this audience are identities (system:serviceaccount:NS:NAME), verified against the cluster's service account issuer keys; needs --auth-policy")
	f.StringVar(&af.k8s.APIServer, "auth-k8s-api-server", "", "the API server serving the issuer keys (default in-cluster: https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT)")
	f.StringVar(&af.k8s.CAFile, "auth-k8s-ca", "", "the API server's CAs (default the pod's, /var/run/secrets/kubernetes.io/serviceaccount/ca.crt)")
	f.StringVar(&af.k8s.TokenFile, "auth-k8s-token-file", "", "the token ferry reads the keys with (default the pod's, /var/run/secrets/kubernetes.io/serviceaccount/token)")
	f.StringVar(&af.k8s.Issuer, "auth-k8s-issuer", "", "the service account issuer (default the one the API server announces)")
}

// options are the broker's auth options: nil when no --auth-* file is
// given.
func (af *authFlags) options() (*broker.AuthOptions, error) {
	o := af.AuthOptions
	if af.jwt.JWKS != "" {
		jo := af.jwt
		jo.Audiences, jo.Algorithms = commaList(af.audiences), commaList(af.algorithms)
		o.JWT = &jo
	}
	if af.k8s.Audience != "" {
		ko := af.k8s
		ko.Leeway = af.jwt.Leeway
		o.Kubernetes = &ko
	}
	switch {
	case o.TokensFile == "" && o.PolicyFile == "" && o.JWT == nil && o.Kubernetes == nil:
		return nil, nil
	case o.PolicyFile == "":
		return nil, fmt.Errorf("--auth-tokens, --auth-jwks and --auth-k8s-audience need --auth-policy: authentication without a policy would deny every call")
	}
	return &o, nil
}

// commaList is s's comma-separated items, trimmed; nil for none.
func commaList(s string) []string {
	var out []string
	for _, it := range strings.Split(s, ",") {
		if it = strings.TrimSpace(it); it != "" {
			out = append(out, it)
		}
	}
	return out
}
