package client

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/google/uuid"
	"golang.org/x/sync/semaphore"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	ferryv1 "github.com/ferrymq/ferry/proto/ferry/v1"
)

// ErrClosed is returned for a publish on a closed Producer.
var ErrClosed = errors.New("client: producer closed")

// Broker limits on one publish request.
const (
	maxBatchMessages = 1000
	maxBatchBytes    = 4 << 20
)

// ProducerOptions configures a Producer. Zero fields take the defaults.
type ProducerOptions struct {
	// BatchMessages is the most messages in one request. Default 100, at
	// most 1000.
	BatchMessages int
	// BatchBytes is the most bytes in one request. Default 1 MiB, at most
	// 4 MiB.
	BatchBytes int
	// Linger is how long a batch waits for more messages once it has one.
	// Default 1ms.
	Linger time.Duration
	// MaxInflightBytes caps the bytes queued or sent and not yet answered:
	// PublishAsync blocks at the cap. Default 64 MiB. Messages the broker
	// refuses for a limit it expects to clear (RESOURCE_EXHAUSTED with a
	// RetryInfo: its memory limit, or its disk below --disk-reserve) are
	// not failed: the producer waits the delay the broker asked for and
	// sends them again, with the same ids and in order, for as long as the
	// broker refuses — until Close gives up on them (ErrClosed). They stay
	// within this cap meanwhile, so publishing blocks instead of growing.
	MaxInflightBytes int64
}

func (o *ProducerOptions) withDefaults() {
	if o.BatchMessages <= 0 {
		o.BatchMessages = 100
	}
	o.BatchMessages = min(o.BatchMessages, maxBatchMessages)
	if o.BatchBytes <= 0 {
		o.BatchBytes = 1 << 20
	}
	o.BatchBytes = min(o.BatchBytes, maxBatchBytes)
	if o.Linger <= 0 {
		o.Linger = time.Millisecond
	}
	if o.MaxInflightBytes <= 0 {
		o.MaxInflightBytes = 64 << 20
	}
}

// Producer publishes to one topic over one pipelined PublishStream. It is
// safe for concurrent use; messages published from one goroutine are
// stored in that order.
type Producer struct {
	c     *Client
	topic string
	opts  ProducerOptions
	bytes *semaphore.Weighted // bytes queued or in flight

	queue   chan *PublishFuture
	flushes chan chan struct{}
	nudge   chan struct{} // cap 1: a Publish waits; cut the linger

	closeMu    sync.RWMutex   // guards closed and publishers.Add
	closed     bool           // no new publish is taken
	publishers sync.WaitGroup // publishes on their way into queue
	done       chan struct{}  // closed when run has returned

	ctx  context.Context // ends when the producer stops for good
	stop context.CancelFunc

	mu       sync.Mutex // guards pending, seq and retryIn
	pending  []*batch   // sent and not answered, in order
	seq      uint64
	retryIn  time.Duration // the broker's RetryInfo delay from the last stream's end
	answered chan struct{} // cap 1: a batch was answered
}

// batch is one request and its messages' futures.
type batch struct {
	seq     uint64
	size    int // bytes of its messages, as counted against the limits
	futures []*PublishFuture
	req     *ferryv1.PublishStreamRequest
}

// PublishFuture is the outcome of one PublishAsync.
type PublishFuture struct {
	msg  *Message
	size int64
	done chan struct{}
	res  PublishResult
	err  error
}

// Done is closed once the publish is answered.
func (f *PublishFuture) Done() <-chan struct{} { return f.done }

// Wait waits for the answer: where the message was stored (Duplicate if a
// retry found it stored already), or why it was refused.
func (f *PublishFuture) Wait(ctx context.Context) (PublishResult, error) {
	select {
	case <-f.done:
		return f.res, f.err
	case <-ctx.Done():
		return PublishResult{}, ctx.Err()
	}
}

// ID is the message's dedup id, as published.
func (f *PublishFuture) ID() string { return f.msg.ID }

// NewProducer returns a Producer for topic.
func (c *Client) NewProducer(topic string, opts ProducerOptions) *Producer {
	opts.withDefaults()
	p := &Producer{
		c:        c,
		topic:    topic,
		opts:     opts,
		bytes:    semaphore.NewWeighted(opts.MaxInflightBytes),
		queue:    make(chan *PublishFuture, opts.BatchMessages),
		flushes:  make(chan chan struct{}),
		nudge:    make(chan struct{}, 1),
		done:     make(chan struct{}),
		answered: make(chan struct{}, 1),
	}
	p.ctx, p.stop = context.WithCancel(context.Background())
	go p.run()
	return p
}

// Publish publishes m and waits until it is durable. Its batch goes out at
// once, without waiting for the linger: the caller waits anyway. If ctx
// ends first, Publish returns ctx's error but m stays queued and may still
// be stored (a broker refusing for memory or disk space is waited out; see
// ProducerOptions.MaxInflightBytes). To retry safely, give m an ID before the first try (an empty
// ID gets a new UUIDv7 on every call): the broker stores one ID once.
func (p *Producer) Publish(ctx context.Context, m *Message) (PublishResult, error) {
	f := p.publish(ctx, m)
	select {
	case p.nudge <- struct{}{}:
	default: // a nudge is pending already
	}
	return f.Wait(ctx)
}

// PublishAsync queues m and returns at once, unless MaxInflightBytes are
// already waiting for answers: then it blocks until there is room. m is
// copied; an empty ID is set to a new UUIDv7.
func (p *Producer) PublishAsync(m *Message) *PublishFuture {
	return p.publish(context.Background(), m)
}

func (p *Producer) publish(ctx context.Context, m *Message) *PublishFuture {
	mm := *m
	if mm.ID == "" {
		mm.ID = uuid.Must(uuid.NewV7()).String()
	}
	f := &PublishFuture{msg: &mm, size: min(int64(mm.size()), p.opts.MaxInflightBytes), done: make(chan struct{})}
	if err := p.bytes.Acquire(ctx, f.size); err != nil {
		f.fail(err, nil)
		return f
	}
	p.closeMu.RLock()
	if p.closed {
		p.closeMu.RUnlock()
		f.fail(ErrClosed, p.bytes)
		return f
	}
	p.publishers.Add(1)
	p.closeMu.RUnlock()
	defer p.publishers.Done()
	select {
	case p.queue <- f:
	case <-p.ctx.Done(): // Close gave up waiting
		f.fail(ErrClosed, p.bytes)
	}
	return f
}

func (f *PublishFuture) fail(err error, bytes *semaphore.Weighted) {
	f.err = err
	if bytes != nil {
		bytes.Release(f.size)
	}
	close(f.done)
}

// Flush sends what is queued without waiting for the linger, and waits
// until everything published before it is answered.
func (p *Producer) Flush(ctx context.Context) error {
	ack := make(chan struct{})
	select {
	case p.flushes <- ack:
	case <-p.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case <-ack:
	case <-ctx.Done():
		return ctx.Err()
	}
	p.mu.Lock()
	var last *PublishFuture
	if n := len(p.pending); n > 0 {
		fs := p.pending[n-1].futures
		last = fs[len(fs)-1]
	}
	p.mu.Unlock()
	if last == nil {
		return nil
	}
	select {
	case <-last.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Close stops taking messages, sends and waits for what is queued (until
// ctx ends) and stops the producer. Messages not answered by then fail
// with ErrClosed.
func (p *Producer) Close(ctx context.Context) error {
	p.closeMu.Lock()
	if !p.closed {
		p.closed = true
		// The queue closes once no publish is on its way into it.
		go func() {
			p.publishers.Wait()
			close(p.queue)
		}()
	}
	p.closeMu.Unlock()
	select {
	case <-p.done:
		p.stop()
		return nil
	case <-ctx.Done():
		p.stop()
		<-p.done
		return ctx.Err()
	}
}

// run batches queued messages and sends them on the stream, reconnecting
// and resending every unanswered batch when the stream breaks.
func (p *Producer) run() {
	defer close(p.done)
	s := &sender{p: p, ctx: p.ctx, bo: backoff{min: 50 * time.Millisecond, max: 5 * time.Second}}
	defer s.end()
	var next *PublishFuture // the first message of the next batch
	for {
		if next == nil {
			select {
			case f, ok := <-p.queue:
				if !ok {
					s.drain()
					return
				}
				next = f
			case ack := <-p.flushes:
				if closing := p.sendQueued(s); closing {
					close(ack)
					s.drain()
					return
				}
				close(ack)
				continue
			case <-s.broken:
				s.reopen()
				continue
			case <-p.ctx.Done():
				return
			}
		}
		b, carry, flushed, closing := p.gather(next)
		next = carry
		s.send(b)
		if flushed != nil {
			// What was queued before the flush goes now, not after a linger.
			if next != nil {
				s.send(&batch{futures: []*PublishFuture{next}})
				next = nil
			}
			closing = p.sendQueued(s) || closing
			close(flushed)
		}
		if closing {
			if next != nil {
				s.send(&batch{futures: []*PublishFuture{next}})
			}
			s.drain()
			return
		}
	}
}

// sendQueued sends everything queued now in full batches, without waiting
// for more. It reports whether the queue was closed.
func (p *Producer) sendQueued(s *sender) (closing bool) {
	var carry *PublishFuture
	for carry != nil || len(p.queue) > 0 {
		b := &batch{}
		if carry != nil {
			b.add(carry, p.opts.BatchBytes)
		}
		carry, closing = p.takeQueued(b)
		if len(b.futures) > 0 {
			s.send(b)
		}
		if closing {
			return true
		}
	}
	return false
}

// add puts f in b unless it would take b over maxBytes; a batch always
// takes its first message.
func (b *batch) add(f *PublishFuture, maxBytes int) bool {
	if len(b.futures) > 0 && b.size+int(f.size) > maxBytes {
		return false
	}
	b.futures = append(b.futures, f)
	b.size += int(f.size)
	return true
}

func (p *Producer) full(b *batch) bool {
	return len(b.futures) >= p.opts.BatchMessages || b.size >= p.opts.BatchBytes
}

// takeQueued adds what is queued now to b, without waiting, until b is
// full. It returns a message too big to join, and whether the queue is
// closed.
func (p *Producer) takeQueued(b *batch) (carry *PublishFuture, closing bool) {
	for !p.full(b) && len(p.queue) > 0 {
		f, ok := <-p.queue
		if !ok {
			return nil, true
		}
		if !b.add(f, p.opts.BatchBytes) {
			return f, false
		}
	}
	return nil, false
}

// gather collects a batch starting with first, until it is full, the
// linger passes, a flush asks for it, or the queue is closed. A message
// too big to join is carried over to start the next batch.
func (p *Producer) gather(first *PublishFuture) (b *batch, carry *PublishFuture, flushed chan struct{}, closing bool) {
	b = &batch{}
	b.add(first, p.opts.BatchBytes)
	linger := time.NewTimer(p.opts.Linger)
	defer linger.Stop()
	for !p.full(b) {
		select {
		case f, ok := <-p.queue:
			if !ok {
				return b, nil, nil, true
			}
			if !b.add(f, p.opts.BatchBytes) {
				return b, f, nil, false
			}
		case ack := <-p.flushes:
			return b, nil, ack, false
		case <-linger.C:
			return b, nil, nil, false
		case <-p.nudge:
			// A synchronous Publish waits: send what is here, and what is
			// already queued, now.
			carry, closing := p.takeQueued(b)
			return b, carry, nil, closing
		}
	}
	return b, nil, nil, false
}

// sender owns the producer's stream. One receiver goroutine per stream
// answers futures; when the stream fails it closes broken, and the sender
// opens a new stream and sends every unanswered batch again, in order.
type sender struct {
	p            *Producer
	ctx          context.Context
	stream       ferryv1.PublisherService_PublishStreamClient
	cancelStream context.CancelFunc
	broken       <-chan struct{} // of the current stream; nil before the first
	opened       bool            // a stream was open before: a new one is a reopening
	bo           backoff
}

func (s *sender) send(b *batch) {
	p := s.p
	req := &ferryv1.PublishStreamRequest{Topic: p.topic, Messages: make([]*ferryv1.PublishMessage, len(b.futures))}
	for i, f := range b.futures {
		req.Messages[i] = toPublishMessage(f.msg)
	}
	p.mu.Lock()
	p.seq++
	b.seq, req.Sequence = p.seq, p.seq
	b.req = req
	p.pending = append(p.pending, b)
	p.mu.Unlock()
	if s.stream == nil {
		s.reconnect() // sends it with the rest
		return
	}
	if err := s.stream.Send(req); err != nil {
		s.reconnect()
	}
}

// reopen opens a new stream for the unanswered batches, if any; else it
// drops the broken one, and the next batch opens one (a stream refused
// for its credentials is not reopened in a loop).
func (s *sender) reopen() {
	p := s.p
	p.mu.Lock()
	n := len(p.pending)
	p.mu.Unlock()
	if n > 0 {
		s.reconnect()
		return
	}
	s.cancelStream()
	s.stream, s.cancelStream, s.broken = nil, nil, nil
}

// reconnect opens a new stream, with backoff, and sends every unanswered
// batch on it. It returns when that is done or the producer stops.
func (s *sender) reconnect() {
	p := s.p
	if s.cancelStream != nil {
		// A failed Send says only that the stream ended; its receiver
		// learns why from Recv (the broker's RetryInfo, say): let it
		// first, or the cancel makes that a Canceled, and the stream is
		// opened again at once instead of after the delay asked for.
		select {
		case <-s.broken:
		case <-time.After(time.Second):
		case <-s.ctx.Done():
		}
		s.cancelStream()
		s.stream, s.cancelStream = nil, nil
	}
	p.mu.Lock()
	wait := p.retryIn
	p.retryIn = 0
	p.mu.Unlock()
	if wait > 0 && !sleep(s.ctx, wait) {
		// The broker refused a batch (RESOURCE_EXHAUSTED, at its memory
		// limit or disk reserve) and said when to come back: every
		// unanswered batch goes again then, with the same ids, in order.
		return
	}
	for attempt := 0; ; attempt++ {
		if attempt > 0 && !sleep(s.ctx, s.bo.next()) {
			return
		}
		ctx, cancel := context.WithCancel(s.ctx)
		stream, err := p.c.pub.PublishStream(ctx)
		if err != nil {
			cancel()
			p.c.log.Warn("ferry producer: opening the publish stream failed; retrying", "topic", p.topic, "err", err)
			continue
		}
		broken := make(chan struct{})
		go p.receive(stream, broken)
		p.mu.Lock()
		resend := make([]*ferryv1.PublishStreamRequest, len(p.pending))
		for i, b := range p.pending {
			resend[i] = b.req
		}
		p.mu.Unlock()
		sent := true
		for _, req := range resend {
			if err := stream.Send(req); err != nil {
				sent = false
				break
			}
		}
		if !sent {
			cancel()
			continue
		}
		if s.opened {
			p.c.log.Info("ferry producer: publish stream reopened", "topic", p.topic, "resent_batches", len(resend))
		}
		s.opened = true
		s.stream, s.cancelStream, s.broken = stream, cancel, broken
		s.bo.reset()
		return
	}
}

// receive answers futures from one stream, in order, until it fails or a
// request is refused as UNAVAILABLE (the broker is going away): then it
// closes broken, and that request is sent again with everything after it.
func (p *Producer) receive(stream ferryv1.PublisherService_PublishStreamClient, broken chan struct{}) {
	defer close(broken)
	for {
		resp, err := stream.Recv()
		if err != nil {
			if c := status.Code(err); c == codes.Unauthenticated || c == codes.PermissionDenied {
				// Sending again would be refused again: the batches
				// sent fail with the refusal.
				p.failPending(err)
				return
			}
			if d, ok := retryDelay(err); ok {
				p.mu.Lock()
				p.retryIn = d
				p.mu.Unlock()
				p.c.log.Debug("ferry producer: the broker asked to retry later", "topic", p.topic, "retry_in", d.String(), "err", err)
			}
			return
		}
		p.mu.Lock()
		if len(p.pending) == 0 || p.pending[0].seq != resp.GetSequence() {
			p.mu.Unlock()
			continue // answered on an earlier stream already
		}
		b := p.pending[0]
		if e := resp.GetError(); e != nil && codes.Code(e.GetCode()) == codes.Unavailable {
			p.mu.Unlock()
			return
		}
		p.pending = p.pending[1:]
		p.mu.Unlock()
		if e := resp.GetError(); e != nil {
			err := status.Error(codes.Code(e.GetCode()), e.GetMessage())
			for _, f := range b.futures {
				f.fail(err, p.bytes)
			}
		} else {
			for i, f := range b.futures {
				if r := resp.GetResults(); i < len(r) {
					f.res = PublishResult{Partition: r[i].GetPartition(), Offset: r[i].GetOffset(), Duplicate: r[i].GetDuplicate()}
				} else {
					f.err = fmt.Errorf("client: the broker answered %d results for %d messages", len(r), len(b.futures))
				}
				p.bytes.Release(f.size)
				close(f.done)
			}
		}
		select {
		case p.answered <- struct{}{}:
		default:
		}
	}
}

// failPending fails every sent, unanswered batch with err.
func (p *Producer) failPending(err error) {
	p.mu.Lock()
	pending := p.pending
	p.pending = nil
	p.mu.Unlock()
	for _, b := range pending {
		for _, f := range b.futures {
			f.fail(err, p.bytes)
		}
	}
}

// drain waits until every sent batch is answered, reconnecting as needed,
// or the producer stops.
func (s *sender) drain() {
	p := s.p
	for {
		p.mu.Lock()
		n := len(p.pending)
		p.mu.Unlock()
		if n == 0 {
			return
		}
		select {
		case <-p.answered:
		case <-s.broken:
			s.reconnect()
		case <-s.ctx.Done():
			return
		}
	}
}

// end closes the stream and fails what was never answered.
func (s *sender) end() {
	if s.stream != nil {
		_ = s.stream.CloseSend()
	}
	if s.cancelStream != nil {
		s.cancelStream()
	}
	p := s.p
	p.mu.Lock()
	pending := p.pending
	p.pending = nil
	p.mu.Unlock()
	for _, b := range pending {
		for _, f := range b.futures {
			f.fail(ErrClosed, p.bytes)
		}
	}
	for f := range p.queue { // closed by Close; what raced in
		f.fail(ErrClosed, p.bytes)
	}
}
