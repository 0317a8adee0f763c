// Package tlsfiles serves TLS from certificate files that are reloaded when
// they change (docs/security.md): the configurations of a broker's public
// port, its HTTP port and its node-to-node port, and the node identities
// (ferry://node/<id> URIs) of the node-to-node port.
package tlsfiles

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ferrymq/ferry/internal/clock"
)

// ErrInvalid is returned, wrapped with the file and the reason, when the
// files do not make a usable TLS configuration.
var ErrInvalid = errors.New("tls: invalid certificate files")

// Options are the files and how they are watched.
type Options struct {
	// CertFile and KeyFile are the PEM certificate (chain) and private key
	// served on every port, and presented to peers. Required.
	CertFile, KeyFile string
	// ClientCAFile, if set, holds the PEM CAs that client certificates on
	// the public port must chain to; clients must then present one.
	ClientCAFile string
	// PeerCAFile, if set, holds the PEM CAs that node certificates must
	// chain to on the node-to-node port (both ways). Required for
	// PeerServerConfig and PeerClientConfig.
	PeerCAFile string
	// Interval is how often the files are checked for changes (size and
	// modification time). Default 5s.
	Interval time.Duration
	// Clock drives the checks. Default the wall clock.
	Clock clock.Clock
	// Logger receives the reloads and failed reloads. Default slog.Default().
	Logger *slog.Logger
	// Registerer, if set, gets ferry_tls_reloads_total,
	// ferry_tls_reload_failures_total and
	// ferry_tls_certificate_expiry_timestamp_seconds.
	Registerer prometheus.Registerer
}

// material is one loaded set of files.
type material struct {
	cert      *tls.Certificate
	leaf      *x509.Certificate
	clientCAs *x509.CertPool // nil: no client certificates asked
	peerCAs   *x509.CertPool
}

// stamp tells whether a file changed.
type stamp struct {
	size int64
	mod  time.Time
}

// Files is a loaded, watched set of certificate files. Its methods are safe
// for concurrent use.
type Files struct {
	opts Options
	cur  atomic.Pointer[material]

	mu     sync.Mutex // guards stamps
	stamps map[string]stamp
	poll   *clock.Poll // Check every Interval, from Start

	reloads, failures prometheus.Counter
}

// Load reads the files once; Start watches them.
func Load(o Options) (*Files, error) {
	if o.CertFile == "" || o.KeyFile == "" {
		return nil, fmt.Errorf("both a certificate and a key file are needed: %w", ErrInvalid)
	}
	if o.Interval <= 0 {
		o.Interval = 5 * time.Second
	}
	if o.Clock == nil {
		o.Clock = clock.Real()
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	f := &Files{
		opts:     o,
		reloads:  prometheus.NewCounter(prometheus.CounterOpts{Name: "ferry_tls_reloads_total", Help: "Certificate file sets reloaded after a change."}),
		failures: prometheus.NewCounter(prometheus.CounterOpts{Name: "ferry_tls_reload_failures_total", Help: "Changed certificate file sets that did not load (the previous set is kept)."}),
	}
	f.poll = clock.NewPoll(o.Clock, o.Interval, func() { f.Check() })
	st, err := f.stampAll()
	if err != nil {
		return nil, err
	}
	m, err := load(o)
	if err != nil {
		return nil, err
	}
	f.stamps = st
	f.cur.Store(m)
	if o.Registerer != nil {
		expiry := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "ferry_tls_certificate_expiry_timestamp_seconds",
			Help: "NotAfter of the certificate being served, in Unix seconds.",
		}, func() float64 { return float64(f.cur.Load().leaf.NotAfter.Unix()) })
		for _, c := range []prometheus.Collector{f.reloads, f.failures, expiry} {
			if err := o.Registerer.Register(c); err != nil {
				return nil, fmt.Errorf("tls metrics: %w", err)
			}
		}
	}
	return f, nil
}

// Start checks the files every Interval until Stop.
func (f *Files) Start() { f.poll.Start() }

// Stop ends the checks. Idempotent; nothing on a nil Files.
func (f *Files) Stop() {
	if f == nil {
		return
	}
	f.poll.Stop()
}

// Check loads the files again if one changed since the last load: true if
// a new set took. A set that does not load is not used (the previous one
// stays); it is logged, counted, and tried again at the next change.
func (f *Files) Check() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	st, err := f.stampAll()
	if err == nil && sameStamps(st, f.stamps) {
		return false
	}
	var m *material
	if err == nil {
		m, err = load(f.opts)
	}
	if err != nil {
		if st != nil && !sameStamps(st, f.stamps) {
			f.failures.Inc()
			f.opts.Logger.Warn("tls reload failed; serving the previous certificate", "err", err)
		}
		f.stamps = st // retried at the next change
		return false
	}
	f.stamps = st
	f.cur.Store(m)
	f.reloads.Inc()
	f.opts.Logger.Info("tls certificates reloaded", "subject", m.leaf.Subject.String(), "not_after", m.leaf.NotAfter)
	return true
}

func (f *Files) stampAll() (map[string]stamp, error) {
	st := map[string]stamp{}
	for _, name := range []string{f.opts.CertFile, f.opts.KeyFile, f.opts.ClientCAFile, f.opts.PeerCAFile} {
		if name == "" {
			continue
		}
		fi, err := os.Stat(name)
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
		}
		st[name] = stamp{size: fi.Size(), mod: fi.ModTime()}
	}
	return st, nil
}

func sameStamps(a, b map[string]stamp) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || !w.mod.Equal(v.mod) || w.size != v.size {
			return false
		}
	}
	return true
}

func load(o Options) (*material, error) {
	cert, err := tls.LoadX509KeyPair(o.CertFile, o.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("%s and %s: %w: %w", o.CertFile, o.KeyFile, ErrInvalid, err)
	}
	m := &material{cert: &cert, leaf: cert.Leaf}
	if m.clientCAs, err = loadPool(o.ClientCAFile); err != nil {
		return nil, err
	}
	if m.peerCAs, err = loadPool(o.PeerCAFile); err != nil {
		return nil, err
	}
	return m, nil
}

// loadPool reads a PEM CA file; nil for no file.
func loadPool(name string) (*x509.CertPool, error) {
	if name == "" {
		return nil, nil
	}
	b, err := os.ReadFile(name)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	p := x509.NewCertPool()
	if !p.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("%s holds no PEM certificate: %w", name, ErrInvalid)
	}
	return p, nil
}

// Certificate is the certificate being served.
func (f *Files) Certificate() *x509.Certificate { return f.cur.Load().leaf }

func (f *Files) getCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return f.cur.Load().cert, nil
}

func (f *Files) getClientCertificate(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
	return f.cur.Load().cert, nil
}

// ServerConfig is the public gRPC port's: the current certificate, and,
// with a ClientCAFile, a client certificate required and verified against
// the current client CAs.
func (f *Files) ServerConfig() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			m := f.cur.Load()
			c := &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{*m.cert}, NextProtos: []string{"h2"}}
			if m.clientCAs != nil {
				c.ClientAuth, c.ClientCAs = tls.RequireAndVerifyClientCert, m.clientCAs
			}
			return c, nil
		},
	}
}

// HTTPConfig is the HTTP port's: the current certificate, no client
// certificate asked.
func (f *Files) HTTPConfig() *tls.Config {
	return &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: f.getCertificate, NextProtos: []string{"h2", "http/1.1"}}
}
