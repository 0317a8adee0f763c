package verify

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// A Nemesis disrupts the broker. Disrupt makes one disruption and calls
// note for each step of it (e.g. a SIGSTOP of pid 41, then its SIGCONT),
// as it happens; it returns once the disruption is over, the broker's
// recovery left to whatever restarts it.
type Nemesis interface {
	Disrupt(ctx context.Context, note func(Step)) error
}

// A Fault is a kind of disruption.
type Fault string

// The faults a Nemesis makes.
const (
	// Kill: SIGKILL of a broker process (something else restarts it).
	Kill Fault = "kill"
	// Pause: SIGSTOP of a broker process, SIGCONT some time later — a
	// stalled node, which in a cluster should be stopped for longer than
	// an election timeout, so that others take over what it led while it
	// still believes it leads.
	Pause Fault = "pause"
	// RunCommand: a run of a shell command (Command).
	RunCommand Fault = "command"
)

// Step is one step of a disruption.
type Step struct {
	// Fault is the disruption the step begins (Kill, Pause, RunCommand);
	// "" for a step that ends one (the SIGCONT of a pause).
	Fault Fault
	// Detail says what was done, e.g. "SIGSTOP pid 41 (/run/ferry-1.pid)".
	Detail string
}

// ParseFaults parses a comma-separated list of signal faults: "kill",
// "pause", or both ("kill,pause"), each at most once.
func ParseFaults(list string) ([]Fault, error) {
	var faults []Fault
	for f := range strings.SplitSeq(list, ",") {
		switch fault := Fault(strings.TrimSpace(f)); {
		case fault != Kill && fault != Pause:
			return nil, fmt.Errorf("verify: fault %q: want kill or pause", f)
		case slices.Contains(faults, fault):
			return nil, fmt.Errorf("verify: fault %s given twice", fault)
		default:
			faults = append(faults, fault)
		}
	}
	return faults, nil
}

// Signals disrupts local broker processes with signals: Kill sends
// SIGKILL, Pause sends SIGSTOP and, PauseFor later, SIGCONT. Each
// disruption signals one of the Targets that is alive, picked at random.
// It is not safe for concurrent use.
type Signals struct {
	// Targets are process ids, or paths of pid files, read at each
	// disruption (a restarted broker has a new pid). A target whose process
	// is gone (killed and not restarted yet) is passed over.
	Targets []string
	// Faults are the disruptions to make: each disruption makes one, in
	// rounds that hold every fault once in a random order, so any run of
	// disruptions holds each fault at least once in every len(Faults) in a
	// row that start a round (with Kill and Pause: the 1st and 2nd, the 3rd
	// and 4th, …). A fault whose signal fails is made again next time.
	// Default: Kill.
	Faults []Fault
	// PauseFor is how long a Pause keeps a process stopped. Default 3s:
	// past ferry serve's election timeout (1s to 2s).
	PauseFor time.Duration

	round  []Fault      // what the current round has left, next first
	killed map[int]bool // pids it sent SIGKILL, dying or gone
}

// DefaultPauseFor is how long a Pause keeps a process stopped by default:
// longer than ferry serve's election timeout (10 ticks of 100ms,
// randomized up to twice that), so a cluster elects new leaders meanwhile.
const DefaultPauseFor = 3 * time.Second

// next is the fault the next disruption makes.
func (s *Signals) next() Fault {
	if len(s.Faults) == 0 {
		return Kill
	}
	if len(s.round) == 0 {
		s.round = slices.Clone(s.Faults)
		rand.Shuffle(len(s.round), func(i, j int) { s.round[i], s.round[j] = s.round[j], s.round[i] })
	}
	return s.round[0]
}

// made marks the fault next returned as made.
func (s *Signals) made() {
	if len(s.round) > 0 {
		s.round = s.round[1:]
	}
}

// pick reads every target and returns one whose process is alive, at
// random, with its pid.
func (s *Signals) pick() (target string, pid int, err error) {
	if len(s.Targets) == 0 {
		return "", 0, errors.New("verify: no process ids to disrupt")
	}
	var live []int
	pids := make([]int, len(s.Targets))
	for i, t := range s.Targets {
		if pids[i], err = readPid(t); err != nil {
			return "", 0, err
		}
		if !s.killed[pids[i]] && alive(pids[i]) {
			live = append(live, i)
		}
	}
	if len(live) == 0 {
		return "", 0, fmt.Errorf("verify: none of the %d processes to disrupt is running", len(s.Targets))
	}
	i := live[rand.IntN(len(live))]
	return s.Targets[i], pids[i], nil
}

// alive reports whether pid is a running (or stopped) process, not gone
// nor a zombie awaiting its parent.
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return syscall.Kill(pid, 0) == nil // no /proc: signal 0 says it exists
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 || i+3 > len(s) {
		return false
	}
	return s[i+2] != 'Z' && s[i+2] != 'X'
}

// Disrupt makes the next fault on one live target, picked at random.
func (s *Signals) Disrupt(ctx context.Context, note func(Step)) error {
	fault := s.next()
	target, pid, err := s.pick()
	if err != nil {
		return err
	}
	if fault == Kill {
		if err := signal(pid, syscall.SIGKILL); err != nil {
			return err
		}
		if s.killed == nil {
			s.killed = map[int]bool{}
		}
		s.killed[pid] = true // it may take a moment to die
		s.made()
		note(Step{Kill, fmt.Sprintf("SIGKILL pid %d (%s)", pid, target)})
		return nil
	}
	if err := signal(pid, syscall.SIGSTOP); err != nil {
		return err
	}
	s.made()
	note(Step{Pause, fmt.Sprintf("SIGSTOP pid %d (%s)", pid, target)})
	pause := s.PauseFor
	if pause <= 0 {
		pause = DefaultPauseFor
	}
	t := time.NewTimer(pause)
	select {
	case <-t.C:
	case <-ctx.Done(): // never leave a broker stopped
		t.Stop()
	}
	if err := signal(pid, syscall.SIGCONT); err != nil {
		return err
	}
	note(Step{Detail: fmt.Sprintf("SIGCONT pid %d (%s)", pid, target)})
	return nil
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
func (c *Command) Disrupt(ctx context.Context, note func(Step)) error {
	timeout := c.Timeout
	if timeout <= 0 {
		timeout = 30 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	note(Step{RunCommand, "run: " + c.Run})
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
		err := r.o.Nemesis.Disrupt(ctx, func(st Step) {
			r.h.Add(Event{Kind: Disruption, Fault: st.Fault, Detail: st.Detail})
			r.o.Log.Info("verify: disruption", "fault", st.Fault, "detail", st.Detail)
		})
		if err != nil {
			r.h.Add(Event{Kind: Disruption, Detail: "failed", Err: err.Error()})
			r.o.Log.Warn("verify: disruption failed", "err", err)
		}
	}
}
