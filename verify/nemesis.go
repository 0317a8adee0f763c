package verify

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// A Nemesis disrupts the broker. Disrupt makes one disruption and calls
// note for each step of it (e.g. "SIGSTOP pid 41", then "SIGCONT pid 41"),
// as it happens; it returns once the disruption is over, the broker's
// recovery left to whatever restarts it.
type Nemesis interface {
	Disrupt(ctx context.Context, note func(detail string)) error
}

// Signals disrupts local broker processes: Kill sends SIGKILL (something
// else — systemd, Kubernetes, a test — restarts the broker), Pause sends
// SIGSTOP and, PauseFor later, SIGCONT.
type Signals struct {
	// Targets are process ids, or paths of pid files, read at each
	// disruption (a restarted broker has a new pid).
	Targets []string
	// Pause: SIGSTOP then SIGCONT; else SIGKILL.
	Pause bool
	// PauseFor is how long a process stays stopped. Default 2s.
	PauseFor time.Duration
}

// Disrupt signals one target, picked at random.
func (s *Signals) Disrupt(ctx context.Context, note func(string)) error {
	if len(s.Targets) == 0 {
		return errors.New("verify: no process ids to disrupt")
	}
	target := s.Targets[rand.IntN(len(s.Targets))]
	pid, err := readPid(target)
	if err != nil {
		return err
	}
	if !s.Pause {
		note(fmt.Sprintf("SIGKILL pid %d (%s)", pid, target))
		return signal(pid, syscall.SIGKILL)
	}
	note(fmt.Sprintf("SIGSTOP pid %d (%s)", pid, target))
	if err := signal(pid, syscall.SIGSTOP); err != nil {
		return err
	}
	pause := s.PauseFor
	if pause <= 0 {
		pause = 2 * time.Second
	}
	t := time.NewTimer(pause)
	select {
	case <-t.C:
	case <-ctx.Done(): // never leave a broker stopped
		t.Stop()
	}
	note(fmt.Sprintf("SIGCONT pid %d (%s)", pid, target))
	return signal(pid, syscall.SIGCONT)
}

// readPid reads a target: a process id, or a file holding one.
func readPid(target string) (int, error) {
	if pid, err := strconv.Atoi(target); err == nil {
		return pid, nil
	}
	b, err := os.ReadFile(target)
	if err != nil {
		return 0, fmt.Errorf("verify: pid file: %w", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0, fmt.Errorf("verify: pid file %s holds no process id", target)
	}
	return pid, nil
}

func signal(pid int, sig syscall.Signal) error {
	if err := syscall.Kill(pid, sig); err != nil {
		return fmt.Errorf("verify: %v to pid %d: %w", sig, pid, err)
	}
	return nil
}

// Command disrupts the broker by running a shell command, such as
// "kubectl delete pod ferry-1".
type Command struct {
	// Run is the command, run with sh -c.
	Run string
	// Timeout bounds one run. Default 30s.
	Timeout time.Duration
}

// Disrupt runs the command once.
func (c *Command) Disrupt(ctx context.Context, note func(string)) error {
	timeout := c.Timeout
	if timeout <= 0 {
		timeout = 30 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	note("run: " + c.Run)
	out, err := exec.CommandContext(ctx, "sh", "-c", c.Run).CombinedOutput()
	if err != nil {
		return fmt.Errorf("verify: nemesis command: %w: %s", err, lastLine(out))
	}
	return nil
}

func lastLine(b []byte) string {
	s := strings.TrimSpace(string(b))
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		s = s[i+1:]
	}
	if len(s) > 200 {
		s = s[:200] + "…"
	}
	return s
}

// disrupt runs the nemesis every NemesisInterval until ctx ends, and
// records each step in the history.
func (r *run) disrupt(ctx context.Context) {
	if r.o.Nemesis == nil {
		return
	}
	for {
		t := time.NewTimer(r.o.NemesisInterval)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		err := r.o.Nemesis.Disrupt(ctx, func(detail string) {
			r.h.Add(Event{Kind: Disruption, Detail: detail})
			r.o.Log.Info("verify: disruption", "detail", detail)
		})
		if err != nil {
			r.h.Add(Event{Kind: Disruption, Detail: "failed", Err: err.Error()})
			r.o.Log.Warn("verify: disruption failed", "err", err)
		}
	}
}
