package verify

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// procState is a process's state letter from /proc: T when stopped.
func procState(t *testing.T, pid int) string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	return strings.Fields(s[strings.LastIndexByte(s, ')')+1:])[0]
}

// TestSignalsPauseResumes: the pause nemesis stops a process, read from
// its pid file, and resumes it — at once when the run ends mid-pause.
func TestSignalsPauseResumes(t *testing.T) {
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	pidFile := filepath.Join(t.TempDir(), "broker.pid")
	if err := os.WriteFile(pidFile, fmt.Appendf(nil, "%d\n", cmd.Process.Pid), 0o644); err != nil {
		t.Fatal(err)
	}
	n := &Signals{Targets: []string{pidFile}, Faults: []Fault{Pause}, PauseFor: time.Minute}
	ctx, cancel := context.WithCancel(context.Background())
	var notes []Step
	stopped := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- n.Disrupt(ctx, func(st Step) {
			notes = append(notes, st)
			if len(notes) == 1 {
				close(stopped)
			}
		})
	}()
	<-stopped
	deadline := time.Now().Add(10 * time.Second)
	for procState(t, cmd.Process.Pid) != "T" {
		if time.Now().After(deadline) {
			t.Fatal("the process was not stopped")
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel() // the run ends mid-pause
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if st := procState(t, cmd.Process.Pid); st == "T" {
		t.Fatalf("the process is left stopped (state %s)", st)
	}
	if len(notes) != 2 || notes[0].Fault != Pause || !strings.HasPrefix(notes[0].Detail, "SIGSTOP pid") ||
		notes[1].Fault != "" || !strings.HasPrefix(notes[1].Detail, "SIGCONT pid") {
		t.Fatalf("notes = %q, want a pause's SIGSTOP and its SIGCONT", notes)
	}
}

// TestSignalsBadTarget: a pid file that holds no pid is an error, and
// nothing is signalled.
func TestSignalsBadTarget(t *testing.T) {
	pidFile := filepath.Join(t.TempDir(), "broker.pid")
	if err := os.WriteFile(pidFile, []byte("not a pid\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	err := (&Signals{Targets: []string{pidFile}}).Disrupt(context.Background(), func(Step) { t.Error("a disruption was noted") })
	if err == nil || !strings.Contains(err.Error(), "holds no process id") {
		t.Fatalf("err = %v", err)
	}
}

// startSleeper starts a process that lives until the test ends, and
// returns its pid.
func startSleeper(t *testing.T) int {
	t.Helper()
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() { _ = cmd.Process.Kill(); <-exited })
	return cmd.Process.Pid
}

// TestSignalsFaultRounds: with kill and pause, every two disruptions that
// start a round make one of each, in either order; a fault whose signal
// failed is made next time instead; one fault, or none given (kill), is
// made every time.
func TestSignalsFaultRounds(t *testing.T) {
	s := &Signals{Faults: []Fault{Kill, Pause}}
	orders := map[string]int{}
	for range 200 {
		first := s.next()
		s.made()
		second := s.next()
		s.made()
		if first == second {
			t.Fatalf("a round made %s twice", first)
		}
		orders[string(first)+","+string(second)]++
	}
	if len(orders) != 2 {
		t.Fatalf("rounds came in orders %v, want both", orders)
	}
	failed := s.next() // its signal failed: not made
	if again := s.next(); again != failed {
		t.Fatalf("after a failed %s the next disruption makes %s", failed, again)
	}
	for _, faults := range [][]Fault{nil, {Kill}, {Pause}} {
		s := &Signals{Faults: faults}
		want := Kill
		if len(faults) == 1 {
			want = faults[0]
		}
		for range 5 {
			if f := s.next(); f != want {
				t.Fatalf("faults %v: made %s, want %s", faults, f, want)
			}
			s.made()
		}
	}
}

// TestSignalsMixesFaults: on live processes, kill,pause makes one SIGKILL
// and one pause (SIGSTOP, SIGCONT) in two disruptions, and passes over the
// process it killed, whose pid file still names it.
func TestSignalsMixesFaults(t *testing.T) {
	dir := t.TempDir()
	var targets []string
	for i := range 2 {
		f := filepath.Join(dir, fmt.Sprintf("broker-%d.pid", i))
		if err := os.WriteFile(f, fmt.Appendf(nil, "%d\n", startSleeper(t)), 0o644); err != nil {
			t.Fatal(err)
		}
		targets = append(targets, f)
	}
	for run := range 10 {
		n := &Signals{Targets: targets, Faults: []Fault{Kill, Pause}, PauseFor: time.Millisecond}
		var steps []Step
		for range 2 {
			if err := n.Disrupt(context.Background(), func(st Step) { steps = append(steps, st) }); err != nil {
				t.Fatalf("run %d: %v (steps %q)", run, err, steps)
			}
		}
		var kills, pauses, conts int
		for _, st := range steps {
			switch {
			case st.Fault == Kill && strings.HasPrefix(st.Detail, "SIGKILL pid"):
				kills++
			case st.Fault == Pause && strings.HasPrefix(st.Detail, "SIGSTOP pid"):
				pauses++
			case st.Fault == "" && strings.HasPrefix(st.Detail, "SIGCONT pid"):
				conts++
			default:
				t.Fatalf("run %d: unexpected step %q", run, st)
			}
		}
		if kills != 1 || pauses != 1 || conts != 1 {
			t.Fatalf("run %d: steps %q, want one kill and one pause", run, steps)
		}
		// Restart what was killed, as systemd would, once it is gone.
		for _, f := range targets {
			pid, err := readPid(f)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.ContainsFunc(steps, func(st Step) bool { return st.Detail == fmt.Sprintf("SIGKILL pid %d (%s)", pid, f) }) {
				if st := procState(t, pid); st == "T" {
					t.Fatalf("run %d: pid %d left stopped", run, pid)
				}
				continue
			}
			for alive(pid) {
				time.Sleep(10 * time.Millisecond)
			}
			if err := os.WriteFile(f, fmt.Appendf(nil, "%d\n", startSleeper(t)), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// TestSignalsNoLiveTarget: when no target's process runs, nothing is
// signalled and the fault stays to be made.
func TestSignalsNoLiveTarget(t *testing.T) {
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	n := &Signals{Targets: []string{fmt.Sprint(cmd.Process.Pid)}, Faults: []Fault{Pause, Kill}}
	want := n.next()
	err := n.Disrupt(context.Background(), func(Step) { t.Error("a disruption was noted") })
	if err == nil || !strings.Contains(err.Error(), "none of the 1 processes") {
		t.Fatalf("err = %v", err)
	}
	if got := n.next(); got != want {
		t.Fatalf("next fault %s after a failed %s", got, want)
	}
}

func TestParseFaults(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []Fault
		err  string
	}{
		{"kill", []Fault{Kill}, ""},
		{"pause", []Fault{Pause}, ""},
		{"kill,pause", []Fault{Kill, Pause}, ""},
		{"pause, kill", []Fault{Pause, Kill}, ""},
		{"kill,kill", nil, "given twice"},
		{"kill,", nil, `fault "": want kill or pause`},
		{"stop", nil, `fault "stop"`},
		{"none", nil, `fault "none"`},
	} {
		got, err := ParseFaults(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("ParseFaults(%q) = %v, %v; want error %q", tc.in, got, err, tc.err)
			}
			continue
		}
		if err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("ParseFaults(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
		}
	}
}
