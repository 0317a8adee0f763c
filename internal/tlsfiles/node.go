package tlsfiles

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"strconv"
)

// ErrNotNode is returned, wrapped, when a certificate names no node, or not
// the node expected.
var ErrNotNode = errors.New("tls: not a ferry node certificate")

// NodeURI is the URI subject alternative name that names node id:
// ferry://node/<id>.
func NodeURI(id uint64) *url.URL {
	return &url.URL{Scheme: "ferry", Host: "node", Path: "/" + strconv.FormatUint(id, 10)}
}

// NodeID is the node a certificate names: its one ferry://node/<id> URI.
func NodeID(c *x509.Certificate) (uint64, error) {
	var id uint64
	for _, u := range c.URIs {
		if u.Scheme != "ferry" || u.Host != "node" {
			continue
		}
		if id != 0 {
			return 0, fmt.Errorf("certificate %q names more than one node: %w", c.Subject.CommonName, ErrNotNode)
		}
		n, err := strconv.ParseUint(u.Path[min(1, len(u.Path)):], 10, 64)
		if err != nil || n == 0 || u.Path != "/"+strconv.FormatUint(n, 10) {
			return 0, fmt.Errorf("certificate %q: node URI is not ferry://node/<id>: %w", c.Subject.CommonName, ErrNotNode)
		}
		id = n
	}
	if id == 0 {
		return 0, fmt.Errorf("certificate %q carries no ferry://node/<id> URI: %w", c.Subject.CommonName, ErrNotNode)
	}
	return id, nil
}

// PeerNode is the node a verified TLS connection's client certificate
// names.
func PeerNode(cs tls.ConnectionState) (uint64, error) {
	if len(cs.VerifiedChains) == 0 || len(cs.VerifiedChains[0]) == 0 {
		return 0, fmt.Errorf("no verified client certificate: %w", ErrNotNode)
	}
	return NodeID(cs.VerifiedChains[0][0])
}

// PeerServerConfig is the node-to-node port's: the current certificate,
// and a client certificate required and verified against the current peer
// CAs. Which node it names is for the server to check (PeerNode), against
// its membership.
func (f *Files) PeerServerConfig() (*tls.Config, error) {
	if f.cur.Load().peerCAs == nil {
		return nil, fmt.Errorf("no peer CA file: the node-to-node port needs one: %w", ErrInvalid)
	}
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			m := f.cur.Load()
			return &tls.Config{
				MinVersion:   tls.VersionTLS12,
				Certificates: []tls.Certificate{*m.cert},
				ClientAuth:   tls.RequireAndVerifyClientCert,
				ClientCAs:    m.peerCAs,
				NextProtos:   []string{"h2"},
			}, nil
		},
	}, nil
}

// PeerClientConfig is for dialing node id's node-to-node port: it presents
// the current certificate, and accepts only a server certificate that
// chains to the current peer CAs and names node id. Host names are not
// checked: the node URI is the identity.
func (f *Files) PeerClientConfig(id uint64) (*tls.Config, error) {
	if f.cur.Load().peerCAs == nil {
		return nil, fmt.Errorf("no peer CA file: the node-to-node port needs one: %w", ErrInvalid)
	}
	return &tls.Config{
		MinVersion:           tls.VersionTLS12,
		GetClientCertificate: f.getClientCertificate,
		// The chain and the identity are checked below, by node id
		// instead of host name.
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return fmt.Errorf("node %d presented no certificate: %w", id, ErrNotNode)
			}
			inter := x509.NewCertPool()
			for _, c := range cs.PeerCertificates[1:] {
				inter.AddCert(c)
			}
			leaf := cs.PeerCertificates[0]
			if _, err := leaf.Verify(x509.VerifyOptions{
				Roots:         f.cur.Load().peerCAs,
				Intermediates: inter,
				KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
			}); err != nil {
				return fmt.Errorf("node %d's certificate: %w", id, err)
			}
			got, err := NodeID(leaf)
			if err != nil {
				return err
			}
			if got != id {
				return fmt.Errorf("dialed node %d, reached a certificate for node %d: %w", id, got, ErrNotNode)
			}
			return nil
		},
	}, nil
}
