package main

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/ferrymq/ferry/client"
)

// The topics. Every message's key is its order id.
const (
	// topicOrders holds one message per order; its id is the order id.
	topicOrders = "orders"
	// topicReady holds one message per cooked pizza; its id is the order id
	// and the kitchen's attempt, so a second cooking of one order would be
	// stored and seen, not deduplicated away.
	topicReady = "pizzas.ready"
	// topicDelivered holds one message per delivered pizza; its id is the
	// order id, so a courier's redelivery stores nothing.
	topicDelivered = "pizzas.delivered"
)

// ackTimeout is every durable subscription's ack timeout: short, so a
// delivery held by a process chaos killed comes back within seconds.
const ackTimeout = 3 * time.Second

// dedupWindow is how long each topic remembers message ids: long enough
// for any retry of a POST or a publish the demo makes.
const dedupWindow = time.Hour

// topics are the demo's topics and their configs. They keep every message:
// the checker reads them back from the first, and an effectively-once
// subscription remembers the ids it acked for as long as its topic keeps
// messages.
var topics = []struct {
	name string
	cfg  client.TopicConfig
}{
	{topicOrders, client.TopicConfig{Partitions: 3, DedupWindow: dedupWindow}},
	{topicReady, client.TopicConfig{Partitions: 3, DedupWindow: dedupWindow}},
	{topicDelivered, client.TopicConfig{Partitions: 1, DedupWindow: dedupWindow}},
}

// boardSubscription names the board's NONE subscriptions, one on each
// topic.
const boardSubscription = "board"

// publishes maps each service to the topics it publishes to (the kitchen
// through Process's Commit). The policy grants each only these
// (identity.go); the durable subscriptions each consumes are those named
// after it, below.
var publishes = map[string][]string{
	"storefront": {topicOrders},
	"kitchen":    {topicReady},
	"courier":    {topicDelivered},
}

// kitchenName is the i-th kitchen's name: its process, state directory and
// principal.
func kitchenName(i int) string { return kitchenDirPrefix + strconv.Itoa(i) }

// subscriptionSpec is one durable subscription a service reads through.
type subscriptionSpec struct {
	topic, name string
	cfg         client.SubscriptionConfig
}

func durable(g client.Guarantee, t client.SubscriptionType) client.SubscriptionConfig {
	return client.SubscriptionConfig{Guarantee: g, Type: t, Start: client.Earliest(), AckTimeout: ackTimeout,
		BackoffMin: 500 * time.Millisecond, BackoffMax: 5 * time.Second}
}

// subscriptions are the durable subscriptions, created by the supervisor
// before any service starts. The board's NONE subscriptions are not here:
// they exist only while the storefront is attached.
var subscriptions = []subscriptionSpec{
	{topicOrders, "kitchen", durable(client.EffectivelyOnce, client.KeyShared)},
	{topicOrders, "billing", durable(client.EffectivelyOnce, client.Shared)},
	{topicReady, "courier", durable(client.AtLeastOnce, client.Shared)},
	{topicOrders, "notifier", durable(client.AtMostOnce, client.Shared)},
	{topicReady, "notifier", durable(client.AtMostOnce, client.Shared)},
}

// serviceSpec describes a service for the page and the report: what it
// reads, the guarantee it picked and why.
type serviceSpec struct {
	Name      string `json:"name"`
	Reads     string `json:"reads"`
	Guarantee string `json:"guarantee"`
	Why       string `json:"why"`
}

// services are the services in the order the page and the report list
// them.
var services = []serviceSpec{
	{"storefront", "publishes orders", "idempotent publish",
		"The order id is the message id: a double click or a retried POST publishes the same id again, and the broker stores it once."},
	{"kitchen", "orders (key-shared)", "effectively-once",
		"A pizza must never be cooked twice. Process acks the order and publishes pizzas.ready in one Commit; a delivery superseded by a redelivery cannot commit. Key-shared spreads orders over the kitchens."},
	{"billing", "orders", "effectively-once",
		"A customer is charged exactly once. The charge is written to billing's own ledger, keyed by order id, before AckSync; once the broker confirms the ack the order never comes back, and the key covers a crash between charging and acking."},
	{"courier", "pizzas.ready", "at-least-once",
		"A pizza must never be left in the kitchen. Delivering is idempotent per order id, so a redelivery is harmless: duplicates are counted, not prevented."},
	{"notifier", "orders, pizzas.ready", "at-most-once",
		"Texting a customer twice is worse than missing a text. The cursor moves before a message is sent, so a crash may lose a text but never repeats one."},
	{"board", "orders, pizzas.ready, pizzas.delivered", "none",
		"The live board only shows what is happening now: whatever it misses while nobody listens is gone, and that costs nothing."},
}

// setup creates the topics and durable subscriptions; an identical create
// is a no-op, so it runs on every start.
func setup(ctx context.Context, c *client.Client) error {
	for _, t := range topics {
		if _, err := c.CreateTopic(ctx, t.name, t.cfg); err != nil {
			return fmt.Errorf("create topic %s: %w", t.name, err)
		}
	}
	for _, s := range subscriptions {
		if _, err := c.CreateSubscription(ctx, s.topic, s.name, s.cfg); err != nil {
			return fmt.Errorf("create subscription %s/%s: %w", s.topic, s.name, err)
		}
	}
	return nil
}
