package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"slices"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/keepalive"

	"github.com/ferrymq/ferry/client"
)

// loadConfig is the load command's flags.
type loadConfig struct {
	commonFlags
	servers    []string // every node's gRPC address
	topic      string
	partitions uint32
	producers  int
	rate       float64
	warmup     time.Duration
	after      time.Duration
	disrupt    string
	maxLatency time.Duration
	settle     time.Duration
}

func runLoad(ctx context.Context, lg *slog.Logger, args []string) error {
	fs := flag.NewFlagSet("load", flag.ExitOnError)
	var cfg loadConfig
	cfg.add(fs, 10*time.Minute)
	servers := fs.String("servers", "", "every node's gRPC address, comma-separated")
	fs.StringVar(&cfg.topic, "topic", "e2e", "input topic, created if missing; the pipeline writes to TOPIC-out")
	partitions := fs.Uint("partitions", 3, "the topics' partitions")
	fs.IntVar(&cfg.producers, "producers", 4, "concurrent producers, each publishing one message at a time")
	fs.Float64Var(&cfg.rate, "rate", 100, "publishes per second, all producers together, at most; 0: as fast as they are answered")
	fs.DurationVar(&cfg.warmup, "warmup", 5*time.Second, "load before -disrupt")
	fs.DurationVar(&cfg.after, "after", 5*time.Second, "load after -disrupt finished")
	fs.StringVar(&cfg.disrupt, "disrupt", "", "shell command run under load; it must fail if the disruption did not happen as planned")
	fs.DurationVar(&cfg.maxLatency, "max-latency", 10*time.Second, "most time a publish may take from its first try to its ack")
	fs.DurationVar(&cfg.settle, "settle", 2*time.Minute, "how long the cluster and the pipeline get to catch up after the load")
	_ = fs.Parse(args)
	cfg.servers = splitList(*servers)
	cfg.partitions = uint32(*partitions)
	if len(cfg.servers) == 0 {
		return fmt.Errorf("load: -servers is required")
	}
	if err := cfg.setup(); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.timeout)
	defer cancel()
	return load(ctx, lg, cfg)
}

func load(ctx context.Context, lg *slog.Logger, cfg loadConfig) error {
	out := cfg.topic + "-out"
	sub := cfg.topic + "-pipeline"
	c, err := dialCluster(ctx, cfg.servers)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := createPipeline(ctx, c, cfg, out, sub); err != nil {
		return err
	}

	pl := &pipeline{delivered: map[string]int{}}
	pctx, stopPipeline := context.WithCancel(ctx)
	defer stopPipeline()
	pdone := make(chan error, 1)
	go func() {
		pdone <- c.Process(pctx, cfg.topic, sub, func(_ context.Context, in *client.Message) ([]*client.Message, error) {
			pl.deliver(in.ID)
			return []*client.Message{{Topic: out, Payload: []byte(in.ID)}}, nil
		}, client.WithConcurrency(16), client.WithCredit(64))
	}()

	pub := &publisher{c: c, topic: cfg.topic, stopping: make(chan struct{}), acked: map[string]ack{}}
	if cfg.rate > 0 {
		pub.interval = time.Duration(float64(cfg.producers) * float64(time.Second) / cfg.rate)
	}
	start := time.Now()
	var wg sync.WaitGroup
	for w := range cfg.producers {
		wg.Go(func() { pub.produce(ctx, w) })
	}
	lg.Info("load started", "topic", cfg.topic, "producers", cfg.producers, "servers", joinList(cfg.servers))
	if !sleepCtx(ctx, cfg.warmup) {
		return ctx.Err()
	}
	disruptTook, duringAcks, disruptErr := disrupt(ctx, lg, cfg.disrupt, pub)
	sleepCtx(ctx, cfg.after)
	close(pub.stopping)
	wg.Wait()
	loadTook := time.Since(start)

	var problems []string
	bad := func(format string, a ...any) { problems = append(problems, fmt.Sprintf(format, a...)) }
	if disruptErr != nil {
		bad("disruption %q: %v", cfg.disrupt, disruptErr)
	}
	if cfg.disrupt != "" && duringAcks == 0 {
		bad("no publish was acknowledged during the disruption: the load did not run through it")
	}
	ps := checkPublishes(lg, pub, start, loadTook, cfg.maxLatency, bad)

	// Every node's logs: all acknowledged messages, where they were
	// acknowledged, the same on every node.
	sctx, cancelSettle := context.WithTimeout(ctx, cfg.settle)
	defer cancelSettle()
	logs, stored, err := checkLogs(sctx, cfg, pub.acked, bad)
	if err != nil {
		return err
	}
	lg.Info("logs read from every node", "stored", stored, "acked", ps.acked, "unknown_outcome", stored-ps.acked)

	// The pipeline: exactly one output per stored input.
	inputs := logs[0].ids()
	var outputs map[string]int
	for {
		ol, err := readAll(sctx, cfg.servers[0], out, cfg.partitions)
		if err != nil {
			return fmt.Errorf("read %s: %w", out, err)
		}
		outputs = ol.payloadCounts()
		if len(outputs) >= len(inputs) || !sleepCtx(sctx, time.Second) {
			break
		}
	}
	stopPipeline()
	if err := <-pdone; err != nil && !errors.Is(err, context.Canceled) {
		bad("pipeline: %v", err)
	}
	checkOutputs(inputs, outputs, cfg.settle, bad)
	deliveries, redelivered := pl.counts()
	lg.Info("pipeline", "inputs", len(inputs), "outputs", len(outputs), "deliveries", deliveries, "inputs_redelivered", redelivered)

	// Every node applied every group as far as the others.
	if _, err := waitHealthy(sctx, lg, cfg.servers[0], len(cfg.servers), true); err != nil {
		bad("%v", err)
	}

	if len(problems) > 0 {
		for _, p := range problems {
			fmt.Println("FAIL:", p)
		}
		return fmt.Errorf("%w: %d problems", errCheck, len(problems))
	}
	fmt.Printf("load %s: %d publishes acknowledged (%d more of unknown outcome stored), none lost on any of %d nodes; "+
		"slowest publish %v (p99 %v); disruption took %v; %d inputs each with exactly one output (%d redelivered)\n",
		cfg.topic, ps.acked, stored-ps.acked, len(cfg.servers), ps.max.Round(time.Millisecond), ps.p99,
		disruptTook.Round(time.Millisecond), len(inputs), redelivered)
	return nil
}

// dialCluster connects to every node of servers. Keepalive: a node that
// vanishes without closing its connections is noticed within 15 s (the
// broker allows a ping every 10 s).
func dialCluster(ctx context.Context, servers []string) (*client.Client, error) {
	quiet := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))
	dctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	return client.Dial(dctx, joinList(servers), append(clientOptions(), client.WithLogger(quiet), client.WithCallTimeout(10*time.Second),
		client.WithKeepalive(keepalive.ClientParameters{Time: 10 * time.Second, Timeout: 5 * time.Second, PermitWithoutStream: true}))...)
}

// createPipeline creates the input topic, the output topic out and the
// pipeline's subscription sub, if missing.
func createPipeline(ctx context.Context, c *client.Client, cfg loadConfig, out, sub string) error {
	tc := client.TopicConfig{Partitions: cfg.partitions, DedupWindow: time.Hour}
	for _, t := range []string{cfg.topic, out} {
		if err := retry(ctx, time.Minute, func(ctx context.Context) error { _, err := c.CreateTopic(ctx, t, tc); return err }); err != nil {
			return fmt.Errorf("create topic %s: %w", t, err)
		}
	}
	sc := client.SubscriptionConfig{Guarantee: client.EffectivelyOnce, Type: client.Shared, Start: client.Earliest(), AckTimeout: 10 * time.Second}
	if err := retry(ctx, time.Minute, func(ctx context.Context) error {
		_, err := c.CreateSubscription(ctx, cfg.topic, sub, sc)
		return err
	}); err != nil {
		return fmt.Errorf("create subscription %s: %w", sub, err)
	}
	return nil
}

// disrupt runs the shell command cmdline (nothing if empty) under pub's
// load, and returns how long it took, the publishes acknowledged
// meanwhile and its error.
func disrupt(ctx context.Context, lg *slog.Logger, cmdline string, pub *publisher) (took time.Duration, duringAcks int, err error) {
	if cmdline == "" {
		return 0, 0, nil
	}
	before := pub.count()
	lg.Info("disruption starts", "cmd", cmdline, "acked_so_far", before)
	t0 := time.Now()
	cmd := exec.CommandContext(ctx, "bash", "-c", cmdline)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	err = cmd.Run()
	took = time.Since(t0)
	duringAcks = pub.count() - before
	lg.Info("disruption finished", "took", took.Round(time.Millisecond), "err", err, "acked_meanwhile", duringAcks)
	return took, duringAcks, err
}

// checkPublishes logs pub's summary and reports to bad no publish
// acknowledged, each failed one, and the slowest over maxLatency; the load
// started at start and took loadTook.
func checkPublishes(lg *slog.Logger, pub *publisher, start time.Time, loadTook, maxLatency time.Duration, bad func(string, ...any)) publishSummary {
	ps := pub.summary()
	lg.Info("publishes", "acked", ps.acked, "failed", ps.failed, "took", loadTook.Round(time.Millisecond),
		"latency_p50", ps.p50, "latency_p99", ps.p99, "latency_max", ps.max, "slowest_at", ps.maxAt.Sub(start).Round(time.Millisecond))
	if ps.acked == 0 {
		bad("no publish was acknowledged")
	}
	for _, f := range ps.failures {
		bad("publish failed: %s", f)
	}
	if ps.max > maxLatency {
		bad("slowest publish took %v from first try to ack (at +%v), over -max-latency %v",
			ps.max, ps.maxAt.Sub(start).Round(time.Millisecond), maxLatency)
	}
	return ps
}

// checkLogs reads the input topic from every node and reports to bad each
// acknowledged message missing or misplaced, each id stored twice and
// each node whose log differs from the first's. stored is the messages
// stored (as the last node has them).
func checkLogs(ctx context.Context, cfg loadConfig, acked map[string]ack, bad func(string, ...any)) (logs []partitionLogs, stored int, err error) {
	logs = make([]partitionLogs, len(cfg.servers))
	for i, addr := range cfg.servers {
		logs[i], err = readAll(ctx, addr, cfg.topic, cfg.partitions)
		if err != nil {
			return nil, 0, fmt.Errorf("read %s from %s: %w", cfg.topic, addr, err)
		}
	}
	for i, l := range logs {
		if p := l.missing(acked); len(p) > 0 {
			bad("node %s: %d acknowledged messages missing or misplaced, such as %s", cfg.servers[i], len(p), p[0])
		}
		if d := l.duplicates(); len(d) > 0 {
			bad("node %s: %d ids stored twice, such as %s", cfg.servers[i], len(d), d[0])
		}
		if i > 0 {
			if d := l.diff(logs[0]); d != "" {
				bad("node %s and node %s differ: %s", cfg.servers[i], cfg.servers[0], d)
			}
		}
		stored = l.count()
	}
	return logs, stored, nil
}

// checkOutputs reports to bad each stored input without an output after
// settle, with more than one, and each output for no stored input.
func checkOutputs(inputs map[string]bool, outputs map[string]int, settle time.Duration, bad func(string, ...any)) {
	var lost, twice, extra []string
	for id := range inputs {
		switch n := outputs[id]; {
		case n == 0:
			lost = append(lost, id)
		case n > 1:
			twice = append(twice, id)
		}
	}
	for id := range outputs {
		if !inputs[id] {
			extra = append(extra, id)
		}
	}
	if len(lost) > 0 {
		slices.Sort(lost)
		bad("pipeline: %d inputs without an output after %v, such as %s", len(lost), settle, lost[0])
	}
	if len(twice) > 0 {
		slices.Sort(twice)
		bad("pipeline: %d inputs with more than one output, such as %s", len(twice), twice[0])
	}
	if len(extra) > 0 {
		bad("pipeline: %d outputs for no stored input, such as %s", len(extra), extra[0])
	}
}

// retry runs f until it succeeds, fails with a code other than
// UNAVAILABLE or DEADLINE_EXCEEDED, or limit passes.
func retry(ctx context.Context, limit time.Duration, f func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	for {
		err := f(ctx)
		if err == nil {
			return nil
		}
		if code := client.StatusCode(err); code != codes.Unavailable && code != codes.DeadlineExceeded {
			return err
		}
		if !sleepCtx(ctx, 200*time.Millisecond) {
			return err
		}
	}
}

// sleepCtx waits d or until ctx ends, and reports whether d passed.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

func joinList(l []string) string {
	s := ""
	for i, x := range l {
		if i > 0 {
			s += ","
		}
		s += x
	}
	return s
}

// pipeline counts the pipeline's deliveries of each input.
type pipeline struct {
	mu        sync.Mutex // guards delivered
	delivered map[string]int
}

func (p *pipeline) deliver(id string) {
	p.mu.Lock()
	p.delivered[id]++
	p.mu.Unlock()
}

// counts returns all deliveries and how many inputs were delivered more
// than once (allowed: a delivery whose commit did not land is repeated).
func (p *pipeline) counts() (deliveries, redelivered int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, n := range p.delivered {
		deliveries += n
		if n > 1 {
			redelivered++
		}
	}
	return deliveries, redelivered
}
