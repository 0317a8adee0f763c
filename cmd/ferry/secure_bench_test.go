package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/ferrymq/ferry/auth"
	"github.com/ferrymq/ferry/internal/tlsfiles/tlstest"
)

// BenchmarkSecureOverhead measures issue 19's speed target in one run:
// durable pipelined publish and consume (`ferry bench`, 4 producers, 1
// at-least-once consumer, 1 KiB, fsync=always) against a plain `ferry
// serve` and against one with TLS, bearer-token auth and a policy, twice
// each, alternating (plain, secure, plain, secure), and reports each
// setup's publish and consume rates (the sums of its two runs), the
// ratios secure/plain (target ≥ 0.9), and each server's CPU time per
// message published (the measure a busy machine swings least).
//
//	go test -run '^$' -bench SecureOverhead -benchtime 1x ./cmd/ferry
//	FERRY_BENCH_DURATION=10s go test -run '^$' -bench SecureOverhead -benchtime 1x ./cmd/ferry
func BenchmarkSecureOverhead(b *testing.B) {
	d := 5 * time.Second
	if s := os.Getenv("FERRY_BENCH_DURATION"); s != "" {
		v, err := time.ParseDuration(s)
		if err != nil {
			b.Fatalf("FERRY_BENCH_DURATION: %v", err)
		}
		d = v
	}
	dir := b.TempDir()
	ca := tlstest.NewCA(b, dir, "ca")
	cert, key := ca.Issue(b, dir, "server", 0)
	tokens, policy := filepath.Join(dir, "tokens.yaml"), filepath.Join(dir, "policy.yaml")
	for path, body := range map[string]string{
		tokens: "tokens:\n  - name: bench\n    sha256: " + auth.HashToken("bench-token") + "\n",
		policy: "rules:\n  - principals: [bench]\n    permissions: [publish, subscribe, read, admin]\n    topics: [\"*\"]\n",
	} {
		if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
			b.Fatal(err)
		}
	}
	type setup struct {
		name          string
		serve, client []string
		pub, con, cpu float64
		msgs          int64
	}
	plain := &setup{name: "plain"}
	secure := &setup{name: "secure",
		serve:  []string{"--tls-cert", cert, "--tls-key", key, "--auth-tokens", tokens, "--auth-policy", policy},
		client: []string{"--tls-ca", ca.File, "--token", "bench-token"}}
	for b.Loop() {
		for _, s := range []*setup{plain, secure, plain, secure} {
			p := startFerry(b, b.TempDir(), s.serve...)
			cpu0 := cpuTime(b, p.cmd.Process.Pid)
			r := benchAgainst(b, p.grpcAddr, d, s.client)
			s.cpu += float64((cpuTime(b, p.cmd.Process.Pid) - cpu0).Microseconds())
			s.msgs += r.Published
			s.pub += r.PublishedPerSec
			s.con += r.ConsumedPerSec
			p.kill(b)
			b.Logf("%s: %.0f published/s, %.0f consumed/s", s.name, r.PublishedPerSec, r.ConsumedPerSec)
		}
	}
	for _, s := range []*setup{plain, secure} {
		b.ReportMetric(s.pub/2, s.name+"-pub-msgs/s")
		b.ReportMetric(s.con/2, s.name+"-con-msgs/s")
		b.ReportMetric(s.cpu/float64(s.msgs), s.name+"-cpu-µs/msg")
	}
	b.ReportMetric(secure.pub/plain.pub, "pub-ratio")
	b.ReportMetric(secure.con/plain.con, "con-ratio")
}

// benchAgainst runs `ferry bench` against addr for d, with extra client
// flags, and returns its JSON result.
func benchAgainst(tb testing.TB, addr string, d time.Duration, extra []string) benchResult {
	tb.Helper()
	args := append([]string{"bench", "--server", addr, "--producers", "4", "--consumers", "1",
		"--message-size", "1024", "--warmup", "1s", "--duration", d.String(), "-o", "json"}, extra...)
	out, err := exec.Command(buildFerry(tb), args...).Output()
	if err != nil {
		tb.Fatalf("ferry bench: %v: %s", err, out)
	}
	var r benchResult
	if err := json.Unmarshal(out, &r); err != nil {
		tb.Fatalf("ferry bench output: %v: %.300s", err, out)
	}
	if r.PublishErrors > 0 || r.Published == 0 {
		tb.Fatalf("ferry bench: %d published, %d errors", r.Published, r.PublishErrors)
	}
	return r
}
