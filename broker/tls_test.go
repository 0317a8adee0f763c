package broker

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/ferrymq/ferry/client"
	"github.com/ferrymq/ferry/internal/tlsfiles/tlstest"
	ferryv1 "github.com/ferrymq/ferry/proto/ferry/v1"
)

// Test TLS setups put, next to the broker's certificate, ca.crt (the CA
// of every certificate) and client.crt/client.key (a client certificate
// it signed): testClientTLS dials with them.

// tlsDir makes a CA and a client certificate in a fresh directory.
func tlsDir(t testing.TB) (string, *tlstest.CA) {
	dir := t.TempDir()
	ca := tlstest.NewCA(t, dir, "ca")
	ca.Issue(t, dir, "client", 0)
	return dir, ca
}

// testClientTLS are the credentials of a client of a test TLS setup.
func testClientTLS(tb testing.TB, o *TLSOptions) credentials.TransportCredentials {
	tb.Helper()
	dir := filepath.Dir(o.CertFile)
	creds, err := client.TLSFromFiles(filepath.Join(dir, "ca.crt"), filepath.Join(dir, "client.crt"), filepath.Join(dir, "client.key"))
	if err != nil {
		tb.Fatal(err)
	}
	return creds
}

func dialTLS(tb testing.TB, addr string, creds credentials.TransportCredentials) *grpc.ClientConn {
	tb.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = conn.Close() })
	return conn
}

// withTLS serves with the certificate server.crt of dir (naming the
// cluster node, if any), requiring client certificates of ca.crt.
func withTLS(t testing.TB, dir string, ca *tlstest.CA) func(*Options) {
	return func(o *Options) {
		var node uint64
		name := "server"
		if o.Cluster != nil {
			node = o.Cluster.NodeID
			name = fmt.Sprintf("node%d", node)
		}
		cert, key := ca.Issue(t, dir, name, node)
		o.TLS = &TLSOptions{CertFile: cert, KeyFile: key, ClientCAFile: ca.File, ReloadInterval: 20 * time.Millisecond}
	}
}

// TestTLSClients: with TLS and client certificates required, the SDK
// publishes and reads with a certificate of the client CA; a plaintext
// client, a client without a certificate and one with a certificate of
// another CA are refused at the handshake and change nothing; the HTTP
// port serves HTTPS only.
func TestTLSClients(t *testing.T) {
	dir, ca := tlsDir(t)
	ts := startServer(t, withTLS(t, dir, ca))
	ctx := testContext(t)
	addr := ts.srv.GRPCAddr().String()

	creds, err := client.TLSFromFiles(ca.File, filepath.Join(dir, "client.crt"), filepath.Join(dir, "client.key"))
	if err != nil {
		t.Fatal(err)
	}
	c, err := client.Dial(ctx, addr, client.WithTLS(creds))
	if err != nil {
		t.Fatalf("Dial over TLS: %v", err)
	}
	defer c.Close()
	if _, err := c.CreateTopic(ctx, "orders", client.TopicConfig{Partitions: 1}); err != nil {
		t.Fatalf("CreateTopic over mTLS: %v", err)
	}
	if _, err := c.NewProducer("orders", client.ProducerOptions{}).Publish(ctx, &client.Message{Payload: []byte("x")}); err != nil {
		t.Fatalf("Publish over mTLS: %v", err)
	}

	other := tlstest.NewCA(t, t.TempDir(), "other")
	odir := filepath.Dir(other.File)
	ocert, okey := other.Issue(t, odir, "intruder", 0)
	noCert, err := client.TLSFromFiles(ca.File, "", "")
	if err != nil {
		t.Fatal(err)
	}
	otherCert, err := client.TLSFromFiles(ca.File, ocert, okey)
	if err != nil {
		t.Fatal(err)
	}
	for name, creds := range map[string]credentials.TransportCredentials{
		"plaintext":             insecure.NewCredentials(),
		"no client certificate": noCert,
		"another CA's cert":     otherCert,
	} {
		adm := ferryv1.NewAdminServiceClient(dialTLS(t, addr, creds))
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := adm.CreateTopic(cctx, &ferryv1.CreateTopicRequest{Name: "intruded", Config: &ferryv1.TopicConfig{Partitions: 1}})
		cancel()
		if code := status.Code(err); code != codes.Unavailable {
			t.Errorf("%s: CreateTopic = %v, want UNAVAILABLE (handshake refused)", name, err)
		}
	}
	if _, err := c.GetTopic(ctx, "intruded"); status.Code(err) != codes.NotFound {
		t.Errorf("GetTopic(intruded) after refused clients = %v, want NOT_FOUND", err)
	}

	// HTTPS on the HTTP port; plaintext HTTP gets no answer.
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	resp, err := hc.Get("https://" + ts.srv.HTTPAddr().String() + "/healthz")
	if err != nil {
		t.Fatalf("GET https /healthz: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("GET https /healthz = %s", resp.Status)
	}
	if resp, err := (&http.Client{Timeout: 5 * time.Second}).Get("http://" + ts.srv.HTTPAddr().String() + "/healthz"); err == nil {
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			t.Errorf("plaintext GET /healthz on the TLS port = %s, want a refusal", resp.Status)
		}
	}
}

// servedSerial is the serial number of the certificate addr serves to a
// new connection.
func servedSerial(t testing.TB, addr string, cfg *tls.Config) string {
	t.Helper()
	conn, err := tls.Dial("tcp", addr, cfg)
	if err != nil {
		t.Fatalf("tls.Dial: %v", err)
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0].SerialNumber.String()
}

// TestTLSRotation: while clients publish in a loop, one on a connection it
// keeps and one on a new connection each time, the server's certificate
// files are replaced, twice, and once with files that do not load: no
// call fails, the new certificate is served once reloaded, and the broken
// set is never served.
func TestTLSRotation(t *testing.T) {
	dir, ca := tlsDir(t)
	ts := startServer(t, withTLS(t, dir, ca))
	ctx := testContext(t)
	addr := ts.srv.GRPCAddr().String()
	ts.createTopic(t, "orders", &ferryv1.TopicConfig{Partitions: 1})
	creds := testClientTLS(t, ts.srv.opts.TLS)
	kept, err := client.Dial(ctx, addr, client.WithTLS(creds))
	if err != nil {
		t.Fatal(err)
	}
	defer kept.Close()

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var published, failed atomic.Int64
	var errMu sync.Mutex
	var firstErr error
	fail := func(err error) {
		failed.Add(1)
		errMu.Lock()
		if firstErr == nil {
			firstErr = err
		}
		errMu.Unlock()
	}
	stopped := sync.OnceFunc(func() { close(stop); wg.Wait() })
	t.Cleanup(stopped) // before the server's shutdown, if the test stops early
	wg.Go(func() {
		p := kept.NewProducer("orders", client.ProducerOptions{})
		for {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := p.Publish(ctx, &client.Message{Payload: []byte("kept")}); err != nil {
				fail(err)
			}
			published.Add(1)
		}
	})
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			c, err := client.Dial(ctx, addr, client.WithTLS(creds), client.WithLogger(slog.New(slog.DiscardHandler)))
			if err != nil {
				fail(err)
				continue
			}
			p := c.NewProducer("orders", client.ProducerOptions{})
			if _, err := p.Publish(ctx, &client.Message{Payload: []byte("new")}); err != nil {
				fail(err)
			}
			_ = p.Close(ctx)
			c.Close()
			published.Add(1)
		}
	})

	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	probe := &tls.Config{RootCAs: pool, ServerName: "localhost", GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
		c, err := tls.LoadX509KeyPair(filepath.Join(dir, "client.crt"), filepath.Join(dir, "client.key"))
		return &c, err
	}}
	leaf := func(file string) string {
		c, err := tls.LoadX509KeyPair(file, ts.srv.opts.TLS.KeyFile)
		if err != nil {
			t.Fatal(err)
		}
		return c.Leaf.SerialNumber.String()
	}
	certFile := ts.srv.opts.TLS.CertFile
	waitServed := func(want string) {
		t.Helper()
		eventuallyB(t, "the new certificate served", func() bool { return servedSerial(t, addr, probe) == want })
	}
	for round := range 2 {
		before := published.Load()
		eventuallyB(t, "publishes under way", func() bool { return published.Load() > before+20 })
		ca.Issue(t, dir, "server", 0) // same paths: key, then certificate
		waitServed(leaf(certFile))
		t.Logf("round %d: rotated with %d publishes", round, published.Load())
	}

	// A certificate file that does not load is not used.
	good := servedSerial(t, addr, probe)
	if err := os.WriteFile(certFile, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	eventuallyB(t, "the failed reload counted", func() bool { return counterValue(t, ts.srv.Registry(), "ferry_tls_reload_failures_total") >= 1 })
	if got := servedSerial(t, addr, probe); got != good {
		t.Errorf("after a broken reload the server serves %s, want the previous %s", got, good)
	}
	ca.Issue(t, dir, "server", 0)
	waitServed(leaf(certFile))

	before := published.Load()
	eventuallyB(t, "publishes go on", func() bool { return published.Load() > before+20 })
	stopped()
	if n := failed.Load(); n > 0 {
		t.Fatalf("%d of %d calls failed during rotation; first: %v", n, published.Load(), firstErr)
	}
}

// counterValue is the value of a counter without labels on reg.
func counterValue(t testing.TB, reg prometheus.Gatherer, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) == 1 {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	return 0
}
