package main

import (
	"bufio"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
)

// The memory limit of ferry serve: --memory-limit (FERRY_MEMORY_LIMIT,
// memory-limit in the config file) is a size such as 512MiB, 1GiB or
// 536870912, "none" for no limit, or "auto" (the default): the limit of
// the cgroup the process runs in, as a container's is — cgroup v2's
// memory.max, else v1's memory.limit_in_bytes — or none if there is none.

// hugeCgroupLimit is the least cgroup limit taken to mean "none" (v1
// reports no limit as a page-rounded 2^63-1).
const hugeCgroupLimit = 1 << 60

// parseMemorySize parses a size in bytes: an integer with an optional unit
// B, KiB, MiB, GiB, TiB (also Ki, Mi, Gi, Ti, K, M, G, T, KB, MB, GB, TB:
// all powers of 1024).
func parseMemorySize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	i := 0
	for i < len(t) && t[i] >= '0' && t[i] <= '9' {
		i++
	}
	if i == 0 {
		return 0, fmt.Errorf("size %q: want a number of bytes with an optional unit, such as 512MiB or 2GiB", truncateArg(s))
	}
	n, err := strconv.ParseInt(t[:i], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("size %q is too large", truncateArg(s))
	}
	shift := 0
	switch strings.ToLower(strings.TrimSpace(t[i:])) {
	case "", "b":
	case "k", "ki", "kb", "kib":
		shift = 10
	case "m", "mi", "mb", "mib":
		shift = 20
	case "g", "gi", "gb", "gib":
		shift = 30
	case "t", "ti", "tb", "tib":
		shift = 40
	default:
		return 0, fmt.Errorf("size %q: unknown unit %q; use B, KiB, MiB, GiB or TiB", truncateArg(s), truncateArg(t[i:]))
	}
	if n > math.MaxInt64>>shift {
		return 0, fmt.Errorf("size %q is too large", truncateArg(s))
	}
	return n << shift, nil
}

func truncateArg(s string) string {
	if len(s) > 40 {
		return s[:40] + "..."
	}
	return s
}

// resolveMemoryLimit turns --memory-limit into bytes (0: none), reading
// the cgroup under root (/ in production) for "auto". It also says where
// the limit came from, for the log.
func resolveMemoryLimit(flag, root string) (limit int64, source string, err error) {
	switch strings.ToLower(strings.TrimSpace(flag)) {
	case "", "auto":
		limit, path := cgroupMemoryLimit(root)
		if limit == 0 {
			return 0, "none (no cgroup limit)", nil
		}
		return limit, "cgroup " + path, nil
	case "none", "0":
		return 0, "none (--memory-limit)", nil
	}
	limit, err = parseMemorySize(flag)
	if err != nil {
		return 0, "", fmt.Errorf("--memory-limit: %w", err)
	}
	return limit, "--memory-limit", nil
}

// cgroupMemoryLimit is the memory limit of this process's cgroup, from the
// files under root: cgroup v2's memory.max, else v1's
// memory.limit_in_bytes, in the process's own cgroup directory (per
// /proc/self/cgroup) or, in a container that sees its cgroup as the root,
// at the mount point. It returns 0 when there is no limit or none can be
// read, and the file it read.
func cgroupMemoryLimit(root string) (int64, string) {
	v1, v2 := selfCgroups(filepath.Join(root, "proc/self/cgroup"))
	var candidates []string
	if v2 != "" {
		candidates = append(candidates,
			filepath.Join(root, "sys/fs/cgroup", v2, "memory.max"),
			filepath.Join(root, "sys/fs/cgroup/memory.max"))
	}
	if v1 != "" {
		candidates = append(candidates,
			filepath.Join(root, "sys/fs/cgroup/memory", v1, "memory.limit_in_bytes"),
			filepath.Join(root, "sys/fs/cgroup/memory/memory.limit_in_bytes"))
	}
	for _, path := range candidates {
		b, err := os.ReadFile(path)
		if err != nil {
			continue
		}
		v := strings.TrimSpace(string(b))
		if v == "max" {
			return 0, path
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n <= 0 {
			continue
		}
		if n >= hugeCgroupLimit {
			return 0, path
		}
		return n, path
	}
	return 0, ""
}

// selfCgroups reads /proc/self/cgroup: the path of the v1 memory
// controller's cgroup and of the v2 (unified, "0::") cgroup, each "" if
// absent.
func selfCgroups(path string) (v1, v2 string) {
	f, err := os.Open(path)
	if err != nil {
		return "", ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// hierarchy-id:controllers:path
		parts := strings.SplitN(sc.Text(), ":", 3)
		if len(parts) != 3 {
			continue
		}
		switch {
		case parts[0] == "0" && parts[1] == "":
			v2 = parts[2]
		case slices.Contains(strings.Split(parts[1], ","), "memory"):
			v1 = parts[2]
		}
	}
	return v1, v2
}

// goMemoryLimit is the Go runtime's soft limit for a memory limit: an
// eighth below it, at least 32 MiB below, for what the runtime does not
// count (the pages of Badger's files mapped in, the kernel's buffers).
func goMemoryLimit(limit int64) int64 {
	return limit - max(limit/8, 32<<20)
}

// setGoMemoryLimit sets the runtime's soft memory limit from limit unless
// GOMEMLIMIT is set (then the user's value stands) or there is no limit.
// It returns the limit in force, math.MaxInt64 for none.
func setGoMemoryLimit(limit int64) int64 {
	if os.Getenv("GOMEMLIMIT") != "" || limit <= 0 {
		return debug.SetMemoryLimit(-1)
	}
	debug.SetMemoryLimit(goMemoryLimit(limit))
	return debug.SetMemoryLimit(-1)
}
