package ferrytest

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Serve is how Start runs `ferry serve`.
type Serve struct {
	Bin      string        // the binary; default Ferry(tb)
	Wrap     []string      // a command line that ends by exec'ing its arguments (a shell joining a cgroup, say); none by default
	Env      []string      // added to the environment
	Dir      string        // --data-dir; required
	GRPCAddr string        // --grpc-addr; default 127.0.0.1:0
	Args     []string      // further flags, after the defaults (--http-addr "" --log-format json)
	Log      func([]byte)  // called with each line of its stderr, from another goroutine; nil keeps them for Process.Log instead
	OnExit   func(error)   // called with the exit error once it exits, before Exited closes; none by default
	Timeout  time.Duration // how long to wait until it serves; default 30s
}

// Process is a running `ferry serve`.
type Process struct {
	Cmd      *exec.Cmd
	GRPCAddr string // the address it serves gRPC on, from its "ferry serving" line
	HTTPAddr string // its HTTP address; empty unless started with --http-addr

	exited  chan struct{}
	exitErr error
	logMu   sync.Mutex
	log     bytes.Buffer
}

// Start runs `ferry serve` as s says and waits until it logs that it is
// serving. It returns an error if the process exits first or does not
// serve within s.Timeout (then it is killed). The caller kills it (Kill)
// when done.
func Start(tb testing.TB, s Serve) (*Process, error) {
	tb.Helper()
	if s.Bin == "" {
		s.Bin = Ferry(tb)
	}
	if s.GRPCAddr == "" {
		s.GRPCAddr = "127.0.0.1:0"
	}
	if s.Timeout == 0 {
		s.Timeout = 30 * time.Second
	}
	args := append([]string{"serve", "--data-dir", s.Dir, "--grpc-addr", s.GRPCAddr, "--http-addr", "", "--log-format", "json"}, s.Args...)
	line := append(append(slices.Clone(s.Wrap), s.Bin), args...)
	cmd := exec.Command(line[0], line[1:]...)
	if len(s.Env) > 0 {
		cmd.Env = append(os.Environ(), s.Env...)
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &Process{Cmd: cmd, exited: make(chan struct{})}
	serving := make(chan [2]string, 1)
	scanned := make(chan struct{})
	go func() {
		defer close(scanned)
		p.scan(stderr, s.Log, serving)
	}()
	go func() {
		<-scanned // Wait closes the pipe: read it all first
		p.exitErr = cmd.Wait()
		if s.OnExit != nil {
			s.OnExit(p.exitErr)
		}
		close(p.exited)
	}()
	select {
	case addrs := <-serving:
		p.GRPCAddr, p.HTTPAddr = addrs[0], addrs[1]
		return p, nil
	case <-p.exited:
		if log := p.Log(); log != "" {
			return nil, fmt.Errorf("ferry serve exited before serving: %v\n%s", p.exitErr, log)
		}
		return nil, fmt.Errorf("ferry serve exited before serving: %v", p.exitErr)
	case <-time.After(s.Timeout):
		p.Kill()
		return nil, fmt.Errorf("ferry serve did not start within %v", s.Timeout)
	}
}

// scan reads the process's JSON log: it sends the addresses of each
// "ferry serving" line to serving, and passes every line to log (or keeps
// it, without log).
func (p *Process) scan(stderr io.Reader, log func([]byte), serving chan<- [2]string) {
	sc := bufio.NewScanner(stderr)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var line struct {
			Msg      string `json:"msg"`
			GRPCAddr string `json:"grpc_addr"`
			HTTPAddr string `json:"http_addr"`
		}
		if json.Unmarshal(sc.Bytes(), &line) == nil && line.Msg == "ferry serving" {
			select {
			case serving <- [2]string{line.GRPCAddr, line.HTTPAddr}:
			default: // a second one: Start is no longer waiting
			}
		}
		if log != nil {
			log(sc.Bytes())
			continue
		}
		p.logMu.Lock()
		p.log.Write(sc.Bytes())
		p.log.WriteByte('\n')
		p.logMu.Unlock()
	}
	_, _ = io.Copy(io.Discard, stderr)
}

// MustStart is Start that fails tb on an error and kills the process at
// the end of the test.
func MustStart(tb testing.TB, s Serve) *Process {
	tb.Helper()
	p, err := Start(tb, s)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(p.Kill)
	return p
}

// Log is what the process logged so far, if started without Serve.Log.
func (p *Process) Log() string {
	p.logMu.Lock()
	defer p.logMu.Unlock()
	return p.log.String()
}

// Exited is closed once the process has exited.
func (p *Process) Exited() <-chan struct{} { return p.exited }

// ExitErr is the process's exit error (nil for exit code 0); valid once
// Exited is closed.
func (p *Process) ExitErr() error { return p.exitErr }

// Kill sends SIGKILL and waits until the process is gone. It does nothing
// if it is gone already.
func (p *Process) Kill() {
	select {
	case <-p.exited:
		return
	default:
	}
	_ = p.Cmd.Process.Signal(syscall.SIGKILL)
	<-p.exited
}

// Stop sends SIGTERM and returns how long the process took to exit and its
// exit error (nil for exit code 0); after limit it kills the process and
// returns an error saying so.
func (p *Process) Stop(limit time.Duration) (time.Duration, error) {
	start := time.Now()
	_ = p.Cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
		return time.Since(start), p.exitErr
	case <-time.After(limit):
		p.Kill()
		return time.Since(start), fmt.Errorf("did not exit within %v of SIGTERM", limit)
	}
}

// Pause sends SIGSTOP and waits until every thread of the process is
// stopped: a thread inside a system call (a FUSE write, say) stops as it
// returns, so nothing the process does after Pause reaches user space.
func (p *Process) Pause(tb testing.TB) {
	tb.Helper()
	_ = p.Cmd.Process.Signal(syscall.SIGSTOP)
	deadline := time.Now().Add(10 * time.Second)
	for !allThreadsStopped(p.Cmd.Process.Pid) {
		select {
		case <-p.exited:
			return
		default:
		}
		if time.Now().After(deadline) {
			tb.Fatalf("pid %d: not every thread stopped within 10s of SIGSTOP", p.Cmd.Process.Pid)
		}
		time.Sleep(time.Millisecond)
	}
}

// Resume sends SIGCONT, ending a Pause.
func (p *Process) Resume() { _ = p.Cmd.Process.Signal(syscall.SIGCONT) }

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
