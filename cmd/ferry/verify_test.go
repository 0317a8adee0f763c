package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spf13/cobra"

	ferryv1 "github.com/ferrymq/ferry/proto/ferry/v1"
	vfy "github.com/ferrymq/ferry/verify"
)

// runVerifyCLI runs `ferry verify -o json` with args and returns its
// result and exit code; its log goes to the test's.
func runVerifyCLI(t *testing.T, args ...string) (vfy.Result, int) {
	t.Helper()
	cmd := exec.Command(buildFerry(t), append([]string{"verify", "-o", "json"}, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	code := 0
	var exit *exec.ExitError
	switch {
	case errors.As(err, &exit):
		code = exit.ExitCode()
	case err != nil:
		t.Fatal(err)
	}
	t.Logf("ferry verify %s: exit %d after %v\n%s", strings.Join(args, " "), code, time.Since(start).Round(time.Millisecond), lastLines(stderr.String(), 15))
	var res vfy.Result
	if err := json.Unmarshal(stdout.Bytes(), &res); err != nil {
		t.Fatalf("verify -o json printed no result (%v): %s", err, stdout.String())
	}
	return res, code
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// requireClean fails t unless verify judged something in every check and
// found no violation.
func requireClean(t *testing.T, res vfy.Result, code int) {
	t.Helper()
	for _, v := range res.Violations {
		t.Errorf("violation %s: %s", v.Check, v.Message)
	}
	if code != 0 || !res.OK() {
		t.Fatalf("verify exited %d with %d violations, want a clean run", code, len(res.Violations))
	}
	if !res.Setup.Drained {
		t.Fatal("verify's consumers did not drain: loss was not judged")
	}
	for _, c := range res.Checks {
		if c.Checked == 0 {
			t.Errorf("check %s judged nothing", c.Name)
		}
	}
	t.Logf("verify: %d publishes, %d deliveries, %d acks confirmed, %d refused, %d disruption steps",
		res.Counts[vfy.Publish], res.Counts[vfy.Deliver], res.Counts[vfy.AckConfirmed], res.Counts[vfy.AckRefused], res.Counts[vfy.Disruption])
}

// requireNoTopics fails t if verify left a topic behind.
func requireNoTopics(t *testing.T, admin ferryv1.AdminServiceClient) {
	t.Helper()
	resp, err := admin.ListTopics(context.Background(), &ferryv1.ListTopicsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, tp := range resp.GetTopics() {
		t.Errorf("verify left topic %s behind", tp.GetName())
	}
}

// TestVerifyFlags: --nemesis takes none, kill, pause or both, and the
// signal nemeses need --pids and a positive --pause-for; what is accepted
// becomes the run's nemesis.
func TestVerifyFlags(t *testing.T) {
	for _, tc := range []struct {
		args   []string
		faults []vfy.Fault // nil: no Signals nemesis
		pause  time.Duration
		err    string
	}{
		{args: nil},
		{args: []string{"--nemesis", "kill", "--pids", "1,2"}, faults: []vfy.Fault{vfy.Kill}, pause: vfy.DefaultPauseFor},
		{args: []string{"--nemesis", "pause", "--pids", "1", "--pause-for", "4s"}, faults: []vfy.Fault{vfy.Pause}, pause: 4 * time.Second},
		{args: []string{"--nemesis", "kill,pause", "--pids", "/run/a.pid,/run/b.pid", "--pause-for", "3s"},
			faults: []vfy.Fault{vfy.Kill, vfy.Pause}, pause: 3 * time.Second},
		{args: []string{"--nemesis", "pause,kill", "--pids", "1"}, faults: []vfy.Fault{vfy.Pause, vfy.Kill}, pause: vfy.DefaultPauseFor},
		{args: []string{"--nemesis", "kill", "--pids", "1", "--pause-for", "0s"}, faults: []vfy.Fault{vfy.Kill}},
		{args: []string{"--nemesis", "kill,pause"}, err: "--nemesis kill,pause needs --pids"},
		{args: []string{"--nemesis", "kill,pause", "--pids", "1", "--pause-for", "0s"}, err: "--pause-for 0s must be positive"},
		{args: []string{"--nemesis", "pause", "--pids", "1", "--pause-for", "-1s"}, err: "--pause-for -1s must be positive"},
		{args: []string{"--nemesis", "kill,kill", "--pids", "1"}, err: "fault kill given twice"},
		{args: []string{"--nemesis", "kill,stop", "--pids", "1"}, err: `want none, kill, pause or kill,pause`},
		{args: []string{"--nemesis", "chaos", "--pids", "1"}, err: `--nemesis "chaos"`},
		{args: []string{"--nemesis", "kill", "--nemesis-command", "true", "--pids", "1"}, err: "not both"},
	} {
		var got *verifyFlags
		cmd := verifyCommand(func(_ *cobra.Command, vf *verifyFlags) error { got = vf; return nil })
		cmd.SetArgs(tc.args)
		cmd.SetOut(io.Discard)
		cmd.SetErr(io.Discard)
		err := cmd.Execute()
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%v: err %v, want one containing %q", tc.args, err, tc.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%v: %v", tc.args, err)
			continue
		}
		sig, _ := got.o.Nemesis.(*vfy.Signals)
		switch {
		case tc.faults == nil && got.o.Nemesis != nil:
			t.Errorf("%v: nemesis %#v, want none", tc.args, got.o.Nemesis)
		case tc.faults != nil && (sig == nil || !slices.Equal(sig.Faults, tc.faults) || sig.PauseFor != tc.pause):
			t.Errorf("%v: nemesis %#v, want faults %v, pause %v", tc.args, got.o.Nemesis, tc.faults, tc.pause)
		}
	}
}

// TestVerifySingleNode: against a healthy broker, verify finds nothing,
// exits 0, writes its report and deletes what it created. Its nemesis
// command only leaves a trace, to show it runs and is recorded.
func TestVerifySingleNode(t *testing.T) {
	p := startFerry(t, t.TempDir())
	dir := t.TempDir()
	report, trace := filepath.Join(dir, "verify.html"), filepath.Join(dir, "nemesis.log")
	res, code := runVerifyCLI(t, "--server", p.grpcAddr, "--duration", "8s", "--report", report,
		"--nemesis-command", "echo disrupted >> "+trace, "--nemesis-interval", "3s")
	requireClean(t, res, code)
	ran, _ := os.ReadFile(trace)
	if n := bytes.Count(ran, []byte("disrupted")); n == 0 || res.Counts[vfy.Disruption] != n {
		t.Errorf("the nemesis command ran %d times, %d disruptions recorded", n, res.Counts[vfy.Disruption])
	}
	requireNoTopics(t, ferryv1.NewAdminServiceClient(p.dial(t)))
	html, err := os.ReadFile(report)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"<svg", "no violations", "at-most-once", "disruptions"} {
		if !bytes.Contains(html, []byte(want)) {
			t.Errorf("report lacks %q", want)
		}
	}
}

// TestVerifyPauseNemesis: verify's pause nemesis stops the broker with
// SIGSTOP and resumes it with SIGCONT; the broker keeps its promises.
func TestVerifyPauseNemesis(t *testing.T) {
	p := startFerry(t, t.TempDir())
	res, code := runVerifyCLI(t, "--server", p.grpcAddr, "--duration", "8s", "--nemesis", "pause",
		"--pids", fmt.Sprint(p.cmd.Process.Pid), "--nemesis-interval", "3s", "--pause-for", "1s")
	requireClean(t, res, code)
	if res.Counts[vfy.Disruption] < 2 {
		t.Fatalf("%d disruption steps recorded, want a SIGSTOP and its SIGCONT at least", res.Counts[vfy.Disruption])
	}
	requireNoTopics(t, ferryv1.NewAdminServiceClient(p.dial(t)))
}

// TestVerifyInterruptCleansUp: Ctrl-C stops verify, which deletes what it
// created and exits non-zero (nothing was judged).
func TestVerifyInterruptCleansUp(t *testing.T) {
	p := startFerry(t, t.TempDir())
	admin := ferryv1.NewAdminServiceClient(p.dial(t))
	cmd := exec.Command(buildFerry(t), "verify", "--server", p.grpcAddr, "--duration", "1m")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Interrupt mid-run: once its consumers attached (the none
	// subscription exists only while they are).
	waitFor(t, 30*time.Second, "verify's consumers", func() bool {
		resp, err := admin.ListTopics(context.Background(), &ferryv1.ListTopicsRequest{})
		for _, tp := range resp.GetTopics() {
			subs, serr := admin.ListSubscriptions(context.Background(), &ferryv1.ListSubscriptionsRequest{Topic: tp.GetName()})
			if err == nil && serr == nil && len(subs.GetSubscriptions()) == 7 {
				return true
			}
		}
		return false
	})
	_ = cmd.Process.Signal(os.Interrupt)
	err := cmd.Wait()
	t.Logf("verify after Ctrl-C: %v\n%s", err, lastLines(stderr.String(), 5))
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() == 0 {
		t.Fatalf("verify interrupted exited with %v, want a non-zero status", err)
	}
	requireNoTopics(t, admin)
}

// TestVerifyCatchesBrokenBuilds: brokers built with a ferry_broken_* tag
// break one promise each — broken_amo.go sends every delivery twice,
// broken_offset.go acknowledges some publishes at the wrong offset — and
// verify must report that promise's violations, with two events of one id
// as evidence, and exit non-zero.
func TestVerifyCatchesBrokenBuilds(t *testing.T) {
	for _, tc := range []struct{ tag, check string }{
		{"ferry_broken_amo", "at-most-once"},
		{"ferry_broken_offset", "stored"},
	} {
		t.Run(tc.tag, func(t *testing.T) {
			broken := filepath.Join(t.TempDir(), "ferry-broken")
			if out, err := exec.Command("go", "build", "-tags", tc.tag, "-o", broken, ".").CombinedOutput(); err != nil {
				t.Fatalf("go build -tags %s: %v\n%s", tc.tag, err, out)
			}
			// startFerryUnder's wrapper swaps the binary for the broken build.
			p := startFerryUnder(t, []string{"sh", "-c", `shift; exec "$0" "$@"`, broken}, t.TempDir())
			res, code := runVerifyCLI(t, "--server", p.grpcAddr, "--duration", "5s")
			if code == 0 || res.OK() {
				t.Fatalf("verify exited %d with no violations against a broken broker", code)
			}
			i := slices.IndexFunc(res.Violations, func(v vfy.Violation) bool { return v.Check == tc.check })
			if i < 0 {
				t.Fatalf("no %s violation among %d", tc.check, len(res.Violations))
			}
			v := res.Violations[i]
			if len(v.Evidence) < 2 || v.Evidence[0].ID == "" || v.Evidence[0].ID != v.Evidence[1].ID &&
				v.Evidence[0].Offset != v.Evidence[1].Offset {
				t.Fatalf("%s violation without evidence naming one id or offset twice: %+v", tc.check, v)
			}
			t.Logf("caught: %s", v.Message)
			requireNoTopics(t, ferryv1.NewAdminServiceClient(p.dial(t)))
		})
	}
}

// TestClusterChaos is issue 18's process-level chaos run: ferry verify
// against a three-node cluster — an effectively-once Commit pipeline, at-
// least-once subscriptions and the rest of its workload — while its
// kill,pause nemesis SIGKILLs a node (the test restarts it on its data dir,
// as systemd would, and keeps its pid file current) and SIGSTOPs one for
// 3s, past the nodes' election timeout (1-2s), then continues it: one of
// each in every two disruptions, 1.5s apart (a pause's 3s aside), so the
// run's 10s hold three or four, the first two one of each. The whole
// history must hold (never delivered after a confirmed ack, no attempt at
// two consumers, no stale attempt's ack confirmed, one output per input,
// no acknowledged publish lost, …), and at the end every node holds the
// same partitions of both topics verify used (kept for it with --keep).
//
// With the epoch check of storage/fence.go dropped for writes it failed 2
// runs of 12 (attempts delivered twice, by two owners); the deterministic
// stall case is TestClusterStalledOwnerIsFenced.
func TestClusterChaos(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a cluster of real brokers")
	}
	c := newTestCluster(t, 3, false)
	dir := t.TempDir()
	var pidFiles []string
	for _, nd := range c.nodes {
		pidFiles = append(pidFiles, filepath.Join(dir, fmt.Sprintf("node-%d.pid", nd.id)))
	}
	writePids := func() {
		for i, nd := range c.nodes {
			if p := nd.process(); p != nil {
				_ = os.WriteFile(pidFiles[i], fmt.Appendf(nil, "%d\n", p.cmd.Process.Pid), 0o644)
			}
		}
	}
	writePids()
	stop := make(chan struct{})
	var restarts sync.WaitGroup
	restarts.Go(func() { restartKilled(t, c, stop, writePids) })
	res, code := runVerifyCLI(t, "--server", c.grpcAddrs(), "--duration", "10s", "--rate", "40",
		"--nemesis", "kill,pause", "--pids", strings.Join(pidFiles, ","), "--nemesis-interval", "1500ms", "--pause-for", "3s", "--keep",
		"--history", filepath.Join(c.logDir, "verify-history.jsonl")) // kept with the node logs if the test fails
	close(stop)
	restarts.Wait()
	requireClean(t, res, code)
	t.Logf("disruptions: %v", res.Disruptions)
	if res.Disruptions[vfy.Kill] == 0 || res.Disruptions[vfy.Pause] == 0 {
		t.Fatalf("disruptions %v, want a kill and a pause at least", res.Disruptions)
	}
	c.restartExited(t) // killed at the very end: back, and following
	admin := c.nodes[0].admin()
	for _, topic := range []string{res.Setup.Topic, res.Setup.OutputTopic} {
		logs := waitConverged(t, c.nodes, topic, 30*time.Second)
		n := 0
		for _, l := range logs {
			n += len(l)
		}
		t.Logf("%s: %d messages in %d partitions, the same on every node", topic, n, len(logs))
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, err := admin.DeleteTopic(ctx, &ferryv1.DeleteTopicRequest{Name: topic, Force: true})
		cancel()
		if err != nil {
			t.Fatalf("delete %s: %v", topic, err)
		}
	}
	requireNoTopics(t, admin)
}

// restartKilled restarts every node that exits, on its data dir, until
// stop is closed.
func restartKilled(t *testing.T, c *testCluster, stop <-chan struct{}, restarted func()) {
	for {
		select {
		case <-stop:
			return
		case <-time.After(100 * time.Millisecond):
		}
		for _, nd := range c.nodes {
			select {
			case <-nd.process().exited:
				t.Logf("node %d was killed; restarting it", nd.id)
				if err := c.startNode(nd); err != nil {
					t.Errorf("restart node %d: %v", nd.id, err)
					return
				}
				restarted()
			default:
			}
		}
	}
}
