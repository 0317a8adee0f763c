package limits

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/ferrymq/ferry/internal/clock"
)

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func newLimits(t testing.TB, o Options) (*Limits, *clock.Fake) {
	t.Helper()
	clk := clock.NewFake(t0)
	o.Clock = clk
	l, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	return l, clk
}

func exceeded(t testing.TB, err error, kind Kind) *Exceeded {
	t.Helper()
	var e *Exceeded
	if !errors.As(err, &e) || e.Kind != kind {
		t.Fatalf("got %v, want over the %s limit", err, kind)
	}
	return e
}

func TestPublishMessagesRate(t *testing.T) {
	l, clk := newLimits(t, Options{PublishMessages: 10})
	for i := range 10 {
		if err := l.Publish("a", 1, 100); err != nil {
			t.Fatalf("publish %d within the burst of 10: %v", i, err)
		}
	}
	e := exceeded(t, l.Publish("a", 1, 100), PublishMessages)
	if e.Retry != 100*time.Millisecond {
		t.Fatalf("retry %v, want 100ms (one message at 10/s)", e.Retry)
	}
	if err := l.Publish("b", 5, 100); err != nil {
		t.Fatalf("another principal was refused: %v", err)
	}
	clk.Advance(e.Retry)
	if err := l.Publish("a", 1, 100); err != nil {
		t.Fatalf("after the retry delay: %v", err)
	}
	if err := l.Publish("a", 1, 100); err == nil {
		t.Fatal("a second message passed within 100ms of the first")
	}
}

// A batch larger than the bucket passes once the bucket is full and leaves
// it in debt, so the rate holds over time.
func TestPublishBytesDebt(t *testing.T) {
	l, clk := newLimits(t, Options{PublishBytes: 1000})
	if err := l.Publish("a", 1, 3000); err != nil {
		t.Fatalf("a 3000-byte batch into a full 1000-byte bucket: %v", err)
	}
	e := exceeded(t, l.Publish("a", 1, 10), PublishBytes)
	// 2000 bytes of debt plus 10 bytes at 1000/s.
	if want := 2010 * time.Millisecond; e.Retry != want {
		t.Fatalf("retry %v, want %v", e.Retry, want)
	}
	clk.Advance(e.Retry - time.Millisecond)
	if err := l.Publish("a", 1, 10); err == nil {
		t.Fatal("passed before the bucket paid its debt")
	}
	clk.Advance(time.Millisecond)
	if err := l.Publish("a", 1, 10); err != nil {
		t.Fatalf("after the retry delay: %v", err)
	}
}

// A refusal by one bucket takes nothing from the other.
func TestPublishRefusalTakesNothing(t *testing.T) {
	l, _ := newLimits(t, Options{PublishMessages: 10, PublishBytes: 1000})
	if err := l.Publish("a", 1, 1000); err != nil {
		t.Fatal(err)
	}
	for range 20 {
		exceeded(t, l.Publish("a", 1, 500), PublishBytes)
	}
	// Nine message tokens are left, whatever the refusals did.
	for i := range 9 {
		if err := l.Publish("a", 1, 0); err != nil {
			t.Fatalf("message %d after the refusals: %v", i, err)
		}
	}
	exceeded(t, l.Publish("a", 1, 0), PublishMessages)
}

func TestPrincipalsBounded(t *testing.T) {
	l, clk := newLimits(t, Options{PublishMessages: 1, MaxPrincipals: 100})
	if err := l.Publish("hot", 1, 1); err != nil {
		t.Fatal(err)
	}
	for i := range 10_000 {
		if err := l.Publish(fmt.Sprintf("flood-%d", i), 1, 1); err != nil {
			t.Fatalf("principal %d's first message: %v", i, err)
		}
		if i%50 == 0 {
			// The hot principal stays in the LRU, and so stays limited.
			exceeded(t, l.Publish("hot", 1, 1), PublishMessages)
		}
		if n := l.Principals(); n > 100 {
			t.Fatalf("%d principals remembered, over MaxPrincipals 100", n)
		}
	}
	clk.Advance(time.Second)
	if err := l.Publish("hot", 1, 1); err != nil {
		t.Fatal(err)
	}
}

func TestStreams(t *testing.T) {
	l, _ := newLimits(t, Options{Streams: 2})
	c1, err := l.OpenStream("a")
	if err != nil {
		t.Fatal(err)
	}
	c2, err := l.OpenStream("a")
	if err != nil {
		t.Fatal(err)
	}
	e := exceeded(t, func() error { _, err := l.OpenStream("a"); return err }(), Streams)
	if e.Retry != StreamRetry {
		t.Fatalf("retry %v", e.Retry)
	}
	if _, err := l.OpenStream("b"); err != nil {
		t.Fatalf("another principal: %v", err)
	}
	c1()
	c1() // idempotent
	if n := l.OpenStreams("a"); n != 1 {
		t.Fatalf("%d streams counted after closing one of two", n)
	}
	if _, err := l.OpenStream("a"); err != nil {
		t.Fatalf("after closing one: %v", err)
	}
	c2()
	l.mu.Lock()
	n := len(l.streams)
	l.mu.Unlock()
	if n != 2 { // a with one, b with one
		t.Fatalf("%d principals with streams kept, want 2", n)
	}
}

func TestSubscriptions(t *testing.T) {
	l, _ := newLimits(t, Options{Subscriptions: 2, MaxPrincipals: 3})
	live := map[SubscriptionRef]bool{}
	isLive := func(r SubscriptionRef) bool { return live[r] }
	create := func(p, name string) error {
		done, err := l.AddSubscription(p, isLive)
		if err != nil {
			return err
		}
		ref := SubscriptionRef{Topic: "t", Name: name, Created: t0}
		live[ref] = true
		done(ref, true)
		return nil
	}
	for _, n := range []string{"s1", "s2"} {
		if err := create("a", n); err != nil {
			t.Fatal(err)
		}
	}
	exceeded(t, create("a", "s3"), Subscriptions)
	// A creation under way counts too.
	done, err := l.AddSubscription("b", isLive)
	if err != nil {
		t.Fatal(err)
	}
	if err := create("b", "b1"); err != nil {
		t.Fatal(err)
	}
	exceeded(t, create("b", "b2"), Subscriptions)
	done(SubscriptionRef{}, false) // it failed: nothing counts
	if err := create("b", "b2"); err != nil {
		t.Fatal(err)
	}
	// Deleted (by anyone): it stops counting.
	delete(live, SubscriptionRef{Topic: "t", Name: "s1", Created: t0})
	if err := create("a", "s3"); err != nil {
		t.Fatalf("after a delete: %v", err)
	}
	// Owners are capped at MaxPrincipals (3); dead ones are swept for a new one.
	if err := create("c", "c1"); err != nil {
		t.Fatal(err)
	}
	exceeded(t, create("d", "d1"), Owners)
	delete(live, SubscriptionRef{Topic: "t", Name: "c1", Created: t0})
	if err := create("d", "d1"); err != nil {
		t.Fatalf("after c's only subscription went: %v", err)
	}
	if n := l.Owners(); n != 3 {
		t.Fatalf("%d owners remembered, want 3", n)
	}
}

func TestValidate(t *testing.T) {
	for _, o := range []Options{{PublishMessages: -1}, {PublishBytes: -1}, {Burst: -time.Second}, {Streams: -1}, {Subscriptions: -1}, {Connections: -1}, {MaxPrincipals: -1}} {
		if _, err := New(o); !errors.Is(err, ErrInvalidOptions) {
			t.Errorf("%+v: got %v", o, err)
		}
	}
	if (Options{}).Enabled() {
		t.Error("zero options enabled")
	}
}

// Connections: each principal up to its limit, a release frees one (once,
// however often called), and the principals counted stay within
// MaxPrincipals.
func TestConnections(t *testing.T) {
	l, _ := newLimits(t, Options{Connections: 2, MaxPrincipals: 2})
	a1, err := l.OpenConnection("a")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.OpenConnection("a"); err != nil {
		t.Fatal(err)
	}
	if e := exceeded(t, fnErr(l.OpenConnection("a")), Connections); e.Retry != ConnectionRetry || e.Limit != 2 {
		t.Fatalf("refusal %+v", e)
	}
	b1, err := l.OpenConnection("b")
	if err != nil {
		t.Fatalf("another principal: %v", err)
	}
	exceeded(t, fnErr(l.OpenConnection("c")), ConnectionOwners)
	a1()
	a1()
	if n := l.OpenConnections("a"); n != 1 {
		t.Fatalf("a holds %d after one release called twice, want 1", n)
	}
	b1()
	if _, err := l.OpenConnection("c"); err != nil {
		t.Fatalf("a third principal once b holds none: %v", err)
	}
}

func fnErr(_ func(), err error) error { return err }

// TopicBytes refuses at and over the quota, never with it off.
func TestTopicBytes(t *testing.T) {
	l, _ := newLimits(t, Options{TopicBytes: 100})
	if err := l.TopicBytes("t", 99, time.Second); err != nil {
		t.Fatalf("under the quota: %v", err)
	}
	if e := exceeded(t, l.TopicBytes("t", 100, time.Second), TopicBytes); e.Topic != "t" || e.Retry != time.Second {
		t.Fatalf("refusal %+v", e)
	}
	off, _ := newLimits(t, Options{})
	if err := off.TopicBytes("t", 1<<40, time.Second); err != nil {
		t.Fatalf("quota off: %v", err)
	}
}
