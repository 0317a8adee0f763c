package main

import (
	"fmt"
	"io"
	"os"
	"slices"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"go.yaml.in/yaml/v3"
)

// Configuration precedence for ferry serve: flags, then FERRY_* environment
// variables (applyEnv), then the YAML file named by --config, then the
// defaults. The file's keys are the flags' names:
//
//	grpc-addr: ":7420"
//	data-dir: /var/lib/ferry
//	fsync: always
//	shutdown-timeout: 10s
//
// A key that names no flag, or a value the flag refuses, stops start-up
// with a message naming the key.

// fileOnlyFlags are flags that make no sense inside the file.
var fileOnlyFlags = []string{"config", "print-config", "help"}

// applyConfigFile sets every flag that neither the command line nor the
// environment set from the YAML file at path.
func applyConfigFile(fs *pflag.FlagSet, path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	var doc map[string]any
	if err := yaml.Unmarshal(b, &doc); err != nil {
		return fmt.Errorf("config %s: %w", path, err)
	}
	keys := make([]string, 0, len(doc))
	for k := range doc {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		f := fs.Lookup(k)
		if f == nil || slices.Contains(fileOnlyFlags, k) {
			return fmt.Errorf("config %s: unknown key %q; keys are the flags of ferry serve, such as grpc-addr or data-dir", path, k)
		}
		v := doc[k]
		switch v.(type) {
		case map[string]any, []any:
			return fmt.Errorf("config %s: key %q: want a single value", path, k)
		case nil:
			return fmt.Errorf("config %s: key %q has no value", path, k)
		}
		if f.Changed {
			continue // set by a flag or the environment: they win
		}
		if err := fs.Set(k, fmt.Sprint(v)); err != nil {
			return fmt.Errorf("config %s: key %q: %w", path, k, err)
		}
	}
	return nil
}

// printConfigTo writes the effective configuration as YAML, in the file's
// form.
func printConfigTo(w io.Writer, fs *pflag.FlagSet) error {
	out := map[string]string{}
	fs.VisitAll(func(f *pflag.Flag) {
		if !slices.Contains(fileOnlyFlags, f.Name) {
			out[f.Name] = f.Value.String()
		}
	})
	b, err := yaml.Marshal(out)
	if err != nil {
		return err
	}
	_, err = w.Write(b)
	return err
}

// addConfigFlags adds --config and --print-config to cmd.
func addConfigFlags(cmd *cobra.Command, path *string, print *bool) {
	cmd.Flags().StringVar(path, "config", "", "YAML file of settings, keyed by flag name (flags and FERRY_* variables win over it)")
	cmd.Flags().BoolVar(print, "print-config", false, "print the effective configuration as YAML and exit")
}
