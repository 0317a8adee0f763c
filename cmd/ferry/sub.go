package main

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/ferrymq/ferry/broker"
	"github.com/ferrymq/ferry/consumer"
	ferryv1 "github.com/ferrymq/ferry/proto/ferry/v1"
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
	d := consumer.DefaultOptions(consumer.AtLeastOnce)
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
	f.DurationVar(&ackTimeout, "ack-timeout", d.AckTimeout, "how long a delivery may stay unacked before it is redelivered")
	f.DurationVar(&bmin, "backoff-min", d.BackoffMin, "redelivery delay after a first nack; doubles with each attempt")
	f.DurationVar(&bmax, "backoff-max", d.BackoffMax, "cap on the redelivery delay")
	f.Uint32Var(&maxDeliveries, "max-deliveries", 0, "attempts before a message is dead-lettered (0: no limit; needs --dead-letter-topic)")
	f.StringVar(&dlq, "dead-letter-topic", "", "topic for messages that ran out of attempts")
	f.DurationVar(&horizon, "dedup-horizon", 0, "effectively-once: how long acked ids are remembered (0: the topic's retention)")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		g, err := consumer.ParseGuarantee(guarantee)
		if err != nil {
			return fmt.Errorf("--guarantee: %w", err)
		}
		t, err := consumer.ParseType(typ)
		if err != nil {
			return fmt.Errorf("--type: %w", err)
		}
		pos, err := consumer.ParseStartPosition(start)
		if err != nil {
			return fmt.Errorf("--start: %w", err)
		}
		cfg := &ferryv1.SubscriptionConfig{
			Guarantee:       ferryv1.DeliveryGuarantee(g),
			Type:            ferryv1.SubscriptionType(t),
			Start:           broker.PositionToProto(pos),
			AckTimeout:      durationpb.New(ackTimeout),
			BackoffMin:      durationpb.New(bmin),
			BackoffMax:      durationpb.New(bmax),
			MaxDeliveries:   maxDeliveries,
			DeadLetterTopic: dlq,
		}
		if horizon > 0 {
			cfg.DedupHorizon = durationpb.New(horizon)
		}
		var resp *ferryv1.CreateSubscriptionResponse
		err = cf.withAdmin(cmd.Context(), func(ctx context.Context, c ferryv1.AdminServiceClient) (err error) {
			resp, err = c.CreateSubscription(ctx, &ferryv1.CreateSubscriptionRequest{Topic: args[0], Name: args[1], Config: cfg})
			return err
		})
		if err != nil {
			return err
		}
		return printSubscription(cmd.OutOrStdout(), cf.output, resp.Subscription, nil)
	}
	return cmd
}

func newSubListCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "list TOPIC", Short: "List a topic's subscriptions with their stats", Args: cobra.ExactArgs(1)}
	cf := addClientFlags(cmd, true)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		var resp *ferryv1.ListSubscriptionsResponse
		err := cf.withAdmin(cmd.Context(), func(ctx context.Context, c ferryv1.AdminServiceClient) (err error) {
			resp, err = c.ListSubscriptions(ctx, &ferryv1.ListSubscriptionsRequest{Topic: args[0]})
			return err
		})
		if err != nil {
			return err
		}
		for i, s := range resp.Subscriptions {
			var st *ferryv1.SubscriptionStats
			if i < len(resp.Stats) {
				st = resp.Stats[i]
			}
			if err := printSubscription(cmd.OutOrStdout(), cf.output, s, st); err != nil {
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
		var resp *ferryv1.GetSubscriptionResponse
		err := cf.withAdmin(cmd.Context(), func(ctx context.Context, c ferryv1.AdminServiceClient) (err error) {
			resp, err = c.GetSubscription(ctx, &ferryv1.GetSubscriptionRequest{Topic: args[0], Name: args[1]})
			return err
		})
		if err != nil {
			return err
		}
		return printSubscription(cmd.OutOrStdout(), cf.output, resp.Subscription, resp.Stats)
	}
	return cmd
}

func newSubDeleteCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "delete TOPIC SUB", Short: "Delete a subscription, detaching its consumers", Args: cobra.ExactArgs(2)}
	cf := addClientFlags(cmd, false)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		err := cf.withAdmin(cmd.Context(), func(ctx context.Context, c ferryv1.AdminServiceClient) error {
			_, err := c.DeleteSubscription(ctx, &ferryv1.DeleteSubscriptionRequest{Topic: args[0], Name: args[1]})
			return err
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
		pos, err := consumer.ParseStartPosition(to)
		if err != nil {
			return fmt.Errorf("--to: %w", err)
		}
		conn, err := cf.dial()
		if err != nil {
			return err
		}
		defer conn.Close()
		err = cf.call(cmd.Context(), func(ctx context.Context) error {
			_, err := ferryv1.NewSubscriberServiceClient(conn).Seek(ctx, &ferryv1.SeekRequest{Topic: args[0], Subscription: args[1], Position: broker.PositionToProto(pos)})
			return err
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

func printSubscription(w io.Writer, output string, s *ferryv1.Subscription, st *ferryv1.SubscriptionStats) error {
	c := s.GetConfig()
	j := subscriptionJSON{
		Topic:           s.GetTopic(),
		Name:            s.GetName(),
		Guarantee:       consumer.Guarantee(c.GetGuarantee()).String(),
		Type:            consumer.Type(c.GetType()).String(),
		Start:           startString(c.GetStart()),
		AckTimeout:      c.GetAckTimeout().AsDuration().String(),
		BackoffMin:      c.GetBackoffMin().AsDuration().String(),
		BackoffMax:      c.GetBackoffMax().AsDuration().String(),
		MaxDeliveries:   c.GetMaxDeliveries(),
		DeadLetterTopic: c.GetDeadLetterTopic(),
		CreateTime:      s.GetCreateTime().AsTime(),
	}
	if c.GetDedupHorizon() != nil {
		j.DedupHorizon = c.GetDedupHorizon().AsDuration().String()
	}
	if st != nil {
		j.Stats = &statsJSON{
			Backlog: st.GetBacklog(), InFlight: st.GetInFlight(), Consumers: st.GetConsumers(),
			Delivered: st.GetDelivered(), Redelivered: st.GetRedelivered(), Acked: st.GetAcked(), Nacked: st.GetNacked(),
			DeadLettered: st.GetDeadLettered(), StaleAcks: st.GetStaleAcks(), Skipped: st.GetSkipped(),
		}
		if st.GetOldestUnackedAge() != nil {
			j.Stats.OldestUnackedAge = st.GetOldestUnackedAge().AsDuration().String()
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

func startString(p *ferryv1.Position) string {
	switch p.GetKind() {
	case ferryv1.PositionKind_POSITION_KIND_EARLIEST:
		return "earliest"
	case ferryv1.PositionKind_POSITION_KIND_OFFSET:
		return fmt.Sprintf("offset:%d", p.GetOffset())
	case ferryv1.PositionKind_POSITION_KIND_TIME:
		return "time:" + p.GetTime().AsTime().Format(time.RFC3339Nano)
	}
	return "latest"
}
