package tlsfiles_test

import (
	"crypto/x509"
	"errors"
	"net/url"
	"os"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ferrymq/ferry/internal/clock"
	"github.com/ferrymq/ferry/internal/tlsfiles"
	"github.com/ferrymq/ferry/internal/tlsfiles/tlstest"
)

// TestReloadOnChange: the files are checked on the injected clock's ticks;
// a new pair is served after the next tick, a pair that does not load is
// not (the previous stays, a failure is counted), and nothing is reloaded
// while nothing changes.
func TestReloadOnChange(t *testing.T) {
	dir := t.TempDir()
	ca := tlstest.NewCA(t, dir, "ca")
	cert, key := ca.Issue(t, dir, "server", 0)
	clk := clock.NewFake(time.Unix(1_000_000, 0))
	reg := prometheus.NewRegistry()
	f, err := tlsfiles.Load(tlsfiles.Options{CertFile: cert, KeyFile: key, ClientCAFile: ca.File, Interval: time.Second, Clock: clk, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	f.Start()
	defer f.Stop()
	first := f.Certificate().SerialNumber

	clk.Advance(time.Second)
	if got := f.Certificate().SerialNumber; got.Cmp(first) != 0 {
		t.Fatalf("serial changed without a file change")
	}
	ca.Issue(t, dir, "server", 0)
	// Make sure the modification time moves even on a coarse clock.
	later := time.Now().Add(time.Minute)
	for _, p := range []string{cert, key} {
		if err := os.Chtimes(p, later, later); err != nil {
			t.Fatal(err)
		}
	}
	clk.Advance(time.Second)
	second := f.Certificate().SerialNumber
	if second.Cmp(first) == 0 {
		t.Fatalf("the new certificate was not loaded at the tick")
	}

	if err := os.WriteFile(cert, []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	clk.Advance(time.Second)
	if got := f.Certificate().SerialNumber; got.Cmp(second) != 0 {
		t.Fatalf("a certificate file that does not load replaced the served one")
	}
	if n := counter(t, reg, "ferry_tls_reload_failures_total"); n != 1 {
		t.Fatalf("failures = %v, want 1", n)
	}
	clk.Advance(time.Second) // unchanged since: not retried, not counted again
	if n := counter(t, reg, "ferry_tls_reload_failures_total"); n != 1 {
		t.Fatalf("failures after an idle tick = %v, want 1", n)
	}
	f.Stop()
	if clk.Pending() != 0 {
		t.Fatalf("%d timers pending after Stop", clk.Pending())
	}
}

func counter(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}

// TestLoadRefuses: files that make no usable configuration are refused at
// load, with ErrInvalid.
func TestLoadRefuses(t *testing.T) {
	dir := t.TempDir()
	ca := tlstest.NewCA(t, dir, "ca")
	cert, key := ca.Issue(t, dir, "server", 0)
	_, otherKey := ca.Issue(t, dir, "other", 0)
	garbage := dir + "/garbage.pem"
	if err := os.WriteFile(garbage, []byte("not pem"), 0o600); err != nil {
		t.Fatal(err)
	}
	for name, o := range map[string]tlsfiles.Options{
		"no key":              {CertFile: cert},
		"missing file":        {CertFile: dir + "/nope.crt", KeyFile: key},
		"key of another cert": {CertFile: cert, KeyFile: otherKey},
		"client CA not PEM":   {CertFile: cert, KeyFile: key, ClientCAFile: garbage},
		"peer CA missing":     {CertFile: cert, KeyFile: key, PeerCAFile: dir + "/nope.crt"},
	} {
		if _, err := tlsfiles.Load(o); !errors.Is(err, tlsfiles.ErrInvalid) {
			t.Errorf("%s: Load = %v, want ErrInvalid", name, err)
		}
	}
	f, err := tlsfiles.Load(tlsfiles.Options{CertFile: cert, KeyFile: key})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.PeerServerConfig(); !errors.Is(err, tlsfiles.ErrInvalid) {
		t.Errorf("PeerServerConfig without a peer CA = %v, want ErrInvalid", err)
	}
}

// TestNodeID: only one well-formed ferry://node/<id> URI names a node.
func TestNodeID(t *testing.T) {
	for _, tc := range []struct {
		uris []string
		want uint64
	}{
		{[]string{"ferry://node/3"}, 3},
		{[]string{"spiffe://x/y", "ferry://node/12"}, 12},
		{nil, 0},
		{[]string{"ferry://node/0"}, 0},
		{[]string{"ferry://node/"}, 0},
		{[]string{"ferry://node/03"}, 0},
		{[]string{"ferry://node/3/4"}, 0},
		{[]string{"ferry://node/-1"}, 0},
		{[]string{"ferry://node/x"}, 0},
		{[]string{"ferry://node/99999999999999999999999"}, 0},
		{[]string{"ferry://node/1", "ferry://node/2"}, 0},
		{[]string{"ferry://other/1"}, 0},
	} {
		c := &x509.Certificate{}
		for _, u := range tc.uris {
			p, err := url.Parse(u)
			if err != nil {
				t.Fatal(err)
			}
			c.URIs = append(c.URIs, p)
		}
		got, err := tlsfiles.NodeID(c)
		if got != tc.want || (tc.want == 0) != errors.Is(err, tlsfiles.ErrNotNode) {
			t.Errorf("NodeID(%v) = %d, %v; want %d", tc.uris, got, err, tc.want)
		}
	}
	if got := tlsfiles.NodeURI(7).String(); got != "ferry://node/7" {
		t.Errorf("NodeURI(7) = %s", got)
	}
}
