package main

import (
	"fmt"
	"math"
	"os"
	"time"

	"github.com/spf13/pflag"
	"go.yaml.in/yaml/v3"
)

// omWorkload is an OpenMessaging Benchmark workload file, the format users
// already run against Kafka or Pulsar. Keys ferry has no use for (name,
// payloadFile, ...) are ignored.
type omWorkload struct {
	Topics                  *int     `yaml:"topics"`
	PartitionsPerTopic      *uint32  `yaml:"partitionsPerTopic"`
	MessageSize             *int     `yaml:"messageSize"`
	SubscriptionsPerTopic   *int     `yaml:"subscriptionsPerTopic"`
	ConsumerPerSubscription *int     `yaml:"consumerPerSubscription"`
	ProducersPerTopic       *int     `yaml:"producersPerTopic"`
	ProducerRate            *int     `yaml:"producerRate"`
	ConsumerBacklogSizeGB   *float64 `yaml:"consumerBacklogSizeGB"`
	TestDurationMinutes     *float64 `yaml:"testDurationMinutes"`
	KeyDistributor          *string  `yaml:"keyDistributor"`
}

// roundRobinKeys is how many keys the OMB key distributors spread over.
const roundRobinKeys = 10000

// applyWorkload sets o from the workload file at path, except what the
// command line set: flags override the file.
func applyWorkload(o *benchOptions, path string, flags *pflag.FlagSet) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("--workload: %w", err)
	}
	var w omWorkload
	if err := yaml.Unmarshal(b, &w); err != nil {
		return fmt.Errorf("--workload %s: %w", path, err)
	}
	set := func(flag string, apply func()) {
		if !flags.Changed(flag) {
			apply()
		}
	}
	if w.Topics != nil {
		set("topics", func() { o.topics = *w.Topics })
	}
	if w.PartitionsPerTopic != nil {
		set("partitions", func() { o.partitions = *w.PartitionsPerTopic })
	}
	if w.MessageSize != nil {
		set("message-size", func() { o.size = *w.MessageSize })
	}
	if w.SubscriptionsPerTopic != nil {
		set("subscriptions", func() { o.subscriptions = *w.SubscriptionsPerTopic })
	}
	if w.ConsumerPerSubscription != nil {
		set("consumers", func() { o.consumers = *w.ConsumerPerSubscription })
	}
	if w.ProducersPerTopic != nil {
		set("producers", func() { o.producers = *w.ProducersPerTopic })
	}
	if w.ProducerRate != nil {
		// OMB's rate is per workload, as is --rate.
		set("rate", func() { o.rate = *w.ProducerRate })
	}
	if w.ConsumerBacklogSizeGB != nil {
		set("backlog-bytes", func() { o.backlogBytes = int64(math.Round(*w.ConsumerBacklogSizeGB * (1 << 30))) })
	}
	if w.TestDurationMinutes != nil {
		set("duration", func() { o.duration = time.Duration(*w.TestDurationMinutes * float64(time.Minute)) })
	}
	if w.KeyDistributor != nil {
		switch *w.KeyDistributor {
		case "NO_KEY":
			set("keys", func() { o.keys = 0 })
		case "KEY_ROUND_ROBIN", "RANDOM_NANO":
			set("keys", func() { o.keys = roundRobinKeys })
		default:
			return fmt.Errorf("--workload %s: keyDistributor %q: want NO_KEY, KEY_ROUND_ROBIN or RANDOM_NANO", path, *w.KeyDistributor)
		}
	}
	return nil
}
