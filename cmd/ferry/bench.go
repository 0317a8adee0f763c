package main

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"golang.org/x/time/rate"
	"google.golang.org/grpc/codes"

	"github.com/ferrymq/ferry/broker"
	"github.com/ferrymq/ferry/client"
	"github.com/ferrymq/ferry/storage"
)

// benchOptions is one workload.
type benchOptions struct {
	server     string
	tls        tlsFlags
	token      tokenFlags
	duration   time.Duration
	warmup     time.Duration
	size       int
	producers  int
	consumers  int
	partitions uint32
	topics     int
	rate       int // total msgs/s; 0: as fast as possible
	guarantee  string
	keys       int // distinct keys; 0: none
	fsync      string
	output     string
	report     string // HTML report path
	workload   string // OpenMessaging Benchmark workload file
	// subscriptions per topic, each read by consumers consumers.
	subscriptions int
	// backlogBytes are published before consumers start (the warm-up
	// lasts at least until then).
	backlogBytes int64
	maxInflight  int64
	// brokerTimeout is how long the broker may go without answering
	// before the run fails: it went away.
	brokerTimeout time.Duration
}

func newBenchCommand() *cobra.Command {
	o := benchOptions{duration: 10 * time.Second, warmup: 2 * time.Second, size: 1024, producers: 1,
		partitions: 1, topics: 1, guarantee: "at-least-once", fsync: "always", output: "text", maxInflight: 64 << 20,
		brokerTimeout: 5 * time.Second}
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Measure publish and consume throughput and latency",
		Long: `Run a workload against the broker named by --server (or FERRY_SERVER), or, if
neither is given, against one started in-process on a temp dir. Producers
publish with the Go SDK (batched, pipelined, durable answers); with
--consumers, each topic gets a subscription of --guarantee and consumers
ack everything. Results: throughput and latency percentiles (publish: send
to durable answer; end to end: send to delivery) from HDR histograms,
measured after --warmup. If the broker stops answering for --broker-timeout
(killed, unreachable), bench stops and exits 1, saying so.`,
		Args: cobra.NoArgs,
	}
	f := cmd.Flags()
	f.StringVar(&o.server, "server", "", "broker address (env FERRY_SERVER); empty: start one in-process")
	o.tls.add(f)
	o.token.add(f)
	f.DurationVar(&o.duration, "duration", o.duration, "how long to measure, after the warm-up")
	f.DurationVar(&o.warmup, "warmup", o.warmup, "how long to run before measuring")
	f.IntVar(&o.size, "message-size", o.size, "payload bytes per message (at least 8: it carries the send time)")
	f.IntVar(&o.producers, "producers", o.producers, "producers per topic")
	f.IntVar(&o.consumers, "consumers", o.consumers, "consumers per topic (0: publish only)")
	f.Uint32Var(&o.partitions, "partitions", o.partitions, "partitions per topic")
	f.IntVar(&o.topics, "topics", o.topics, "topics")
	f.IntVar(&o.rate, "rate", o.rate, "total messages per second over all producers (0: as fast as possible)")
	f.StringVar(&o.guarantee, "guarantee", o.guarantee, "the consumers' subscription: none, at-most-once, at-least-once or effectively-once")
	f.IntVar(&o.keys, "keys", o.keys, "distinct message keys, spread round-robin (0: no keys)")
	f.StringVar(&o.fsync, "fsync", o.fsync, "fsync policy of the in-process broker: always or never")
	f.StringVarP(&o.output, "output", "o", o.output, "text or json")
	f.StringVar(&o.report, "report", "", "also write an HTML report (throughput and latency over time, latency by percentile) to this file")
	f.StringVar(&o.workload, "workload", "", "an OpenMessaging Benchmark workload file (YAML); flags given override it")
	f.IntVar(&o.subscriptions, "subscriptions", 1, "subscriptions per topic, each with --consumers consumers")
	f.Int64Var(&o.backlogBytes, "backlog-bytes", 0, "bytes to publish before consumers start (a backlog to drain)")
	f.DurationVar(&o.brokerTimeout, "broker-timeout", o.brokerTimeout, "give up (exit 1) once the broker has not answered for this long")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if o.workload != "" {
			if err := applyWorkload(&o, o.workload, cmd.Flags()); err != nil {
				return err
			}
		}
		if err := o.validate(); err != nil {
			return err
		}
		res, err := runBench(cmd.Context(), o, cmd.ErrOrStderr())
		if err != nil {
			return err
		}
		if o.output == "json" {
			return printJSON(cmd.OutOrStdout(), res)
		}
		return res.table(cmd.OutOrStdout())
	}
	return cmd
}

func (o *benchOptions) validate() error {
	switch {
	case o.duration <= 0 || o.warmup < 0:
		return errors.New("--duration must be positive and --warmup not negative")
	case o.brokerTimeout <= 0:
		return errors.New("--broker-timeout must be positive")
	case o.size < 8 || o.size > 4<<20:
		return fmt.Errorf("--message-size %d: want 8 to 4194304", o.size)
	case o.producers < 1 || o.consumers < 0 || o.topics < 1 || o.partitions < 1 || o.rate < 0 || o.keys < 0 ||
		o.subscriptions < 1 || o.backlogBytes < 0:
		return errors.New("--producers, --topics, --partitions and --subscriptions must be at least 1; --consumers, --rate, --keys and --backlog-bytes not negative")
	case o.output != "text" && o.output != "json":
		return fmt.Errorf("--output %q: want text or json", o.output)
	}
	if _, err := client.ParseGuarantee(o.guarantee); err != nil {
		return fmt.Errorf("--guarantee: %w", err)
	}
	if _, err := storage.ParseFsyncPolicy(o.fsync); err != nil {
		return err
	}
	return nil
}

// benchResult is what a run measured.
type benchResult struct {
	Server      string  `json:"server"`
	Seconds     float64 `json:"seconds"`
	MessageSize int     `json:"message_size"`
	Producers   int     `json:"producers"`
	Consumers   int     `json:"consumers"`
	Topics      int     `json:"topics"`
	Partitions  uint32  `json:"partitions"`
	Guarantee   string  `json:"guarantee,omitempty"`
	Fsync       string  `json:"fsync,omitempty"`
	TargetRate  int     `json:"target_rate,omitempty"`

	Published        int64        `json:"published"`
	PublishedPerSec  float64      `json:"published_per_sec"`
	PublishMBPerSec  float64      `json:"publish_mb_per_sec"`
	PublishErrors    int64        `json:"publish_errors"`
	PublishLatencyMs percentiles  `json:"publish_latency_ms"`
	Consumed         int64        `json:"consumed,omitempty"`
	ConsumedPerSec   float64      `json:"consumed_per_sec,omitempty"`
	EndToEndMs       percentiles  `json:"end_to_end_latency_ms,omitzero"`
	Series           []benchPoint `json:"series"` // one point per second
}

type percentiles struct {
	P50  float64 `json:"p50"`
	P90  float64 `json:"p90"`
	P99  float64 `json:"p99"`
	P999 float64 `json:"p99_9"`
	Max  float64 `json:"max"`
}

// newHist records latencies in microseconds, 1µs to 1 minute, 3
// significant digits.
func newHist() *hdrhistogram.Histogram { return hdrhistogram.New(1, 60_000_000, 3) }

func percentilesOf(h *hdrhistogram.Histogram) percentiles {
	ms := func(us int64) float64 { return float64(us) / 1000 }
	return percentiles{P50: ms(h.ValueAtQuantile(50)), P90: ms(h.ValueAtQuantile(90)), P99: ms(h.ValueAtQuantile(99)),
		P999: ms(h.ValueAtQuantile(99.9)), Max: ms(h.Max())}
}

// recorder collects latencies from many goroutines, after the warm-up:
// for the whole run and for the current second.
type recorder struct {
	mu       sync.Mutex // guards hist and window
	hist     *hdrhistogram.Histogram
	window   *hdrhistogram.Histogram
	count    atomic.Int64
	errors   atomic.Int64
	measured atomic.Bool // past the warm-up
}

func newRecorder() *recorder { return &recorder{hist: newHist(), window: newHist()} }

func (r *recorder) record(d time.Duration) {
	if !r.measured.Load() {
		return
	}
	r.count.Add(1)
	us := max(d.Microseconds(), 1)
	r.mu.Lock()
	_ = r.hist.RecordValue(us)
	_ = r.window.RecordValue(us)
	r.mu.Unlock()
}

// takeWindow returns how many latencies were recorded since the last call
// and their p50 and p99 in milliseconds, and starts a new window.
func (r *recorder) takeWindow() (n int64, p50, p99 float64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	n = r.window.TotalCount()
	p50, p99 = float64(r.window.ValueAtQuantile(50))/1000, float64(r.window.ValueAtQuantile(99))/1000
	r.window.Reset()
	return n, p50, p99
}

// runBench runs one workload: connect (starting a broker in process if no
// server is given), create the topics, start the producers and consumers,
// measure for the duration after the warm-up, stop, and sum up.
func runBench(ctx context.Context, o benchOptions, progress io.Writer) (*benchResult, error) {
	addr, c, pool, closeAll, err := benchConnect(ctx, o)
	if err != nil {
		return nil, err
	}
	defer closeAll()
	topics, err := createBenchTopics(ctx, c, o)
	if err != nil {
		return nil, err
	}
	r := &benchRun{o: o, pub: newRecorder(), e2e: newRecorder(), backlogBuilt: make(chan struct{})}
	runCtx, stopRun := context.WithCancel(ctx)
	defer stopRun()
	watchCtx, stopWatch := context.WithCancel(ctx) // outlives runCtx: producers' last answers
	defer stopWatch()
	r.gone = watchBroker(watchCtx, c, addr, topics[0], o.brokerTimeout)
	defer func() {
		if r.brokerGone {
			return // nothing to clean up there
		}
		for _, t := range topics {
			dctx, cancel := context.WithTimeout(context.Background(), o.brokerTimeout)
			_ = c.ForceDeleteTopic(dctx, t)
			cancel()
		}
	}()
	wg := r.start(runCtx, pool, topics)
	bar := progressbar.NewOptions64(int64((o.warmup + o.duration).Milliseconds()), // a backlog to build makes it longer
		progressbar.OptionSetWriter(progress), progressbar.OptionSetDescription("bench"),
		progressbar.OptionSetVisibility(isTerminal(progress)), progressbar.OptionClearOnFinish(),
		progressbar.OptionShowElapsedTimeOnFinish(), progressbar.OptionThrottle(200*time.Millisecond))
	series, measuredAt, err := r.measure(ctx, bar)
	if err != nil {
		return nil, err
	}
	elapsed := time.Since(measuredAt).Seconds()
	stopRun()
	if err := r.wait(wg); err != nil {
		return nil, err
	}
	_ = bar.Finish()
	return r.result(addr, elapsed, series)
}

// benchConnect returns the broker's address, a client for admin calls and
// the pool the producers and consumers spread over; closeAll closes them
// and stops the broker it started, if any.
func benchConnect(ctx context.Context, o benchOptions) (addr string, c *client.Client, pool []*client.Client, closeAll func(), err error) {
	var closers []func()
	closeAll = func() {
		for i := len(closers) - 1; i >= 0; i-- {
			closers[i]()
		}
	}
	defer func() {
		if err != nil {
			closeAll()
		}
	}()
	addr = o.server
	if addr == "" {
		addr = os.Getenv("FERRY_SERVER")
	}
	if addr == "" {
		srv, stop, err := startEmbedded(o.fsync)
		if err != nil {
			return "", nil, nil, nil, err
		}
		closers = append(closers, stop)
		addr = srv
	}
	creds, err := o.tls.creds()
	if err != nil {
		return "", nil, nil, nil, err
	}
	dopts := []client.Option{client.WithLogger(slog.New(slog.DiscardHandler)), client.WithTLS(creds)}
	topts, err := o.token.options()
	if err != nil {
		return "", nil, nil, nil, err
	}
	dopts = append(dopts, topts...)
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	c, err = client.Dial(dctx, addr, dopts...)
	cancel()
	if err != nil {
		return "", nil, nil, nil, err
	}
	closers = append(closers, func() { c.Close() })
	pool, err = dialPool(ctx, addr, o.topics*(o.producers+o.subscriptions*o.consumers), dopts)
	if err != nil {
		return "", nil, nil, nil, err
	}
	closers = append(closers, func() {
		for _, pc := range pool {
			pc.Close()
		}
	})
	return addr, c, pool, closeAll, nil
}

// createBenchTopics creates the run's topics, named after the time, each
// with its subscriptions if there are consumers.
func createBenchTopics(ctx context.Context, c *client.Client, o benchOptions) ([]string, error) {
	g, _ := client.ParseGuarantee(o.guarantee)
	run := time.Now().UnixNano()
	topics := make([]string, o.topics)
	for i := range topics {
		topics[i] = fmt.Sprintf("bench-%d-%d", run, i)
		if _, err := c.CreateTopic(ctx, topics[i], client.TopicConfig{Partitions: o.partitions}); err != nil {
			return nil, fmt.Errorf("create topic: %w", err)
		}
		for sub := range o.subscriptions {
			if o.consumers == 0 {
				break
			}
			_, err := c.CreateSubscription(ctx, topics[i], fmt.Sprintf("bench-%d", sub), client.SubscriptionConfig{
				Guarantee: g, Type: client.Shared, Start: client.Earliest()})
			if err != nil {
				return nil, fmt.Errorf("create subscription: %w", err)
			}
		}
	}
	return topics, nil
}

// benchRun is the state one run's steps share.
type benchRun struct {
	o            benchOptions
	pub, e2e     *recorder
	sentBytes    atomic.Int64
	backlogBuilt chan struct{} // closed once the backlog is published: consumers start
	gone         <-chan error  // watchBroker's
	brokerGone   bool
}

// start starts the consumers and producers of every topic, spread over
// the pool's connections, until ctx ends.
func (r *benchRun) start(ctx context.Context, pool []*client.Client, topics []string) *sync.WaitGroup {
	o := r.o
	var limiter *rate.Limiter
	if o.rate > 0 {
		limiter = rate.NewLimiter(rate.Limit(o.rate), max(o.rate/100, 1))
	}
	if o.backlogBytes == 0 {
		close(r.backlogBuilt)
	}
	var wg sync.WaitGroup
	consumers := o.topics * o.subscriptions * o.consumers
	stream := 0 // spreads the streams over the pool's connections
	for _, t := range topics {
		for sub := range o.subscriptions * o.consumers {
			wg.Add(1)
			c := pool[stream%len(pool)]
			stream++
			go func() {
				defer wg.Done()
				select {
				case <-r.backlogBuilt:
				case <-ctx.Done():
					return
				}
				_ = c.Subscribe(ctx, t, fmt.Sprintf("bench-%d", sub%o.subscriptions), func(ctx context.Context, m *client.Message) error {
					if len(m.Payload) >= 8 {
						r.e2e.record(time.Since(time.Unix(0, int64(binary.BigEndian.Uint64(m.Payload)))))
					}
					return nil
				}, client.WithConcurrency(clientShare(64, consumers, 1, 16)), client.WithCredit(clientShare(4000, consumers, 50, 1000)),
					client.WithDrainTimeout(time.Second))
			}()
		}
		for w := range o.producers {
			wg.Add(1)
			c := pool[stream%len(pool)]
			stream++
			go func() {
				defer wg.Done()
				produce(ctx, c, t, w, o, limiter, r.pub, &r.sentBytes)
			}()
		}
	}
	return &wg
}

// measure ticks the progress bar until the warm-up (and the backlog) is
// done and then for the duration, taking a point of the series every
// second; it returns the series and when measuring began.
func (r *benchRun) measure(ctx context.Context, bar *progressbar.ProgressBar) ([]benchPoint, time.Time, error) {
	o := r.o
	start := time.Now()
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	var measuredAt, windowAt time.Time
	var series []benchPoint
	for done := false; !done; {
		select {
		case <-ctx.Done():
			return nil, measuredAt, ctx.Err()
		case err := <-r.gone:
			r.brokerGone = true
			return nil, measuredAt, err
		case now := <-tick.C:
			_ = bar.Set64(now.Sub(start).Milliseconds())
			if o.backlogBytes > 0 && r.sentBytes.Load() >= o.backlogBytes {
				select {
				case <-r.backlogBuilt:
				default:
					close(r.backlogBuilt)
				}
			}
			building := o.backlogBytes > 0 && r.sentBytes.Load() < o.backlogBytes
			if measuredAt.IsZero() && now.Sub(start) >= o.warmup && !building {
				measuredAt, windowAt = now, now
				r.pub.measured.Store(true)
				r.e2e.measured.Store(true)
			}
			if !measuredAt.IsZero() && now.Sub(windowAt) >= time.Second {
				series = append(series, window(now.Sub(measuredAt), now.Sub(windowAt), r.pub, r.e2e))
				windowAt = now
			}
			if !measuredAt.IsZero() && now.Sub(measuredAt) >= o.duration {
				done = true
			}
		}
	}
	r.pub.measured.Store(false)
	r.e2e.measured.Store(false)
	return series, measuredAt, nil
}

// wait waits for the producers and consumers to stop, or for the broker
// to be found gone (producers wait for answers that will not come).
func (r *benchRun) wait(wg *sync.WaitGroup) error {
	stopped := make(chan struct{})
	go func() {
		wg.Wait()
		close(stopped)
	}()
	select {
	case <-stopped:
		return nil
	case err := <-r.gone:
		r.brokerGone = true
		return err
	}
}

// result sums the run up, and writes the --report.
func (r *benchRun) result(addr string, elapsed float64, series []benchPoint) (*benchResult, error) {
	o := r.o
	res := &benchResult{
		Server: addr, Seconds: elapsed, MessageSize: o.size, Producers: o.producers, Consumers: o.consumers,
		Topics: o.topics, Partitions: o.partitions, TargetRate: o.rate,
		Published: r.pub.count.Load(), PublishErrors: r.pub.errors.Load(), PublishLatencyMs: percentilesOf(r.pub.hist),
		Series: series,
	}
	if o.server == "" && os.Getenv("FERRY_SERVER") == "" {
		res.Fsync = o.fsync
	}
	res.PublishedPerSec = float64(res.Published) / elapsed
	res.PublishMBPerSec = res.PublishedPerSec * float64(o.size) / (1 << 20)
	if o.consumers > 0 {
		res.Guarantee = o.guarantee
		res.Consumed = r.e2e.count.Load()
		res.ConsumedPerSec = float64(res.Consumed) / elapsed
		res.EndToEndMs = percentilesOf(r.e2e.hist)
	}
	if o.report != "" {
		if err := writeReport(o.report, res, r.pub.hist, r.e2e.hist); err != nil {
			return nil, fmt.Errorf("--report: %w", err)
		}
	}
	return res, nil
}

// watchBroker asks the broker for topic every fifth of limit until ctx
// ends. Once the broker has not answered for limit (unreachable, or no
// answer in time; any answer, even an error, counts as one), it sends why
// on the returned channel and stops.
func watchBroker(ctx context.Context, c *client.Client, addr, topic string, limit time.Duration) <-chan error {
	gone := make(chan error, 1)
	go func() {
		last := time.Now()
		tick := time.NewTicker(limit / 5)
		defer tick.Stop()
		for {
			pctx, cancel := context.WithTimeout(ctx, limit)
			_, err := c.GetTopic(pctx, topic)
			cancel()
			switch client.StatusCode(err) {
			case codes.Unavailable, codes.DeadlineExceeded:
				if silent := time.Since(last); silent >= limit {
					gone <- fmt.Errorf("the broker at %s went away: no answer for %v: %w", addr, silent.Round(100*time.Millisecond), err)
					return
				}
			default:
				last = time.Now()
			}
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	}()
	return gone
}

// window is the point of the second that just ended.
func window(at, d time.Duration, pub, e2e *recorder) benchPoint {
	n, p50, p99 := pub.takeWindow()
	pt := benchPoint{Second: at.Seconds(), PublishPerSec: float64(n) / d.Seconds(), PublishP50Ms: p50, PublishP99Ms: p99}
	n, p50, p99 = e2e.takeWindow()
	pt.ConsumePerSec, pt.EndToEndP50Ms, pt.EndToEndP99Ms = float64(n)/d.Seconds(), p50, p99
	return pt
}

// produce publishes to topic until ctx ends, recording each message's
// latency from send to durable answer.
func produce(ctx context.Context, c *client.Client, topic string, w int, o benchOptions, limiter *rate.Limiter, rec *recorder, sentBytes *atomic.Int64) {
	p := c.NewProducer(topic, client.ProducerOptions{MaxInflightBytes: o.maxInflight})
	type sent struct {
		f  *client.PublishFuture
		at time.Time
	}
	pending := make(chan sent, clientShare(16384, o.topics*o.producers, 64, 4096))
	done := make(chan struct{})
	go func() {
		defer close(done)
		for s := range pending {
			if _, err := s.f.Wait(context.Background()); err != nil {
				if rec.measured.Load() {
					rec.errors.Add(1)
				}
				continue
			}
			rec.record(time.Since(s.at))
		}
	}()
	for i := 0; ctx.Err() == nil; i++ {
		if limiter != nil && limiter.Wait(ctx) != nil {
			break
		}
		payload := make([]byte, o.size)
		now := time.Now()
		binary.BigEndian.PutUint64(payload, uint64(now.UnixNano()))
		m := &client.Message{Payload: payload}
		if o.keys > 0 {
			m.Key = fmt.Appendf(nil, "k%d", (w+i)%o.keys)
		}
		pending <- sent{p.PublishAsync(m), now}
		sentBytes.Add(int64(o.size))
	}
	close(pending)
	<-done
	cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = p.Close(cctx)
}

// streamsPerConn is how many producer and consumer streams the bench puts
// on one connection. All on one, a thousand topics' 8,000 streams queue on
// one HTTP/2 connection's writer at both ends (and the run measures that);
// thousands of real clients would have connections of their own.
const streamsPerConn = 128

// dialPool returns as many clients as streams need, at least 1 and at most
// 64, for the producers and consumers. They are not the client of the
// admin calls and the broker watch: a watch on a connection whose reader,
// the bench, is behind with deliveries would take the bench's backlog for
// a broker gone.
func dialPool(ctx context.Context, addr string, streams int, dopts []client.Option) ([]*client.Client, error) {
	var pool []*client.Client
	for len(pool) < max(1, min(64, (streams+streamsPerConn-1)/streamsPerConn)) {
		dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		pc, err := client.Dial(dctx, addr, dopts...)
		cancel()
		if err != nil {
			for _, pc := range pool {
				pc.Close()
			}
			return nil, err
		}
		pool = append(pool, pc)
	}
	return pool, nil
}

// clientShare is a per-client buffer size for n clients in this one
// process: total/n, within [lo, hi]. A run of one topic keeps the full
// sizes (4096 pending publishes a producer, credit 1000 and 16 handlers a
// consumer); thousands of producers and consumers each with full-size
// buffers would cost the bench gigabytes and its garbage collector the
// CPU the run measures (1,000 topics of 4 producers and 4 consumers: a
// 1.7 GB bench, 62,000 handler goroutines).
func clientShare(total, n, lo, hi int) int { return min(hi, max(lo, total/max(n, 1))) }

// startEmbedded serves a broker on loopback with its data in a temp dir.
func startEmbedded(fsync string) (addr string, stop func(), err error) {
	dir, err := os.MkdirTemp("", "ferry-bench-")
	if err != nil {
		return "", nil, err
	}
	o := broker.DefaultOptions(dir)
	o.GRPCAddr, o.HTTPAddr = "127.0.0.1:0", ""
	o.Logger = slog.New(slog.DiscardHandler)
	if o.Storage.Fsync, err = storage.ParseFsyncPolicy(fsync); err != nil {
		return "", nil, err
	}
	srv, err := broker.Open(o)
	if err != nil {
		os.RemoveAll(dir)
		return "", nil, err
	}
	go func() { _ = srv.Serve() }()
	return srv.GRPCAddr().String(), func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
		os.RemoveAll(dir)
	}, nil
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

func (r *benchResult) table(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "workload\t%d topic(s) x %d partition(s), %d producer(s), %d consumer(s), %d B messages, %.1fs measured\n",
		r.Topics, r.Partitions, r.Producers, r.Consumers, r.MessageSize, r.Seconds)
	fmt.Fprintf(tw, "publish\t%.0f msgs/s\t%.1f MB/s\t%d errors\n", r.PublishedPerSec, r.PublishMBPerSec, r.PublishErrors)
	row := func(name string, p percentiles) {
		fmt.Fprintf(tw, "%s\tp50 %.2f ms\tp90 %.2f ms\tp99 %.2f ms\tp99.9 %.2f ms\tmax %.2f ms\n", name, p.P50, p.P90, p.P99, p.P999, p.Max)
	}
	row("publish latency", r.PublishLatencyMs)
	if r.Consumers > 0 {
		fmt.Fprintf(tw, "consume\t%.0f msgs/s\t(%s)\n", r.ConsumedPerSec, r.Guarantee)
		row("end-to-end latency", r.EndToEndMs)
	}
	return tw.Flush()
}
