package storage

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/dgraph-io/badger/v4"

	"github.com/ferrymq/ferry/internal/failpoint"
)

// Write is what the delivery engine stores in one atomic step: a
// subscription's cursor states in some partitions, the ids it acked, and
// messages to append to any partitions of any topics (Commit's outputs, a
// dead letter). All of it is committed in one Badger transaction, or none
// of it.
type Write struct {
	// Topic and Subscription name whose cursors are written.
	Topic        string
	Subscription uint32
	// Cursors are the new cursor states, at most one per partition. The
	// store keeps the State slices until Write returns.
	Cursors []CursorWrite
	// AckedIDs are remembered for the subscription for AckedIDTTL (for as
	// long as it lives if 0): AckedIDs reports them.
	AckedIDs   []string
	AckedIDTTL time.Duration
	// Appends are stored with the cursors, deduplicated by id as any append.
	Appends []AppendBatch
	// Epoch is the owner epoch the write was decided under (fence.go): a
	// partition that has seen a higher one for the subscription refuses
	// its cursors and acked ids, and the messages of the same partition,
	// with ErrFenced. 0 on a single node, which never fences.
	Epoch uint64
}

// CursorWrite is a subscription's new cursor state in one partition.
type CursorWrite struct {
	Partition uint32
	State     []byte
}

// AppendBatch is messages to append to one partition.
type AppendBatch struct {
	Topic     string
	Partition uint32
	Messages  []Message
}

// barrier parks a partition's writer for a multi-partition write: the
// writer sends its state on held and takes the state after the write from
// resume.
type barrier struct {
	held   chan partitionState
	resume chan partitionState
}

// partWrite is the part of a Write that lands on one partition.
type partWrite struct {
	p   *Partition
	cmd command
}

// Write stores w atomically and returns once it is durable under the fsync
// policy, with one result slice per append batch. It fails with
// ErrSubscriptionNotFound if the subscription was deleted, ErrTooLarge if
// it does not fit in a transaction, and changes nothing then.
func (s *Store) Write(ctx context.Context, w Write) ([][]AppendResult, error) {
	wp, err := s.Submit(ctx, w)
	if err != nil {
		return nil, err
	}
	return wp.Wait(ctx)
}

// Submit queues w and returns without waiting for it to be durable: writes
// submitted one after another by one goroutine are applied in that order
// in every partition they share. A write that touches one partition goes
// through its writer, in the same group commit as appends; one that touches
// several parks their writers (in order: later writes queue behind it),
// applies every part in one transaction and resumes them. If one of them is
// replicated, the parts are written in order instead (writeOrdered): not
// atomic, but idempotent, and every message must have an id.
func (s *Store) Submit(ctx context.Context, w Write) (*WritePending, error) {
	parts, err := s.plan(w)
	if err != nil {
		return nil, err
	}
	if err := s.admit(parts); err != nil {
		return nil, err
	}
	wp := &WritePending{w: w, parts: parts}
	if len(parts) == 1 {
		if wp.r, err = parts[0].p.submit(ctx, parts[0].cmd); err != nil {
			return nil, err
		}
		return wp, nil
	}
	if s.opts.Replicated || slices.ContainsFunc(parts, func(pw *partWrite) bool { return pw.p.replicated.Load() }) {
		if err := needIDs(parts); err != nil {
			return nil, err
		}
		wp.done = make(chan struct{})
		go func() {
			defer close(wp.done)
			wp.results, wp.err = writeOrdered(parts)
		}()
		return wp, nil
	}
	s.multiMu.Lock()
	reqs, err := s.park(ctx, parts)
	if err != nil {
		s.multiMu.Unlock()
		return nil, err
	}
	wp.done = make(chan struct{})
	go func() {
		defer close(wp.done)
		defer s.multiMu.Unlock()
		wp.results, wp.err = s.writeMulti(parts, reqs)
	}()
	return wp, nil
}

// admit asks the disk guard whether a write of parts may go: as an append
// if it appends (a Commit's outputs, a dead letter), else as a state write
// (acks, cursor moves).
func (s *Store) admit(parts []*partWrite) error {
	kind, size := writeState, 0
	for _, pw := range parts {
		if len(pw.cmd.msgs) > 0 {
			kind = writeGrow
		}
		size += pw.cmd.size
	}
	return s.guard.admit(kind, size)
}

// writeOrdered is a write across partitions of which some are replicated,
// so in different Raft groups: it cannot be one transaction. It writes the
// parts that only append (a Commit's outputs) first, each in its own
// partition, and the parts with cursors or acked ids (the Commit's ack)
// last, each once the ones before it are applied. Every message has an id
// (needIDs), so a write that failed half way and is made again — the input
// delivered again and committed again — stores each output once: exactly
// one output per input, within the dedup window. The caller must not write
// the same cursors meanwhile (the delivery engine never does: a commit is
// alone in flight in its partitions).
func writeOrdered(parts []*partWrite) ([]result, error) {
	order := make([]int, 0, len(parts))
	for _, last := range []bool{false, true} {
		for i, pw := range parts {
			if pw.cmd.writes() == last {
				order = append(order, i)
			}
		}
	}
	results := make([]result, len(parts))
	for n, i := range order {
		if n > 0 {
			failpoint.Hit("ordered-write-between-parts")
		}
		res, err := parts[i].p.do(context.Background(), parts[i].cmd)
		if err != nil {
			return nil, err
		}
		results[i] = res
	}
	return results, nil
}

// needIDs refuses a write across replicated partitions with a message
// without an id: writeOrdered could store it twice.
func needIDs(parts []*partWrite) error {
	for _, pw := range parts {
		for j := range pw.cmd.msgs {
			if pw.cmd.msgs[j].ID == "" {
				return fmt.Errorf("topic %q partition %d message %d has no id: %w", pw.p.topic, pw.p.part, j, ErrNeedIDs)
			}
		}
	}
	return nil
}

// WritePending is a submitted Write.
type WritePending struct {
	w     Write
	parts []*partWrite
	r     *request      // one partition: its writer's request
	done  chan struct{} // several: closed when writeMulti is done
	// results and err of writeMulti
	results []result
	err     error
}

// Wait blocks until the write is durable or failed, or ctx ends (the write
// may still land then), and returns one result slice per append batch.
func (wp *WritePending) Wait(ctx context.Context) ([][]AppendResult, error) {
	if wp.r != nil {
		select {
		case <-wp.r.done:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		if wp.r.err != nil {
			return nil, tooLarge(wp.r.err)
		}
		return splitAppends(wp.w, wp.parts, []result{wp.r.res}), nil
	}
	select {
	case <-wp.done:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if wp.err != nil {
		return nil, tooLarge(wp.err)
	}
	return splitAppends(wp.w, wp.parts, wp.results), nil
}

func tooLarge(err error) error {
	if errors.Is(err, badger.ErrTxnTooBig) {
		return fmt.Errorf("%w: %w", ErrTooLarge, err)
	}
	return err
}

// plan checks w and splits it into one command per partition, ordered by
// topic id and partition so concurrent multi-partition writes park writers
// in one order.
func (s *Store) plan(w Write) ([]*partWrite, error) {
	h, err := s.handle(w.Topic)
	if err != nil {
		return nil, err
	}
	if !h.subs.isLive(w.Subscription) {
		return nil, fmt.Errorf("subscription %d on topic %q: %w", w.Subscription, w.Topic, ErrSubscriptionNotFound)
	}
	byPart := make(map[*Partition]*partWrite)
	var parts []*partWrite
	part := func(h *topicHandle, n uint32) (*partWrite, error) {
		if n >= uint32(len(h.partitions)) {
			return nil, fmt.Errorf("topic %q has %d partitions, no partition %d: %w", h.topic.Name, len(h.partitions), n, ErrPartitionNotFound)
		}
		p := h.partitions[n]
		pw, ok := byPart[p]
		if !ok {
			pw = &partWrite{p: p, cmd: command{kind: cmdAppend, dedupWindow: h.topic.Config.DedupWindow, epoch: w.Epoch}}
			byPart[p] = pw
			parts = append(parts, pw)
		}
		return pw, nil
	}
	for _, c := range w.Cursors {
		pw, err := part(h, c.Partition)
		if err != nil {
			return nil, err
		}
		pw.cmd.cursors = append(pw.cmd.cursors, cursorWrite{sid: w.Subscription, state: c.State})
	}
	for i, b := range w.Appends {
		ah, err := s.handle(b.Topic)
		if err != nil {
			return nil, err
		}
		pw, err := part(ah, b.Partition)
		if err != nil {
			return nil, err
		}
		for j := range b.Messages {
			if len(b.Messages[j].ID) > MaxIDBytes {
				return nil, fmt.Errorf("append %d message %d: id of %d bytes is over %d: %w", i, j, len(b.Messages[j].ID), MaxIDBytes, ErrInvalidMessage)
			}
			pw.cmd.size += messageRecordSize(&b.Messages[j])
		}
		pw.cmd.msgs = append(pw.cmd.msgs, b.Messages...)
	}
	if len(w.AckedIDs) > 0 {
		for _, id := range w.AckedIDs {
			if len(id) > MaxIDBytes {
				return nil, fmt.Errorf("acked id of %d bytes is over %d: %w", len(id), MaxIDBytes, ErrInvalidMessage)
			}
		}
		// Acked-id keys carry the subscription's topic id: they go with a
		// partition of that topic, partition 0 if the write has none.
		var pw *partWrite
		for _, c := range parts {
			if c.p.tid == h.topic.id {
				pw = c
				break
			}
		}
		if pw == nil {
			if pw, err = part(h, 0); err != nil {
				return nil, err
			}
		}
		pw.cmd.acked = &ackedIDs{sid: w.Subscription, ids: w.AckedIDs, ttl: w.AckedIDTTL}
	}
	if len(parts) == 0 {
		return nil, fmt.Errorf("empty write: %w", ErrInvalidMessage)
	}
	slices.SortFunc(parts, func(a, b *partWrite) int {
		return cmp.Or(cmp.Compare(a.p.tid, b.p.tid), cmp.Compare(a.p.part, b.p.part))
	})
	return parts, nil
}

// splitAppends gives each of w's append batches its results, in order.
func splitAppends(w Write, parts []*partWrite, results []result) [][]AppendResult {
	if len(w.Appends) == 0 {
		return nil
	}
	type partKey struct {
		topic string
		part  uint32
	}
	rest := make(map[partKey][]AppendResult, len(parts))
	for i, pw := range parts {
		rest[partKey{pw.p.topic, pw.p.part}] = results[i].appended
	}
	out := make([][]AppendResult, len(w.Appends))
	for i, b := range w.Appends {
		k, n := partKey{b.Topic, b.Partition}, len(b.Messages)
		out[i], rest[k] = rest[k][:n], rest[k][n:]
	}
	return out
}

// park queues a barrier in each part's partition, in order. The caller
// holds multiMu until writeMulti is done: two writes that parked the same
// writers in different orders could wait for each other for ever. If a
// barrier cannot be queued, the ones queued are released and nothing is
// written.
func (s *Store) park(ctx context.Context, parts []*partWrite) ([]*request, error) {
	var reqs []*request
	for _, pw := range parts {
		r, err := pw.p.submit(ctx, command{kind: cmdBarrier, barrier: &barrier{held: make(chan partitionState, 1), resume: make(chan partitionState, 1)}})
		if err != nil {
			for _, r := range reqs {
				select {
				case st := <-r.cmd.barrier.held:
					r.cmd.barrier.resume <- st
				case <-r.done:
				}
			}
			return nil, err
		}
		reqs = append(reqs, r)
	}
	return reqs, nil
}

// writeMulti waits for the writers parked by reqs, commits parts in one
// transaction, resumes the writers and waits for the sync.
func (s *Store) writeMulti(parts []*partWrite, reqs []*request) ([]result, error) {
	// Every queued barrier is reached, or its writer failed first: writers
	// always make progress, and only this write parks them.
	var err error
	var parked []*request
	states := make([]partitionState, 0, len(reqs))
	for _, r := range reqs {
		select {
		case st := <-r.cmd.barrier.held:
			parked = append(parked, r)
			states = append(states, st)
		case <-r.done:
			err = cmp.Or(err, r.err, ErrClosed)
		}
	}
	resume := func(next []partitionState) {
		for i, r := range parked {
			r.cmd.barrier.resume <- next[i]
		}
	}
	if err != nil {
		resume(states)
		return nil, err
	}
	next, results, err := s.applyMulti(parts, states)
	if err != nil {
		resume(states)
		return nil, err
	}
	done := make([]*request, len(parts))
	for i, pw := range parts {
		next[i].committed()
		done[i] = &request{cmd: pw.cmd, done: make(chan struct{})}
		s.sync.enqueue(pw.p.syncGroupOf(states[i], next[i], done[i:i+1], []*command{&pw.cmd}, results[i:i+1]))
	}
	resume(next)
	for _, r := range done {
		<-r.done // the syncer answers every group it is given
		if r.err != nil && err == nil {
			err = r.err
		}
	}
	return results, err
}

// applyMulti applies every part's command to its partition's state in one
// transaction and commits it.
func (s *Store) applyMulti(parts []*partWrite, states []partitionState) ([]partitionState, []result, error) {
	txn := s.db.NewTransaction(true)
	defer txn.Discard()
	now := s.opts.Clock.Now()
	next := make([]partitionState, len(parts))
	results := make([]result, len(parts))
	for i, pw := range parts {
		st, res, err := states[i].apply(txn, []*command{&pw.cmd}, now)
		if err == nil {
			err = res[0].err // one part refused: nothing is written
		}
		if err != nil {
			return nil, nil, err
		}
		next[i], results[i] = st, res[0]
	}
	if err := s.guard.commit(txn.Commit); err != nil {
		return nil, nil, err
	}
	return next, results, nil
}
