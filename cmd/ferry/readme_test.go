package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferrymq/ferry/internal/ferrytest"
)

// TestReadmeQuickstart runs every command block of README.md's Quickstart
// top to bottom, as written, with bash -euo pipefail, against a broker it
// starts (FERRY_SERVER, which the README names): the `go build` line
// builds ./ferry in a directory that links the repository's files, so
// nothing is written into the checkout. A command that fails, or waits
// for ever (a consume on an empty topic, a live view), fails the test.
func TestReadmeQuickstart(t *testing.T) {
	if testing.Short() {
		t.Skip("builds ferry and starts a broker")
	}
	root := ferrytest.ModuleRoot(t)
	readme, err := os.ReadFile(filepath.Join(root, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	blocks := quickstartBlocks(string(readme))
	if len(blocks) < 2 {
		t.Fatalf("README.md's Quickstart has %d sh blocks, want at least 2", len(blocks))
	}
	work := linkCheckout(t, root)
	p := startFerry(t, t.TempDir())
	for i, block := range blocks {
		ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
		cmd := exec.CommandContext(ctx, "bash", "-euo", "pipefail", "-c", block)
		cmd.Dir = work
		cmd.Env = append(os.Environ(), "FERRY_SERVER="+p.grpcAddr)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		err := cmd.Run()
		cancel()
		if err != nil {
			t.Fatalf("Quickstart block %d: %v\n--- block\n%s\n--- output\n%s", i+1, err, block, out.String())
		}
		t.Logf("Quickstart block %d ran: %d lines of output", i+1, strings.Count(out.String(), "\n"))
	}
}

// quickstartBlocks returns the ```sh blocks of the README's Quickstart
// section, in order.
func quickstartBlocks(readme string) []string {
	_, section, ok := strings.Cut(readme, "\n## Quickstart\n")
	if !ok {
		return nil
	}
	if end := strings.Index(section, "\n## "); end >= 0 {
		section = section[:end]
	}
	var blocks []string
	for {
		_, rest, ok := strings.Cut(section, "```sh\n")
		if !ok {
			return blocks
		}
		block, after, ok := strings.Cut(rest, "```")
		if !ok {
			return blocks
		}
		blocks = append(blocks, block)
		section = after
	}
}

// linkCheckout returns a temp directory holding a symlink to every entry
// of the checkout at root: commands run there see the repository (go
// build ./cmd/ferry works) and write their outputs beside the links.
func linkCheckout(t *testing.T, root string) string {
	t.Helper()
	entries, err := os.ReadDir(root)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for _, e := range entries {
		if e.Name() == ".git" || e.Name() == "ferry" {
			continue
		}
		if err := os.Symlink(filepath.Join(root, e.Name()), filepath.Join(dir, e.Name())); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}
