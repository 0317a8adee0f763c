package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	ferryv1 "github.com/ferrymq/ferry/proto/ferry/v1"
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
		mask := &fieldmaskpb.FieldMask{}
		for flag, path := range topicConfigPaths {
			if cmd.Flags().Changed(flag) {
				mask.Paths = append(mask.Paths, path)
			}
		}
		if len(mask.Paths) == 0 {
			return errors.New("nothing to change: give at least one of --retention-age, --retention-bytes, --retention-messages, --dedup-window, --max-message-bytes")
		}
		var resp *ferryv1.UpdateTopicResponse
		err := cf.withAdmin(cmd.Context(), func(ctx context.Context, c ferryv1.AdminServiceClient) (err error) {
			resp, err = c.UpdateTopic(ctx, &ferryv1.UpdateTopicRequest{Name: args[0], Config: tf.config(), UpdateMask: mask})
			return err
		})
		if err != nil {
			return err
		}
		return printTopic(cmd.OutOrStdout(), cf.output, resp.Topic, nil, nil)
	}
	return cmd
}

// topicConfigFlags are the config flags topic create and topic update share.
type topicConfigFlags struct {
	cfg        ferryv1.TopicConfig
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

// config is the config the flags describe; zero durations mean the default.
func (tf *topicConfigFlags) config() *ferryv1.TopicConfig {
	return &ferryv1.TopicConfig{
		Partitions:           tf.cfg.Partitions,
		RetentionMaxAge:      durationpb.New(tf.age),
		RetentionMaxBytes:    tf.cfg.RetentionMaxBytes,
		RetentionMaxMessages: tf.cfg.RetentionMaxMessages,
		DedupWindow:          durationpb.New(tf.dedup),
		MaxMessageBytes:      tf.cfg.MaxMessageBytes,
	}
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
		var resp *ferryv1.CreateTopicResponse
		err := cf.withAdmin(cmd.Context(), func(ctx context.Context, c ferryv1.AdminServiceClient) (err error) {
			cfg := tf.config()
			cfg.ReplicationFactor = tf.cfg.ReplicationFactor
			resp, err = c.CreateTopic(ctx, &ferryv1.CreateTopicRequest{Name: args[0], Config: cfg})
			return err
		})
		if err != nil {
			return err
		}
		return printTopic(cmd.OutOrStdout(), cf.output, resp.Topic, nil, nil)
	}
	return cmd
}

func newTopicListCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "list", Short: "List topics", Args: cobra.NoArgs}
	cf := addClientFlags(cmd, true)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		var resp *ferryv1.ListTopicsResponse
		err := cf.withAdmin(cmd.Context(), func(ctx context.Context, c ferryv1.AdminServiceClient) (err error) {
			resp, err = c.ListTopics(ctx, &ferryv1.ListTopicsRequest{})
			return err
		})
		if err != nil {
			return err
		}
		for _, t := range resp.Topics {
			if err := printTopic(cmd.OutOrStdout(), cf.output, t, nil, nil); err != nil {
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
		var resp *ferryv1.GetTopicResponse
		err := cf.withAdmin(cmd.Context(), func(ctx context.Context, c ferryv1.AdminServiceClient) (err error) {
			resp, err = c.GetTopic(ctx, &ferryv1.GetTopicRequest{Name: args[0]})
			return err
		})
		if err != nil {
			return err
		}
		return printTopic(cmd.OutOrStdout(), cf.output, resp.Topic, resp.Partitions, resp.Storage)
	}
	return cmd
}

func newTopicDeleteCommand() *cobra.Command {
	var force bool
	cmd := &cobra.Command{Use: "delete NAME", Short: "Delete a topic and all its messages", Args: cobra.ExactArgs(1)}
	cf := addClientFlags(cmd, false)
	cmd.Flags().BoolVar(&force, "force", false, "delete the topic even if it has subscriptions, and them with it")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		err := cf.withAdmin(cmd.Context(), func(ctx context.Context, c ferryv1.AdminServiceClient) error {
			_, err := c.DeleteTopic(ctx, &ferryv1.DeleteTopicRequest{Name: args[0], Force: force})
			return err
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
	Storage *ferryv1.StorageStatus `json:"broker_storage,omitempty"`
}

type partitionJSON struct {
	Partition    uint32 `json:"partition"`
	FirstOffset  uint64 `json:"first_offset"`
	HeadOffset   uint64 `json:"head_offset"`
	MessageCount uint64 `json:"message_count"`
	Bytes        uint64 `json:"bytes"`
}

// printTopic prints a topic, its partitions' stats and the broker's
// storage status if given (parts and st may be nil).
func printTopic(w io.Writer, output string, t *ferryv1.Topic, parts []*ferryv1.PartitionStats, st *ferryv1.StorageStatus) error {
	c := t.GetConfig()
	j := topicJSON{
		Name:                 t.GetName(),
		Partitions:           c.GetPartitions(),
		ReplicationFactor:    c.GetReplicationFactor(),
		RetentionMaxBytes:    c.GetRetentionMaxBytes(),
		RetentionMaxMessages: c.GetRetentionMaxMessages(),
		DedupWindow:          c.GetDedupWindow().AsDuration().String(),
		MaxMessageBytes:      c.GetMaxMessageBytes(),
		CreateTime:           t.GetCreateTime().AsTime(),
	}
	if c.GetRetentionMaxAge() != nil {
		j.RetentionMaxAge = c.GetRetentionMaxAge().AsDuration().String()
	}
	for _, p := range parts {
		j.PartitionStats = append(j.PartitionStats, partitionJSON{p.GetPartition(), p.GetFirstOffset(), p.GetHeadOffset(), p.GetMessageCount(), p.GetBytes()})
	}
	j.Storage = st
	if output == "json" {
		return printJSON(w, j)
	}
	retention := "none"
	if j.RetentionMaxAge != "" || j.RetentionMaxBytes != 0 || j.RetentionMaxMessages != 0 {
		retention = fmt.Sprintf("age=%s bytes=%d messages=%d", orNone(j.RetentionMaxAge), j.RetentionMaxBytes, j.RetentionMaxMessages)
	}
	fmt.Fprintf(w, "%s\tpartitions=%d replication_factor=%d retention=%s dedup_window=%s max_message_bytes=%d\n",
		j.Name, j.Partitions, j.ReplicationFactor, retention, j.DedupWindow, j.MaxMessageBytes)
	for _, p := range j.PartitionStats {
		fmt.Fprintf(w, "  partition=%d first_offset=%d head_offset=%d messages=%d bytes=%d\n",
			p.Partition, p.FirstOffset, p.HeadOffset, p.MessageCount, p.Bytes)
	}
	if st.GetPublishingRefused() || st.GetReadOnly() {
		// A broker short of disk says what it refuses.
		fmt.Fprintf(w, "broker storage: %s\n", st.GetDetail())
	}
	return nil
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}
