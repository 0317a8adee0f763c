package main

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/ferrymq/ferry/client"
)

func newSubCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "sub", Short: "Create, list, inspect, seek and delete subscriptions"}
	cmd.AddCommand(newSubCreateCommand(), newSubListCommand(), newSubGetCommand(), newSubDeleteCommand(), newSubSeekCommand())
	return cmd
}

func newSubCreateCommand() *cobra.Command {
	var (
		guarantee, typ, start  string
		ackTimeout, bmin, bmax time.Duration
		horizon                time.Duration
		maxDeliveries          uint32
		dlq                    string
	)
	cmd := &cobra.Command{
		Use:   "create TOPIC SUB",
		Short: "Create a subscription (an identical create is a no-op)",
		Long: `Create a subscription on a topic with its delivery guarantee:

  none              the live tail to whoever is connected; nothing stored
  at-most-once      never twice; what was sent but not processed may be lost
  at-least-once     never lost; may be delivered more than once
  effectively-once  at-least-once with confirmed acks, fencing and atomic Commit`,
		Args: cobra.ExactArgs(2),
	}
	cf := addClientFlags(cmd, true)
	f := cmd.Flags()
	f.StringVar(&guarantee, "guarantee", "", "none, at-most-once, at-least-once or effectively-once (required)")
	f.StringVar(&typ, "type", "shared", "shared, key-shared, exclusive or failover")
	f.StringVar(&start, "start", "latest", "earliest, latest, offset:N or time:RFC3339")
	f.DurationVar(&ackTimeout, "ack-timeout", client.DefaultAckTimeout, "how long a delivery may stay unacked before it is redelivered")
	f.DurationVar(&bmin, "backoff-min", client.DefaultBackoffMin, "redelivery delay after a first nack; doubles with each attempt")
	f.DurationVar(&bmax, "backoff-max", client.DefaultBackoffMax, "cap on the redelivery delay")
	f.Uint32Var(&maxDeliveries, "max-deliveries", 0, "attempts before a message is dead-lettered (0: no limit; needs --dead-letter-topic)")
	f.StringVar(&dlq, "dead-letter-topic", "", "topic for messages that ran out of attempts")
	f.DurationVar(&horizon, "dedup-horizon", 0, "effectively-once: how long acked ids are remembered (0: the topic's retention)")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		g, err := client.ParseGuarantee(guarantee)
		if err != nil {
			return fmt.Errorf("--guarantee: %w", err)
		}
		t, err := client.ParseSubscriptionType(typ)
		if err != nil {
			return fmt.Errorf("--type: %w", err)
		}
		pos, err := client.ParsePosition(start)
		if err != nil {
			return fmt.Errorf("--start: %w", err)
		}
		if ackTimeout == 0 || bmin == 0 || bmax == 0 {
			// The SDK sends a zero duration as "the broker's default".
			return fmt.Errorf("--ack-timeout, --backoff-min and --backoff-max must not be 0")
		}
		cfg := client.SubscriptionConfig{Guarantee: g, Type: t, Start: pos, AckTimeout: ackTimeout, BackoffMin: bmin, BackoffMax: bmax,
			MaxDeliveries: maxDeliveries, DeadLetterTopic: dlq, DedupHorizon: max(horizon, 0)}
		var sub client.Subscription
		err = cf.withClient(cmd.Context(), func(ctx context.Context, c *client.Client) (err error) {
			sub, err = c.CreateSubscription(ctx, args[0], args[1], cfg)
			return err
		})
		if err != nil {
			return err
		}
		return printSubscription(cmd.OutOrStdout(), cf.output, sub, false)
	}
	return cmd
}

func newSubListCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "list TOPIC", Short: "List a topic's subscriptions with their stats", Args: cobra.ExactArgs(1)}
	cf := addClientFlags(cmd, true)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		var subs []client.Subscription
		err := cf.withClient(cmd.Context(), func(ctx context.Context, c *client.Client) (err error) {
			subs, err = c.ListSubscriptions(ctx, args[0])
			return err
		})
		if err != nil {
			return err
		}
		for _, s := range subs {
			if err := printSubscription(cmd.OutOrStdout(), cf.output, s, true); err != nil {
				return err
			}
		}
		return nil
	}
	return cmd
}

func newSubGetCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "get TOPIC SUB", Short: "Show a subscription's config and stats", Args: cobra.ExactArgs(2)}
	cf := addClientFlags(cmd, true)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		var sub client.Subscription
		err := cf.withClient(cmd.Context(), func(ctx context.Context, c *client.Client) (err error) {
			sub, err = c.GetSubscription(ctx, args[0], args[1])
			return err
		})
		if err != nil {
			return err
		}
		return printSubscription(cmd.OutOrStdout(), cf.output, sub, true)
	}
	return cmd
}

func newSubDeleteCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "delete TOPIC SUB", Short: "Delete a subscription, detaching its consumers", Args: cobra.ExactArgs(2)}
	cf := addClientFlags(cmd, false)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		err := cf.withClient(cmd.Context(), func(ctx context.Context, c *client.Client) error {
			return c.DeleteSubscription(ctx, args[0], args[1])
		})
		if err != nil {
			return err
		}
		fmt.Fprintf(cmd.OutOrStdout(), "deleted subscription %s on %s\n", args[1], args[0])
		return nil
	}
	return cmd
}

func newSubSeekCommand() *cobra.Command {
	var to string
	cmd := &cobra.Command{
		Use:   "seek TOPIC SUB --to earliest|latest|offset:N|time:RFC3339",
		Short: "Move a subscription's cursor in every partition",
		Long: `Move a subscription's cursor: messages before the position count as acked,
those from it on as not acked. Deliveries outstanding can no longer be acked.`,
		Args: cobra.ExactArgs(2),
	}
	cf := addClientFlags(cmd, false)
	cmd.Flags().StringVar(&to, "to", "", "earliest, latest, offset:N or time:RFC3339 (required)")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		pos, err := client.ParsePosition(to)
		if err != nil {
			return fmt.Errorf("--to: %w", err)
		}
		err = cf.withClient(cmd.Context(), func(ctx context.Context, c *client.Client) error {
			return c.Seek(ctx, args[0], args[1], pos)
		})
		if err != nil {
			return err
		}
		fmt.Fprintf(cmd.OutOrStdout(), "subscription %s on %s now at %s\n", args[1], args[0], pos)
		return nil
	}
	return cmd
}

// subscriptionJSON is the -o json form of a subscription.
type subscriptionJSON struct {
	Topic           string     `json:"topic"`
	Name            string     `json:"name"`
	Guarantee       string     `json:"guarantee"`
	Type            string     `json:"type"`
	Start           string     `json:"start"`
	AckTimeout      string     `json:"ack_timeout"`
	BackoffMin      string     `json:"backoff_min"`
	BackoffMax      string     `json:"backoff_max"`
	MaxDeliveries   uint32     `json:"max_deliveries,omitempty"`
	DeadLetterTopic string     `json:"dead_letter_topic,omitempty"`
	DedupHorizon    string     `json:"dedup_horizon,omitempty"`
	CreateTime      time.Time  `json:"create_time"`
	Stats           *statsJSON `json:"stats,omitempty"`
}

type statsJSON struct {
	Backlog          uint64 `json:"backlog"`
	InFlight         uint32 `json:"in_flight"`
	OldestUnackedAge string `json:"oldest_unacked_age,omitempty"`
	Consumers        uint32 `json:"consumers"`
	Delivered        uint64 `json:"delivered"`
	Redelivered      uint64 `json:"redelivered"`
	Acked            uint64 `json:"acked"`
	Nacked           uint64 `json:"nacked"`
	DeadLettered     uint64 `json:"dead_lettered"`
	StaleAcks        uint64 `json:"stale_acks"`
	Skipped          uint64 `json:"skipped"`
}

// printSubscription prints a subscription, and its stats if withStats
// (read with GetSubscription or ListSubscriptions).
func printSubscription(w io.Writer, output string, s client.Subscription, withStats bool) error {
	c := s.Config
	j := subscriptionJSON{
		Topic:           s.Topic,
		Name:            s.Name,
		Guarantee:       c.Guarantee.String(),
		Type:            c.Type.String(),
		Start:           c.Start.String(),
		AckTimeout:      c.AckTimeout.String(),
		BackoffMin:      c.BackoffMin.String(),
		BackoffMax:      c.BackoffMax.String(),
		MaxDeliveries:   c.MaxDeliveries,
		DeadLetterTopic: c.DeadLetterTopic,
		CreateTime:      s.CreateTime,
	}
	if c.DedupHorizon != 0 { // the broker sends none for 0, the topic's retention
		j.DedupHorizon = c.DedupHorizon.String()
	}
	if st := s.Stats; withStats {
		j.Stats = &statsJSON{
			Backlog: st.Backlog, InFlight: st.InFlight, Consumers: st.Consumers,
			Delivered: st.Delivered, Redelivered: st.Redelivered, Acked: st.Acked, Nacked: st.Nacked,
			DeadLettered: st.DeadLettered, StaleAcks: st.StaleAcks, Skipped: st.Skipped,
		}
		if st.OldestUnackedAge != 0 { // the broker sends none while nothing is unacked
			j.Stats.OldestUnackedAge = st.OldestUnackedAge.String()
		}
	}
	if output == "json" {
		return printJSON(w, j)
	}
	fmt.Fprintf(w, "%s/%s\tguarantee=%s type=%s start=%s ack_timeout=%s backoff=%s..%s",
		j.Topic, j.Name, j.Guarantee, j.Type, j.Start, j.AckTimeout, j.BackoffMin, j.BackoffMax)
	if j.MaxDeliveries > 0 {
		fmt.Fprintf(w, " max_deliveries=%d dead_letter_topic=%s", j.MaxDeliveries, j.DeadLetterTopic)
	}
	fmt.Fprintln(w)
	if s := j.Stats; s != nil {
		fmt.Fprintf(w, "  backlog=%d in_flight=%d oldest_unacked_age=%s consumers=%d delivered=%d redelivered=%d acked=%d nacked=%d dead_lettered=%d\n",
			s.Backlog, s.InFlight, orNone(s.OldestUnackedAge), s.Consumers, s.Delivered, s.Redelivered, s.Acked, s.Nacked, s.DeadLettered)
	}
	return nil
}
