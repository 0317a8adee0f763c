package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/ferrymq/ferry/auth"
)

// identityDir is where, in the data directory, the supervisor writes the
// demo's identities at each start (README.md):
//
//	ca.crt                  the CA the broker's certificate chains to (its key is never written)
//	broker.crt, broker.key  the broker's TLS certificate and key
//	tokens.yaml             each principal's token, as its SHA-256 (--auth-tokens)
//	policy.yaml             what each principal may do (--auth-policy)
//	<principal>.token       each principal's token, mode 0600, read by that process only
const identityDir = "identity"

// supervisorPrincipal is the supervisor's own identity: it creates the
// topics and subscriptions and reads the evidence back, nothing more.
const supervisorPrincipal = "supervisor"

// identities are the files makeIdentities wrote.
type identities struct {
	dir string
}

func (id identities) caFile() string     { return filepath.Join(id.dir, "ca.crt") }
func (id identities) certFile() string   { return filepath.Join(id.dir, "broker.crt") }
func (id identities) keyFile() string    { return filepath.Join(id.dir, "broker.key") }
func (id identities) tokensFile() string { return filepath.Join(id.dir, "tokens.yaml") }
func (id identities) policyFile() string { return filepath.Join(id.dir, "policy.yaml") }

// tokenFile is the file holding principal's token.
func (id identities) tokenFile(principal string) string {
	return filepath.Join(id.dir, principal+".token")
}

// brokerArgs are the broker's flags that turn TLS and auth on with these
// identities.
func (id identities) brokerArgs() []string {
	return []string{"--tls-cert", id.certFile(), "--tls-key", id.keyFile(),
		"--auth-tokens", id.tokensFile(), "--auth-policy", id.policyFile()}
}

// serviceArgs are a service's flags: the CA to trust and the file of its
// own token (a path on the command line, never the token: ps shows it).
func (id identities) serviceArgs(principal string) []string {
	return []string{"--tls-ca", id.caFile(), "--token-file", id.tokenFile(principal)}
}

// principals are the demo's principals: the supervisor and one per
// service process, each kitchen its own.
func principals(kitchens int) []string {
	ps := []string{supervisorPrincipal, "storefront"}
	for i := 1; i <= kitchens; i++ {
		ps = append(ps, kitchenName(i))
	}
	return append(ps, "billing", "courier", "notifier")
}

// makeIdentities writes fresh identities into dir: a CA, a certificate for
// the broker at brokerHost (and localhost, 127.0.0.1), a random token per
// principal, the token file and the policy. The CA's key stays in memory
// and is dropped: nobody can issue another certificate it signs.
func makeIdentities(dir, brokerHost string, kitchens int) (identities, error) {
	id := identities{dir: dir}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return id, err
	}
	if err := writeCerts(id, brokerHost); err != nil {
		return id, fmt.Errorf("certificates: %w", err)
	}
	var tf struct {
		Tokens []tokenEntry `yaml:"tokens"`
	}
	for _, p := range principals(kitchens) {
		b := make([]byte, 32)
		if _, err := rand.Read(b); err != nil {
			return id, err
		}
		tok := base64.RawURLEncoding.EncodeToString(b)
		if err := writeFile(id.tokenFile(p), []byte(tok+"\n")); err != nil {
			return id, err
		}
		tf.Tokens = append(tf.Tokens, tokenEntry{Name: p, SHA256: auth.HashToken(tok)})
	}
	if err := writeYAML(id.tokensFile(), tf, func(b []byte) error { _, err := auth.ParseTokens(b); return err }); err != nil {
		return id, err
	}
	pf := struct {
		Rules []policyRule `yaml:"rules"`
	}{policyRules(kitchens)}
	return id, writeYAML(id.policyFile(), pf, func(b []byte) error { _, err := auth.ParsePolicy(b); return err })
}

type tokenEntry struct {
	Name   string `yaml:"name"`
	SHA256 string `yaml:"sha256"`
}

// policyRule is one rule of the policy file (docs/security.md).
type policyRule struct {
	Principals    []string `yaml:"principals,flow"`
	Permissions   []string `yaml:"permissions,flow"`
	Topics        []string `yaml:"topics,flow"`
	Subscriptions []string `yaml:"subscriptions,flow,omitempty"`
}

// policyRules is least privilege, derived from the topology: each service
// publishes only to the topics it owns (publishes) and subscribes to, and
// reads, only the subscriptions named after it (subscriptions; the
// storefront's board its NONE "board" subscriptions). The supervisor
// creates the topics and subscriptions (admin) and reads the evidence back
// (read); it neither publishes nor consumes.
func policyRules(kitchens int) []policyRule {
	all := make([]string, len(topics))
	for i, t := range topics {
		all[i] = t.name
	}
	rules := []policyRule{{Principals: []string{supervisorPrincipal}, Permissions: []string{"admin", "read"}, Topics: all}}
	for _, role := range []string{"storefront", "kitchen", "billing", "courier", "notifier"} {
		who := []string{role}
		if role == "kitchen" {
			who = who[:0]
			for i := 1; i <= kitchens; i++ {
				who = append(who, kitchenName(i))
			}
		}
		if ts := publishes[role]; len(ts) > 0 {
			rules = append(rules, policyRule{Principals: who, Permissions: []string{"publish"}, Topics: ts})
		}
		for sub, ts := range consumes(role) {
			rules = append(rules, policyRule{Principals: who, Permissions: []string{"subscribe", "read"},
				Topics: ts, Subscriptions: []string{sub}})
		}
	}
	return rules
}

// consumes maps the subscriptions role reads through to their topics.
func consumes(role string) map[string][]string {
	if role == "storefront" {
		return map[string][]string{boardSubscription: {topicOrders, topicReady, topicDelivered}}
	}
	out := map[string][]string{}
	for _, s := range subscriptions {
		if s.name == role {
			out[role] = append(out[role], s.topic)
		}
	}
	return out
}

// writeYAML writes v as YAML to path, once check accepts it.
func writeYAML(path string, v any, check func([]byte) error) error {
	b, err := yaml.Marshal(v)
	if err != nil {
		return err
	}
	if err := check(b); err != nil {
		return fmt.Errorf("%s: %w", filepath.Base(path), err)
	}
	return writeFile(path, b)
}

// writeCerts makes the CA and the broker's certificate.
func writeCerts(id identities, brokerHost string) error {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	ca := certTemplate("pizza demo CA")
	ca.IsCA, ca.BasicConstraintsValid = true, true
	ca.KeyUsage = x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	if err != nil {
		return err
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		return err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	leaf := certTemplate("pizza broker")
	leaf.KeyUsage = x509.KeyUsageDigitalSignature
	leaf.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	leaf.DNSNames = []string{"localhost"}
	leaf.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}
	if ip := net.ParseIP(brokerHost); ip != nil && !ip.IsUnspecified() && !slices.ContainsFunc(leaf.IPAddresses, ip.Equal) {
		leaf.IPAddresses = append(leaf.IPAddresses, ip)
	} else if ip == nil && brokerHost != "" && brokerHost != "localhost" {
		leaf.DNSNames = append(leaf.DNSNames, brokerHost)
	}
	der, err := x509.CreateCertificate(rand.Reader, leaf, caCert, &key.PublicKey, caKey)
	if err != nil {
		return err
	}
	kb, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	if err := writeFile(id.keyFile(), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kb})); err != nil {
		return err
	}
	if err := writeFile(id.certFile(), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})); err != nil {
		return err
	}
	return writeFile(id.caFile(), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}))
}

// certTemplate is a certificate named name, valid from an hour ago for 30
// days: the identities are made again at each start.
func certTemplate(name string) *x509.Certificate {
	serial, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	return &x509.Certificate{SerialNumber: serial, Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(30 * 24 * time.Hour)}
}

// writeFile writes data to path with mode 0600 through a rename, so a
// reader never sees it half-written.
func writeFile(path string, data []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
