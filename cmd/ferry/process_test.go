package main

import (
	"bytes"
	"os"
	"os/exec"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/ferrymq/ferry/internal/ferrytest"
)

// TestMain removes the binaries the tests built.
func TestMain(m *testing.M) { os.Exit(ferrytest.Main(m)) }

// buildFerry builds this package once per test binary.
func buildFerry(tb testing.TB) string { return buildFerryTags(tb, "") }

// buildFerryTags builds this package with the build tags tags (as go build
// -tags takes them), once per test binary and tags.
func buildFerryTags(tb testing.TB, tags string) string {
	tb.Helper()
	return ferrytest.Build(tb, ferrytest.FerryPkg, tags)
}

// process is a running `ferry serve`.
type process struct {
	*ferrytest.Process
	cmd      *exec.Cmd
	grpcAddr string
	httpAddr string // empty unless started with --http-addr
	exited   <-chan struct{}
}

func newProcess(fp *ferrytest.Process) *process {
	return &process{Process: fp, cmd: fp.Cmd, grpcAddr: fp.GRPCAddr, httpAddr: fp.HTTPAddr, exited: fp.Exited()}
}

// exitErr is the process's exit error; valid once exited is closed.
func (p *process) exitErr() error { return p.ExitErr() }

// startFerry runs `ferry serve` on dir with a free port and waits until it
// logs that it is serving.
func startFerry(tb testing.TB, dir string, extra ...string) *process {
	tb.Helper()
	return startFerryUnder(tb, nil, dir, extra...)
}

// startFerryUnder is startFerry with the command run by wrap, a command
// line that ends by exec'ing its arguments (a shell that joins a cgroup
// first, say); nil runs ferry directly.
func startFerryUnder(tb testing.TB, wrap []string, dir string, extra ...string) *process {
	tb.Helper()
	return startFerryRun(tb, ferryRun{wrap: wrap}, dir, extra...)
}

// ferryRun is how startFerryRun runs `ferry serve`.
type ferryRun struct {
	wrap []string // a command line that execs its arguments (startFerryUnder)
	tags string   // build tags of the binary (buildFerryTags)
	env  []string // added to the environment
}

// startFerryRun is startFerry run as r says.
func startFerryRun(tb testing.TB, r ferryRun, dir string, extra ...string) *process {
	tb.Helper()
	fp := ferrytest.MustStart(tb, ferrytest.Serve{
		Bin: buildFerryTags(tb, r.tags), Wrap: r.wrap, Env: r.env, Dir: dir, Args: extra,
		Log: func(line []byte) {
			if !bytes.Contains(line, []byte(`"msg":"ferry serving"`)) {
				tb.Logf("ferry: %s", line)
			}
		},
	})
	return newProcess(fp)
}

// kill sends SIGKILL and waits for the process to be gone.
func (p *process) kill(tb testing.TB) { p.Kill() }

// freeze sends SIGSTOP and waits until every thread of the process is
// stopped (ferrytest.Process.Pause).
func (p *process) freeze(tb testing.TB) {
	tb.Helper()
	p.Pause(tb)
}

// stop sends SIGTERM and returns how long the process took to exit and its
// exit error (nil for exit code 0).
func (p *process) stop(tb testing.TB, limit time.Duration) (time.Duration, error) {
	tb.Helper()
	return p.Stop(limit)
}

func (p *process) dial(tb testing.TB) *grpc.ClientConn {
	tb.Helper()
	return ferrytest.Dial(tb, p.grpcAddr)
}
