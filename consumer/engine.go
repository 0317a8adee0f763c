package consumer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ferrymq/ferry/internal/clock"
	"github.com/ferrymq/ferry/storage"
)

// Owner is what a Log may also do in a cluster, where a subscription's
// delivery runs on one node at a time, its owner, and ownership moves:
// take the subscription's state over. The engine loads a subscription
// through Own instead of Cursors when its Log has it, and every write of
// the subscription then carries the epoch (storage.Write.Epoch). A write
// refused with storage.ErrFenced means a newer owner took over: the engine
// stops the subscription at once (Engine.Attach, Ack and the rest start it
// again, through Own).
type Owner interface {
	// Own fences off the subscription's earlier owners in every partition
	// of topic (storage.Store.Fence) and returns the owner epoch this
	// node's writes must carry and the cursors as of the fence. It fails
	// if this node does not own the subscription, or a newer owner fenced
	// it off (storage.ErrFenced).
	Own(ctx context.Context, topic, name string, sid uint32) (epoch uint64, cursors [][]byte, err error)
}

// ownWait bounds how long loading a subscription waits for Own.
const ownWait = 10 * time.Second

// EngineOptions configures an Engine.
type EngineOptions struct {
	Log    Log
	Clock  clock.Clock  // default clock.Real()
	Logger *slog.Logger // default slog.Default()
	// Route picks the partition of a message the engine publishes (a dead
	// letter) the way publishers' messages are routed. Required.
	Route func(topic string, m *storage.Message) (uint32, error)
	// QueueBytes bounds each consumer's queue of deliveries handed to it
	// and not yet taken by its stream, in bytes of payload, key and id
	// plus a fixed overhead per delivery: a consumer whose queue is full
	// gets nothing more until its stream takes some (one delivery always
	// fits). Default DefaultQueueBytes (64 KiB).
	QueueBytes int
	// RememberedCommits bounds how many delivery ids of landed commits
	// the engine remembers, over all subscriptions, to answer a retry of
	// such a commit with its results (the most recently used are kept; a
	// retry of a forgotten one is refused as already acked). Default
	// DefaultRememberedCommits (32,768, about 9 MiB).
	RememberedCommits int
}

// Engine runs the delivery of every subscription: one loop per
// subscription in use, started on demand. Methods are safe for concurrent
// use.
type Engine struct {
	opts EngineOptions
	log  *slog.Logger

	mu      sync.Mutex // guards loops, closed and nextID
	loops   map[subKey]*loop
	closed  bool
	nextID  uint64
	adminMu sync.Mutex // serializes subscription create, update and delete
	// dropped counts messages NONE subscriptions skipped forward over
	// (Stats.Dropped of every loop, gone ones included).
	dropped atomic.Uint64
	commits *commitMemory // landed commits' ids, for every subscription
}

// Dropped is how many messages NONE subscriptions have skipped since the
// engine started, because their consumers fell behind: a NONE consumer
// that cannot keep up is skipped forward to the head, not buffered for.
func (e *Engine) Dropped() uint64 { return e.dropped.Load() }

type subKey struct{ topic, name string }

// New returns an Engine over opts.Log.
func New(opts EngineOptions) *Engine {
	if opts.Clock == nil {
		opts.Clock = clock.Real()
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.QueueBytes <= 0 {
		opts.QueueBytes = DefaultQueueBytes
	}
	return &Engine{opts: opts, log: opts.Logger, loops: make(map[subKey]*loop), commits: newCommitMemory(opts.RememberedCommits)}
}

// Info is a subscription's config and stats.
type Info struct {
	Topic      string
	Name       string
	Options    Options
	CreateTime time.Time
	Stats      Stats
}

// CreateSubscription creates a subscription on topic. Its cursors start at
// o.Start in every partition; an offset outside a partition's retained
// range is refused. A NONE subscription is not stored: it lives in memory
// until its last consumer leaves. An identical create returns the existing
// subscription; a different one ErrSubscriptionExists.
func (e *Engine) CreateSubscription(ctx context.Context, topic, name string, o Options) (Info, error) {
	if err := o.Validate(); err != nil {
		return Info{}, err
	}
	if err := storage.ValidateSubscriptionName(name); err != nil {
		return Info{}, err
	}
	if err := e.checkDeadLetter(topic, o); err != nil {
		return Info{}, err
	}
	e.adminMu.Lock()
	defer e.adminMu.Unlock()
	if o.Guarantee == None {
		return e.createEphemeral(topic, name, o)
	}
	if l := e.ephemeral(topic, name); l != nil {
		return Info{}, fmt.Errorf("subscription %q on topic %q is a none subscription: %w", name, topic, ErrSubscriptionExists)
	}
	offs, err := e.resolve(topic, o.Start)
	if err != nil {
		return Info{}, err
	}
	config := encodeConfig(o, newSealKey())
	cursors := make([][]byte, len(offs))
	for i, off := range offs {
		cursors[i] = newCursorRecord(off).appendBinary(nil, false)
	}
	sub, err := e.opts.Log.CreateSubscription(ctx, topic, name, config, cursors)
	if errors.Is(err, storage.ErrSubscriptionExists) {
		if have, _, derr := decodeConfig(sub.Config); derr == nil && have == o {
			return Info{Topic: topic, Name: name, Options: have, CreateTime: sub.CreateTime}, nil
		}
		return Info{}, fmt.Errorf("subscription %q on topic %q: %w", name, topic, ErrSubscriptionExists)
	}
	if err != nil {
		return Info{}, err
	}
	return Info{Topic: topic, Name: name, Options: o, CreateTime: sub.CreateTime}, nil
}

// checkDeadLetter refuses a dead-letter topic that is the subscription's
// own or does not exist.
func (e *Engine) checkDeadLetter(topic string, o Options) error {
	if o.DeadLetterTopic == "" {
		return nil
	}
	if o.DeadLetterTopic == topic {
		return fmt.Errorf("dead-letter topic %q is the subscription's own topic: %w", topic, ErrInvalidOptions)
	}
	if _, err := e.opts.Log.Topic(o.DeadLetterTopic); err != nil {
		return fmt.Errorf("dead-letter topic: %w", err)
	}
	return nil
}

// resolve finds the offset of a start position in every partition.
func (e *Engine) resolve(topic string, pos StartPosition) ([]uint64, error) {
	parts, err := e.opts.Log.Partitions(topic)
	if err != nil {
		return nil, err
	}
	offs := make([]uint64, len(parts))
	for i, p := range parts {
		switch pos.Kind {
		case StartEarliest:
			offs[i] = p.First
		case StartLatest:
			offs[i] = p.Head
		case StartOffset:
			if pos.Offset < p.First || pos.Offset > p.Head {
				return nil, &storage.OffsetOutOfRangeError{Offset: pos.Offset, First: p.First, Head: p.Head}
			}
			offs[i] = pos.Offset
		case StartTime:
			if offs[i], err = e.opts.Log.OffsetAt(topic, p.Partition, pos.Time); err != nil {
				return nil, err
			}
		default:
			return nil, fmt.Errorf("start %v: %w", pos, ErrInvalidOptions)
		}
	}
	return offs, nil
}

func (e *Engine) createEphemeral(topic, name string, o Options) (Info, error) {
	if l := e.ephemeral(topic, name); l != nil {
		if l.sub.opts == o {
			return Info{Topic: topic, Name: name, Options: o, CreateTime: l.created}, nil
		}
		return Info{}, fmt.Errorf("subscription %q on topic %q: %w", name, topic, ErrSubscriptionExists)
	}
	if _, err := e.opts.Log.Subscription(topic, name); err == nil {
		return Info{}, fmt.Errorf("subscription %q on topic %q: %w", name, topic, ErrSubscriptionExists)
	} else if !errors.Is(err, storage.ErrSubscriptionNotFound) {
		return Info{}, err
	}
	heads, err := e.heads(topic)
	if err != nil {
		return Info{}, err
	}
	states := make([]*cursorRecord, len(heads))
	for i, head := range heads {
		states[i] = newCursorRecord(head)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return Info{}, storage.ErrClosed
	}
	l := e.startLoop(topic, name, 0, o, states, heads, 0, newSealKey())
	l.ephemeral = true
	return Info{Topic: topic, Name: name, Options: o, CreateTime: l.created}, nil
}

func (e *Engine) ephemeral(topic, name string) *loop {
	e.mu.Lock()
	defer e.mu.Unlock()
	if l := e.loops[subKey{topic, name}]; l != nil && l.ephemeral {
		return l
	}
	return nil
}

// loopFor returns the running loop of a subscription, starting it if need
// be.
func (e *Engine) loopFor(topic, name string) (*loop, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return nil, storage.ErrClosed
	}
	if l := e.loops[subKey{topic, name}]; l != nil {
		return l, nil
	}
	sub, err := e.opts.Log.Subscription(topic, name)
	if errors.Is(err, storage.ErrSubscriptionNotFound) {
		return nil, fmt.Errorf("subscription %q on topic %q: %w", name, topic, ErrSubscriptionNotFound)
	}
	if err != nil {
		return nil, err
	}
	o, key, err := decodeConfig(sub.Config)
	if err != nil {
		return nil, err
	}
	if key == nil {
		key = legacySealKey(topic, name, sub.ID, sub.CreateTime)
	}
	epoch, raw, err := e.cursors(topic, name, sub.ID)
	if err != nil {
		return nil, err
	}
	states := make([]*cursorRecord, len(raw))
	for i, b := range raw {
		if states[i], err = decodeCursorRecord(b); err != nil {
			return nil, fmt.Errorf("subscription %q partition %d: %w", name, i, err)
		}
	}
	t, err := e.opts.Log.Topic(topic)
	if err != nil {
		return nil, err
	}
	horizon := o.DedupHorizon
	if horizon == 0 {
		horizon = t.Config.RetentionMaxAge
	}
	l := e.startLoop(topic, name, sub.ID, o, states, nil, horizon, key)
	l.created = sub.CreateTime
	l.sub.epoch = epoch
	return l, nil
}

// cursors loads a subscription's cursors to run it: through Own if the
// Log is an Owner, with the epoch its writes carry.
func (e *Engine) cursors(topic, name string, sid uint32) (uint64, [][]byte, error) {
	o, ok := e.opts.Log.(Owner)
	if !ok {
		raw, err := e.opts.Log.Cursors(topic, sid)
		return 0, raw, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), ownWait)
	defer cancel()
	return o.Own(ctx, topic, name, sid)
}

// startLoop starts a subscription's loop. e.mu is held.
func (e *Engine) startLoop(topic, name string, sid uint32, o Options, states []*cursorRecord, heads []uint64, horizon time.Duration, key []byte) *loop {
	ctx, cancel := context.WithCancel(context.Background())
	l := &loop{
		e:         e,
		key:       subKey{topic, name},
		sub:       newMachine(topic, name, sid, o, states, heads, e.opts.Route),
		seal:      newIDSeal(key, topic, name),
		events:    make(chan event, 256),
		ctx:       ctx,
		cancel:    cancel,
		consumers: make(map[uint64]*Consumer),
		created:   e.opts.Clock.Now().UTC(),
		done:      make(chan struct{}),
	}
	l.sub.horizon = horizon
	l.sub.commits = e.commits
	l.sub.queueBytes = e.opts.QueueBytes
	e.loops[l.key] = l
	go l.run()
	return l
}

// stopLoop stops a subscription's loop, if running, detaching its
// consumers with err, and waits for its writes to land.
func (e *Engine) stopLoop(topic, name string, err error) {
	e.mu.Lock()
	l := e.loops[subKey{topic, name}]
	delete(e.loops, subKey{topic, name})
	e.mu.Unlock()
	if l != nil {
		l.stop(err)
	}
}

// Subscription returns a subscription's config and stats.
func (e *Engine) Subscription(ctx context.Context, topic, name string) (Info, error) {
	heads, err := e.heads(topic)
	if err != nil {
		return Info{}, err
	}
	return e.info(ctx, topic, name, heads)
}

// info is a subscription's config and stats, with its backlog measured
// against heads.
func (e *Engine) info(ctx context.Context, topic, name string, heads []uint64) (Info, error) {
	if info, ok, err := e.idleInfo(topic, name, heads); ok {
		return info, err
	}
	l, err := e.loopFor(topic, name)
	if err != nil {
		return Info{}, err
	}
	return l.info(ctx, heads)
}

// info asks the running loop for its subscription's config and stats. A
// NONE subscription whose loop has ended (its last consumer left, or the
// engine closed) no longer exists: a listing that found it a moment
// before gets ErrSubscriptionNotFound, not the consumers' "reconnect".
func (l *loop) info(ctx context.Context, heads []uint64) (Info, error) {
	done := make(chan Info, 1)
	info, err := ask(ctx, l, infoEvent{heads: heads, done: done}, done)
	if err != nil && l.ephemeral && errors.Is(err, ErrDetached) {
		return Info{}, fmt.Errorf("subscription %q on topic %q: %w", l.key.name, l.key.topic, ErrSubscriptionNotFound)
	}
	return info, err
}

// idleInfo is the Info of a subscription whose loop is not running (no
// consumer or call has needed it since the engine started), read from its
// stored record and cursors without starting the loop: it has no
// consumers, nothing in flight or in memory, and its counters are zero.
// A scrape of /metrics after a start reads every subscription; starting
// 20,000 loops (goroutines, queues, timers) made the first one take
// seconds. ok is false if the loop is running or the engine is closed:
// then ask the loop.
func (e *Engine) idleInfo(topic, name string, heads []uint64) (info Info, ok bool, err error) {
	e.mu.Lock()
	running := e.closed || e.loops[subKey{topic, name}] != nil
	e.mu.Unlock()
	if running {
		return Info{}, false, nil
	}
	sub, err := e.opts.Log.Subscription(topic, name)
	if errors.Is(err, storage.ErrSubscriptionNotFound) {
		return Info{}, true, fmt.Errorf("subscription %q on topic %q: %w", name, topic, ErrSubscriptionNotFound)
	}
	if err != nil {
		return Info{}, true, err
	}
	o, _, err := decodeConfig(sub.Config)
	if err != nil {
		return Info{}, true, err
	}
	raw, err := e.opts.Log.Cursors(topic, sub.ID)
	if err != nil {
		return Info{}, true, err
	}
	info = Info{Topic: topic, Name: name, Options: o, CreateTime: sub.CreateTime}
	for i, b := range raw {
		st, err := decodeCursorRecord(b)
		if err != nil {
			return Info{}, true, fmt.Errorf("subscription %q partition %d: %w", name, i, err)
		}
		if i < len(heads) {
			info.Stats.Backlog += st.backlog(heads[i])
		}
	}
	return info, true, nil
}

func (e *Engine) heads(topic string) ([]uint64, error) {
	parts, err := e.opts.Log.Partitions(topic)
	if err != nil {
		return nil, err
	}
	heads := make([]uint64, len(parts))
	for i, p := range parts {
		heads[i] = p.Head
	}
	return heads, nil
}

// Subscriptions returns every subscription of topic, ordered by name, with
// stats.
func (e *Engine) Subscriptions(ctx context.Context, topic string) ([]Info, error) {
	return e.subscriptions(ctx, topic, e.ephemeralNames()[topic])
}

// EachSubscription calls fn with every subscription of each of topics, in
// the order given, each topic's ordered by name, with stats. A topic or
// subscription deleted meanwhile is skipped. It walks the engine's loops
// once, not once per topic: its cost is linear in topics + subscriptions
// (a scrape of /metrics reads every one). A subscription whose loop is not
// running is read from the store, not started (idleInfo).
func (e *Engine) EachSubscription(ctx context.Context, topics []string, fn func(Info)) error {
	ephemeral := e.ephemeralNames()
	for _, t := range topics {
		infos, err := e.subscriptions(ctx, t, ephemeral[t])
		if errors.Is(err, storage.ErrTopicNotFound) {
			continue // deleted meanwhile
		}
		if err != nil {
			return err
		}
		for _, info := range infos {
			fn(info)
		}
	}
	return nil
}

// ephemeralNames returns the names of the running NONE subscriptions, by
// topic.
func (e *Engine) ephemeralNames() map[string][]string {
	e.mu.Lock()
	defer e.mu.Unlock()
	names := make(map[string][]string)
	for k, l := range e.loops {
		if l.ephemeral {
			names[k.topic] = append(names[k.topic], k.name)
		}
	}
	return names
}

// subscriptions returns the stored subscriptions of topic and the NONE
// ones named in ephemeral, ordered by name, with stats.
func (e *Engine) subscriptions(ctx context.Context, topic string, ephemeral []string) ([]Info, error) {
	subs, err := e.opts.Log.Subscriptions(topic)
	if err != nil {
		return nil, err
	}
	names := make([]string, 0, len(subs)+len(ephemeral))
	for _, s := range subs {
		names = append(names, s.Name)
	}
	names = append(names, ephemeral...)
	heads, err := e.heads(topic)
	if err != nil {
		return nil, err
	}
	infos := make([]Info, 0, len(names))
	for _, n := range names {
		info, err := e.info(ctx, topic, n, heads)
		if errors.Is(err, ErrSubscriptionNotFound) {
			continue // deleted meanwhile
		}
		if err != nil {
			return nil, err
		}
		infos = append(infos, info)
	}
	sortInfos(infos)
	return infos, nil
}

// UpdateSubscription changes a subscription's ack timeout, backoff, max
// deliveries, dead-letter topic and dedup horizon. Its guarantee, type and
// start cannot change. The loop restarts with the new options; consumers
// reattach.
func (e *Engine) UpdateSubscription(ctx context.Context, topic, name string, change func(*Options)) (Info, error) {
	e.adminMu.Lock()
	defer e.adminMu.Unlock()
	if e.ephemeral(topic, name) != nil {
		return Info{}, fmt.Errorf("a none subscription cannot be updated: %w", ErrInvalidOptions)
	}
	sub, err := e.opts.Log.Subscription(topic, name)
	if errors.Is(err, storage.ErrSubscriptionNotFound) {
		return Info{}, fmt.Errorf("subscription %q on topic %q: %w", name, topic, ErrSubscriptionNotFound)
	}
	if err != nil {
		return Info{}, err
	}
	o, key, err := decodeConfig(sub.Config)
	if err != nil {
		return Info{}, err
	}
	if key == nil {
		key = newSealKey() // a subscription from before sealed ids gets its key
	}
	n := o
	change(&n)
	switch {
	case n.Guarantee != o.Guarantee, n.Type != o.Type, n.Start != o.Start:
		return Info{}, fmt.Errorf("guarantee, type and start cannot change; create a new subscription: %w", ErrInvalidOptions)
	}
	if err := n.Validate(); err != nil {
		return Info{}, err
	}
	if err := e.checkDeadLetter(topic, n); err != nil {
		return Info{}, err
	}
	e.stopLoop(topic, name, fmt.Errorf("subscription %q was updated; attach again: %w", name, ErrDetached))
	if _, err := e.opts.Log.UpdateSubscription(ctx, topic, name, encodeConfig(n, key)); err != nil {
		return Info{}, err
	}
	return Info{Topic: topic, Name: name, Options: n, CreateTime: sub.CreateTime}, nil
}

// DeleteSubscription stops a subscription's delivery, detaching its
// consumers, and deletes it.
func (e *Engine) DeleteSubscription(ctx context.Context, topic, name string) error {
	e.adminMu.Lock()
	defer e.adminMu.Unlock()
	if l := e.ephemeral(topic, name); l != nil {
		e.stopLoop(topic, name, fmt.Errorf("subscription %q was deleted: %w", name, ErrDetached))
		return nil
	}
	if _, err := e.opts.Log.Subscription(topic, name); err != nil {
		if errors.Is(err, storage.ErrSubscriptionNotFound) {
			return fmt.Errorf("subscription %q on topic %q: %w", name, topic, ErrSubscriptionNotFound)
		}
		return err
	}
	e.stopLoop(topic, name, fmt.Errorf("subscription %q was deleted: %w", name, ErrDetached))
	return e.opts.Log.DeleteSubscription(ctx, topic, name)
}

// StopTopic stops the delivery of every subscription of topic, before the
// topic is deleted.
func (e *Engine) StopTopic(topic string) {
	e.Release(topic, func(string) bool { return true }, fmt.Errorf("topic %q was deleted: %w", topic, ErrDetached))
}

// Release stops the delivery of the subscriptions of topic that match,
// detaching their consumers with err (which should wrap ErrDetached), and
// waits for their writes to land. A later call on such a subscription
// starts it again from its stored state. A cluster node releases the
// subscriptions it no longer owns.
func (e *Engine) Release(topic string, match func(name string) bool, err error) {
	e.mu.Lock()
	var names []string
	for k := range e.loops {
		if k.topic == topic && match(k.name) {
			names = append(names, k.name)
		}
	}
	e.mu.Unlock()
	for _, n := range names {
		e.stopLoop(topic, n, err)
	}
}

// closeParallel is how many loops Close stops at once: each waits for its
// last writes (which a group commit lands together) and its reads to end.
const closeParallel = 64

// Close stops every loop, detaching consumers, and waits for their writes.
// Loops stop closeParallel at a time, so thousands of subscriptions stop
// in about the time of their slowest write, not one after another.
func (e *Engine) Close() {
	e.mu.Lock()
	e.closed = true
	loops := e.loops
	e.loops = map[subKey]*loop{}
	e.mu.Unlock()
	err := fmt.Errorf("broker shutting down: %w", ErrDetached)
	sem := make(chan struct{}, closeParallel)
	var wg sync.WaitGroup
	for _, l := range loops {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			l.stop(err)
			<-sem
		}()
	}
	wg.Wait()
}

// AttachOptions says how a consumer attaches.
type AttachOptions struct {
	// Credit is the most unacked deliveries the consumer may hold: 1 to
	// MaxCredit.
	Credit int
	// CreateNone creates a NONE subscription of the name if there is none
	// (it goes away with its last consumer).
	CreateNone bool
}

// Attach attaches a consumer to a subscription.
func (e *Engine) Attach(ctx context.Context, topic, name string, ao AttachOptions) (*Consumer, error) {
	if err := checkCredit(ao.Credit); err != nil {
		return nil, err
	}
	l, err := e.loopFor(topic, name)
	if errors.Is(err, ErrSubscriptionNotFound) && ao.CreateNone {
		if _, cerr := e.CreateSubscription(ctx, topic, name, DefaultOptions(None)); cerr != nil && !errors.Is(cerr, ErrSubscriptionExists) {
			return nil, cerr
		}
		l, err = e.loopFor(topic, name)
	}
	if err != nil {
		return nil, err
	}
	e.mu.Lock()
	e.nextID++
	id := e.nextID
	e.mu.Unlock()
	c := &Consumer{id: id, l: l, signal: make(chan struct{}, 1)}
	done := make(chan error, 1)
	aerr, err := ask(ctx, l, attachEvent{c: c, credit: ao.Credit, done: done}, done)
	if err != nil {
		// ctx ended first, but the loop may still take the attach: undo it
		// after, or the consumer stays attached with no one to close it.
		c.Close()
		return nil, err
	}
	if aerr != nil {
		return nil, aerr
	}
	return c, nil
}

// Ack acks deliveries of a subscription; results[i] says why ids[i] was
// refused, nil if it was taken. Under EFFECTIVELY_ONCE it returns once the
// acks are durable, with the error of the write if it failed.
func (e *Engine) Ack(ctx context.Context, topic, name string, ids []DeliveryID) (results []error, err error) {
	l, err := e.loopFor(topic, name)
	if err != nil {
		return nil, err
	}
	return l.ack(ctx, ids)
}

// Seal returns the subscription's delivery id seal: Seal makes the wire
// form of its deliveries' ids, Open parses and verifies one named in an
// ack, nack, extend or commit.
func (e *Engine) Seal(topic, name string) (*IDSeal, error) {
	l, err := e.loopFor(topic, name)
	if err != nil {
		return nil, err
	}
	return l.seal, nil
}

// Nack makes deliveries due again after their backoff.
func (e *Engine) Nack(ctx context.Context, topic, name string, ids []DeliveryID) ([]error, error) {
	l, err := e.loopFor(topic, name)
	if err != nil {
		return nil, err
	}
	return l.nack(ctx, ids)
}

// Extend moves deliveries' deadlines to now+d.
func (e *Engine) Extend(ctx context.Context, topic, name string, ids []DeliveryID, d time.Duration) ([]error, error) {
	l, err := e.loopFor(topic, name)
	if err != nil {
		return nil, err
	}
	return l.extend(ctx, ids, d)
}

// Commit acks deliveries and stores appends in one atomic write, and
// returns once it is durable with the append results. If any id is refused
// nothing is written and the error says why.
func (e *Engine) Commit(ctx context.Context, topic, name string, ids []DeliveryID, appends []storage.AppendBatch) ([][]storage.AppendResult, error) {
	l, err := e.loopFor(topic, name)
	if err != nil {
		return nil, err
	}
	done := make(chan reply, 1)
	r, err := ask(ctx, l, commitEvent{ids: ids, appends: appends, done: done}, done)
	if err != nil {
		return nil, err
	}
	return r.res, r.err
}

// Seek moves a subscription's cursors to pos in every partition and returns
// once that is durable. Outstanding deliveries are fenced off.
func (e *Engine) Seek(ctx context.Context, topic, name string, pos StartPosition) error {
	l, err := e.loopFor(topic, name)
	if err != nil {
		return err
	}
	offs, err := e.resolve(topic, pos)
	if err != nil {
		return err
	}
	done := make(chan reply, 1)
	r, err := ask(ctx, l, seekEvent{offs: offs, done: done}, done)
	if err != nil {
		return err
	}
	return r.err
}

func sortInfos(infos []Info) {
	slices.SortFunc(infos, func(a, b Info) int { return strings.Compare(a.Name, b.Name) })
}
