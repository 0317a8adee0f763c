//go:build ferry_failpoints

package failpoint

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

func init() {
	name := os.Getenv("FERRY_FAILPOINT")
	if name == "" {
		return
	}
	act, err := action(os.Getenv("FERRY_FAILPOINT_ACTION"))
	if err != nil {
		fmt.Fprintf(os.Stderr, "FERRY_FAILPOINT_ACTION: %v\n", err)
		os.Exit(2)
	}
	every, err := strconv.ParseUint(os.Getenv("FERRY_FAILPOINT_EVERY"), 10, 64)
	if err != nil || every == 0 {
		every = 1
	}
	while := os.Getenv("FERRY_FAILPOINT_WHILE")
	var passed atomic.Uint64
	hit = func(at string) {
		if at != name || passed.Add(1)%every != 0 {
			return
		}
		if while != "" {
			if _, err := os.Stat(while); err != nil {
				return
			}
		}
		act(at)
	}
}

// action parses FERRY_FAILPOINT_ACTION.
func action(s string) (func(at string), error) {
	switch {
	case s == "" || s == "kill":
		return func(at string) {
			fmt.Fprintf(os.Stderr, "failpoint %s: killing the process\n", at)
			_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
			select {} // the signal is on its way
		}, nil
	case strings.HasPrefix(s, "sleep:"):
		d, err := time.ParseDuration(strings.TrimPrefix(s, "sleep:"))
		if err != nil {
			return nil, err
		}
		return func(string) { time.Sleep(d) }, nil
	}
	return nil, fmt.Errorf("%q is neither kill nor sleep:DURATION", s)
}
