package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/google/uuid"
	"github.com/spf13/cobra"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc/codes"

	ferryv1 "github.com/ferrymq/ferry/proto/ferry/v1"
)

// stdinBatch bounds how many stdin lines go into one PublishStream request.
const stdinBatch = 100

func newPubCommand() *cobra.Command {
	var (
		key       string
		id        string
		headers   []string
		partition int64
	)
	cmd := &cobra.Command{
		Use:   "pub TOPIC [MESSAGE]",
		Short: "Publish a message, or every line of stdin",
		Long: `Publish MESSAGE to TOPIC, or without MESSAGE each line of stdin as one
message, pipelined over one stream. Messages without --id get a UUIDv7 id, so
a retry is recognised as a duplicate. Prints where each message was stored.`,
		Args: cobra.RangeArgs(1, 2),
	}
	cf := addClientFlags(cmd, true)
	f := cmd.Flags()
	f.StringVar(&key, "key", "", "routing key: messages with one key go to one partition, in order")
	f.StringVar(&id, "id", "", "dedup id (default: a new UUIDv7; only with MESSAGE)")
	f.StringArrayVar(&headers, "header", nil, "header as name=value; repeatable")
	f.Int64Var(&partition, "partition", -1, "explicit partition (default: by key, else id)")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		hdrs, err := parseHeaders(headers)
		if err != nil {
			return err
		}
		if partition < -1 || partition > 1<<32-1 {
			return fmt.Errorf("--partition %d is out of range", partition)
		}
		newMessage := func(payload string, id string) (*ferryv1.PublishMessage, error) {
			if id == "" {
				u, err := uuid.NewV7()
				if err != nil {
					return nil, err
				}
				id = u.String()
			}
			m := &ferryv1.PublishMessage{Id: id, Payload: []byte(payload), Headers: hdrs}
			if key != "" {
				m.Key = []byte(key)
			}
			if partition >= 0 {
				p := uint32(partition)
				m.Partition = &p
			}
			return m, nil
		}
		conn, err := cf.dial()
		if err != nil {
			return err
		}
		defer conn.Close()
		client := ferryv1.NewPublisherServiceClient(conn)
		out := cmd.OutOrStdout()
		if len(args) == 2 {
			m, err := newMessage(args[1], id)
			if err != nil {
				return err
			}
			var resp *ferryv1.PublishResponse
			err = cf.call(cmd.Context(), func(ctx context.Context) (err error) {
				resp, err = client.Publish(ctx, &ferryv1.PublishRequest{Topic: args[0], Messages: []*ferryv1.PublishMessage{m}})
				return err
			})
			if err != nil {
				return err
			}
			return printResult(out, cf.output, m.Id, resp.Results[0])
		}
		if id != "" {
			return errors.New("--id needs MESSAGE: every line of stdin gets its own id")
		}
		return publishLines(cmd.Context(), client, args[0], cmd.InOrStdin(), out, cf.output, func(line string) (*ferryv1.PublishMessage, error) {
			return newMessage(line, "")
		})
	}
	return cmd
}

// publishLines publishes each line of in over one PublishStream, up to
// stdinBatch lines a request, without waiting for answers before sending
// more, and prints every result in input order.
func publishLines(ctx context.Context, client ferryv1.PublisherServiceClient, topic string, in io.Reader, out io.Writer, output string,
	newMessage func(string) (*ferryv1.PublishMessage, error)) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := client.PublishStream(ctx)
	if err != nil {
		return rpcError(err)
	}
	lines := make(chan string, stdinBatch)
	sent := make(chan []string, 1024) // ids of each request, in send order
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		defer close(lines)
		sc := bufio.NewScanner(in)
		sc.Buffer(make([]byte, 64<<10), 8<<20)
		for sc.Scan() {
			select {
			case lines <- sc.Text():
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		return sc.Err()
	})
	g.Go(func() error {
		defer close(sent)
		var seq uint64
		for line := range lines {
			batch := []string{line}
		more:
			for len(batch) < stdinBatch {
				select {
				case l, ok := <-lines:
					if !ok {
						break more
					}
					batch = append(batch, l)
				default:
					break more
				}
			}
			req := &ferryv1.PublishStreamRequest{Sequence: seq, Topic: topic}
			ids := make([]string, len(batch))
			for i, l := range batch {
				m, err := newMessage(l)
				if err != nil {
					return err
				}
				req.Messages = append(req.Messages, m)
				ids[i] = m.Id
			}
			seq++
			select {
			case sent <- ids:
			case <-ctx.Done():
				return ctx.Err()
			}
			if err := stream.Send(req); err != nil {
				return rpcError(err)
			}
		}
		return rpcError(stream.CloseSend())
	})
	g.Go(func() error {
		for ids := range sent {
			resp, err := stream.Recv()
			if err != nil {
				return rpcError(err)
			}
			if e := resp.GetError(); e != nil {
				return fmt.Errorf("request %d: %s: %s", resp.GetSequence(), codes.Code(e.GetCode()), e.GetMessage())
			}
			for i, r := range resp.GetResults() {
				if err := printResult(out, output, ids[i], r); err != nil {
					return err
				}
			}
		}
		return nil
	})
	return g.Wait()
}

func printResult(w io.Writer, output, id string, r *ferryv1.PublishResult) error {
	if output == "json" {
		return printJSON(w, struct {
			ID        string `json:"id"`
			Partition uint32 `json:"partition"`
			Offset    uint64 `json:"offset"`
			Duplicate bool   `json:"duplicate"`
		}{id, r.GetPartition(), r.GetOffset(), r.GetDuplicate()})
	}
	_, err := fmt.Fprintf(w, "partition=%d offset=%d duplicate=%t\n", r.GetPartition(), r.GetOffset(), r.GetDuplicate())
	return err
}

func parseHeaders(hs []string) (map[string]string, error) {
	if len(hs) == 0 {
		return nil, nil
	}
	m := make(map[string]string, len(hs))
	for _, h := range hs {
		k, v, ok := strings.Cut(h, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("--header %q: want name=value", h)
		}
		m[k] = v
	}
	return m, nil
}
