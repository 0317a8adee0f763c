package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"

	"github.com/ferrymq/ferry/client"
	ferryv1 "github.com/ferrymq/ferry/proto/ferry/v1"
)

func newConsumeCommand() *cobra.Command {
	var (
		maxN          int
		idle          time.Duration
		credit        int
		noAck, nack   bool
		ack, withNone bool
	)
	cmd := &cobra.Command{
		Use:   "consume TOPIC SUB",
		Short: "Print a subscription's deliveries, acking each once printed",
		Long: `Attach to a subscription and print each delivery (one JSON object per line
with -o json), then ack it (--ack, the default), nack it (--nack) or leave it
(--no-ack). With effectively-once, consume waits for every ack's confirmation
before it exits. It exits after --max deliveries, or once --timeout passes
with nothing delivered.`,
		Args: cobra.ExactArgs(2),
	}
	cf := addClientFlags(cmd, true)
	f := cmd.Flags()
	f.IntVar(&maxN, "max", 0, "exit after this many deliveries (0: no limit)")
	f.DurationVar(&idle, "timeout", 0, "exit once nothing is delivered for this long (0: wait for ever)")
	f.IntVar(&credit, "credit", 100, "most unacked deliveries held at once")
	f.BoolVar(&ack, "ack", false, "ack each delivery once printed (the default)")
	f.BoolVar(&noAck, "no-ack", false, "leave deliveries unacked: they are redelivered")
	f.BoolVar(&nack, "nack", false, "nack each delivery: it is redelivered after the backoff")
	f.BoolVar(&withNone, "none", false, "create a none subscription of this name if there is none (gone when the last consumer leaves)")
	cmd.MarkFlagsMutuallyExclusive("ack", "no-ack", "nack")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if maxN < 0 || credit < 1 {
			return fmt.Errorf("--max must be at least 0 and --credit at least 1")
		}
		mode := "ack"
		switch {
		case noAck:
			mode = "no-ack"
		case nack:
			mode = "nack"
		}
		conn, err := cf.dial()
		if err != nil {
			return err
		}
		defer conn.Close()
		c := &consumeRun{
			topic: args[0], sub: args[1], out: cmd.OutOrStdout(), output: cf.output, mode: mode,
			max: maxN, idle: idle, credit: credit, cf: cf,
			client: ferryv1.NewSubscriberServiceClient(conn),
		}
		if withNone {
			c.guarantee = client.None
		} else {
			err := cf.call(cmd.Context(), func(ctx context.Context) error {
				resp, err := ferryv1.NewAdminServiceClient(conn).GetSubscription(ctx, &ferryv1.GetSubscriptionRequest{Topic: args[0], Name: args[1]})
				c.guarantee = client.Guarantee(resp.GetSubscription().GetConfig().GetGuarantee())
				return err
			})
			if err != nil {
				return err
			}
		}
		return c.run(cmd.Context(), withNone)
	}
	return cmd
}

// consumeRun is one run of ferry consume.
type consumeRun struct {
	topic, sub string
	out        io.Writer
	output     string
	mode       string // ack, nack or no-ack
	max        int
	idle       time.Duration
	credit     int
	cf         *clientFlags
	client     ferryv1.SubscriberServiceClient
	guarantee  client.Guarantee

	total   int
	seq     uint64
	pending map[uint64]bool // effectively-once: ack frames awaiting confirmation
	failed  []string
}

func (c *consumeRun) run(ctx context.Context, createNone bool) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := c.client.Subscribe(ctx)
	if err != nil {
		return rpcError(err)
	}
	if c.max > 0 {
		c.credit = min(c.credit, c.max)
	}
	init := &ferryv1.SubscribeInit{Topic: c.topic, Subscription: c.sub, Credit: int32(c.credit), CreateNone: createNone}
	if err := stream.Send(&ferryv1.SubscribeRequest{Frame: &ferryv1.SubscribeRequest_Init{Init: init}}); err != nil {
		return rpcError(err)
	}
	frames := make(chan *ferryv1.SubscribeResponse)
	recvErr := make(chan error, 1)
	go func() {
		for {
			resp, err := stream.Recv()
			if err != nil {
				recvErr <- err
				return
			}
			select {
			case frames <- resp:
			case <-ctx.Done():
				return
			}
		}
	}()
	c.pending = make(map[uint64]bool)
	var idleC <-chan time.Time
	var timer *time.Timer
	if c.idle > 0 {
		timer = time.NewTimer(c.idle)
		defer timer.Stop()
		idleC = timer.C
	}
	var final []string // the last deliveries' ids: acked once the stream is closed
	for final == nil {
		select {
		case resp := <-frames:
			if conf := resp.GetAckConfirmation(); conf != nil {
				c.confirmed(conf)
				continue
			}
			ds := resp.GetDeliveries().GetDeliveries()
			if timer != nil {
				timer.Reset(c.idle)
			}
			done, err := c.handle(stream, ds)
			if err != nil {
				return err
			}
			if done {
				final = deliveryIDs(ds)
			}
		case err := <-recvErr:
			if errors.Is(err, io.EOF) {
				return errors.New("the broker ended the stream")
			}
			return rpcError(err)
		case <-idleC:
			final = []string{}
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	// Confirmations come over the stream: wait for them before closing it.
	if err := c.awaitConfirmations(frames, recvErr); err != nil {
		return err
	}
	// The last deliveries are acked only once the broker ended the stream:
	// its consumer is detached by then, so the credit those acks free
	// brings it no more deliveries (under effectively-once they would stay
	// outstanding until their deadline).
	_ = stream.CloseSend()
	c.awaitEnd(frames, recvErr)
	cancel()
	if err := c.ackFinal(final); err != nil {
		return err
	}
	if len(c.failed) > 0 {
		return fmt.Errorf("%d acks were not confirmed: %s", len(c.failed), c.failed[0])
	}
	return nil
}

// awaitEnd waits, up to a bound, until the broker ends the stream after
// CloseSend; frames still coming are dropped (credit leaves none but
// confirmations).
func (c *consumeRun) awaitEnd(frames <-chan *ferryv1.SubscribeResponse, recvErr <-chan error) {
	bound := time.NewTimer(5 * time.Second)
	defer bound.Stop()
	for {
		select {
		case <-frames:
		case <-recvErr:
			return
		case <-bound.C:
			return
		}
	}
}

// handle prints a batch of deliveries and acts on them. It reports true
// once --max deliveries were printed; those are acked after the stream is
// closed, so that freeing credit brings no more deliveries.
func (c *consumeRun) handle(stream ferryv1.SubscriberService_SubscribeClient, ds []*ferryv1.Delivery) (bool, error) {
	for _, d := range ds {
		if err := printDelivery(c.out, c.output, d); err != nil {
			return false, err
		}
	}
	c.total += len(ds)
	if c.max > 0 && c.total >= c.max {
		return true, nil
	}
	if c.max > 0 && c.max-c.total < c.credit {
		// Never hold more than what is left to print.
		c.credit = c.max - c.total
		if err := stream.Send(&ferryv1.SubscribeRequest{Frame: &ferryv1.SubscribeRequest_Credit{Credit: &ferryv1.SubscribeCredit{Credit: int32(c.credit)}}}); err != nil {
			return false, rpcError(err)
		}
	}
	ids := deliveryIDs(ds)
	switch {
	case len(ids) == 0 || c.guarantee == client.None:
	case c.mode == "ack":
		c.seq++
		if c.guarantee == client.EffectivelyOnce {
			c.pending[c.seq] = true
		}
		if err := stream.Send(&ferryv1.SubscribeRequest{Frame: &ferryv1.SubscribeRequest_Ack{Ack: &ferryv1.SubscribeAck{Sequence: c.seq, DeliveryIds: ids}}}); err != nil {
			return false, rpcError(err)
		}
	case c.mode == "nack" && c.guarantee != client.AtMostOnce:
		if err := stream.Send(&ferryv1.SubscribeRequest{Frame: &ferryv1.SubscribeRequest_Nack{Nack: &ferryv1.SubscribeNack{DeliveryIds: ids}}}); err != nil {
			return false, rpcError(err)
		}
	}
	return false, nil
}

func (c *consumeRun) confirmed(conf *ferryv1.AckConfirmation) {
	delete(c.pending, conf.GetSequence())
	for _, r := range conf.GetResults() {
		if codes.Code(r.GetCode()) != codes.OK {
			c.failed = append(c.failed, fmt.Sprintf("%s: %s: %s", r.GetDeliveryId(), codes.Code(r.GetCode()), r.GetMessage()))
		}
	}
}

func (c *consumeRun) awaitConfirmations(frames <-chan *ferryv1.SubscribeResponse, recvErr <-chan error) error {
	deadline := time.NewTimer(c.cf.timeout)
	defer deadline.Stop()
	for len(c.pending) > 0 {
		select {
		case resp := <-frames:
			if conf := resp.GetAckConfirmation(); conf != nil {
				c.confirmed(conf)
			}
		case err := <-recvErr:
			return fmt.Errorf("stream ended with %d acks unconfirmed: %w", len(c.pending), rpcError(err))
		case <-deadline.C:
			return fmt.Errorf("%d acks unconfirmed after %v", len(c.pending), c.cf.timeout)
		}
	}
	return nil
}

// ackFinal acks the last deliveries with a unary call. At-most-once needs no
// ack; under effectively-once the answer is the confirmation.
func (c *consumeRun) ackFinal(ids []string) error {
	if len(ids) == 0 || c.guarantee == client.None || c.guarantee == client.AtMostOnce {
		return nil
	}
	return c.cf.call(context.Background(), func(ctx context.Context) error {
		switch c.mode {
		case "ack":
			resp, err := c.client.Ack(ctx, &ferryv1.AckRequest{Topic: c.topic, Subscription: c.sub, DeliveryIds: ids})
			if err != nil {
				return err
			}
			if c.guarantee == client.EffectivelyOnce {
				c.confirmed(&ferryv1.AckConfirmation{Results: resp.GetResults()})
			}
		case "nack":
			_, err := c.client.Nack(ctx, &ferryv1.NackRequest{Topic: c.topic, Subscription: c.sub, DeliveryIds: ids})
			return err
		}
		return nil
	})
}

func deliveryIDs(ds []*ferryv1.Delivery) []string {
	ids := make([]string, len(ds))
	for i, d := range ds {
		ids[i] = d.GetDeliveryId()
	}
	return ids
}

// deliveryJSON is the -o json form of a delivery.
type deliveryJSON struct {
	messageJSON
	Attempt    uint32 `json:"attempt"`
	DeliveryID string `json:"delivery_id"`
}

func printDelivery(w io.Writer, output string, d *ferryv1.Delivery) error {
	j := deliveryJSON{messageJSON: messageToJSON(deliveredMessage(d.GetMessage())), Attempt: d.GetAttempt(), DeliveryID: d.GetDeliveryId()}
	if output == "json" {
		return printJSON(w, j)
	}
	_, err := fmt.Fprintf(w, "partition=%d offset=%d attempt=%d id=%s key=%q payload=%q delivery_id=%s\n",
		j.Partition, j.Offset, j.Attempt, j.ID, j.Key, j.Payload, j.DeliveryID)
	return err
}

// deliveredMessage is a delivery's message as the SDK's Message.
func deliveredMessage(m *ferryv1.Message) *client.Message {
	return &client.Message{ID: m.GetId(), Key: m.GetKey(), Payload: m.GetPayload(), Headers: m.GetHeaders(),
		Partition: ptr(m.GetPartition()), Offset: m.GetOffset(), PublishTime: m.GetPublishTime().AsTime()}
}

func ptr[T any](v T) *T { return &v }
