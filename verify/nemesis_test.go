package verify

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
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
	n := &Signals{Targets: []string{pidFile}, Pause: true, PauseFor: time.Minute}
	ctx, cancel := context.WithCancel(context.Background())
	var notes []string
	stopped := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- n.Disrupt(ctx, func(d string) {
			notes = append(notes, d)
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
	if len(notes) != 2 || !strings.HasPrefix(notes[0], "SIGSTOP pid") || !strings.HasPrefix(notes[1], "SIGCONT pid") {
		t.Fatalf("notes = %q, want a SIGSTOP and a SIGCONT", notes)
	}
}

// TestSignalsBadTarget: a pid file that holds no pid is an error, and
// nothing is signalled.
func TestSignalsBadTarget(t *testing.T) {
	pidFile := filepath.Join(t.TempDir(), "broker.pid")
	if err := os.WriteFile(pidFile, []byte("not a pid\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	err := (&Signals{Targets: []string{pidFile}}).Disrupt(context.Background(), func(string) { t.Error("a disruption was noted") })
	if err == nil || !strings.Contains(err.Error(), "holds no process id") {
		t.Fatalf("err = %v", err)
	}
}
