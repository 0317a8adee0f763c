package broker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/ferrymq/ferry/consumer"
	"github.com/ferrymq/ferry/internal/echo"
	ferryv1 "github.com/ferrymq/ferry/proto/ferry/v1"
	"github.com/ferrymq/ferry/storage"
)

// Limits of the subscriber API.
const (
	MaxAckIDs = 10000
	// maxEchoedID and maxResultMessage bound what a per-id result repeats
	// and says: a valid id is at most 65 bytes.
	maxEchoedID      = 80
	maxResultMessage = 160
	// maxDeliveriesFrame bounds one Deliveries frame, except that a frame
	// always carries at least one delivery. gRPC marshals a message into a
	// pooled buffer of 32 KiB or, above that, 1 MiB; a frame that waits for
	// a slow consumer holds its buffer, so frames stay under 32 KiB.
	maxDeliveriesFrame = 30 << 10
	// maxPendingConfirms bounds an EFFECTIVELY_ONCE stream's acks whose
	// confirmation is not yet sent (taken by the engine, waiting for
	// their write, or for the client to read), in tokens of up to
	// confirmTokenIDs ids: a frame takes one token per confirmTokenIDs of
	// its ids (at most all of them). At the bound the broker stops
	// reading the stream's frames until a confirmation goes out, so a
	// client that sends acks and never reads the confirmations is held
	// back by HTTP/2 flow control; it costs at most about 16,000 ids'
	// acks and results.
	maxPendingConfirms = 16
	confirmTokenIDs    = 1000
)

// subscriber implements ferryv1.SubscriberServiceServer.
type subscriber struct {
	ferryv1.UnimplementedSubscriberServiceServer
	engine   *consumer.Engine
	metrics  *metrics
	pub      *publisher      // routes Commit's publishes
	draining <-chan struct{} // closed at shutdown
	node     *node           // nil on a single node
}

// Subscribe attaches a consumer for the stream's life. One goroutine reads
// the client's frames and acts on them; this one sends deliveries and ack
// confirmations, so sends never interleave.
func (s *subscriber) Subscribe(stream ferryv1.SubscriberService_SubscribeServer) error {
	ctx := stream.Context()
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	init := first.GetInit()
	if init == nil {
		return toStatus(invalidf("the first frame must be init, naming topic, subscription and credit"))
	}
	if err := validateSubName(init.GetTopic(), init.GetSubscription()); err != nil {
		return toStatus(err)
	}
	if s.node != nil {
		conn, fctx, err := s.node.route(ctx, init.GetTopic(), init.GetSubscription())
		if err != nil {
			return toStatus(err)
		}
		if conn != nil {
			return s.proxySubscribe(fctx, conn, first, stream)
		}
	}
	c, err := s.engine.Attach(ctx, init.GetTopic(), init.GetSubscription(), consumer.AttachOptions{
		Credit: int(init.GetCredit()), CreateNone: init.GetCreateNone()})
	if err != nil {
		return toStatus(err)
	}
	defer c.Close()

	// Two goroutines per stream: this one sends (deliveries, as the
	// consumer's queue has them, and ack confirmations), receive reads the
	// client's frames. Nothing else is kept per stream but the consumer
	// and its bounded queue (consumer.EngineOptions.QueueBytes).
	confirms := make(chan ackOutcome, maxPendingConfirms)
	pending := make(chan struct{}, maxPendingConfirms) // tokens of acks not yet confirmed
	recvDone := make(chan error, 1)
	go func() { recvDone <- s.receive(ctx, stream, c, confirms, pending) }()
	for {
		select {
		case <-c.Ready():
			// One frame's worth at a time: Ready fires again if more are
			// queued, so confirmations get their turn.
			ds, err := c.Take(maxDeliveriesFrame)
			if err != nil { // detached, and nothing left to send
				if ctx.Err() != nil {
					return ctx.Err()
				}
				return toStatus(err)
			}
			if err := sendDeliveries(stream, c.Seal(), ds); err != nil {
				return err
			}
		case o := <-confirms:
			s.metrics.ackConfirmations.Inc()
			if err := stream.Send(o.confirmation()); err != nil {
				return err
			}
			for range o.tokens {
				<-pending
			}
		case err := <-recvDone:
			return err
		case <-s.draining:
			return status.Error(codes.Unavailable, "the broker is shutting down; reconnect to resume")
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// sendDeliveries sends ds, their ids sealed by seal, in frames of at most
// maxDeliveriesFrame bytes; nothing if ds is empty.
func sendDeliveries(stream ferryv1.SubscriberService_SubscribeServer, seal *consumer.IDSeal, ds []consumer.Delivery) error {
	if len(ds) == 0 {
		return nil
	}
	frame := &ferryv1.Deliveries{}
	size := 0
	for i := range ds {
		d := deliveryToProto(seal, &ds[i])
		n := len(d.Message.Payload) + len(d.Message.Key) + len(d.Message.Id) + 64
		if len(frame.Deliveries) > 0 && size+n > maxDeliveriesFrame {
			if err := stream.Send(&ferryv1.SubscribeResponse{Frame: &ferryv1.SubscribeResponse_Deliveries{Deliveries: frame}}); err != nil {
				return err
			}
			frame, size = &ferryv1.Deliveries{}, 0
		}
		frame.Deliveries = append(frame.Deliveries, d)
		size += n
	}
	return stream.Send(&ferryv1.SubscribeResponse{Frame: &ferryv1.SubscribeResponse_Deliveries{Deliveries: frame}})
}

// receive acts on the client's frames until the stream ends. It returns
// nil at EOF and a status for a malformed frame.
func (s *subscriber) receive(ctx context.Context, stream ferryv1.SubscriberService_SubscribeServer, c *consumer.Consumer,
	confirms chan<- ackOutcome, pending chan<- struct{}) error {
	for {
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		switch f := req.GetFrame().(type) {
		case *ferryv1.SubscribeRequest_Init:
			return toStatus(invalidf("init may only be the first frame"))
		case *ferryv1.SubscribeRequest_Credit:
			if err := c.SetCredit(ctx, int(f.Credit.GetCredit())); err != nil {
				return toStatus(err)
			}
		case *ferryv1.SubscribeRequest_Ack:
			if err := s.streamAck(ctx, c, f.Ack, confirms, pending); err != nil {
				return toStatus(err)
			}
		case *ferryv1.SubscribeRequest_Nack:
			ids, _, err := parseIDs(c.Seal(), f.Nack.GetDeliveryIds())
			if err != nil {
				return toStatus(err)
			}
			if _, err := c.Nack(ctx, ids); err != nil {
				return toStatus(err)
			}
		case *ferryv1.SubscribeRequest_Extend:
			ids, _, err := parseIDs(c.Seal(), f.Extend.GetDeliveryIds())
			if err != nil {
				return toStatus(err)
			}
			d, err := ackDeadline(f.Extend.GetAckDeadline())
			if err != nil {
				return toStatus(err)
			}
			if _, err := c.Extend(ctx, ids, d); err != nil {
				return toStatus(err)
			}
		default:
			return toStatus(invalidf("empty or unknown frame; send init, credit, ack, nack or extend"))
		}
	}
}

// streamAck acks a frame's deliveries. Under EFFECTIVELY_ONCE the
// confirmation goes out once the acks are durable, without holding up the
// frames behind it, but at most maxPendingConfirms frames are unconfirmed:
// beyond, streamAck waits (and so does the reading of the stream) until a
// confirmation is sent. Otherwise refused acks are only counted.
func (s *subscriber) streamAck(ctx context.Context, c *consumer.Consumer, a *ferryv1.SubscribeAck,
	confirms chan<- ackOutcome, pending chan<- struct{}) error {
	ids, bad, err := parseIDs(c.Seal(), a.GetDeliveryIds())
	if err != nil {
		return err
	}
	if c.Guarantee() != consumer.EffectivelyOnce {
		_, err := c.Ack(ctx, ids)
		return err
	}
	raw, seq := a.GetDeliveryIds(), a.GetSequence()
	tokens := min((len(raw)+confirmTokenIDs-1)/confirmTokenIDs, maxPendingConfirms)
	for range tokens { // only this goroutine takes tokens: no deadlock
		select {
		case pending <- struct{}{}:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	c.AckAsync(ctx, ids, func(results []error, err error) {
		// Runs on the subscription's loop: the tokens taken above keep a
		// place in confirms (each outcome holds at least one), so this
		// never blocks; the sender builds the answer.
		confirms <- ackOutcome{seq: seq, raw: raw, bad: bad, results: results, err: err, tokens: tokens}
	})
	return nil
}

// ackOutcome is the outcome of a stream's ack frame, to confirm.
type ackOutcome struct {
	seq     uint64
	raw     []string
	bad     map[int]error
	results []error
	err     error
	tokens  int // of pending, released once it is sent
}

func (o ackOutcome) confirmation() *ferryv1.SubscribeResponse {
	conf := &ferryv1.AckConfirmation{Sequence: o.seq, Results: ackResults(o.raw, o.bad, o.results, o.err)}
	return &ferryv1.SubscribeResponse{Frame: &ferryv1.SubscribeResponse_AckConfirmation{AckConfirmation: conf}}
}

// parseIDs opens delivery ids sealed by seal: their subscription's. One
// that is malformed, or another subscription's, topic's or made up, is
// left out of ids and marked in bad (its position in the request): it
// changes nothing. The call fails whole only if there are no ids or too
// many.
func parseIDs(seal *consumer.IDSeal, raw []string) (ids []consumer.DeliveryID, bad map[int]error, err error) {
	if len(raw) == 0 || len(raw) > MaxAckIDs {
		return nil, nil, invalidf("%d delivery ids; send 1 to %d", len(raw), MaxAckIDs)
	}
	for i, r := range raw {
		id, err := seal.Open(r)
		if err != nil {
			if bad == nil {
				bad = make(map[int]error)
			}
			bad[i] = err
			continue
		}
		ids = append(ids, id)
	}
	return ids, bad, nil
}

// ackResults lines up the engine's results (for the ids that parsed) with
// the request's ids; a write error fails every id the engine took.
func ackResults(raw []string, bad map[int]error, results []error, werr error) []*ferryv1.AckResult {
	out := make([]*ferryv1.AckResult, len(raw))
	j := 0
	for i, r := range raw {
		var err error
		if e, ok := bad[i]; ok {
			err = e
		} else {
			if j < len(results) {
				err = results[j]
			}
			if err == nil {
				err = werr
			}
			j++
		}
		st := status.Convert(toStatus(err))
		// An answer to MaxAckIDs ids stays small: a malformed id is
		// echoed only in part, a message only so far.
		out[i] = &ferryv1.AckResult{DeliveryId: echo.Cut(r, maxEchoedID), Code: uint32(st.Code())}
		if err != nil {
			out[i].Message = echo.Cut(st.Message(), maxResultMessage)
		}
	}
	return out
}

// Ack acks deliveries; under EFFECTIVELY_ONCE once they are durable.
func (s *subscriber) Ack(ctx context.Context, req *ferryv1.AckRequest) (*ferryv1.AckResponse, error) {
	if resp, ok, err := forward(ctx, s.node, req.GetTopic(), req.GetSubscription(), ferryv1.NewSubscriberServiceClient, ferryv1.SubscriberServiceClient.Ack, req); ok {
		return resp, err
	}
	ids, bad, err := s.unaryIDs(req.GetTopic(), req.GetSubscription(), req.GetDeliveryIds())
	if err != nil {
		return nil, toStatus(err)
	}
	results, werr := s.engine.Ack(ctx, req.GetTopic(), req.GetSubscription(), ids)
	if results == nil && werr != nil {
		return nil, toStatus(werr)
	}
	return &ferryv1.AckResponse{Results: ackResults(req.GetDeliveryIds(), bad, results, werr)}, nil
}

// Nack makes deliveries due again after the backoff.
func (s *subscriber) Nack(ctx context.Context, req *ferryv1.NackRequest) (*ferryv1.NackResponse, error) {
	if resp, ok, err := forward(ctx, s.node, req.GetTopic(), req.GetSubscription(), ferryv1.NewSubscriberServiceClient, ferryv1.SubscriberServiceClient.Nack, req); ok {
		return resp, err
	}
	ids, bad, err := s.unaryIDs(req.GetTopic(), req.GetSubscription(), req.GetDeliveryIds())
	if err != nil {
		return nil, toStatus(err)
	}
	results, err := s.engine.Nack(ctx, req.GetTopic(), req.GetSubscription(), ids)
	if err != nil {
		return nil, toStatus(err)
	}
	return &ferryv1.NackResponse{Results: ackResults(req.GetDeliveryIds(), bad, results, nil)}, nil
}

// ModifyAckDeadline moves deliveries' deadlines.
func (s *subscriber) ModifyAckDeadline(ctx context.Context, req *ferryv1.ModifyAckDeadlineRequest) (*ferryv1.ModifyAckDeadlineResponse, error) {
	if resp, ok, err := forward(ctx, s.node, req.GetTopic(), req.GetSubscription(), ferryv1.NewSubscriberServiceClient, ferryv1.SubscriberServiceClient.ModifyAckDeadline, req); ok {
		return resp, err
	}
	ids, bad, err := s.unaryIDs(req.GetTopic(), req.GetSubscription(), req.GetDeliveryIds())
	if err != nil {
		return nil, toStatus(err)
	}
	d, err := ackDeadline(req.GetAckDeadline())
	if err != nil {
		return nil, toStatus(err)
	}
	results, err := s.engine.Extend(ctx, req.GetTopic(), req.GetSubscription(), ids, d)
	if err != nil {
		return nil, toStatus(err)
	}
	return &ferryv1.ModifyAckDeadlineResponse{Results: ackResults(req.GetDeliveryIds(), bad, results, nil)}, nil
}

func (s *subscriber) unaryIDs(topic, sub string, raw []string) ([]consumer.DeliveryID, map[int]error, error) {
	if err := validateSubName(topic, sub); err != nil {
		return nil, nil, err
	}
	seal, err := s.engine.Seal(topic, sub)
	if err != nil {
		return nil, nil, err
	}
	return parseIDs(seal, raw)
}

// Commit acks deliveries and publishes messages atomically.
func (s *subscriber) Commit(ctx context.Context, req *ferryv1.CommitRequest) (*ferryv1.CommitResponse, error) {
	if resp, ok, err := forward(ctx, s.node, req.GetTopic(), req.GetSubscription(), ferryv1.NewSubscriberServiceClient, ferryv1.SubscriberServiceClient.Commit, req); ok {
		return resp, err
	}
	if err := validateSubName(req.GetTopic(), req.GetSubscription()); err != nil {
		return nil, toStatus(err)
	}
	if len(req.GetDeliveryIds()) == 0 && len(req.GetPublishes()) == 0 {
		return nil, toStatus(invalidf("the commit is empty; name deliveries to ack, messages to publish, or both"))
	}
	var ids []consumer.DeliveryID
	if len(req.GetDeliveryIds()) > 0 {
		var bad map[int]error
		var err error
		if ids, bad, err = s.unaryIDs(req.GetTopic(), req.GetSubscription(), req.GetDeliveryIds()); err != nil {
			return nil, toStatus(err)
		}
		for i := range req.GetDeliveryIds() {
			if e, ok := bad[i]; ok {
				return nil, toStatus(fmt.Errorf("delivery_ids[%d]: %w", i, e))
			}
		}
	}
	var appends []storage.AppendBatch
	routed := make([][]*share, len(req.GetPublishes()))
	for i, p := range req.GetPublishes() {
		shares, err := s.pub.route(p.GetTopic(), p.GetMessages())
		if err != nil {
			return nil, toStatus(err)
		}
		routed[i] = shares
		for _, sh := range shares {
			appends = append(appends, storage.AppendBatch{Topic: p.GetTopic(), Partition: sh.part, Messages: sh.msgs})
		}
	}
	res, err := s.engine.Commit(ctx, req.GetTopic(), req.GetSubscription(), ids, appends)
	if err != nil {
		return nil, toStatus(err)
	}
	resp := &ferryv1.CommitResponse{}
	k := 0
	for i, p := range req.GetPublishes() {
		results := make([]*ferryv1.PublishResult, len(p.GetMessages()))
		for _, sh := range routed[i] {
			sh.fill(results, res[k])
			k++
		}
		resp.PublishResults = append(resp.PublishResults, &ferryv1.CommitPublishResult{Results: results})
	}
	return resp, nil
}

// Seek moves a subscription's cursors.
func (s *subscriber) Seek(ctx context.Context, req *ferryv1.SeekRequest) (*ferryv1.SeekResponse, error) {
	if resp, ok, err := forward(ctx, s.node, req.GetTopic(), req.GetSubscription(), ferryv1.NewSubscriberServiceClient, ferryv1.SubscriberServiceClient.Seek, req); ok {
		return resp, err
	}
	if err := validateSubName(req.GetTopic(), req.GetSubscription()); err != nil {
		return nil, toStatus(err)
	}
	if req.GetPosition().GetKind() == ferryv1.PositionKind_POSITION_KIND_UNSPECIFIED {
		return nil, toStatus(invalidf("position is required: earliest, latest, an offset or a time"))
	}
	pos, err := positionFromProto(req.GetPosition())
	if err != nil {
		return nil, toStatus(err)
	}
	if err := s.engine.Seek(ctx, req.GetTopic(), req.GetSubscription(), pos); err != nil {
		return nil, toStatus(err)
	}
	return &ferryv1.SeekResponse{}, nil
}

func validateSubName(topic, sub string) error {
	if err := storage.ValidateTopicName(topic); err != nil {
		return err
	}
	return storage.ValidateSubscriptionName(sub)
}

func ackDeadline(d *durationpb.Duration) (time.Duration, error) {
	v, err := durationFromProto("ack_deadline", d)
	if err != nil {
		return 0, err
	}
	if v < time.Second || v > 12*time.Hour {
		return 0, invalidf("ack_deadline %v must be 1s to 12h", v)
	}
	return v, nil
}

func deliveryToProto(seal *consumer.IDSeal, d *consumer.Delivery) *ferryv1.Delivery {
	return &ferryv1.Delivery{DeliveryId: seal.Seal(d.ID), Message: messageToProto(&d.Message), Attempt: d.ID.Attempt}
}

func messageToProto(m *storage.Message) *ferryv1.Message {
	return &ferryv1.Message{
		Id:          m.ID,
		Key:         m.Key,
		Payload:     m.Payload,
		Headers:     m.Headers,
		Partition:   m.Partition,
		Offset:      m.Offset,
		PublishTime: timestamppb.New(m.PublishTime),
	}
}
