package main

import (
	"strconv"
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
	f.IntVar(&o.MaxPrincipals, "limit-principals", o.MaxPrincipals,
		"principals whose publish rates and subscriptions are remembered; for a new one the least recently seen is forgotten")
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
