package ferrytest

import (
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// TestNotInShippedBinary: the ferry command does not link the test kit.
func TestNotInShippedBinary(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", FerryPkg).CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	for _, dep := range strings.Fields(string(out)) {
		if dep == "github.com/ferrymq/ferry/internal/ferrytest" || dep == "testing" {
			t.Fatalf("%s imports %s", FerryPkg, dep)
		}
	}
}

// TestProcessLifecycle: a started ferry serve serves, pauses (every thread
// stopped) and resumes, and exits cleanly on SIGTERM.
func TestProcessLifecycle(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs a real broker")
	}
	p := MustStart(t, Serve{Dir: t.TempDir(), Log: func(b []byte) { t.Logf("ferry: %s", b) }})
	if p.GRPCAddr == "" || strings.HasSuffix(p.GRPCAddr, ":0") {
		t.Fatalf("GRPCAddr = %q, want the bound address", p.GRPCAddr)
	}
	p.Pause(t)
	if !allThreadsStopped(p.Cmd.Process.Pid) {
		t.Fatal("Pause returned with a thread running")
	}
	p.Resume()
	Eventually(t, 10*time.Second, 10*time.Millisecond, "a thread running after SIGCONT", func() bool {
		return !allThreadsStopped(p.Cmd.Process.Pid)
	})
	if took, err := p.Stop(30 * time.Second); err != nil {
		t.Fatalf("SIGTERM: exit after %v: %v", took, err)
	}
	select {
	case <-p.Exited():
	default:
		t.Fatal("Stop returned before the process exited")
	}
}

func TestMain(m *testing.M) { os.Exit(Main(m)) }
