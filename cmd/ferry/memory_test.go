package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseMemorySize(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
	}{
		{"536870912", 512 << 20},
		{"512MiB", 512 << 20},
		{"512Mi", 512 << 20},
		{"512M", 512 << 20},
		{"2GiB", 2 << 30},
		{"2 gb", 2 << 30},
		{"64KiB", 64 << 10},
		{"1TiB", 1 << 40},
		{"100B", 100},
	} {
		got, err := parseMemorySize(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("parseMemorySize(%q) = %d, %v; want %d", tc.in, got, err, tc.want)
		}
	}
	for _, bad := range []string{"", "MiB", "-1", "1.5GiB", "12 parsecs", "99999999999TiB", strings.Repeat("9", 1000)} {
		if got, err := parseMemorySize(bad); err == nil {
			t.Errorf("parseMemorySize(%q) = %d, want an error", bad, got)
		} else if len(err.Error()) > 200 {
			t.Errorf("parseMemorySize's error echoes the input whole: %d bytes", len(err.Error()))
		}
	}
}

// fakeRoot writes files under a temp dir standing for /.
func fakeRoot(t *testing.T, files map[string]string) string {
	t.Helper()
	root := t.TempDir()
	for path, body := range files {
		full := filepath.Join(root, path)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func TestCgroupMemoryLimit(t *testing.T) {
	v1self := "12:pids:/\n4:memory:/kubepods/pod1/c1\n1:name=systemd:/\n0::/\n"
	for _, tc := range []struct {
		name  string
		files map[string]string
		want  int64
	}{
		{"v1 own cgroup", map[string]string{
			"proc/self/cgroup": v1self,
			"sys/fs/cgroup/memory/kubepods/pod1/c1/memory.limit_in_bytes": "536870912\n",
			"sys/fs/cgroup/memory/memory.limit_in_bytes":                  "9223372036854771712\n",
		}, 512 << 20},
		{"v1 no limit (page-rounded 2^63-1)", map[string]string{
			"proc/self/cgroup": v1self,
			"sys/fs/cgroup/memory/kubepods/pod1/c1/memory.limit_in_bytes": "9223372036854771712\n",
		}, 0},
		{"v1 namespaced: the container's cgroup at the mount point", map[string]string{
			"proc/self/cgroup":                           v1self,
			"sys/fs/cgroup/memory/memory.limit_in_bytes": "1073741824\n",
		}, 1 << 30},
		{"v2", map[string]string{
			"proc/self/cgroup": "0::/system.slice/ferry.service\n",
			"sys/fs/cgroup/system.slice/ferry.service/memory.max": "268435456\n",
		}, 256 << 20},
		{"v2 max", map[string]string{
			"proc/self/cgroup":           "0::/a\n",
			"sys/fs/cgroup/a/memory.max": "max\n",
		}, 0},
		{"v2 namespaced", map[string]string{
			"proc/self/cgroup":         "0::/\n",
			"sys/fs/cgroup/memory.max": "805306368\n",
		}, 768 << 20},
		{"no cgroup files", map[string]string{"proc/self/cgroup": v1self}, 0},
		{"garbage", map[string]string{
			"proc/self/cgroup":           "0::/a\n",
			"sys/fs/cgroup/a/memory.max": "lots\n",
		}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got, path := cgroupMemoryLimit(fakeRoot(t, tc.files)); got != tc.want {
				t.Errorf("cgroupMemoryLimit = %d (from %q), want %d", got, path, tc.want)
			}
		})
	}
}

func TestResolveMemoryLimit(t *testing.T) {
	root := fakeRoot(t, map[string]string{
		"proc/self/cgroup":           "0::/a\n",
		"sys/fs/cgroup/a/memory.max": "536870912\n",
	})
	for _, tc := range []struct {
		flag string
		want int64
	}{
		{"auto", 512 << 20},
		{"", 512 << 20},
		{"none", 0},
		{"0", 0},
		{"2GiB", 2 << 30},
	} {
		got, source, err := resolveMemoryLimit(tc.flag, root)
		if err != nil || got != tc.want {
			t.Errorf("resolveMemoryLimit(%q) = %d (%s), %v; want %d", tc.flag, got, source, err, tc.want)
		}
	}
	if _, _, err := resolveMemoryLimit("lots", root); err == nil {
		t.Error("resolveMemoryLimit(lots) accepted it")
	}
	if got := goMemoryLimit(512 << 20); got != 448<<20 {
		t.Errorf("goMemoryLimit(512 MiB) = %d MiB, want 448", got>>20)
	}
	if got := goMemoryLimit(128 << 20); got != 96<<20 {
		t.Errorf("goMemoryLimit(128 MiB) = %d MiB, want 96 (32 MiB headroom at least)", got>>20)
	}
}
