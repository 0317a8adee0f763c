//go:build ferry_failpoints

package storage

import (
	"fmt"
	"os"
	"strconv"
	"sync/atomic"
	"syscall"
)

// With the ferry_failpoints build tag, FERRY_FAILPOINT names the failpoint
// at which the process kills itself with SIGKILL, at every
// FERRY_FAILPOINT_EVERY-th time it passes it (default 1), after a line on
// standard error saying so; if FERRY_FAILPOINT_WHILE names a file, only
// while that file exists (a test disarms every node by removing it).
func init() {
	name := os.Getenv("FERRY_FAILPOINT")
	if name == "" {
		return
	}
	every, err := strconv.ParseUint(os.Getenv("FERRY_FAILPOINT_EVERY"), 10, 64)
	if err != nil || every == 0 {
		every = 1
	}
	while := os.Getenv("FERRY_FAILPOINT_WHILE")
	var passed atomic.Uint64
	failpoint = func(at string) {
		if at != name || passed.Add(1)%every != 0 {
			return
		}
		if while != "" {
			if _, err := os.Stat(while); err != nil {
				return
			}
		}
		fmt.Fprintf(os.Stderr, "failpoint %s: killing the process\n", at)
		_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {} // the signal is on its way
	}
}
