package broker

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ferrymq/ferry/internal/clock"
	ferryv1 "github.com/ferrymq/ferry/proto/ferry/v1"
	"github.com/ferrymq/ferry/storage"
)

// publisher implements ferryv1.PublisherServiceServer.
type publisher struct {
	ferryv1.UnimplementedPublisherServiceServer
	store    *storage.Store
	metrics  *metrics
	clk      clock.Clock
	log      *slog.Logger
	draining <-chan struct{} // closed at shutdown
	node     *node           // nil on a single node
	memory   *memoryBudget

	rrMu sync.Mutex // guards rr
	rr   map[string]*roundRobin
}

func newPublisher(st *storage.Store, m *metrics, clk clock.Clock, lg *slog.Logger, draining <-chan struct{}, mem *memoryBudget) *publisher {
	return &publisher{store: st, metrics: m, clk: clk, log: lg, draining: draining, memory: mem, rr: make(map[string]*roundRobin)}
}

// Publish appends one batch and answers when it is durable.
func (p *publisher) Publish(ctx context.Context, req *ferryv1.PublishRequest) (*ferryv1.PublishResponse, error) {
	batch, err := p.enqueue(ctx, req.GetTopic(), req.GetMessages())
	if err != nil {
		return nil, toStatus(err)
	}
	results, err := batch.wait(ctx)
	if err != nil {
		return nil, toStatus(err)
	}
	return &ferryv1.PublishResponse{Results: results}, nil
}

// PublishStream queues each request as it arrives, in order, and answers
// them in that order from a second goroutine. A failed request gets an error
// in its response and the stream goes on. At shutdown the stream ends (OK)
// as soon as every request queued so far is answered; a request that raced
// in after that may be stored unanswered, and its retry with the same ids
// is answered as a duplicate.
func (p *publisher) PublishStream(stream ferryv1.PublisherService_PublishStreamServer) error {
	ctx := stream.Context()
	// A bounded queue: once this many batches await fsync, stop reading and
	// let gRPC flow control push back on the client.
	queue := make(chan streamRequest, 256)
	recvErr := make(chan error, 1)
	// Batches not answered when the handler returns still hold their
	// memory until stored or failed: hand them back once the receiver,
	// which ends with the stream, has queued its last.
	defer func() {
		go func() {
			for f := range queue {
				f.batch.abandon()
			}
		}()
	}()
	go p.receiveStream(ctx, stream, queue, recvErr)
	for {
		var f streamRequest
		select {
		case next, ok := <-queue:
			if !ok {
				return <-recvErr
			}
			f = next
		case <-p.draining:
			if len(queue) == 0 {
				return nil // shutdown: everything queued is answered
			}
			continue
		}
		resp, end := p.answerStream(ctx, f)
		if end != nil {
			return end
		}
		if err := stream.Send(resp); err != nil {
			return err
		}
	}
}

// streamRequest is one PublishStream request, queued in arrival order: its
// batch, or why it was not enqueued.
type streamRequest struct {
	seq   uint64
	batch *pendingBatch
	err   error
}

// receiveStream queues each request of stream as it arrives and sends why
// it stopped to recvErr (nil at EOF). It ends with the stream: at EOF, on
// an error, or when the handler returns and gRPC cancels ctx.
func (p *publisher) receiveStream(ctx context.Context, stream ferryv1.PublisherService_PublishStreamServer, queue chan<- streamRequest, recvErr chan<- error) {
	defer close(queue)
	for {
		req, err := stream.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = nil
			}
			recvErr <- err
			return
		}
		f := streamRequest{seq: req.GetSequence()}
		if f.err = checkFrame(ctx, req); f.err == nil { // auth.go: refused, answered with the refusal
			f.batch, f.err = p.enqueue(ctx, req.GetTopic(), req.GetMessages())
		}
		if f.err != nil && ctx.Err() != nil {
			// The stream is over and this batch may be stored in part:
			// take nothing after it, which the client sends again, in
			// order, after this one.
			recvErr <- ctx.Err()
			return
		}
		var refusal *memoryRefusal
		refused := errors.As(f.err, &refusal)
		select {
		case queue <- f:
		case <-ctx.Done():
			f.batch.abandon()
			recvErr <- ctx.Err()
			return
		}
		if refused {
			// Over the memory limit: take nothing after this batch,
			// so that the client's retry keeps its order. The stream
			// ends with the refusal once the batches before it are
			// answered.
			recvErr <- nil
			return
		}
	}
}

// answerStream waits for f's batch and returns its response, or the
// status that ends the stream (end) when f was refused for a limit the
// client waits out.
func (p *publisher) answerStream(ctx context.Context, f streamRequest) (resp *ferryv1.PublishStreamResponse, end error) {
	var refusal *memoryRefusal
	if errors.As(f.err, &refusal) {
		// The stream's status carries the RetryInfo; the SDK waits it
		// out and sends this batch and those after it again.
		return nil, toStatus(f.err)
	}
	resp = &ferryv1.PublishStreamResponse{Sequence: f.seq}
	err := f.err
	if err == nil {
		resp.Results, err = f.batch.wait(ctx)
	}
	if err != nil {
		st := status.Convert(toStatus(err))
		if hasRetryInfo(st) {
			// Refused for a limit the broker expects to clear (its disk
			// reserve, here or on the partition's leader): end the
			// stream with the status, as for memory. The SDK waits out
			// the RetryInfo and sends this batch and those after it
			// again, in order, with the same ids; any of those stored
			// meanwhile answer as duplicates.
			return nil, st.Err()
		}
		resp.Error = &ferryv1.PublishError{Code: uint32(st.Code()), Message: st.Message()}
		if st.Code() == codes.Internal {
			p.log.Error("internal error answered", "method", "PublishStream", "err", err)
		}
	}
	return resp, nil
}

// share is the part of a batch routed to one partition.
type share struct {
	part  uint32
	msgs  []storage.Message
	index []int // each message's place in the request
}

// route validates a batch for topic and splits it by partition, in the
// order partitions first occur.
func (p *publisher) route(topic string, msgs []*ferryv1.PublishMessage) ([]*share, error) {
	if err := storage.ValidateTopicName(topic); err != nil {
		return nil, err
	}
	t, err := p.store.Topic(topic)
	if err != nil {
		return nil, err
	}
	if err := validateBatch(t, msgs); err != nil {
		return nil, err
	}
	n := t.Config.Partitions
	rr := p.roundRobin(topic).take()
	byPart := make(map[uint32]*share, 1)
	var shares []*share
	for i, m := range msgs {
		part := partitionFor(m, n, rr)
		sh := byPart[part]
		if sh == nil {
			sh = &share{part: part}
			byPart[part] = sh
			shares = append(shares, sh)
		}
		sh.msgs = append(sh.msgs, storage.Message{ID: m.Id, Key: m.Key, Payload: m.Payload, Headers: m.Headers})
		sh.index = append(sh.index, i)
	}
	return shares, nil
}

// enqueue validates a batch, routes it, and queues each partition's share
// with its writer before returning, so batches queued one after another
// keep their order. The batch's bytes count against the memory budget
// until every share is durable or failed, whether or not anyone waits for
// the answer: the caller calls wait or, if it will not, abandon.
func (p *publisher) enqueue(ctx context.Context, topic string, msgs []*ferryv1.PublishMessage) (*pendingBatch, error) {
	start := p.clk.Now()
	shares, err := p.route(topic, msgs)
	if errors.Is(err, storage.ErrTopicNotFound) && p.node != nil {
		// Created on another node a moment ago, perhaps: catch up with
		// the metadata group and look again.
		if serr := p.node.CatchUpMeta(ctx); serr == nil {
			shares, err = p.route(topic, msgs)
		}
	}
	if err != nil {
		return nil, err
	}
	release, err := p.memory.admit(ctx, batchBytes(msgs))
	if err != nil {
		return nil, err
	}
	b := &pendingBatch{p: p, topic: topic, n: len(msgs), start: start, shares: shares, release: release,
		pends: make([]*storage.Pending, 0, len(shares))}
	for _, sh := range shares {
		pd, err := p.store.Enqueue(ctx, topic, sh.part, sh.msgs)
		if err != nil {
			// Shares already queued may still be stored; a retry with the
			// same ids is answered as duplicates.
			b.abandon()
			return nil, err
		}
		b.pends = append(b.pends, pd)
	}
	return b, nil
}

// pendingBatch is a publish batch queued with the partitions' writers.
type pendingBatch struct {
	p       *publisher
	topic   string
	n       int // messages
	start   time.Time
	shares  []*share
	pends   []*storage.Pending // one per share queued
	release func()             // gives the batch's bytes back to the memory budget; idempotent
}

// wait blocks until every share is durable, and answers with each
// message's result in request order. If ctx ends first, the batch is
// abandoned.
func (b *pendingBatch) wait(ctx context.Context) ([]*ferryv1.PublishResult, error) {
	results := make([]*ferryv1.PublishResult, b.n)
	for i, sh := range b.shares {
		res, err := b.pends[i].Wait(ctx)
		if err != nil {
			if ctx.Err() != nil {
				b.abandon()
			} else {
				b.releaseWhenDone(i + 1)
			}
			return nil, err
		}
		sh.fill(results, res)
		b.p.metrics.published(b.topic, sh.msgs, res)
	}
	b.release()
	b.p.metrics.answered(b.p.clk.Now().Sub(b.start))
	return results, nil
}

// abandon releases the batch's memory once every share queued is durable
// or failed, without an answer. Safe on a nil batch.
func (b *pendingBatch) abandon() {
	if b != nil {
		b.releaseWhenDone(0)
	}
}

// releaseWhenDone releases the batch's memory once the shares from the
// from-th on are done (those before are).
func (b *pendingBatch) releaseWhenDone(from int) {
	rest := b.pends[from:]
	if len(rest) == 0 {
		b.release()
		return
	}
	go func() {
		for _, pd := range rest {
			<-pd.Done()
		}
		b.release()
	}()
}

// batchBytes is what a batch's messages weigh against the memory budget.
func batchBytes(msgs []*ferryv1.PublishMessage) int64 {
	var n int64
	for _, m := range msgs {
		n += int64(len(m.GetPayload()) + len(m.GetKey()) + len(m.GetId()) + 64)
		for k, v := range m.GetHeaders() {
			n += int64(len(k) + len(v))
		}
	}
	return n
}

// fill puts the share's append results in their places in results.
func (sh *share) fill(results []*ferryv1.PublishResult, res []storage.AppendResult) {
	for j, r := range res {
		results[sh.index[j]] = &ferryv1.PublishResult{Partition: sh.part, Offset: r.Offset, Duplicate: r.Duplicate}
	}
}

func (p *publisher) roundRobin(topic string) *roundRobin {
	p.rrMu.Lock()
	defer p.rrMu.Unlock()
	r := p.rr[topic]
	if r == nil {
		r = &roundRobin{}
		p.rr[topic] = r
	}
	return r
}
