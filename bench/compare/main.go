// Command compare runs the same workloads against ferry, NATS JetStream and,
// when Debian's rabbitmq-server is installed, RabbitMQ quorum queues, each
// started as a separate process on loopback, and prints the ratios
// ferry / JetStream and ferry / RabbitMQ next to the targets of issue 7.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"regexp"
	"strings"
	"text/tabwriter"
	"time"
)

type options struct {
	duration    time.Duration
	messages    int
	window      int
	concurrency int
	output      string
	only        string
	keep        bool
}

// mode is a server durability config: ferry --fsync=always and JetStream
// sync_interval: always ("always"), or ferry --fsync=never and JetStream's
// default sync_interval ("default").
type mode string

const (
	always mode = "always"
	deflt  mode = "default"
)

func (m mode) label(system string) string {
	switch system {
	case "rabbitmq":
		return "quorum queue"
	case "ferry":
		if m == always {
			return "--fsync=always"
		}
		return "--fsync=never"
	}
	if m == always {
		return "sync_interval: always"
	}
	return "sync_interval: default"
}

// target is one broker under test, behind its own SDK.
type target interface {
	pubAsync(ctx context.Context, size, window int, dur time.Duration, withID bool) result
	pubSync(ctx context.Context, size, producers int, dur time.Duration) result
	prefill(ctx context.Context, n, size, window int) error
	consume(ctx context.Context, n int, ack ackMode, conc int, timeout time.Duration) result
	e2e(ctx context.Context, rate, size int, dur time.Duration) result
	close()
}

// ackMode is how a consume workload acks.
type ackMode int

const (
	// ackPlain: at-least-once, acks without confirmation.
	ackPlain ackMode = iota
	// ackConfirmed: every ack confirmed by the server, however the
	// client's API gets it. ferry: an effectively-once subscription with
	// acks on the stream, which the broker confirms once they are durable;
	// the run ends when the broker counts all of them durably acked.
	// JetStream: AckSync (its only confirmed ack) per message.
	ackConfirmed
	// ackSyncEach: each handler waits for its own ack's confirmation.
	// ferry: Message.AckSync on an effectively-once subscription.
	// JetStream: AckSync.
	ackSyncEach
)

// workload is one thing measured on each server config.
type workload struct {
	name    string
	prefill bool // fill --messages first (under the fast config), then restart in the measured config
	rss     bool // record the server's peak RSS afterwards
	modes   map[string][]mode
	run     func(ctx context.Context, t target, o options) result
}

func workloads() []workload {
	// RabbitMQ quorum queues have one durability: they fsync (in groups)
	// before confirming, so they run once, as "always". They have no
	// publish dedup and no ack confirmation, so they sit those out.
	all := map[string][]mode{"ferry": {always, deflt}, "jetstream": {always, deflt}, "rabbitmq": {always}}
	both := map[string][]mode{"ferry": {always, deflt}, "jetstream": {always, deflt}}
	e2eModes := map[string][]mode{"ferry": {always}, "jetstream": {always, deflt}, "rabbitmq": {always}}
	w := []workload{
		{name: "pub-async-1k", rss: true, modes: all, run: func(ctx context.Context, t target, o options) result {
			return t.pubAsync(ctx, 1024, o.window, o.duration, false)
		}},
		{name: "pub-async-128", modes: all, run: func(ctx context.Context, t target, o options) result {
			return t.pubAsync(ctx, 128, o.window, o.duration, false)
		}},
		{name: "pub-async-1k-dedup", modes: both, run: func(ctx context.Context, t target, o options) result {
			return t.pubAsync(ctx, 1024, o.window, o.duration, true)
		}},
		{name: "pub-sync-1k-p1", modes: all, run: func(ctx context.Context, t target, o options) result {
			return t.pubSync(ctx, 1024, 1, o.duration)
		}},
		{name: "pub-sync-1k-p16", modes: all, run: func(ctx context.Context, t target, o options) result {
			return t.pubSync(ctx, 1024, 16, o.duration)
		}},
		{name: "consume-ack", prefill: true, modes: all, run: func(ctx context.Context, t target, o options) result {
			return t.consume(ctx, o.messages, ackPlain, o.concurrency, 6*o.duration)
		}},
		{name: "consume-acksync", prefill: true, modes: both, run: func(ctx context.Context, t target, o options) result {
			return t.consume(ctx, o.messages, ackSyncEach, o.concurrency, 6*o.duration)
		}},
		{name: "consume-confirmed", prefill: true, modes: both, run: func(ctx context.Context, t target, o options) result {
			return t.consume(ctx, o.messages, ackConfirmed, o.concurrency, 6*o.duration)
		}},
	}
	for _, rate := range []int{1000, 5000} {
		w = append(w, workload{name: fmt.Sprintf("e2e-%d", rate), modes: e2eModes, run: func(ctx context.Context, t target, o options) result {
			return t.e2e(ctx, rate, 1024, o.duration)
		}})
	}
	return w
}

func main() {
	var o options
	flag.DurationVar(&o.duration, "duration", 5*time.Second, "length of each timed scenario")
	flag.IntVar(&o.messages, "messages", 100000, "messages pre-filled and consumed by the consume scenarios")
	flag.IntVar(&o.window, "window", 4096, "pipelined publish window (messages unanswered); ferry's MaxInflightBytes is window×(size+64)")
	flag.IntVar(&o.concurrency, "concurrency", 16, "consumer handler concurrency (ferry) / DoubleAck workers (JetStream)")
	flag.StringVar(&o.output, "o", "table", "output: table or json")
	flag.StringVar(&o.only, "only", "", "run only workloads whose name matches this regexp")
	flag.BoolVar(&o.keep, "keep", false, "keep the temp dir (binaries, data, server logs)")
	flag.Parse()
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "compare:", err)
		os.Exit(1)
	}
}

type measurement struct {
	Workload string `json:"workload"`
	System   string `json:"system"`
	Mode     string `json:"mode"`
	Config   string `json:"config"`
	result
}

func run(o options) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	tmp, err := os.MkdirTemp("", "ferry-compare-")
	if err != nil {
		return err
	}
	if o.keep {
		fmt.Fprintln(os.Stderr, "temp dir:", tmp)
	} else {
		defer os.RemoveAll(tmp)
	}
	fmt.Fprintln(os.Stderr, "building ferry and nats-server...")
	bins, err := buildBinaries(tmp)
	if err != nil {
		return err
	}
	var filter *regexp.Regexp
	if o.only != "" {
		if filter, err = regexp.Compile(o.only); err != nil {
			return err
		}
	}
	systems := []string{"ferry", "jetstream"}
	rabbit := "RabbitMQ: " + rabbitServer + " not found (apt-get install rabbitmq-server), not run"
	if haveRabbit() {
		systems = append(systems, "rabbitmq")
		rabbit = "RabbitMQ: " + rabbitServer + ", quorum queue, publisher confirms, manual acks"
	}
	var ms []measurement
	for _, w := range workloads() {
		if filter != nil && !filter.MatchString(w.name) {
			continue
		}
		for _, sys := range systems {
			for _, m := range w.modes[sys] {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				fmt.Fprintf(os.Stderr, "%-20s %-9s %-22s ", w.name, sys, m.label(sys))
				r := measure(ctx, bins, tmp, w, sys, m, o)
				fmt.Fprintln(os.Stderr, brief(r))
				ms = append(ms, measurement{w.name, sys, string(m), m.label(sys), r})
			}
		}
	}
	rows := buildRows(ms)
	if o.output == "json" {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(map[string]any{
			"duration": o.duration.String(), "messages": o.messages, "window": o.window,
			"concurrency": o.concurrency, "rabbitmq": rabbit, "rows": rows, "measurements": ms})
	}
	printTable(rows)
	fmt.Println()
	fmt.Println(rabbit)
	return nil
}

func brief(r result) string {
	s := fmt.Sprintf("%8.0f msgs/s  n=%d", r.Rate, r.Msgs)
	if r.P99ms > 0 {
		s += fmt.Sprintf("  p50=%.2fms p99=%.2fms", r.P50ms, r.P99ms)
	}
	if r.PeakRSS > 0 {
		s += fmt.Sprintf("  peakRSS=%.1fMiB", float64(r.PeakRSS)/(1<<20))
	}
	if r.TimedOut {
		s += "  TIMED OUT"
	}
	if r.Errors > 0 || r.Err != "" {
		s += fmt.Sprintf("  errors=%d %s", r.Errors, r.Err)
	}
	return s
}

// measure runs one workload against a fresh server of one config, with its
// own data directory, and removes it afterwards.
func measure(ctx context.Context, bins *binaries, tmp string, w workload, sys string, m mode, o options) (r result) {
	dir, err := os.MkdirTemp(tmp, sys+"-")
	if err != nil {
		return result{Err: err.Error()}
	}
	defer os.RemoveAll(dir)
	startSrv := func(m mode) (*server, target, error) {
		var s *server
		var err error
		switch sys {
		case "ferry":
			fs := "never"
			if m == always {
				fs = "always"
			}
			s, err = startFerry(bins.ferry, dir, fs)
		case "rabbitmq":
			s, err = startRabbit(dir)
		default:
			s, err = startNats(bins.nats, dir, m == always)
		}
		if err != nil {
			return nil, nil, err
		}
		var t target
		switch sys {
		case "ferry":
			t, err = dialFerry(ctx, s.addr)
		case "rabbitmq":
			t, err = dialRabbit(ctx, s.addr)
		default:
			t, err = dialJetStream(ctx, s.addr, o.window)
		}
		if err != nil {
			s.stop()
			return nil, nil, err
		}
		return s, t, nil
	}
	if w.prefill {
		// Fill under the fast config (JetStream at sync_interval: always
		// would take minutes), then restart on the same data in the
		// measured config.
		s, t, err := startSrv(deflt)
		if err != nil {
			return result{Err: err.Error()}
		}
		err = t.prefill(ctx, o.messages, 1024, o.window)
		t.close()
		s.stop()
		if err != nil {
			return result{Err: err.Error()}
		}
	}
	s, t, err := startSrv(m)
	if err != nil {
		return result{Err: err.Error()}
	}
	defer s.stop()
	defer t.close()
	r = w.run(ctx, t, o)
	if w.rss {
		r.PeakRSS = s.peakRSS()
	}
	return r
}

var systemName = map[string]string{"ferry": "ferry", "jetstream": "JetStream", "rabbitmq": "RabbitMQ"}

// row is one line of the table: a ferry figure against one of another
// system (JetStream or RabbitMQ).
type row struct {
	Scenario    string  `json:"scenario"`
	Ferry       string  `json:"ferry_config"`
	Other       string  `json:"other_system"`
	OtherConfig string  `json:"other_config"`
	Metric      string  `json:"metric"`
	FerryVal    float64 `json:"ferry"`
	OtherVal    float64 `json:"other"`
	Ratio       float64 `json:"ratio"`
	Target      string  `json:"target"`
	Met         string  `json:"met"`
	Note        string  `json:"note,omitempty"`
}

type rowSpec struct {
	scenario, workload string
	other              string // jetstream or rabbitmq
	ferry, js          mode
	metric             string // rate, p99, rss
	op                 string // ">=", "<=", "" (no target)
	want               float64
}

func buildRows(ms []measurement) []row {
	find := func(w, sys string, m mode) *measurement {
		for i := range ms {
			if ms[i].Workload == w && ms[i].System == sys && ms[i].Mode == string(m) {
				return &ms[i]
			}
		}
		return nil
	}
	specs := []rowSpec{
		{"durable pub pipelined 1KiB, 1 producer", "pub-async-1k", "jetstream", always, always, "rate", ">=", 10},
		{"durable pub pipelined 1KiB, 1 producer", "pub-async-1k", "jetstream", always, deflt, "rate", ">=", 0.75},
		{"pub pipelined 1KiB, 1 producer", "pub-async-1k", "jetstream", deflt, deflt, "rate", ">=", 1.2},
		{"pub pipelined 128B, 1 producer", "pub-async-128", "jetstream", always, always, "rate", "", 0},
		{"pub pipelined 128B, 1 producer", "pub-async-128", "jetstream", always, deflt, "rate", "", 0},
		{"pub pipelined 128B, 1 producer", "pub-async-128", "jetstream", deflt, deflt, "rate", "", 0},
		{"pub pipelined 1KiB, dedup ids", "pub-async-1k-dedup", "jetstream", always, always, "rate", "", 0},
		{"pub pipelined 1KiB, dedup ids", "pub-async-1k-dedup", "jetstream", deflt, deflt, "rate", "", 0},
		{"pub sync 1KiB, 1 producer", "pub-sync-1k-p1", "jetstream", always, always, "rate", "", 0},
		{"pub sync 1KiB, 1 producer", "pub-sync-1k-p1", "jetstream", deflt, deflt, "rate", "", 0},
		{"pub sync 1KiB, 16 producers", "pub-sync-1k-p16", "jetstream", always, always, "rate", "", 0},
		{"pub sync 1KiB, 16 producers", "pub-sync-1k-p16", "jetstream", deflt, deflt, "rate", "", 0},
		{"consume, explicit acks (at-least-once)", "consume-ack", "jetstream", always, always, "rate", ">=", 1.2},
		{"consume, explicit acks (at-least-once)", "consume-ack", "jetstream", deflt, deflt, "rate", ">=", 1.2},
		{"effectively-once, confirmed acks vs AckSync", "consume-confirmed", "jetstream", always, always, "rate", ">=", 1},
		{"effectively-once, confirmed acks vs AckSync", "consume-confirmed", "jetstream", deflt, deflt, "rate", ">=", 1},
		{"AckSync in every handler", "consume-acksync", "jetstream", always, always, "rate", "", 0},
		{"AckSync in every handler", "consume-acksync", "jetstream", deflt, deflt, "rate", "", 0},
		{"e2e p99 @1000 msgs/s, 1KiB", "e2e-1000", "jetstream", always, always, "p99", "<=", 0.2},
		{"e2e p99 @1000 msgs/s, 1KiB", "e2e-1000", "jetstream", always, deflt, "p99", "<=", 1},
		{"e2e p99 @5000 msgs/s, 1KiB", "e2e-5000", "jetstream", always, always, "p99", "<=", 0.2},
		{"e2e p99 @5000 msgs/s, 1KiB", "e2e-5000", "jetstream", always, deflt, "p99", "<=", 1},
		{"peak RSS, pipelined 1KiB load", "pub-async-1k", "jetstream", always, always, "rss", "<=", 1.5},
		{"peak RSS, pipelined 1KiB load", "pub-async-1k", "jetstream", deflt, deflt, "rss", "<=", 1.5},
		{"durable pub pipelined 1KiB, 1 producer", "pub-async-1k", "rabbitmq", always, always, "rate", ">=", 2},
		{"pub pipelined 128B, 1 producer", "pub-async-128", "rabbitmq", always, always, "rate", "", 0},
		{"pub sync 1KiB, 1 producer", "pub-sync-1k-p1", "rabbitmq", always, always, "rate", "", 0},
		{"pub sync 1KiB, 16 producers", "pub-sync-1k-p16", "rabbitmq", always, always, "rate", "", 0},
		{"consume, explicit acks (at-least-once)", "consume-ack", "rabbitmq", always, always, "rate", ">=", 2.5},
		{"e2e p99 @1000 msgs/s, 1KiB", "e2e-1000", "rabbitmq", always, always, "p99", "", 0},
		{"e2e p99 @5000 msgs/s, 1KiB", "e2e-5000", "rabbitmq", always, always, "p99", "", 0},
		{"peak RSS, pipelined 1KiB load", "pub-async-1k", "rabbitmq", always, always, "rss", "", 0},
	}
	var rows []row
	for _, sp := range specs {
		f, j := find(sp.workload, "ferry", sp.ferry), find(sp.workload, sp.other, sp.js)
		if f == nil || j == nil {
			continue
		}
		val := func(m *measurement) float64 {
			switch sp.metric {
			case "p99":
				return m.P99ms
			case "rss":
				return float64(m.PeakRSS) / (1 << 20)
			}
			return m.Rate
		}
		rw := row{Scenario: sp.scenario, Ferry: sp.ferry.label("ferry"),
			Other: systemName[sp.other], OtherConfig: sp.js.label(sp.other),
			Metric:   map[string]string{"rate": "msgs/s", "p99": "p99 ms", "rss": "MiB"}[sp.metric],
			FerryVal: val(f), OtherVal: val(j), Target: "—", Met: "—"}
		if rw.OtherVal > 0 {
			rw.Ratio = rw.FerryVal / rw.OtherVal
		}
		var notes []string
		for _, m := range []*measurement{f, j} {
			if m.Err != "" || m.Errors > 0 {
				notes = append(notes, fmt.Sprintf("%s: %d errors %s", m.System, m.Errors, m.Err))
			}
			if m.TimedOut {
				notes = append(notes, m.System+": timed out (partial)")
			}
		}
		rw.Note = strings.Join(notes, "; ")
		if sp.op != "" {
			rw.Target = fmt.Sprintf("%s %g× %s", map[string]string{">=": "≥", "<=": "≤"}[sp.op], sp.want, systemName[sp.other])
			ok := rw.Ratio >= sp.want
			if sp.op == "<=" {
				ok = rw.Ratio <= sp.want
			}
			if rw.OtherVal == 0 || rw.FerryVal == 0 || f.Err != "" || j.Err != "" {
				rw.Met = "?"
			} else if ok {
				rw.Met = "yes"
			} else {
				rw.Met = "NO"
			}
		}
		rows = append(rows, rw)
	}
	return rows
}

func fmtVal(metric string, v float64) string {
	switch metric {
	case "p99 ms":
		return fmt.Sprintf("%.2f ms", v)
	case "MiB":
		return fmt.Sprintf("%.1f MiB", v)
	}
	return fmt.Sprintf("%.0f/s", v)
}

func printTable(rows []row) {
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "SCENARIO\tFERRY\tVERSUS\tFERRY\tTHEM\tRATIO\tTARGET\tMET\tNOTE")
	for i := range rows {
		r := &rows[i]
		ratio := fmt.Sprintf("%.2f×", r.Ratio)
		if r.Ratio > 0 && r.Ratio < 0.01 {
			ratio = fmt.Sprintf("%.4f×", r.Ratio)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s %s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Scenario, r.Ferry, r.Other, r.OtherConfig,
			fmtVal(r.Metric, r.FerryVal), fmtVal(r.Metric, r.OtherVal), ratio, r.Target, r.Met, r.Note)
	}
	tw.Flush()
}
