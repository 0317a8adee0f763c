package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"runtime/debug"
	"sync"
	"time"

	"github.com/google/uuid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	ferryv1 "github.com/ferrymq/ferry/proto/ferry/v1"
)

// Handler processes one message. Returning nil acks it; an error nacks it
// (redelivered after the subscription's backoff). A panic is recovered and
// nacks it. A handler may also settle the message itself with Ack, Nack or
// AckSync; then its return value is ignored.
type Handler func(ctx context.Context, m *Message) error

// SubscribeOption configures Subscribe and Process.
type SubscribeOption func(*subscribeOptions)

type subscribeOptions struct {
	concurrency  int
	credit       int
	maxExtension time.Duration
	drainTimeout time.Duration
	reconnectMin time.Duration
	reconnectMax time.Duration
	createNone   bool
}

// WithConcurrency sets how many handlers run at once. Default 10.
func WithConcurrency(n int) SubscribeOption {
	return func(o *subscribeOptions) { o.concurrency = n }
}

// MaxCredit is the most credit a broker takes (its consumer.MaxCredit):
// more is refused.
const MaxCredit = 10000

// WithCredit sets how many unacked messages the consumer holds: running
// and waiting for a handler, 1 to MaxCredit. Default twice the
// concurrency, at most MaxCredit.
func WithCredit(n int) SubscribeOption { return func(o *subscribeOptions) { o.credit = n } }

// WithMaxExtension caps how long a running handler's deadline is extended.
// Default 1h.
func WithMaxExtension(d time.Duration) SubscribeOption {
	return func(o *subscribeOptions) { o.maxExtension = d }
}

// WithDrainTimeout bounds how long Subscribe waits for running handlers
// once its ctx ends. Default 30s.
func WithDrainTimeout(d time.Duration) SubscribeOption {
	return func(o *subscribeOptions) { o.drainTimeout = d }
}

// WithReconnectBackoff sets the exponential backoff (with jitter) between
// reconnects. Default 100ms to 10s.
func WithReconnectBackoff(min, max time.Duration) SubscribeOption {
	return func(o *subscribeOptions) { o.reconnectMin, o.reconnectMax = min, max }
}

// WithCreateNone creates a NONE subscription of the name if there is none:
// the live tail, gone with its last consumer.
func WithCreateNone() SubscribeOption { return func(o *subscribeOptions) { o.createNone = true } }

// Subscribe runs h on the subscription's messages until ctx ends, then
// drains and returns nil. It returns an error at once if the subscription
// cannot be used (not found, exclusive and taken, bad options); a broken
// stream or an unreachable broker is retried, not returned.
func (c *Client) Subscribe(ctx context.Context, topic, subscription string, h Handler, opts ...SubscribeOption) error {
	o := subscribeOptions{concurrency: 10, maxExtension: time.Hour, drainTimeout: 30 * time.Second,
		reconnectMin: 100 * time.Millisecond, reconnectMax: 10 * time.Second}
	for _, opt := range opts {
		opt(&o)
	}
	if o.concurrency < 1 {
		return fmt.Errorf("client: concurrency %d: want at least 1", o.concurrency)
	}
	if o.credit < 1 {
		o.credit = min(2*o.concurrency, MaxCredit)
	}
	if o.credit > MaxCredit {
		return fmt.Errorf("client: credit %d: the broker takes at most %d", o.credit, MaxCredit)
	}
	s := &consumer{c: c, topic: topic, sub: subscription, h: h, o: o,
		work: make(chan *Message, o.credit), acks: make(chan pendingAck, 2*o.credit), running: make(map[string]*delivery)}
	if err := s.describe(ctx); err != nil {
		if ctx.Err() != nil {
			return nil // ended before it began: nothing to drain
		}
		return err
	}
	return s.run(ctx)
}

// consumer is one Subscribe call.
type consumer struct {
	c          *Client
	topic, sub string
	h          Handler
	o          subscribeOptions
	guarantee  ferryv1.DeliveryGuarantee
	ackTimeout time.Duration

	work chan *Message // received, waiting for a handler

	acks       chan pendingAck // to the ack loop
	ackMu      sync.RWMutex    // guards acksClosed and sends on acks
	acksClosed bool

	mu      sync.Mutex // guards running and stream
	running map[string]*delivery
	stream  ferryv1.SubscriberService_SubscribeClient // current; nil while reconnecting
	sendMu  sync.Mutex                                // serializes sends on stream
}

// delivery is how a received message is settled.
type delivery struct {
	s       *consumer
	id      string
	started time.Time
	once    sync.Once
}

type ackKind int

const (
	ackAck ackKind = iota + 1
	ackNack
)

// describe reads the subscription's guarantee and ack timeout. While the
// broker is unreachable it retries, with the reconnect backoff, until ctx
// ends.
func (s *consumer) describe(ctx context.Context) error {
	var resp *ferryv1.GetSubscriptionResponse
	bo := backoff{min: s.o.reconnectMin, max: s.o.reconnectMax}
	var err error
	for {
		err = s.c.call(ctx, func(ctx context.Context) (err error) {
			resp, err = s.c.admin.GetSubscription(ctx, &ferryv1.GetSubscriptionRequest{Topic: s.topic, Name: s.sub})
			return err
		})
		if !retryable(err) || !sleep(ctx, bo.next()) {
			break
		}
	}
	if StatusCode(err) == codes.NotFound && s.o.createNone {
		s.guarantee, s.ackTimeout = ferryv1.DeliveryGuarantee_DELIVERY_GUARANTEE_NONE, 30*time.Second
		return nil
	}
	if err != nil {
		return fmt.Errorf("client: subscription %s/%s: %w", s.topic, s.sub, err)
	}
	s.guarantee = resp.GetSubscription().GetConfig().GetGuarantee()
	s.ackTimeout = resp.GetSubscription().GetConfig().GetAckTimeout().AsDuration()
	return nil
}

// run starts the handlers and the stream, and when ctx ends (or the
// subscription cannot be used) drains: no new handler starts, what waits
// is nacked, what runs finishes (up to the drain timeout) and is settled,
// and only then is the stream closed — after the broker has taken every
// frame sent on it.
func (s *consumer) run(ctx context.Context) error {
	stop := make(chan struct{}) // closed when draining begins
	var workers sync.WaitGroup
	hctx, stopHandlers := context.WithCancel(context.WithoutCancel(ctx))
	defer stopHandlers()
	for range s.o.concurrency {
		workers.Add(1)
		go func() {
			defer workers.Done()
			s.work1(hctx, stop)
		}()
	}
	streamCtx, cancelStreams := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelStreams()
	stopAcks, acksDone := make(chan struct{}), make(chan struct{})
	go s.ackLoop(stopAcks, acksDone)
	extendDone := make(chan struct{})
	go s.extendLoop(streamCtx, extendDone)
	recvDone := make(chan error, 1)
	go func() { recvDone <- s.receiveLoop(ctx, streamCtx, stop) }()

	var err error
	received := false
	select {
	case err = <-recvDone:
		received = true
	case <-ctx.Done():
	}
	close(stop)
	done := make(chan struct{})
	go func() { workers.Wait(); close(done) }()
	t := time.NewTimer(s.o.drainTimeout)
	select {
	case <-done:
	case <-t.C:
		stopHandlers()
		<-done
	}
	t.Stop()
	// Send every ack queued, then end the stream and wait for the broker to
	// end it too, which it does once it has taken every frame before.
	s.ackMu.Lock()
	s.acksClosed = true
	s.ackMu.Unlock()
	close(stopAcks)
	<-acksDone
	s.mu.Lock()
	stream := s.stream
	s.mu.Unlock()
	if stream != nil {
		s.sendMu.Lock()
		_ = stream.CloseSend()
		s.sendMu.Unlock()
	}
	if !received {
		t := time.NewTimer(s.c.opts.callTimeout)
		select {
		case <-recvDone:
		case <-t.C:
		}
		t.Stop()
	}
	cancelStreams()
	<-extendDone
	return err
}

// work1 runs handlers until stop is closed; then it nacks what is left
// waiting.
func (s *consumer) work1(hctx context.Context, stop <-chan struct{}) {
	for {
		select {
		case m := <-s.work:
			select {
			case <-stop:
				m.d.settle(ackNack)
			default:
				s.handle(hctx, m)
			}
		case <-stop:
			for {
				select {
				case m := <-s.work:
					m.d.settle(ackNack)
				default:
					return
				}
			}
		}
	}
}

// handle runs the handler on m and settles m by its outcome.
func (s *consumer) handle(ctx context.Context, m *Message) {
	err := func() (err error) {
		defer func() {
			if r := recover(); r != nil {
				err = fmt.Errorf("handler panicked: %v", r)
				s.c.log.Error("ferry consumer: handler panicked; nacking", "topic", s.topic, "subscription", s.sub,
					"delivery_id", m.DeliveryID, "panic", r, "stack", string(debug.Stack()))
			}
		}()
		return s.h(ctx, m)
	}()
	if err != nil {
		m.d.settle(ackNack)
		return
	}
	m.d.settle(ackAck)
}

// receiveLoop attaches and takes deliveries, reconnecting with backoff
// when the stream breaks, until ctx ends and the last stream is over. It
// returns an error only for what reconnecting cannot fix.
func (s *consumer) receiveLoop(ctx, streamCtx context.Context, stop <-chan struct{}) error {
	bo := backoff{min: s.o.reconnectMin, max: s.o.reconnectMax}
	var asked time.Duration // the broker's RetryInfo delay, if it gave one
	for attempt := 0; ctx.Err() == nil; attempt++ {
		wait := asked
		if wait == 0 {
			wait = bo.next()
		}
		if attempt > 0 && !sleep(ctx, wait) {
			break
		}
		asked = 0
		err := s.attach(streamCtx, &bo, stop)
		switch {
		case ctx.Err() != nil:
		case err == nil, retryable(err):
			s.c.log.Warn("ferry consumer: stream ended; reconnecting", "topic", s.topic, "subscription", s.sub, "err", err)
		default:
			d, ok := retryDelay(err)
			if !ok {
				return fmt.Errorf("client: subscribe %s/%s: %w", s.topic, s.sub, err)
			}
			// Refused for a limit (RESOURCE_EXHAUSTED with a RetryInfo:
			// too many streams open, say): wait as asked, then attach
			// again.
			asked = d
			s.c.log.Info("ferry consumer: the broker asked to retry later", "topic", s.topic, "subscription", s.sub, "retry_in", d.String(), "err", err)
		}
	}
	return nil
}

// attach runs one Subscribe stream until it ends. Deliveries that arrive
// once draining began are nacked.
func (s *consumer) attach(ctx context.Context, bo *backoff, stop <-chan struct{}) error {
	stream, err := s.c.sub.Subscribe(ctx)
	if err != nil {
		return err
	}
	init := &ferryv1.SubscribeInit{Topic: s.topic, Subscription: s.sub, Credit: int32(s.o.credit), CreateNone: s.o.createNone}
	if err := stream.Send(&ferryv1.SubscribeRequest{Frame: &ferryv1.SubscribeRequest_Init{Init: init}}); err != nil {
		if errors.Is(err, io.EOF) {
			// The broker ended the stream first (refused it at a limit,
			// say): Recv says why.
			if _, rerr := stream.Recv(); rerr != nil && !errors.Is(rerr, io.EOF) {
				return rerr
			}
		}
		return err
	}
	s.mu.Lock()
	s.stream = stream
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		if s.stream == stream {
			s.stream = nil
		}
		s.mu.Unlock()
	}()
	for {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		bo.reset()
		for _, pd := range resp.GetDeliveries().GetDeliveries() {
			m := fromMessage(pd.GetMessage())
			m.Attempt, m.DeliveryID = pd.GetAttempt(), pd.GetDeliveryId()
			m.d = &delivery{s: s, id: m.DeliveryID, started: time.Now()}
			s.mu.Lock()
			s.running[m.DeliveryID] = m.d
			s.mu.Unlock()
			select {
			case s.work <- m:
			case <-stop:
				m.d.settle(ackNack)
			}
		}
	}
}

// done stops extending the delivery's deadline: it is settled.
func (d *delivery) done() {
	d.s.mu.Lock()
	delete(d.s.running, d.id)
	d.s.mu.Unlock()
}

// settle acks or nacks the delivery once; later calls do nothing.
func (d *delivery) settle(kind ackKind) {
	d.once.Do(func() {
		s := d.s
		d.done()
		if s.guarantee == ferryv1.DeliveryGuarantee_DELIVERY_GUARANTEE_NONE {
			return
		}
		if kind == ackNack && s.guarantee == ferryv1.DeliveryGuarantee_DELIVERY_GUARANTEE_AT_MOST_ONCE {
			kind = ackAck // nothing is redelivered: the ack frees credit
		}
		s.queueAck(kind, d.id)
	})
}

// pendingAck is an ack or nack waiting for the ack loop.
type pendingAck struct {
	kind ackKind
	id   string
}

// queueAck hands an ack or nack to the ack loop, which sends what has
// gathered in one frame; if the loop is gone or behind, it is sent here.
func (s *consumer) queueAck(kind ackKind, id string) {
	s.ackMu.RLock()
	defer s.ackMu.RUnlock()
	if !s.acksClosed {
		select {
		case s.acks <- pendingAck{kind, id}:
			return
		default:
		}
	}
	s.send(kind, []string{id})
}

// ackLoop sends queued acks and nacks, as many per frame as have gathered
// while the last frame was sent, until stop is closed; then it sends what
// is left.
func (s *consumer) ackLoop(stop <-chan struct{}, done chan<- struct{}) {
	defer close(done)
	for {
		var first pendingAck
		select {
		case first = <-s.acks:
		case <-stop:
			for {
				select {
				case a := <-s.acks:
					s.send(a.kind, []string{a.id})
				default:
					return
				}
			}
		}
		ids := map[ackKind][]string{first.kind: {first.id}}
	gather:
		for n := 1; n < MaxAckBatch; n++ {
			select {
			case a := <-s.acks:
				ids[a.kind] = append(ids[a.kind], a.id)
			default:
				break gather
			}
		}
		for kind, batch := range ids {
			s.send(kind, batch)
		}
	}
}

// MaxAckBatch is the most acks sent in one frame.
const MaxAckBatch = 1000

// ackSync acks the delivery with a unary call and returns the broker's
// answer for it.
func (d *delivery) ackSync(ctx context.Context) error {
	var err error
	ran := false
	d.once.Do(func() {
		ran = true
		d.done()
		err = d.s.unaryAck(ctx, []string{d.id})
	})
	if !ran {
		return errors.New("client: message already settled")
	}
	return err
}

// send sends an ack or nack frame on the current stream, or, if there is
// none, the unary call (delivery ids outlive their stream).
func (s *consumer) send(kind ackKind, ids []string) {
	s.mu.Lock()
	stream := s.stream
	s.mu.Unlock()
	if stream != nil {
		req := &ferryv1.SubscribeRequest{Frame: &ferryv1.SubscribeRequest_Ack{Ack: &ferryv1.SubscribeAck{DeliveryIds: ids}}}
		if kind == ackNack {
			req = &ferryv1.SubscribeRequest{Frame: &ferryv1.SubscribeRequest_Nack{Nack: &ferryv1.SubscribeNack{DeliveryIds: ids}}}
		}
		s.sendMu.Lock()
		err := stream.Send(req)
		s.sendMu.Unlock()
		if err == nil {
			return
		}
	}
	ctx := context.Background()
	var err error
	if kind == ackNack {
		err = s.c.call(ctx, func(ctx context.Context) error {
			_, err := s.c.sub.Nack(ctx, &ferryv1.NackRequest{Topic: s.topic, Subscription: s.sub, DeliveryIds: ids})
			return err
		})
	} else {
		err = s.unaryAck(ctx, ids)
	}
	if err != nil {
		s.c.log.Warn("ferry consumer: ack or nack not delivered; the message will be redelivered", "topic", s.topic,
			"subscription", s.sub, "err", err)
	}
}

// unaryAck acks ids and returns the first refusal as an error with its
// gRPC code (FAILED_PRECONDITION for a stale or already acked delivery).
func (s *consumer) unaryAck(ctx context.Context, ids []string) error {
	var resp *ferryv1.AckResponse
	err := s.c.call(ctx, func(ctx context.Context) (err error) {
		resp, err = s.c.sub.Ack(ctx, &ferryv1.AckRequest{Topic: s.topic, Subscription: s.sub, DeliveryIds: ids})
		return err
	})
	if err != nil {
		return err
	}
	for _, r := range resp.GetResults() {
		if codes.Code(r.GetCode()) != codes.OK {
			return status.Error(codes.Code(r.GetCode()), r.GetMessage())
		}
	}
	return nil
}

// extendLoop extends the deadlines of running handlers every third of the
// ack timeout, until each has run MaxExtension.
func (s *consumer) extendLoop(ctx context.Context, done chan<- struct{}) {
	defer close(done)
	if s.guarantee == ferryv1.DeliveryGuarantee_DELIVERY_GUARANTEE_NONE {
		return
	}
	every := max(s.ackTimeout/3, 100*time.Millisecond)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-t.C:
		case <-ctx.Done():
			return
		}
		now := time.Now()
		var ids []string
		s.mu.Lock()
		for id, d := range s.running {
			if now.Sub(d.started) < s.o.maxExtension {
				ids = append(ids, id)
			}
		}
		stream := s.stream
		s.mu.Unlock()
		if len(ids) == 0 || stream == nil {
			continue
		}
		req := &ferryv1.SubscribeRequest{Frame: &ferryv1.SubscribeRequest_Extend{Extend: &ferryv1.SubscribeExtend{
			DeliveryIds: ids, AckDeadline: durationpb.New(max(s.ackTimeout, time.Second))}}}
		s.sendMu.Lock()
		_ = stream.Send(req)
		s.sendMu.Unlock()
	}
}

// ProcessFunc turns one input message into output messages, each naming its
// Topic. An error nacks the input and publishes nothing.
type ProcessFunc func(ctx context.Context, in *Message) ([]*Message, error)

// Process runs an effectively-once consume→transform→produce pipeline: for
// each message of the subscription it calls fn, then acks the input and
// publishes fn's outputs in one atomic Commit. With an effectively-once
// subscription each input's outputs are written exactly once, whatever
// crashes: a commit naming a superseded delivery is refused, and the
// redelivery's commit writes them. Outputs without an ID get one derived
// from the input (topic, partition, offset and position), so a retried
// commit is also recognised as a duplicate. It runs as Subscribe does.
func (c *Client) Process(ctx context.Context, topic, subscription string, fn ProcessFunc, opts ...SubscribeOption) error {
	return c.Subscribe(ctx, topic, subscription, func(ctx context.Context, m *Message) error {
		outs, err := fn(ctx, m)
		if err != nil {
			return err
		}
		req, err := commitRequest(topic, subscription, m, outs)
		if err != nil {
			return err
		}
		m.d.once.Do(m.d.done) // settled by the commit
		c.commit(ctx, req)
		return nil
	}, opts...)
}

// commitRequest builds the Commit of one input and its outputs, grouped by
// topic in order.
func commitRequest(topic, sub string, in *Message, outs []*Message) (*ferryv1.CommitRequest, error) {
	req := &ferryv1.CommitRequest{Topic: topic, Subscription: sub, DeliveryIds: []string{in.DeliveryID}}
	byTopic := map[string]*ferryv1.CommitPublish{}
	for i, out := range outs {
		if out.Topic == "" {
			return nil, fmt.Errorf("client: output %d has no Topic", i)
		}
		pm := toPublishMessage(out)
		if pm.Id == "" {
			pm.Id = uuid.NewSHA1(uuid.NameSpaceOID, fmt.Appendf(nil, "%s/%s/%d/%d/%d", topic, sub, derefU32(in.Partition), in.Offset, i)).String()
		}
		cp := byTopic[out.Topic]
		if cp == nil {
			cp = &ferryv1.CommitPublish{Topic: out.Topic}
			byTopic[out.Topic] = cp
			req.Publishes = append(req.Publishes, cp)
		}
		cp.Messages = append(cp.Messages, pm)
	}
	return req, nil
}

func derefU32(p *uint32) uint32 {
	if p == nil {
		return 0
	}
	return *p
}

// commit sends a Commit, retrying with the same ids while the broker is
// unavailable, and after the delay it asks for when it refuses the commit
// for a limit (RESOURCE_EXHAUSTED with a RetryInfo). A refusal (FAILED_PRECONDITION) means the delivery was
// redelivered since or is already committed: either way nothing is left to
// do here.
func (c *Client) commit(ctx context.Context, req *ferryv1.CommitRequest) {
	bo := backoff{min: 100 * time.Millisecond, max: 5 * time.Second}
	for {
		err := c.call(ctx, func(ctx context.Context) error {
			_, err := c.sub.Commit(ctx, req)
			return err
		})
		if d, ok := retryDelay(err); ok {
			// Refused for a limit (its outputs over the publish rate):
			// nothing was acked or stored; send it again when asked.
			if !sleep(ctx, d) {
				return
			}
			continue
		}
		if err == nil || !retryable(err) {
			if err != nil {
				c.log.Warn("ferry process: commit refused; the input is redelivered or already committed",
					"topic", req.Topic, "subscription", req.Subscription, "delivery_id", req.DeliveryIds[0], "err", err)
			}
			return
		}
		if !sleep(ctx, bo.next()) {
			return
		}
	}
}
