package main

import (
	"errors"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/ferrymq/ferry/internal/limits"
	"github.com/ferrymq/ferry/storage"
)

// addLimitFlags adds the per-principal rate limits and quotas of ferry
// serve (docs/security.md, "Rate limits and quotas"). Every limit is off
// (0) by default. Like every flag they can be set in the --config file.
func addLimitFlags(f *pflag.FlagSet, o *limits.Options) {
	o.Burst = time.Second
	o.MaxPrincipals = 10_000
	f.Float64Var(&o.PublishMessages, "limit-publish-msgs", 0,
		"messages per second each principal may publish (0: unlimited); over it a publish is refused with RESOURCE_EXHAUSTED and a RetryInfo, which the SDK waits out")
	f.Var(byteRateFlag{&o.PublishBytes}, "limit-publish-bytes",
		"bytes per second each principal may publish, a size (10MiB), counting each message's payload, key, id and headers (0: unlimited)")
	f.DurationVar(&o.Burst, "limit-burst", o.Burst,
		"how much of --limit-publish-msgs and --limit-publish-bytes a principal may spend at once, as time at that rate")
	f.IntVar(&o.Streams, "limit-streams", 0,
		"publish and subscribe streams each principal may have open at once (0: unlimited)")
	f.IntVar(&o.Subscriptions, "limit-subscriptions", 0,
		"subscriptions each principal may have created and still have, counted per node since it started (0: unlimited)")
	f.IntVar(&o.Connections, "limit-connections", 0,
		"connections each principal may hold (0: unlimited); a connection counts against a principal from its first call on it until it closes, and a call that would make one more is refused with RESOURCE_EXHAUSTED")
	f.Var(sizeFlag{&o.TopicBytes}, "limit-topic-bytes",
		"bytes each topic may hold on disk, a size (10GiB), for a publish to it to be taken (0: unlimited); counted as retention by bytes counts them — the record bytes of its messages on this node, not Badger's overhead or space not yet reclaimed — so a topic overshoots it by at most the publishes taken while it was just under; retention still deletes oldest first, the quota refuses new")
	f.IntVar(&o.MaxPrincipals, "limit-principals", o.MaxPrincipals,
		"principals whose publish rates, subscriptions and connection counts are remembered; for a new one the least recently seen is forgotten")
}

// sizeFlag is a byte size: 10GiB.
type sizeFlag struct{ n *uint64 }

func (f sizeFlag) String() string { return strconv.FormatUint(*f.n, 10) }
func (f sizeFlag) Type() string   { return "size" }
func (f sizeFlag) Set(s string) error {
	if strings.HasPrefix(strings.TrimSpace(s), "-") {
		return errors.New("a size must be 0 (off) or positive, not negative")
	}
	n, err := storage.ParseBytes(s)
	if err != nil {
		return err
	}
	*f.n = n
	return nil
}

// byteRateFlag is --limit-publish-bytes: a byte size per second.
type byteRateFlag struct{ r *float64 }

func (f byteRateFlag) String() string { return strconv.FormatFloat(*f.r, 'f', -1, 64) }
func (f byteRateFlag) Type() string   { return "size" }
func (f byteRateFlag) Set(s string) error {
	n, err := storage.ParseBytes(s)
	if err != nil {
		return err
	}
	*f.r = float64(n)
	return nil
}
