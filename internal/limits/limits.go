// Package limits keeps the broker's per-principal rate limits and quotas:
// publish messages and bytes per second (token buckets of
// golang.org/x/time/rate), concurrent streams and connections, and the
// subscriptions a principal created; and the per-topic quota of bytes on
// disk, which the broker measures (TopicBytes only compares). A principal is a string the broker names (the
// authenticated identity, or the peer's IP address without auth); this
// package only counts.
//
// Memory is bounded whatever the callers send:
//
//   - the token buckets live in an LRU of at most Options.MaxPrincipals
//     principals; the least recently used is dropped for a new one. A
//     principal dropped and seen again starts with a full bucket, which is
//     what it would have after being idle for Options.Burst;
//   - stream counts are kept only for principals with a stream open, so
//     they are bounded by the streams the server holds;
//   - connection counts are kept only for principals with a connection
//     counted, and for at most Options.MaxPrincipals of them (see
//     OpenConnection);
//   - subscription owners are kept for at most Options.MaxPrincipals
//     principals, each with at most Options.Subscriptions live ones
//     (see AddSubscription).
//
// Limits is safe for concurrent use.
package limits

import (
	"errors"
	"fmt"
	"math"
	"sync"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"
	"golang.org/x/time/rate"

	"github.com/ferrymq/ferry/internal/clock"
)

// Kind names a limit; it is the label of the broker's refusal metric, so
// the set is fixed.
type Kind string

// The limits.
const (
	PublishMessages Kind = "publish_messages"
	PublishBytes    Kind = "publish_bytes"
	Streams         Kind = "streams"
	Subscriptions   Kind = "subscriptions"
	// Owners is the cap on principals whose subscriptions are tracked.
	Owners      Kind = "subscription_owners"
	Connections Kind = "connections"
	// ConnectionOwners is the cap on principals whose connections are
	// counted.
	ConnectionOwners Kind = "connection_principals"
	TopicBytes       Kind = "topic_bytes"
)

// Kinds lists every Kind, for metrics.
var Kinds = []Kind{PublishMessages, PublishBytes, Streams, Subscriptions, Owners, Connections, ConnectionOwners, TopicBytes}

// Retry delays of the count limits, which no bucket refills: a stream or a
// subscription is freed when its principal (or an operator) closes or
// deletes one, which the broker cannot foresee. Rate limits compute theirs
// from the bucket.
const (
	StreamRetry       = time.Second
	SubscriptionRetry = 5 * time.Second
	ConnectionRetry   = time.Second
)

// ErrInvalidOptions is returned by New for options out of range.
var ErrInvalidOptions = errors.New("limits: invalid options")

// Options are the limits, per principal. A zero limit is no limit.
type Options struct {
	// PublishMessages is the messages per second a principal may publish.
	// Default 0: unlimited.
	PublishMessages float64
	// PublishBytes is the bytes per second a principal may publish,
	// counting each message's payload, key, id and headers. Default 0:
	// unlimited.
	PublishBytes float64
	// Burst is how much of each rate a principal may spend at once, as
	// time at that rate: a bucket holds rate × Burst tokens (at least 1).
	// Default 1s.
	Burst time.Duration
	// Streams is the most streams (publish and subscribe) a principal may
	// have open at once. Default 0: unlimited.
	Streams int
	// Subscriptions is the most live subscriptions a principal may have
	// created through this node. Default 0: unlimited.
	Subscriptions int
	// Connections is the most connections a principal may hold: a
	// connection counts against each principal that made a call on it,
	// from its first call until it closes. Default 0: unlimited.
	Connections int
	// TopicBytes is the most bytes a topic may hold for a publish to it to
	// be taken, as the broker measures them (per topic, not per
	// principal). Default 0: unlimited.
	TopicBytes uint64
	// MaxPrincipals bounds the principals whose buckets, subscriptions
	// and connection counts are remembered. Default 10,000.
	MaxPrincipals int
	// Clock is the time source of the buckets. Default the wall clock.
	Clock clock.Clock
}

// Enabled reports whether any limit is set.
func (o Options) Enabled() bool {
	return o.PublishMessages > 0 || o.PublishBytes > 0 || o.Streams > 0 || o.Subscriptions > 0 ||
		o.Connections > 0 || o.TopicBytes > 0
}

// Validate names the first field out of range.
func (o Options) Validate() error {
	switch {
	case o.PublishMessages < 0 || math.IsNaN(o.PublishMessages) || math.IsInf(o.PublishMessages, 0):
		return fmt.Errorf("option PublishMessages %v must be 0 (unlimited) or a positive rate: %w", o.PublishMessages, ErrInvalidOptions)
	case o.PublishBytes < 0 || math.IsNaN(o.PublishBytes) || math.IsInf(o.PublishBytes, 0):
		return fmt.Errorf("option PublishBytes %v must be 0 (unlimited) or a positive rate: %w", o.PublishBytes, ErrInvalidOptions)
	case o.Burst < 0:
		return fmt.Errorf("option Burst %v is negative: %w", o.Burst, ErrInvalidOptions)
	case o.Streams < 0:
		return fmt.Errorf("option Streams %d is negative: %w", o.Streams, ErrInvalidOptions)
	case o.Subscriptions < 0:
		return fmt.Errorf("option Subscriptions %d is negative: %w", o.Subscriptions, ErrInvalidOptions)
	case o.Connections < 0:
		return fmt.Errorf("option Connections %d is negative: %w", o.Connections, ErrInvalidOptions)
	case o.MaxPrincipals < 0:
		return fmt.Errorf("option MaxPrincipals %d is negative: %w", o.MaxPrincipals, ErrInvalidOptions)
	}
	return nil
}

// Exceeded is a refusal: the call is over limit Kind and may be tried again
// after Retry.
type Exceeded struct {
	Kind  Kind
	Limit float64 // the limit's value, in its unit
	Retry time.Duration
	Topic string // TopicBytes: the topic over its quota
}

func (e *Exceeded) Error() string {
	if e.Topic != "" {
		return fmt.Sprintf("topic %q is over the %s limit of %v; retry in %v", e.Topic, e.Kind, e.Limit, e.Retry)
	}
	return fmt.Sprintf("over the %s limit of %v; retry in %v", e.Kind, e.Limit, e.Retry)
}

// Limits counts what principals use against Options.
type Limits struct {
	o Options

	mu      sync.Mutex // guards buckets, streams, conns, owners, pending
	buckets *simplelru.LRU[string, *buckets]
	streams map[string]int // open streams; only principals with one
	conns   map[string]int // counted connections; only principals with one
	owners  map[string]map[SubscriptionRef]struct{}
	pending map[string]int // subscription creations under way
}

// buckets are one principal's token buckets; nil where unlimited.
type buckets struct{ msgs, bytes *rate.Limiter }

// New returns Limits for o.
func New(o Options) (*Limits, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	if o.Burst == 0 {
		o.Burst = time.Second
	}
	if o.MaxPrincipals == 0 {
		o.MaxPrincipals = 10_000
	}
	if o.Clock == nil {
		o.Clock = clock.Real()
	}
	lru, err := simplelru.NewLRU[string, *buckets](o.MaxPrincipals, nil)
	if err != nil {
		return nil, err
	}
	return &Limits{o: o, buckets: lru, streams: make(map[string]int), conns: make(map[string]int),
		owners: make(map[string]map[SubscriptionRef]struct{}), pending: make(map[string]int)}, nil
}

// Options returns the limits in force, defaults filled in.
func (l *Limits) Options() Options { return l.o }

// Principals is how many principals' buckets are remembered (at most
// MaxPrincipals).
func (l *Limits) Principals() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buckets.Len()
}

// Publish takes msgs messages of bytes bytes from principal's buckets, or
// refuses them all with an *Exceeded whose Retry is when the bucket that
// refused will hold enough. A batch larger than a bucket passes once the
// bucket is full, and leaves it in debt: the rate holds over time whatever
// the batch sizes.
func (l *Limits) Publish(principal string, msgs, bytes int) error {
	if l.o.PublishMessages <= 0 && l.o.PublishBytes <= 0 {
		return nil
	}
	now := l.o.Clock.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	b, ok := l.buckets.Get(principal)
	if !ok {
		b = &buckets{msgs: l.bucket(l.o.PublishMessages), bytes: l.bucket(l.o.PublishBytes)}
		l.buckets.Add(principal, b)
	}
	rm, dm := reserve(b.msgs, now, msgs)
	rb, db := reserve(b.bytes, now, bytes)
	if dm == 0 && db == 0 {
		debt(b.msgs, now, msgs)
		debt(b.bytes, now, bytes)
		return nil
	}
	for _, r := range []*rate.Reservation{rm, rb} {
		if r != nil {
			r.CancelAt(now)
		}
	}
	if dm >= db {
		return &Exceeded{Kind: PublishMessages, Limit: l.o.PublishMessages, Retry: dm}
	}
	return &Exceeded{Kind: PublishBytes, Limit: l.o.PublishBytes, Retry: db}
}

// bucket is a token bucket of rate per second holding rate × Burst, or nil
// for no limit.
func (l *Limits) bucket(perSecond float64) *rate.Limiter {
	if perSecond <= 0 {
		return nil
	}
	size := max(1, int(math.Min(perSecond*l.o.Burst.Seconds(), math.MaxInt32)))
	return rate.NewLimiter(rate.Limit(perSecond), size)
}

// reserve takes min(n, size) tokens from lim at now and says how long
// until they are there (0: now).
func reserve(lim *rate.Limiter, now time.Time, n int) (*rate.Reservation, time.Duration) {
	if lim == nil || n <= 0 {
		return nil, 0
	}
	r := lim.ReserveN(now, min(n, lim.Burst()))
	// Rounded up to the millisecond: a retry at that delay finds the
	// tokens there.
	d := r.DelayFrom(now)
	return r, (d + time.Millisecond - 1).Truncate(time.Millisecond)
}

// debt takes what reserve left of n from lim, in bucket-sized steps, which
// put the bucket in debt: the next caller waits for it.
func debt(lim *rate.Limiter, now time.Time, n int) {
	if lim == nil {
		return
	}
	for rest := n - lim.Burst(); rest > 0; rest -= lim.Burst() {
		lim.ReserveN(now, min(rest, lim.Burst()))
	}
}

// OpenStream counts a stream of principal's, or refuses it with an
// *Exceeded. The caller calls the returned function once when the stream
// ends.
func (l *Limits) OpenStream(principal string) (closeStream func(), err error) {
	if l.o.Streams <= 0 {
		return func() {}, nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.streams[principal] >= l.o.Streams {
		return nil, &Exceeded{Kind: Streams, Limit: float64(l.o.Streams), Retry: StreamRetry}
	}
	l.streams[principal]++
	var once sync.Once
	return func() {
		once.Do(func() {
			l.mu.Lock()
			defer l.mu.Unlock()
			if l.streams[principal]--; l.streams[principal] <= 0 {
				delete(l.streams, principal)
			}
		})
	}, nil
}

// OpenConnection counts one more connection of principal's, or refuses it
// with an *Exceeded: over Options.Connections (Kind Connections), or, for a
// principal with none counted, when Options.MaxPrincipals principals have
// some (Kind ConnectionOwners). The caller calls the returned function
// once when the connection closes.
func (l *Limits) OpenConnection(principal string) (closeConn func(), err error) {
	if l.o.Connections <= 0 {
		return func() {}, nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	n, known := l.conns[principal]
	switch {
	case n >= l.o.Connections:
		return nil, &Exceeded{Kind: Connections, Limit: float64(l.o.Connections), Retry: ConnectionRetry}
	case !known && len(l.conns) >= l.o.MaxPrincipals:
		return nil, &Exceeded{Kind: ConnectionOwners, Limit: float64(l.o.MaxPrincipals), Retry: ConnectionRetry}
	}
	l.conns[principal]++
	var once sync.Once
	return func() {
		once.Do(func() {
			l.mu.Lock()
			defer l.mu.Unlock()
			if l.conns[principal]--; l.conns[principal] <= 0 {
				delete(l.conns, principal)
			}
		})
	}, nil
}

// OpenConnections is how many connections principal holds, as counted.
func (l *Limits) OpenConnections(principal string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.conns[principal]
}

// TopicBytes refuses a publish to topic, which holds stored bytes, with an
// *Exceeded (Kind TopicBytes, Retry retry) when it is at or over
// Options.TopicBytes.
func (l *Limits) TopicBytes(topic string, stored uint64, retry time.Duration) error {
	if l.o.TopicBytes == 0 || stored < l.o.TopicBytes {
		return nil
	}
	return &Exceeded{Kind: TopicBytes, Limit: float64(l.o.TopicBytes), Retry: retry, Topic: topic}
}

// OpenStreams is how many streams principal has open, as counted.
func (l *Limits) OpenStreams(principal string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.streams[principal]
}

// SubscriptionRef is one subscription as created: one created later under
// the same name (after a delete) is another.
type SubscriptionRef struct {
	Topic, Name string
	Created     time.Time
}

// AddSubscription reserves one more subscription for principal, or refuses
// with an *Exceeded. The broker stores no owner with a subscription, so
// the count is this node's memory of the subscriptions principal created
// through it, each checked with live (does this subscription still exist?)
// when it counts: a subscription deleted by anyone, or with its topic,
// stops counting. The caller calls done once: with ok and the
// subscription's ref if it was created, with ok false if not (or if it
// existed already).
func (l *Limits) AddSubscription(principal string, live func(SubscriptionRef) bool) (done func(ref SubscriptionRef, ok bool), err error) {
	if l.o.Subscriptions <= 0 {
		return func(SubscriptionRef, bool) {}, nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.prune(principal, live)+l.pending[principal] >= l.o.Subscriptions {
		return nil, &Exceeded{Kind: Subscriptions, Limit: float64(l.o.Subscriptions), Retry: SubscriptionRetry}
	}
	if _, known := l.owners[principal]; !known && l.pending[principal] == 0 && len(l.owners)+len(l.pending) >= l.o.MaxPrincipals {
		for p := range l.owners {
			l.prune(p, live)
		}
		if len(l.owners)+len(l.pending) >= l.o.MaxPrincipals {
			return nil, &Exceeded{Kind: Owners, Limit: float64(l.o.MaxPrincipals), Retry: SubscriptionRetry}
		}
	}
	l.pending[principal]++
	var once sync.Once
	return func(ref SubscriptionRef, ok bool) {
		once.Do(func() {
			l.mu.Lock()
			defer l.mu.Unlock()
			if l.pending[principal]--; l.pending[principal] <= 0 {
				delete(l.pending, principal)
			}
			if !ok {
				return
			}
			if l.owners[principal] == nil {
				l.owners[principal] = make(map[SubscriptionRef]struct{})
			}
			l.owners[principal][ref] = struct{}{}
		})
	}, nil
}

// prune forgets principal's subscriptions that no longer exist and returns
// how many are left. Called with mu held.
func (l *Limits) prune(principal string, live func(SubscriptionRef) bool) int {
	subs := l.owners[principal]
	for ref := range subs {
		if !live(ref) {
			delete(subs, ref)
		}
	}
	if len(subs) == 0 {
		delete(l.owners, principal)
	}
	return len(subs)
}

// Owners is how many principals' subscriptions are remembered.
func (l *Limits) Owners() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.owners)
}
