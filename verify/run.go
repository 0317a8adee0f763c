package verify

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/ferrymq/ferry/client"
)

// Options configures a run of Run.
type Options struct {
	// Server is the broker's address, or several nodes' comma-separated.
	// Required.
	Server string
	// Duration is how long producers publish; consumers and the nemesis run
	// alongside, then consumers drain. Default 20s.
	Duration time.Duration
	// Producers is how many producers publish at once. Default 3.
	Producers int
	// Rate is each producer's publishes per second. Default 50.
	Rate int
	// Partitions of the topics the run creates. Default 3.
	Partitions uint32
	// AckTimeout of the subscriptions the run creates; a silenced delivery
	// waits this long. Default 2s.
	AckTimeout time.Duration
	// DrainTimeout bounds how long consumers may take, once producers stop,
	// to receive every stored message; past it loss is not judged. Default
	// 60s.
	DrainTimeout time.Duration
	// Nemesis disrupts the broker during the run; nil: none.
	Nemesis Nemesis
	// NemesisInterval is the time between disruptions. Default 5s.
	NemesisInterval time.Duration
	// Prefix starts the name of every topic and subscription the run
	// creates. Default "verify-" and a random suffix.
	Prefix string
	// Keep leaves the topics and subscriptions the run created in place at
	// its end (the Result's Setup names them), to inspect them or compare
	// the nodes' copies; default false: deleted, also when ctx ends early.
	Keep bool
	// Seed seeds the consumers' random choices. 0: random.
	Seed uint64
	// Log is where progress goes. Default: discarded.
	Log *slog.Logger
	// TLS are the transport credentials of every connection to the
	// servers (client.TLSFromFiles). Default nil: plaintext.
	TLS credentials.TransportCredentials
	// Token, if set, is sent as the bearer token of every call, for a
	// broker with auth on (docs/security.md); over TLS only, unless
	// TokenOverPlaintext. The principal needs publish, subscribe, read and
	// admin on the topics named Prefix* and their subscriptions.
	Token              string
	TokenOverPlaintext bool
}

// clientOptions are the SDK options of the run's connections: its
// credentials, and opts.
func (o *Options) clientOptions(opts ...client.Option) []client.Option {
	if o.TLS != nil {
		opts = append(opts, client.WithTLS(o.TLS))
	}
	if o.Token != "" {
		opts = append(opts, client.WithToken(o.Token))
		if o.TokenOverPlaintext {
			opts = append(opts, client.WithTokenOverPlaintext())
		}
	}
	return opts
}

// dialOptions are clientOptions for a gRPC connection of the run's own
// (the read-back's).
func (o *Options) dialOptions(opts ...grpc.DialOption) []grpc.DialOption {
	var creds credentials.TransportCredentials = insecure.NewCredentials()
	if o.TLS != nil {
		creds = o.TLS
	}
	opts = append(opts, grpc.WithTransportCredentials(creds))
	if o.Token != "" {
		tok := o.Token
		opts = append(opts, grpc.WithPerRPCCredentials(client.TokenCredentials(func(context.Context) (string, error) { return tok, nil }, o.TokenOverPlaintext)))
	}
	return opts
}

func (o *Options) withDefaults() error {
	if o.Server == "" {
		return errors.New("verify: no server given")
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&o.Duration, 20*time.Second)
	def(&o.AckTimeout, 2*time.Second)
	def(&o.DrainTimeout, time.Minute)
	def(&o.NemesisInterval, 5*time.Second)
	if o.Producers <= 0 {
		o.Producers = 3
	}
	if o.Rate <= 0 {
		o.Rate = 50
	}
	if o.Partitions == 0 {
		o.Partitions = 3
	}
	if o.Seed == 0 {
		o.Seed = rand.Uint64()
	}
	if o.Prefix == "" {
		o.Prefix = fmt.Sprintf("verify-%08x-", rand.Uint32())
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	return nil
}

// run is one verify run's shared state.
type run struct {
	o     Options
	c     *client.Client
	h     *History
	setup Setup

	draining atomic.Bool // producers stopped: consumers only ack now
	rngMu    sync.Mutex  // guards rng
	rng      *rand.Rand
}

// Run creates its topics and subscriptions, runs the workload (and the
// nemesis) against the broker, reads the logs back, deletes what it
// created (also when ctx ends early; unless Keep) and checks the history. The error is
// for a run that could not be carried out; broken promises are in the
// Result.
func Run(ctx context.Context, o Options) (Result, []Event, error) {
	if err := o.withDefaults(); err != nil {
		return Result{}, nil, err
	}
	dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	c, err := client.Dial(dctx, o.Server, o.clientOptions(client.WithCallTimeout(5*time.Second), client.WithLogger(slog.New(slog.DiscardHandler)))...)
	cancel()
	if err != nil {
		return Result{}, nil, err
	}
	defer c.Close()
	r := &run{o: o, c: c, h: &History{}, rng: rand.New(rand.NewPCG(o.Seed, o.Seed^0x9e3779b97f4a7c15))}
	defer r.cleanup()
	start := time.Now()
	if err := r.create(ctx); err != nil {
		return Result{}, nil, err
	}
	o.Log.Info("verify: topics and subscriptions created; running", "prefix", o.Prefix, "took", time.Since(start).Round(time.Millisecond),
		"duration", o.Duration, "seed", o.Seed)
	if err := r.workload(ctx); err != nil {
		return Result{}, r.h.Events(), err
	}
	start = time.Now()
	if err := r.readBack(ctx); err != nil {
		return Result{}, r.h.Events(), err
	}
	o.Log.Info("verify: logs read back", "took", time.Since(start).Round(time.Millisecond))
	start = time.Now()
	ev := r.h.Events()
	res := Check(r.setup, ev)
	o.Log.Info("verify: history checked", "events", len(ev), "violations", len(res.Violations), "took", time.Since(start).Round(time.Millisecond))
	return res, ev, nil
}

// The subscriptions a run creates: one of each guarantee and type.
var runSubs = []struct {
	name string
	spec SubSpec
}{
	{"none", SubSpec{None, "shared"}},
	{"amo", SubSpec{AtMostOnce, "shared"}},
	{"alo", SubSpec{AtLeastOnce, "failover"}},
	{"excl", SubSpec{AtLeastOnce, "exclusive"}},
	{"eo", SubSpec{EffectivelyOnce, "shared"}},
	{"ks", SubSpec{EffectivelyOnce, KeyShared}},
	{"pipe", SubSpec{EffectivelyOnce, "shared"}},
}

var guarantees = map[string]client.Guarantee{
	AtMostOnce: client.AtMostOnce, AtLeastOnce: client.AtLeastOnce, EffectivelyOnce: client.EffectivelyOnce,
}

var subTypes = map[string]client.SubscriptionType{
	"shared": client.Shared, "failover": client.Failover, "exclusive": client.Exclusive, KeyShared: client.KeyShared,
}

// create makes the run's topics and durable subscriptions; the none
// subscription is made by its consumers.
func (r *run) create(ctx context.Context) error {
	r.setup = Setup{Topic: r.o.Prefix + "in", OutputTopic: r.o.Prefix + "out", Subs: map[string]SubSpec{}}
	for _, t := range []string{r.setup.Topic, r.setup.OutputTopic} {
		if _, err := r.c.CreateTopic(ctx, t, client.TopicConfig{Partitions: r.o.Partitions}); err != nil {
			return fmt.Errorf("verify: create topic %s: %w", t, err)
		}
	}
	for _, s := range runSubs {
		name := r.o.Prefix + s.name
		r.setup.Subs[name] = s.spec
		if s.name == "pipe" {
			r.setup.Pipeline = name
		}
		if s.spec.Guarantee == None {
			continue
		}
		cfg := client.SubscriptionConfig{Guarantee: guarantees[s.spec.Guarantee], Type: subTypes[s.spec.Type],
			Start: client.Earliest(), AckTimeout: r.o.AckTimeout, BackoffMin: 100 * time.Millisecond, BackoffMax: time.Second}
		if _, err := r.c.CreateSubscription(ctx, r.setup.Topic, name, cfg); err != nil {
			return fmt.Errorf("verify: create subscription %s: %w", name, err)
		}
	}
	return nil
}

// cleanup deletes the run's topics and their subscriptions, on a context
// of its own: it runs after Ctrl-C too. With Keep it leaves them.
func (r *run) cleanup() {
	if r.o.Keep {
		if r.setup.Topic != "" {
			r.o.Log.Info("verify: topics kept", "topics", []string{r.setup.Topic, r.setup.OutputTopic})
		}
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, t := range []string{r.setup.Topic, r.setup.OutputTopic} {
		if t == "" {
			continue
		}
		if err := r.c.ForceDeleteTopic(ctx, t); err != nil && client.StatusCode(err) != codes.NotFound {
			r.o.Log.Warn("verify: delete topic; delete it by hand", "topic", t, "err", err)
		}
	}
}

// roll returns a uniform number in [0, 1).
func (r *run) roll() float64 {
	r.rngMu.Lock()
	defer r.rngMu.Unlock()
	return r.rng.Float64()
}

// between returns a duration uniform in [lo, hi).
func (r *run) between(lo, hi time.Duration) time.Duration {
	return lo + time.Duration(r.roll()*float64(hi-lo))
}
