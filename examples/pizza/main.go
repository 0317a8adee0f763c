// Command pizza is ferry's pizza-order demo: a storefront, kitchens,
// billing, a courier and a notifier, each its own OS process, each reading
// through the delivery guarantee its job needs — and chaos that kills them,
// and the broker, with SIGKILL, while a checker watches every guarantee.
//
//	go run ./examples/pizza                                 # the storefront at http://localhost:8080
//	go run ./examples/pizza --chaos                         # ... with a random kill -9 every few seconds
//	go run ./examples/pizza --orders 300 --rate 50 --chaos  # place 300 orders, report, exit 0 if all held
//
// Run without a subcommand it is the supervisor: it starts a broker
// process on a data directory (unless --server names one), creates the
// topics and subscriptions, starts every service as a process of this same
// binary, restarts whatever exits, and serves the page's stats and chaos
// button on a loopback control server. The subcommands are those
// processes:
//
//	pizza broker      a ferry broker (embedded Badger), restartable on its data directory and address
//	pizza storefront  the web page, the order API and the live board
//	pizza kitchen     cooks: orders → pizzas.ready, effectively-once, key-shared
//	pizza billing     charges orders into its own ledger, effectively-once
//	pizza courier     delivers pizzas.ready, at-least-once
//	pizza notifier    texts customers about orders and pizzas.ready, at-most-once
//
// The broker runs with TLS and token auth: the supervisor makes a CA, the
// broker's certificate, a token per process and a least-privilege policy
// at each start (identity.go); --insecure runs everything plaintext.
//
// Each service keeps a durable record of its side effects in its state
// directory; the checker (Check) reads those records and the topics back
// and judges each guarantee. See README.md.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
)

// subcommands are the processes the supervisor starts.
var subcommands = map[string]func(args []string) error{
	"broker":     runBroker,
	"storefront": runStorefront,
	"kitchen":    runKitchen,
	"billing":    runBilling,
	"courier":    runCourier,
	"notifier":   runNotifier,
}

func main() {
	if len(os.Args) > 1 && !strings.HasPrefix(os.Args[1], "-") {
		name := os.Args[1]
		run, ok := subcommands[name]
		if !ok {
			fmt.Fprintf(os.Stderr, "pizza: unknown subcommand %q: want broker, storefront, kitchen, billing, courier or notifier\n", name)
			os.Exit(2)
		}
		// A stop asked for while waiting for the broker is a clean exit.
		if err := run(os.Args[2:]); err != nil && !errors.Is(err, context.Canceled) {
			fmt.Fprintf(os.Stderr, "pizza %s: %v\n", name, err)
			os.Exit(1)
		}
		return
	}
	held, err := runSupervisor(os.Args[1:])
	if err != nil {
		fmt.Fprintln(os.Stderr, "pizza:", err)
		os.Exit(2)
	}
	if !held {
		os.Exit(1)
	}
}
