package client

import (
	"context"

	ferryv1 "github.com/ferrymq/ferry/proto/ferry/v1"
)

// Read is one ReadMessages answer.
type Read struct {
	// Messages are the messages read, in offset order; each has its
	// Partition, Offset and PublishTime set.
	Messages []*Message
	// NextOffset is the offset to read from next.
	NextOffset uint64
	// HeadOffset is the partition's head offset when read: a read from
	// NextOffset >= HeadOffset finds nothing yet.
	HeadOffset uint64
}

// ReadMessages reads a partition's log from offset from, moving no
// cursor: at most max messages (1 to 1,000; 0: the broker's default, 100)
// and about 1 MiB, at least one message if there is any. Below the
// partition's first retained offset it fails with OUT_OF_RANGE.
func (c *Client) ReadMessages(ctx context.Context, topic string, partition uint32, from uint64, max uint32) (Read, error) {
	var resp *ferryv1.ReadMessagesResponse
	err := c.call(ctx, func(ctx context.Context) (err error) {
		resp, err = c.admin.ReadMessages(ctx, &ferryv1.ReadMessagesRequest{Topic: topic, Partition: partition, FromOffset: from, MaxMessages: max})
		return err
	})
	if err != nil {
		return Read{}, err
	}
	out := Read{Messages: make([]*Message, 0, len(resp.GetMessages())), NextOffset: resp.GetNextOffset(), HeadOffset: resp.GetHeadOffset()}
	for _, m := range resp.GetMessages() {
		out.Messages = append(out.Messages, fromMessage(m))
	}
	return out, nil
}
