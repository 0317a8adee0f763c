package main

import (
	"fmt"
	"runtime"
	"runtime/debug"

	"github.com/spf13/cobra"
)

// Set at build time, as the Dockerfile and deploy/kubernetes/e2e.sh do:
//
//	go build -ldflags "-X main.version=v0.1.0 -X main.commit=$(git rev-parse HEAD) \
//	  -X main.buildDate=$(date -u +%Y-%m-%dT%H:%M:%SZ)" ./cmd/ferry
//
// Left empty, they come from the binary's build info (buildInfo).
var (
	version   string
	commit    string
	buildDate string
)

// buildInfo returns the version, commit and build date: those set with
// -ldflags -X, else what the Go toolchain recorded (the module version for
// go install, the VCS revision and commit time for a build in a checkout),
// else "unknown".
func buildInfo() (ver, rev, date string) {
	ver, rev, date = version, commit, buildDate
	if bi, ok := debug.ReadBuildInfo(); ok {
		if ver == "" && bi.Main.Version != "" {
			ver = bi.Main.Version
		}
		modified := false
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				if rev == "" {
					rev = s.Value
				}
			case "vcs.time":
				if date == "" {
					date = s.Value
				}
			case "vcs.modified":
				modified = s.Value == "true"
			}
		}
		if modified && commit == "" && rev != "" {
			rev += "-dirty"
		}
	}
	for _, s := range []*string{&ver, &rev, &date} {
		if *s == "" {
			*s = "unknown"
		}
	}
	return ver, rev, date
}

func newVersionCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version, commit and build date",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ver, rev, date := buildInfo()
			_, err := fmt.Fprintf(cmd.OutOrStdout(), "ferry %s\ncommit: %s\nbuilt: %s\ngo: %s %s/%s\n",
				ver, rev, date, runtime.Version(), runtime.GOOS, runtime.GOARCH)
			return err
		},
	}
}
