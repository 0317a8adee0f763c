// Command ferry is the ferry broker (ferry serve) and its command-line
// client (topic, pub, read, ...). Every flag can also be set through a
// FERRY_* environment variable: --data-dir is FERRY_DATA_DIR. A flag on the
// command line wins over the environment.
package main

import (
	"fmt"
	"os"
)

func main() {
	if err := newRootCommand().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "ferry:", err)
		os.Exit(1)
	}
}
