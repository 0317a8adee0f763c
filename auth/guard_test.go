package auth

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ferrymq/ferry/internal/clock"
)

// writeFile writes b through a rename, with a modification time of its
// own, so a check sees the change whatever the filesystem's resolution.
func writeFile(t testing.TB, path string, b []byte, mod time.Time) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(tmp, mod, mod); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// TestGuardReload: a valid change to either file applies at the next
// check, on the injected clock; an invalid one is refused at Open, and at
// a reload is logged and counted while the previous file stays in force.
func TestGuardReload(t *testing.T) {
	dir := t.TempDir()
	tokens, policy := filepath.Join(dir, "tokens.yaml"), filepath.Join(dir, "policy.yaml")
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	writeFile(t, tokens, tokenFileOf(entry("kitchen", "old")), t0)
	writeFile(t, policy, []byte("rules:\n  - principals: [kitchen]\n    permissions: [publish]\n    topics: [orders]\n"), t0)

	clk := clock.NewFake(t0)
	var logs bytes.Buffer
	reg := prometheus.NewRegistry()
	g, err := Open(Options{TokensFile: tokens, PolicyFile: policy, Interval: time.Second, Clock: clk,
		Logger: slog.New(slog.NewTextHandler(&logs, nil)), Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	g.Start()
	defer g.Stop()
	ctx := context.Background()
	who := func(tok string) string {
		id, err := g.Authenticate(ctx, Credentials{Bearer: tok})
		if err != nil {
			return "refused"
		}
		return id.Principal
	}
	may := func(topic string) bool {
		return g.Policy().Allowed(Identity{Principal: "kitchen"}, Publish, Resource{Topic: topic})
	}
	if who("old") != "kitchen" || who("new") != "refused" || !may("orders") || may("kitchen.ready") {
		t.Fatal("the files as first loaded are not in force")
	}

	// A valid swap of both files applies at the next check.
	writeFile(t, tokens, tokenFileOf(entry("kitchen", "new")), t0.Add(time.Minute))
	writeFile(t, policy, []byte("rules:\n  - principals: [kitchen]\n    permissions: [publish]\n    topics: [\"kitchen.*\"]\n"), t0.Add(time.Minute))
	if who("new") != "refused" {
		t.Fatal("a change applied before the check")
	}
	clk.Advance(time.Second)
	if who("old") != "refused" || who("new") != "kitchen" || may("orders") || !may("kitchen.ready") {
		t.Fatal("the valid swap did not apply")
	}
	for _, f := range []string{"tokens", "policy"} {
		if n := counter(t, reg, "ferry_auth_reloads_total", f); n != 1 {
			t.Errorf("ferry_auth_reloads_total{file=%q} = %v, want 1", f, n)
		}
	}

	// Invalid versions (a truncated token file, a typo in the policy) are
	// kept out; the previous files stay in force.
	writeFile(t, tokens, nil, t0.Add(2*time.Minute))
	writeFile(t, policy, []byte("rules:\n  - principals: [kitchen]\n    permissions: [pubish]\n    topics: [\"*\"]\n"), t0.Add(2*time.Minute))
	clk.Advance(time.Second)
	clk.Advance(time.Second) // unchanged since: not counted again
	if who("new") != "kitchen" || may("orders") || !may("kitchen.ready") {
		t.Fatal("an invalid file replaced a valid one")
	}
	for _, f := range []string{"tokens", "policy"} {
		if n := counter(t, reg, "ferry_auth_reload_failures_total", f); n != 1 {
			t.Errorf("ferry_auth_reload_failures_total{file=%q} = %v, want 1", f, n)
		}
	}
	if !strings.Contains(logs.String(), "auth reload failed") || !strings.Contains(logs.String(), `pubish`) {
		t.Errorf("the failed reload is not logged with its reason:\n%s", logs.String())
	}

	// Fixed, they apply.
	writeFile(t, policy, []byte("rules:\n  - principals: [kitchen]\n    permissions: [publish]\n    topics: [\"*\"]\n"), t0.Add(3*time.Minute))
	clk.Advance(time.Second)
	if !may("orders") {
		t.Error("the fixed policy did not apply")
	}

	// Invalid files refuse the start.
	if _, err := Open(Options{TokensFile: tokens, PolicyFile: policy}); !errors.Is(err, ErrInvalidFile) {
		t.Errorf("Open with an empty token file = %v, want ErrInvalidFile", err)
	}
	if _, err := Open(Options{PolicyFile: filepath.Join(dir, "missing.yaml"), ClientCertificates: true}); !errors.Is(err, ErrInvalidFile) {
		t.Errorf("Open with a missing policy = %v, want ErrInvalidFile", err)
	}
}

// counter is the value of counter name{file=file} on reg.
func counter(t testing.TB, reg prometheus.Gatherer, name, file string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			if mf.GetName() == name && len(m.GetLabel()) == 1 && m.GetLabel()[0].GetValue() == file {
				return m.GetCounter().GetValue()
			}
		}
	}
	t.Fatalf("no %s{file=%q}", name, file)
	return 0
}
