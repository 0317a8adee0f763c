// Package auth decides who a caller is and what it may do (docs/security.md).
//
// Authentication turns what a call presents (Credentials: a bearer token,
// a verified client certificate) into an Identity: a principal name and
// its groups. Each kind of credential has an Authenticator; a Chain asks
// them in order, and the first that recognises the credential decides.
// Tokens are static: a YAML file of principals and the SHA-256 hashes of
// their tokens (TokenSet). JWTs are verified against a JWK set from a
// file or an https URL (JWTVerifier, JWTOptions; keys parsed by go-jose,
// tokens by golang-jwt); Kubernetes service-account tokens are JWTs
// verified against the cluster's service account issuer keys, which the
// API server serves (KubernetesOptions).
//
// Authorization is a Policy: YAML rules granting permissions (publish,
// subscribe, read, admin, cluster) to principals or groups, on topics and
// subscriptions named by patterns. Whatever no rule grants is denied.
//
// A Guard holds the current token set, key sets and policy, reloads them
// when they change (a JWKS URL: periodically and on an unknown key id) (on the injected clock), keeps the previous ones when a
// changed file does not load, and answers Authenticate and Authorize. It
// knows nothing of gRPC: the broker's interceptors read the credentials
// from a call, name the permission and resource the call needs, and turn
// the errors here into statuses.
package auth
