package main

import (
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

func newRootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:           "ferry",
		Short:         "ferry is a durable message broker with a delivery guarantee per subscription",
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, args []string) error {
			return applyEnv(cmd)
		},
	}
	root.AddCommand(
		newServeCommand(),
		newTopicCommand(),
		newPubCommand(),
		newReadCommand(),
		newSubCommand(),
		newConsumeCommand(),
		newTopCommand(),
		newBenchCommand(),
		newVerifyCommand(),
		newClusterCommand(),
		newClientsCommand(),
		newVersionCommand(),
	)
	return root
}

// applyEnv sets every flag not given on the command line from its FERRY_*
// environment variable, if set: flags win over the environment, the
// environment over defaults.
func applyEnv(cmd *cobra.Command) error {
	var err error
	cmd.Flags().VisitAll(func(f *pflag.Flag) {
		if err != nil || f.Changed {
			return
		}
		name := "FERRY_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		v, ok := os.LookupEnv(name)
		if !ok {
			return
		}
		if f.Value.Type() == "stringArray" || f.Value.Type() == "stringSlice" {
			return // repeatable flags are command-line only
		}
		if serr := cmd.Flags().Set(f.Name, v); serr != nil {
			err = fmt.Errorf("%s=%q: %w", name, v, serr)
		}
	})
	return err
}
