package main

import (
	"os"
	"path/filepath"
	"testing"
)

// TestLimitFlags: the --limit-* flags are off by default and read from
// the --config file like every flag; a byte rate takes a size.
func TestLimitFlags(t *testing.T) {
	got := printedConfig(t)
	for k, want := range map[string]string{"limit-publish-msgs": "0", "limit-publish-bytes": "0", "limit-streams": "0",
		"limit-subscriptions": "0", "limit-burst": "1s", "limit-principals": "10000"} {
		if got[k] != want {
			t.Errorf("default %s = %q, want %q", k, got[k], want)
		}
	}
	file := filepath.Join(t.TempDir(), "ferry.yaml")
	yaml := "limit-publish-msgs: 5000\nlimit-publish-bytes: 10MiB\nlimit-streams: 8\nlimit-subscriptions: 20\nlimit-burst: 2s\n"
	if err := os.WriteFile(file, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	got = printedConfig(t, "--config", file, "--limit-streams", "4")
	for k, want := range map[string]string{"limit-publish-msgs": "5000", "limit-publish-bytes": "10485760", "limit-streams": "4",
		"limit-subscriptions": "20", "limit-burst": "2s"} {
		if got[k] != want {
			t.Errorf("%s = %q, want %q", k, got[k], want)
		}
	}
}
