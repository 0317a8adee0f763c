package main

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"sync"
	"time"
)

// crashRestartDelay is how long a process that exited by itself waits to
// be started again.
const crashRestartDelay = time.Second

// proc is one child process of the supervisor — the broker or a service —
// run from the supervisor's own binary with a subcommand. run starts it and
// starts it again whenever it exits, until stop. Its standard input is a
// pipe the supervisor never writes: closing it asks for a graceful stop,
// and it closes by itself if the supervisor dies.
type proc struct {
	name    string
	exe     string
	args    []string
	logPath string // the process's stdout and stderr, appended
	lg      *slog.Logger

	stopc    chan struct{} // closed by stop
	stopOnce sync.Once
	done     chan struct{} // closed when run returns

	mu       sync.Mutex // guards the fields below
	cmd      *exec.Cmd
	stdin    io.Closer
	exited   chan struct{} // closed when the current process has exited
	up       bool
	stopping bool
	starts   int
	kills    int
	pause    time.Duration // set by kill: how long to wait before the restart
}

// procStatus is a process's state for the page.
type procStatus struct {
	Name   string `json:"name"`
	Up     bool   `json:"up"`
	PID    int    `json:"pid"`
	Starts int    `json:"starts"`
	Kills  int    `json:"kills"`
}

func newProc(name, exe, logPath string, lg *slog.Logger, args ...string) *proc {
	return &proc{name: name, exe: exe, args: append(args, "--supervised"), logPath: logPath, lg: lg,
		stopc: make(chan struct{}), done: make(chan struct{})}
}

// run keeps the process running until stop.
func (p *proc) run() {
	defer close(p.done)
	for {
		exited, err := p.start()
		if err != nil {
			p.lg.Error("start failed", "process", p.name, "err", err)
		} else if exited == nil {
			return // stopping
		} else {
			<-exited
		}
		p.mu.Lock()
		delay := crashRestartDelay
		if p.pause > 0 {
			delay, p.pause = p.pause, 0
		} else if err == nil && !p.stopping {
			p.lg.Warn("process exited; restarting", "process", p.name, "exit", p.cmd.ProcessState.String(), "log", p.logPath)
		}
		p.mu.Unlock()
		t := time.NewTimer(delay)
		select {
		case <-p.stopc:
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// start starts the process and returns a channel closed when it exits,
// or nil if stop was called.
func (p *proc) start() (<-chan struct{}, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stopping {
		return nil, nil
	}
	out, err := os.OpenFile(p.logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(p.exe, p.args...)
	cmd.Stdout, cmd.Stderr = out, out
	stdin, err := cmd.StdinPipe()
	if err != nil {
		out.Close()
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		out.Close()
		return nil, fmt.Errorf("start %s: %w", p.name, err)
	}
	exited := make(chan struct{})
	p.cmd, p.stdin, p.exited, p.up = cmd, stdin, exited, true
	p.starts++
	go func() {
		_ = cmd.Wait() // the exit is in ProcessState
		out.Close()
		p.mu.Lock()
		p.up = false
		p.mu.Unlock()
		close(exited)
	}()
	return exited, nil
}

// kill sends SIGKILL to the process if it is up, and has run start it
// again after pause. It returns the pid killed, or 0.
func (p *proc) kill(pause time.Duration) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.up || p.stopping {
		return 0
	}
	if err := p.cmd.Process.Kill(); err != nil {
		return 0
	}
	p.kills++
	p.pause = pause
	return p.cmd.Process.Pid
}

// stop asks the process to stop (closing its standard input), waits up
// to grace for it to exit, kills it if it has not, and returns once it is
// gone and will not be started again.
func (p *proc) stop(grace time.Duration) {
	p.stopOnce.Do(func() { close(p.stopc) })
	p.mu.Lock()
	p.stopping = true
	up, stdin, exited := p.up, p.stdin, p.exited
	p.mu.Unlock()
	if up {
		_ = stdin.Close()
		t := time.NewTimer(grace)
		select {
		case <-exited:
		case <-t.C:
			p.lg.Warn("process did not stop in time; killing it", "process", p.name)
			p.mu.Lock()
			_ = p.cmd.Process.Kill()
			p.mu.Unlock()
			<-exited
		}
		t.Stop()
	}
	<-p.done
}

func (p *proc) status() procStatus {
	p.mu.Lock()
	defer p.mu.Unlock()
	st := procStatus{Name: p.name, Up: p.up, Starts: p.starts, Kills: p.kills}
	if p.up {
		st.PID = p.cmd.Process.Pid
	}
	return st
}
