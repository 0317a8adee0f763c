package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/ferrymq/ferry/client"
)

func newTopicCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "topic", Short: "Create, list, inspect, update and delete topics"}
	cmd.AddCommand(newTopicCreateCommand(), newTopicListCommand(), newTopicGetCommand(), newTopicUpdateCommand(), newTopicDeleteCommand())
	return cmd
}

func newTopicUpdateCommand() *cobra.Command {
	var tf topicConfigFlags
	cmd := &cobra.Command{
		Use:   "update NAME",
		Short: "Change a topic's retention, dedup window or max message size",
		Long: `Change the settings given as flags and leave the others as they are. The
partition count cannot change.`,
		Args: cobra.ExactArgs(1),
	}
	cf := addClientFlags(cmd, true)
	tf.add(cmd.Flags())
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		var fields []string
		for flag, path := range topicConfigPaths {
			if cmd.Flags().Changed(flag) {
				fields = append(fields, path)
			}
		}
		if len(fields) == 0 {
			return errors.New("nothing to change: give at least one of --retention-age, --retention-bytes, --retention-messages, --dedup-window, --max-message-bytes")
		}
		var t client.Topic
		err := cf.withClient(cmd.Context(), func(ctx context.Context, c *client.Client) (err error) {
			t, err = c.UpdateTopic(ctx, args[0], tf.config(), fields...)
			return err
		})
		if err != nil {
			return err
		}
		return printTopic(cmd.OutOrStdout(), cf.output, t)
	}
	return cmd
}

// topicConfigFlags are the config flags topic create and topic update share.
type topicConfigFlags struct {
	cfg        client.TopicConfig
	age, dedup time.Duration
}

// topicConfigPaths names each shared flag's TopicConfig field, for update
// masks.
var topicConfigPaths = map[string]string{
	"retention-age":      "retention_max_age",
	"retention-bytes":    "retention_max_bytes",
	"retention-messages": "retention_max_messages",
	"dedup-window":       "dedup_window",
	"max-message-bytes":  "max_message_bytes",
}

func (tf *topicConfigFlags) add(f *pflag.FlagSet) {
	f.DurationVar(&tf.age, "retention-age", 0, "delete messages older than this (0: keep)")
	f.Uint64Var(&tf.cfg.RetentionMaxBytes, "retention-bytes", 0, "per partition, keep at most this many bytes (0: no limit)")
	f.Uint64Var(&tf.cfg.RetentionMaxMessages, "retention-messages", 0, "per partition, keep at most this many messages (0: no limit)")
	f.DurationVar(&tf.dedup, "dedup-window", 0, "how long message ids are remembered (0: server default, 2m)")
	f.Uint32Var(&tf.cfg.MaxMessageBytes, "max-message-bytes", 0, "largest payload in bytes (0: server default, 1 MiB)")
}

// config is the config the flags describe; zero durations mean the
// default. The replication factor is create's alone.
func (tf *topicConfigFlags) config() client.TopicConfig {
	cfg := tf.cfg
	cfg.RetentionMaxAge, cfg.DedupWindow, cfg.ReplicationFactor = tf.age, tf.dedup, 0
	return cfg
}

func newTopicCreateCommand() *cobra.Command {
	var tf topicConfigFlags
	cmd := &cobra.Command{
		Use:   "create NAME",
		Short: "Create a topic (an identical create is a no-op)",
		Args:  cobra.ExactArgs(1),
	}
	cf := addClientFlags(cmd, true)
	cmd.Flags().Uint32Var(&tf.cfg.Partitions, "partitions", 1, "number of partitions, 1 to 1024")
	cmd.Flags().Uint32Var(&tf.cfg.ReplicationFactor, "replication-factor", 0, "copies of each partition (0: one per node; this version keeps one on every node)")
	tf.add(cmd.Flags())
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		var t client.Topic
		err := cf.withClient(cmd.Context(), func(ctx context.Context, c *client.Client) (err error) {
			cfg := tf.config()
			cfg.ReplicationFactor = tf.cfg.ReplicationFactor
			t, err = c.CreateTopic(ctx, args[0], cfg)
			return err
		})
		if err != nil {
			return err
		}
		return printTopic(cmd.OutOrStdout(), cf.output, t)
	}
	return cmd
}

func newTopicListCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "list", Short: "List topics", Args: cobra.NoArgs}
	cf := addClientFlags(cmd, true)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		var topics []client.Topic
		err := cf.withClient(cmd.Context(), func(ctx context.Context, c *client.Client) (err error) {
			topics, err = c.ListTopics(ctx)
			return err
		})
		if err != nil {
			return err
		}
		for _, t := range topics {
			if err := printTopic(cmd.OutOrStdout(), cf.output, t); err != nil {
				return err
			}
		}
		return nil
	}
	return cmd
}

func newTopicGetCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "get NAME", Short: "Show a topic's config and its partitions' offsets", Args: cobra.ExactArgs(1)}
	cf := addClientFlags(cmd, true)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		var t client.Topic
		err := cf.withClient(cmd.Context(), func(ctx context.Context, c *client.Client) (err error) {
			t, err = c.GetTopic(ctx, args[0])
			return err
		})
		if err != nil {
			return err
		}
		return printTopic(cmd.OutOrStdout(), cf.output, t)
	}
	return cmd
}

func newTopicDeleteCommand() *cobra.Command {
	var force bool
	cmd := &cobra.Command{Use: "delete NAME", Short: "Delete a topic and all its messages", Args: cobra.ExactArgs(1)}
	cf := addClientFlags(cmd, false)
	cmd.Flags().BoolVar(&force, "force", false, "delete the topic even if it has subscriptions, and them with it")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		err := cf.withClient(cmd.Context(), func(ctx context.Context, c *client.Client) error {
			if force {
				return c.ForceDeleteTopic(ctx, args[0])
			}
			return c.DeleteTopic(ctx, args[0])
		})
		if err != nil {
			return err
		}
		fmt.Fprintf(cmd.OutOrStdout(), "deleted topic %s\n", args[0])
		return nil
	}
	return cmd
}

// topicJSON is the -o json form of a topic.
type topicJSON struct {
	Name                 string          `json:"name"`
	Partitions           uint32          `json:"partitions"`
	ReplicationFactor    uint32          `json:"replication_factor"`
	RetentionMaxAge      string          `json:"retention_max_age,omitempty"`
	RetentionMaxBytes    uint64          `json:"retention_max_bytes,omitempty"`
	RetentionMaxMessages uint64          `json:"retention_max_messages,omitempty"`
	DedupWindow          string          `json:"dedup_window"`
	MaxMessageBytes      uint32          `json:"max_message_bytes"`
	CreateTime           time.Time       `json:"create_time"`
	PartitionStats       []partitionJSON `json:"partition_stats,omitempty"`
	// Storage is the answering broker's disk (ferry topic get only).
	Storage *storageJSON `json:"broker_storage,omitempty"`
}

// storageJSON is the -o json form of a broker's storage status.
type storageJSON struct {
	DiskFreeBytes     uint64 `json:"disk_free_bytes,omitempty"`
	DiskCapacityBytes uint64 `json:"disk_capacity_bytes,omitempty"`
	DiskReserveBytes  uint64 `json:"disk_reserve_bytes,omitempty"`
	PublishingRefused bool   `json:"publishing_refused,omitempty"`
	ReadOnly          bool   `json:"read_only,omitempty"`
	Detail            string `json:"detail,omitempty"`
}

type partitionJSON struct {
	Partition    uint32 `json:"partition"`
	FirstOffset  uint64 `json:"first_offset"`
	HeadOffset   uint64 `json:"head_offset"`
	MessageCount uint64 `json:"message_count"`
	Bytes        uint64 `json:"bytes"`
}

// printTopic prints a topic, its partitions' stats and the broker's
// storage status if it has them (GetTopic's answer).
func printTopic(w io.Writer, output string, t client.Topic) error {
	c := t.Config
	j := topicJSON{
		Name:                 t.Name,
		Partitions:           c.Partitions,
		ReplicationFactor:    c.ReplicationFactor,
		RetentionMaxBytes:    c.RetentionMaxBytes,
		RetentionMaxMessages: c.RetentionMaxMessages,
		DedupWindow:          c.DedupWindow.String(),
		MaxMessageBytes:      c.MaxMessageBytes,
		CreateTime:           t.CreateTime,
	}
	if c.RetentionMaxAge != 0 { // the broker sends none for 0, keep for ever
		j.RetentionMaxAge = c.RetentionMaxAge.String()
	}
	for _, p := range t.Partitions {
		j.PartitionStats = append(j.PartitionStats, partitionJSON{p.Partition, p.FirstOffset, p.HeadOffset, p.Messages, p.Bytes})
	}
	if st := t.Storage; st != nil {
		j.Storage = &storageJSON{st.DiskFreeBytes, st.DiskCapacityBytes, st.DiskReserveBytes, st.PublishingRefused, st.ReadOnly, st.Detail}
	}
	if output == "json" {
		return printJSON(w, j)
	}
	retention := "none"
	if j.RetentionMaxAge != "" || j.RetentionMaxBytes != 0 || j.RetentionMaxMessages != 0 {
		retention = fmt.Sprintf("age=%s bytes=%s messages=%s", orNone(j.RetentionMaxAge), countOrNone(j.RetentionMaxBytes), countOrNone(j.RetentionMaxMessages))
	}
	fmt.Fprintf(w, "%s\tpartitions=%d replication_factor=%d retention=%s dedup_window=%s max_message_bytes=%d\n",
		j.Name, j.Partitions, j.ReplicationFactor, retention, j.DedupWindow, j.MaxMessageBytes)
	for _, p := range j.PartitionStats {
		fmt.Fprintf(w, "  partition=%d first_offset=%d head_offset=%d messages=%d bytes=%d\n",
			p.Partition, p.FirstOffset, p.HeadOffset, p.MessageCount, p.Bytes)
	}
	if st := j.Storage; st != nil && (st.PublishingRefused || st.ReadOnly) {
		// A broker short of disk says what it refuses.
		fmt.Fprintf(w, "broker storage: %s\n", st.Detail)
	}
	return nil
}

// orNone and countOrNone print a limit that is not set (0) as none, not
// as a limit of zero.
func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

func countOrNone(n uint64) string {
	if n == 0 {
		return "none"
	}
	return strconv.FormatUint(n, 10)
}
