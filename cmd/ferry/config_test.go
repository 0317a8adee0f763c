package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// TestConfigPrecedence: flags win over FERRY_* variables, which win over
// the --config file, which wins over the defaults.
func TestConfigPrecedence(t *testing.T) {
	file := filepath.Join(t.TempDir(), "ferry.yaml")
	if err := os.WriteFile(file, []byte("grpc-addr: \":9001\"\nfsync: never\nlog-level: warn\nshutdown-timeout: 3s\ndisk-reserve: 2GiB\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		env  map[string]string
		args []string
		want map[string]string
	}{
		{"defaults", nil, nil,
			map[string]string{"grpc-addr": "localhost:7420", "fsync": "always", "log-level": "info", "shutdown-timeout": "10s", "disk-reserve": "5%"}},
		{"file over defaults", nil, []string{"--config", file},
			map[string]string{"grpc-addr": ":9001", "fsync": "never", "log-level": "warn", "shutdown-timeout": "3s", "http-addr": "localhost:7421", "disk-reserve": "2GiB"}},
		{"env over file", map[string]string{"FERRY_FSYNC": "always", "FERRY_GRPC_ADDR": ":9002", "FERRY_DISK_RESERVE": "10%"}, []string{"--config", file},
			map[string]string{"grpc-addr": ":9002", "fsync": "always", "log-level": "warn", "disk-reserve": "10%"}},
		{"flag over env and file", map[string]string{"FERRY_GRPC_ADDR": ":9002"}, []string{"--config", file, "--grpc-addr", ":9003", "--log-level", "debug"},
			map[string]string{"grpc-addr": ":9003", "fsync": "never", "log-level": "debug"}},
		{"config file from the environment", map[string]string{"FERRY_CONFIG": file}, nil,
			map[string]string{"grpc-addr": ":9001", "shutdown-timeout": "3s"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			got := printedConfig(t, tc.args...)
			for k, want := range tc.want {
				if got[k] != want {
					t.Errorf("%s = %q, want %q (all: %v)", k, got[k], want, got)
				}
			}
		})
	}
}

func printedConfig(t *testing.T, args ...string) map[string]string {
	t.Helper()
	cmd := newRootCommand()
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetArgs(append([]string{"serve", "--print-config"}, args...))
	if err := cmd.Execute(); err != nil {
		t.Fatalf("serve --print-config %v: %v", args, err)
	}
	m := map[string]string{}
	if err := yaml.Unmarshal(out.Bytes(), &m); err != nil {
		t.Fatalf("--print-config printed %q: %v", out.String(), err)
	}
	return m
}

// TestConfigFileRefusals: a key that names no flag, or a value its flag
// refuses, stops start-up with a message naming the key.
func TestConfigFileRefusals(t *testing.T) {
	for _, tc := range []struct{ yaml, want string }{
		{"grpc_adr: x\n", `unknown key "grpc_adr"`},
		{"retention-interval: soon\n", `key "retention-interval"`},
		{"disk-reserve: 100%\n", `key "disk-reserve"`},
		{"data-dir: [a, b]\n", `key "data-dir": want a single value`},
		{"print-config: true\n", `unknown key "print-config"`},
		{"grpc-addr:\n", `key "grpc-addr" has no value`},
		{"not: [valid\n", "config"},
	} {
		file := filepath.Join(t.TempDir(), "ferry.yaml")
		if err := os.WriteFile(file, []byte(tc.yaml), 0o600); err != nil {
			t.Fatal(err)
		}
		cmd := newRootCommand()
		cmd.SetOut(&bytes.Buffer{})
		cmd.SetArgs([]string{"serve", "--config", file, "--print-config"})
		err := cmd.Execute()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("config %q: err %v, want one containing %q", tc.yaml, err, tc.want)
		}
	}
}
