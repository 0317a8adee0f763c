package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// builds are the ferry binaries built for this test run, by build tags.
var (
	buildsMu sync.Mutex
	builds   = map[string]*ferryBuild{}
)

type ferryBuild struct {
	once sync.Once
	path string
	err  error
}

// buildFerry builds this package into a temp dir, once per test binary.
func buildFerry(tb testing.TB) string { return buildFerryTags(tb, "") }

// buildFerryTags builds this package with the build tags tags (as go build
// -tags takes them) into a temp dir, once per test binary and tags.
func buildFerryTags(tb testing.TB, tags string) string {
	tb.Helper()
	buildsMu.Lock()
	b, ok := builds[tags]
	if !ok {
		b = &ferryBuild{}
		builds[tags] = b
	}
	buildsMu.Unlock()
	b.once.Do(func() {
		dir, err := os.MkdirTemp("", "ferry-bin-")
		if err != nil {
			b.err = err
			return
		}
		b.path = filepath.Join(dir, "ferry")
		out, err := exec.Command("go", "build", "-tags", tags, "-o", b.path, ".").CombinedOutput()
		if err != nil {
			b.err = fmt.Errorf("go build -tags %q: %w\n%s", tags, err, out)
		}
	})
	if b.err != nil {
		tb.Fatal(b.err)
	}
	return b.path
}

// process is a running `ferry serve`.
type process struct {
	cmd      *exec.Cmd
	grpcAddr string
	httpAddr string // empty unless started with --http-addr
	exited   chan struct{}
	exitErr  error
}

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
	args := append([]string{"serve", "--data-dir", dir, "--grpc-addr", "127.0.0.1:0", "--http-addr", "", "--log-format", "json"}, extra...)
	line := append(append(slices.Clone(r.wrap), buildFerryTags(tb, r.tags)), args...)
	cmd := exec.Command(line[0], line[1:]...)
	if len(r.env) > 0 {
		cmd.Env = append(os.Environ(), r.env...)
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		tb.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	p := &process{cmd: cmd, exited: make(chan struct{})}
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			var line struct {
				Msg      string `json:"msg"`
				GRPCAddr string `json:"grpc_addr"`
				HTTPAddr string `json:"http_addr"`
			}
			if json.Unmarshal(sc.Bytes(), &line) == nil && line.Msg == "ferry serving" {
				p.httpAddr = line.HTTPAddr
				addr <- line.GRPCAddr
			}
			if line.Msg != "ferry serving" {
				tb.Logf("ferry: %s", sc.Bytes())
			}
		}
		_, _ = io.Copy(io.Discard, stderr)
	}()
	go func() {
		p.exitErr = cmd.Wait()
		close(p.exited)
	}()
	select {
	case p.grpcAddr = <-addr:
	case <-p.exited:
		tb.Fatalf("ferry serve exited before serving: %v", p.exitErr)
	case <-time.After(30 * time.Second):
		p.kill(tb)
		tb.Fatal("ferry serve did not start within 30s")
	}
	tb.Cleanup(func() { p.kill(tb) })
	return p
}

// kill sends SIGKILL and waits for the process to be gone.
func (p *process) kill(tb testing.TB) {
	tb.Helper()
	select {
	case <-p.exited:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.exited
}

// freeze sends SIGSTOP and waits until every thread of the process is
// stopped: a thread inside a system call (a FUSE write, say) stops as it
// returns, so nothing the process does after freeze reaches user space.
func (p *process) freeze(tb testing.TB) {
	tb.Helper()
	_ = p.cmd.Process.Signal(syscall.SIGSTOP)
	deadline := time.Now().Add(10 * time.Second)
	for !allThreadsStopped(p.cmd.Process.Pid) {
		select {
		case <-p.exited:
			return
		default:
		}
		if time.Now().After(deadline) {
			tb.Fatalf("pid %d: not every thread stopped within 10s of SIGSTOP", p.cmd.Process.Pid)
		}
		time.Sleep(time.Millisecond)
	}
}

// allThreadsStopped reports whether every thread of pid is in state T
// (stopped) or t (traced), from /proc/pid/task/*/stat.
func allThreadsStopped(pid int) bool {
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return false
	}
	for _, task := range tasks {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/stat", pid, task.Name()))
		if err != nil {
			return false
		}
		// pid (comm) state ...: comm may hold spaces and parentheses.
		i := bytes.LastIndexByte(b, ')')
		if i < 0 || i+2 >= len(b) || (b[i+2] != 'T' && b[i+2] != 't') {
			return false
		}
	}
	return true
}

// stop sends SIGTERM and returns how long the process took to exit and its
// exit error (nil for exit code 0).
func (p *process) stop(tb testing.TB, limit time.Duration) (time.Duration, error) {
	tb.Helper()
	start := time.Now()
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
		return time.Since(start), p.exitErr
	case <-time.After(limit):
		p.kill(tb)
		return time.Since(start), fmt.Errorf("did not exit within %v of SIGTERM", limit)
	}
}

func (p *process) dial(tb testing.TB) *grpc.ClientConn {
	tb.Helper()
	conn, err := grpc.NewClient(p.grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { conn.Close() })
	return conn
}
