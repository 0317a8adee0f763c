package client

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"

	"google.golang.org/grpc/credentials"
)

// TLSFromFiles returns credentials for WithTLS from PEM files
// (docs/security.md): caFile holds the CAs that the broker's certificate
// must chain to ("" for the system's roots); certFile and keyFile, if
// given (both or neither), are the client certificate presented to a
// broker that requires one (ferry serve --tls-client-ca). The certificate
// and key are read again at each new connection, so a client follows the
// rotation of its own files.
func TLSFromFiles(caFile, certFile, keyFile string) (credentials.TransportCredentials, error) {
	if (certFile == "") != (keyFile == "") {
		return nil, errors.New("tls: a client certificate needs both its certificate and its key file")
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if caFile != "" {
		b, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("tls: %w", err)
		}
		cfg.RootCAs = x509.NewCertPool()
		if !cfg.RootCAs.AppendCertsFromPEM(b) {
			return nil, fmt.Errorf("tls: %s holds no PEM certificate", caFile)
		}
	}
	if certFile != "" {
		// Fail now, not at the first handshake, on files that do not load.
		if _, err := tls.LoadX509KeyPair(certFile, keyFile); err != nil {
			return nil, fmt.Errorf("tls: %w", err)
		}
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			c, err := tls.LoadX509KeyPair(certFile, keyFile)
			if err != nil {
				return nil, fmt.Errorf("tls: client certificate: %w", err)
			}
			return &c, nil
		}
	}
	return credentials.NewTLS(cfg), nil
}
