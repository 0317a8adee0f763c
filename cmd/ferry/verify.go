package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/ferrymq/ferry/client"
	vfy "github.com/ferrymq/ferry/verify"
)

// verifyFlags are ferry verify's flags.
type verifyFlags struct {
	server          string
	output          string
	report          string
	history         string
	nemesis         string
	nemesisCommand  string
	pids            []string
	nemesisInterval time.Duration
	pauseFor        time.Duration
	tls             tlsFlags   // as every client command's (client.go)
	token           tokenFlags // as every client command's (client.go)
	o               vfy.Options
}

func newVerifyCommand() *cobra.Command {
	return verifyCommand(func(cmd *cobra.Command, vf *verifyFlags) error {
		return runVerify(cmd.Context(), vf, cmd.OutOrStdout(), cmd.ErrOrStderr())
	})
}

// verifyCommand builds ferry verify; run gets its flags once resolved.
func verifyCommand(run func(*cobra.Command, *verifyFlags) error) *cobra.Command {
	vf := &verifyFlags{server: "localhost:7420", output: "text", nemesis: "none"}
	cmd := &cobra.Command{
		Use:   "verify",
		Short: "Check a deployment's delivery guarantees against a recorded history",
		Long: `Run a workload against the broker (or cluster) named by --server, record
its full history and check it. verify creates its own topics and
subscriptions (names start with a random "verify-…-" prefix), one
subscription of each guarantee and type; producers publish with ids (half
keyed); consumers ack, nack, stay silent past the ack deadline and
disconnect at random; a Commit pipeline copies each input to an output
topic. After --duration the producers stop, consumers drain, every
partition is read back, and the history is checked:

  stored               every acknowledged publish is stored once, at its offset
                       (a linearizable log; porcupine checks it)
  delivered-as-stored  every delivery is the message stored at its offset
  at-most-once         nothing delivered twice
  at-least-once        every stored message delivered (at-least-once and
                       effectively-once subscriptions)
  effectively-once     no attempt delivered twice, nothing delivered after
                       a confirmed ack, a stale attempt's ack refused
  pipeline             exactly one Commit output per input
  key-order            key-shared: per-key order, one consumer per key
  drained              once producers stop, consumers receive everything
                       within --drain-timeout

Each violation is printed with its evidence (ids, offsets, times); the exit
status is 0 only when there is none. What verify created is deleted at the
end, also on Ctrl-C.

A nemesis disrupts the broker during the run, every --nemesis-interval,
signalling one of --pids (process ids or pid files of local broker
processes) that is running: --nemesis kill sends SIGKILL (something else —
systemd, Kubernetes, your script — must restart the broker); --nemesis
pause sends SIGSTOP and, --pause-for later, SIGCONT (a stalled node: keep
--pause-for above the election timeout, 1-2s for ferry serve, so a cluster
takes over what the node led while it still believes it leads); --nemesis
kill,pause mixes both, one of each in every two disruptions (the first
and second, the third and fourth, …), in random order. --nemesis-command
runs a shell command instead (e.g. "kubectl delete pod ferry-1"). Each
disruption is recorded in the history and counted by kind in the result.

Against a broker with TLS or auth on, give the flags every client command
takes: --tls-ca (and --tls-cert/--tls-key if it asks for a client
certificate), --token, FERRY_TOKEN or --token-file. The principal needs
publish, subscribe, read and admin on the topics named verify-* and their
subscriptions (docs/verify.md); before creating anything verify checks that a
server answers, and says why not.

--keep leaves the topics and subscriptions in place (to inspect them, or
compare the nodes' copies of the partitions); they are named in the
result.`,
		Example: `  ferry verify --server localhost:7420
  ferry verify --server n1:7420,n2:7420,n3:7420 --duration 1m --nemesis kill,pause --pids /run/ferry-1.pid,/run/ferry-2.pid,/run/ferry-3.pid
  FERRY_TOKEN=$(cat verifier.token) ferry verify --server ferry:7420 --tls-ca ca.crt --duration 30s
  ferry verify --server ferry:7420 --nemesis-command 'kubectl delete pod -l app=ferry --wait=false' -o json --report verify.html`,
		Args: cobra.NoArgs,
	}
	f := cmd.Flags()
	f.StringVar(&vf.server, "server", vf.server, "broker address, or a cluster's nodes comma-separated (env FERRY_SERVER)")
	f.StringVarP(&vf.output, "output", "o", vf.output, "text or json (the result as one object: checks, counts, violations)")
	f.StringVar(&vf.report, "report", "", "also write a self-contained HTML timeline (disruptions, deliveries, violations) to this file")
	f.StringVar(&vf.history, "history", "", "also write the full history (one JSON event per line) to this file")
	f.DurationVar(&vf.o.Duration, "duration", 20*time.Second, "how long producers publish; consumers drain after")
	f.StringVar(&vf.nemesis, "nemesis", vf.nemesis, "disrupt the broker: none, kill (SIGKILL one of --pids), pause (SIGSTOP, then SIGCONT) or kill,pause (one of each in every two disruptions)")
	f.StringSliceVar(&vf.pids, "pids", nil, "broker process ids or pid files, for --nemesis kill and pause (comma-separated)")
	f.StringVar(&vf.nemesisCommand, "nemesis-command", "", "a shell command that disrupts the broker, run every --nemesis-interval (instead of --nemesis)")
	f.DurationVar(&vf.nemesisInterval, "nemesis-interval", 5*time.Second, "time between disruptions")
	f.DurationVar(&vf.pauseFor, "pause-for", vfy.DefaultPauseFor, "how long --nemesis pause keeps a process stopped (above the election timeout: ferry serve's is 1-2s)")
	f.BoolVar(&vf.o.Keep, "keep", false, "leave the topics and subscriptions verify created in place at the end (the result names them)")
	f.IntVar(&vf.o.Producers, "producers", 3, "producers publishing at once")
	f.IntVar(&vf.o.Rate, "rate", 50, "publishes per second per producer")
	f.Uint32Var(&vf.o.Partitions, "partitions", 3, "partitions of the topics verify creates")
	f.DurationVar(&vf.o.AckTimeout, "ack-timeout", 2*time.Second, "ack timeout of the subscriptions verify creates")
	f.DurationVar(&vf.o.DrainTimeout, "drain-timeout", time.Minute, "how long consumers may take to drain once producers stop")
	f.Uint64Var(&vf.o.Seed, "seed", 0, "seed of the consumers' random choices (0: random; the run logs it)")
	vf.tls.add(f)
	vf.token.add(f)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if err := vf.resolve(); err != nil {
			return err
		}
		return run(cmd, vf)
	}
	return cmd
}

// resolve checks the flags and turns them into vf.o.
func (vf *verifyFlags) resolve() error {
	if vf.output != "text" && vf.output != "json" {
		return fmt.Errorf("--output %q: want text or json", vf.output)
	}
	if vf.o.Duration <= 0 || vf.nemesisInterval <= 0 || vf.o.Producers < 1 || vf.o.Rate < 1 || vf.o.Partitions < 1 {
		return errors.New("--duration, --nemesis-interval, --producers, --rate and --partitions must be positive")
	}
	vf.o.Server, vf.o.NemesisInterval = vf.server, vf.nemesisInterval
	var err error
	if vf.o.TLS, err = vf.tls.creds(); err != nil {
		return err
	}
	if vf.o.Token, err = vf.token.value(); err != nil {
		return err
	}
	vf.o.TokenOverPlaintext = vf.token.plaintext
	switch {
	case vf.nemesisCommand != "" && vf.nemesis != "none":
		return errors.New("give --nemesis or --nemesis-command, not both")
	case vf.nemesisCommand != "":
		vf.o.Nemesis = &vfy.Command{Run: vf.nemesisCommand}
	case vf.nemesis == "none":
	default:
		faults, err := vfy.ParseFaults(vf.nemesis)
		if err != nil {
			return fmt.Errorf("--nemesis %q: %w (want none, kill, pause or kill,pause)", vf.nemesis, err)
		}
		if len(vf.pids) == 0 {
			return fmt.Errorf("--nemesis %s needs --pids (process ids or pid files of the brokers)", vf.nemesis)
		}
		if slices.Contains(faults, vfy.Pause) && vf.pauseFor <= 0 {
			return fmt.Errorf("--pause-for %v must be positive", vf.pauseFor)
		}
		vf.o.Nemesis = &vfy.Signals{Targets: vf.pids, Faults: faults, PauseFor: vf.pauseFor}
	}
	return nil
}

// maxElectionTimeout is the longest election timeout of ferry serve's
// cluster nodes (cluster.DefaultOptions: 10 ticks of 100ms, randomized up
// to twice that).
const maxElectionTimeout = 2 * time.Second

// runVerify runs and checks, prints the result, writes the report and
// history if asked, and fails when a promise was broken.
func runVerify(ctx context.Context, vf *verifyFlags, out, errw io.Writer) error {
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	vf.o.Log = slog.New(slog.NewTextHandler(errw, &slog.HandlerOptions{Level: slog.LevelInfo}))
	if sig, ok := vf.o.Nemesis.(*vfy.Signals); ok && slices.Contains(sig.Faults, vfy.Pause) && sig.PauseFor <= maxElectionTimeout {
		vf.o.Log.Warn("verify: --pause-for is within ferry serve's election timeout: a cluster may elect no new leaders while a node is stopped",
			"pause_for", sig.PauseFor, "election_timeout", "1s-2s")
	}
	if err := vf.reach(ctx); err != nil {
		return err
	}
	res, events, err := vfy.Run(ctx, vf.o)
	if vf.history != "" && len(events) > 0 {
		if herr := writeHistory(vf.history, events); herr != nil {
			return herr
		}
	}
	if err != nil {
		return err
	}
	if vf.report != "" {
		if err := vfy.WriteReport(vf.report, res, events); err != nil {
			return fmt.Errorf("report: %w", err)
		}
	}
	if vf.output == "json" {
		err = printJSON(out, res)
	} else {
		err = vfy.PrintText(out, res)
	}
	if err != nil {
		return err
	}
	if !res.OK() {
		return fmt.Errorf("verify: %d violations", len(res.Violations))
	}
	return nil
}

// reach checks, before verify creates anything, that a server answers
// with the credentials of the flags, through the connection every client
// command makes (clientFlags.connect, lazily connected): a refusal — a TLS
// handshake, a token missing or unknown, a permission lacking — is told at
// once in the server's words, where a waiting Dial would wait out its
// deadline.
func (vf *verifyFlags) reach(ctx context.Context) error {
	var errs []error
	for _, addr := range strings.Split(vf.server, ",") {
		cf := clientFlags{server: strings.TrimSpace(addr), output: "text", timeout: 10 * time.Second, tls: vf.tls, token: vf.token}
		err := cf.withClient(ctx, func(ctx context.Context, c *client.Client) error {
			_, err := c.ListTopics(ctx)
			return err
		})
		if err == nil {
			return nil
		}
		errs = append(errs, fmt.Errorf("%s: %w", cf.server, err))
	}
	return fmt.Errorf("verify: checking the servers before the run: %w", errors.Join(errs...))
}

// writeHistory writes events as JSON lines.
func writeHistory(path string, events []vfy.Event) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	for _, e := range events {
		if err := printJSON(f, e); err != nil {
			f.Close()
			return err
		}
	}
	return f.Close()
}
