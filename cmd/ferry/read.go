package main

import (
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"time"
	"unicode/utf8"

	"github.com/spf13/cobra"

	"github.com/ferrymq/ferry/client"
)

func newReadCommand() *cobra.Command {
	var (
		partition uint32
		from      uint64
		max       uint64
	)
	cmd := &cobra.Command{
		Use:   "read TOPIC",
		Short: "Read a partition's raw log, moving no cursor",
		Long: `Read messages of one partition from --from up to the head (or --max),
one per line. Payloads and keys that are not UTF-8 text are printed in
base64, with payload_base64 or key_base64 set.`,
		Args: cobra.ExactArgs(1),
	}
	cf := addClientFlags(cmd, true)
	cmd.Flags().Uint32Var(&partition, "partition", 0, "partition to read")
	cmd.Flags().Uint64Var(&from, "from", 0, "first offset to read")
	cmd.Flags().Uint64Var(&max, "max", 0, "read at most this many messages (0: up to the head)")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		return cf.withClient(cmd.Context(), func(ctx context.Context, c *client.Client) error {
			next, read := from, uint64(0)
			for max == 0 || read < max {
				want := uint32(1000)
				if max > 0 {
					want = uint32(min(max-read, 1000))
				}
				r, err := c.ReadMessages(ctx, args[0], partition, next, want)
				if err != nil {
					return err
				}
				for _, m := range r.Messages {
					if err := printMessage(cmd.OutOrStdout(), cf.output, m); err != nil {
						return err
					}
				}
				read += uint64(len(r.Messages))
				next = r.NextOffset
				if len(r.Messages) == 0 || next >= r.HeadOffset {
					break
				}
			}
			return nil
		})
	}
	return cmd
}

// messageJSON is the -o json form of a message.
type messageJSON struct {
	Partition     uint32            `json:"partition"`
	Offset        uint64            `json:"offset"`
	ID            string            `json:"id,omitempty"`
	Key           string            `json:"key,omitempty"`
	KeyBase64     bool              `json:"key_base64,omitempty"`
	Payload       string            `json:"payload"`
	PayloadBase64 bool              `json:"payload_base64,omitempty"`
	Headers       map[string]string `json:"headers,omitempty"`
	PublishTime   time.Time         `json:"publish_time"`
}

func textOrBase64(b []byte) (string, bool) {
	if utf8.Valid(b) {
		return string(b), false
	}
	return base64.StdEncoding.EncodeToString(b), true
}

func messageToJSON(m *client.Message) messageJSON {
	j := messageJSON{Offset: m.Offset, ID: m.ID, Headers: m.Headers, PublishTime: m.PublishTime}
	if m.Partition != nil {
		j.Partition = *m.Partition
	}
	j.Key, j.KeyBase64 = textOrBase64(m.Key)
	j.Payload, j.PayloadBase64 = textOrBase64(m.Payload)
	return j
}

func printMessage(w io.Writer, output string, m *client.Message) error {
	j := messageToJSON(m)
	if output == "json" {
		return printJSON(w, j)
	}
	_, err := fmt.Fprintf(w, "partition=%d offset=%d id=%s key=%q time=%s payload=%q\n",
		j.Partition, j.Offset, j.ID, j.Key, j.PublishTime.Format(time.RFC3339Nano), j.Payload)
	return err
}
