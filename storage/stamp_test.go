package storage

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/ferrymq/ferry/internal/clock"
)

// TestStampedChangesAreDeterministic: the same stamped creates, updates and
// deletes on two fresh stores with different clocks give the same topics
// and subscriptions — ids, configs, create times — and the same applied
// index, kept in the change's transaction and found after a reopen.
func TestStampedChangesAreDeterministic(t *testing.T) {
	ctx := context.Background()
	const group = 1 << 63
	type view struct {
		topics []Topic
		subs   []Subscription
		next   NextIDs
		index  uint64
	}
	run := func(clk clock.Clock) view {
		opts := testOptions(t, clk)
		s := openStore(t, opts)
		at := func(i uint64) Stamp { return Stamp{At: t0.Add(time.Duration(i) * time.Second), Group: group, Index: i} }
		var i uint64
		for n := range 4 {
			i++
			name := fmt.Sprintf("t%d", n)
			if _, err := s.CreateTopicAt(ctx, name, TopicConfig{Partitions: uint32(n + 1)}, at(i)); err != nil {
				t.Fatal(err)
			}
			i++
			if _, err := s.CreateSubscriptionAt(ctx, name, "sub", []byte(name), make([][]byte, n+1), at(i)); err != nil {
				t.Fatal(err)
			}
		}
		i++
		if err := s.DeleteTopicAt(ctx, "t1", at(i)); err != nil {
			t.Fatal(err)
		}
		i++
		if err := s.DeleteSubscriptionAt(ctx, "t2", "sub", at(i)); err != nil {
			t.Fatal(err)
		}
		i++
		if _, err := s.UpdateTopicAt(ctx, "t3", func(c *TopicConfig) { c.RetentionMaxMessages = 9 }, at(i)); err != nil {
			t.Fatal(err)
		}
		i++
		if _, err := s.UpdateSubscriptionAt(ctx, "t0", "sub", []byte("new"), at(i)); err != nil {
			t.Fatal(err)
		}
		i++
		if _, err := s.CreateTopicAt(ctx, "t1", TopicConfig{}, at(i)); err != nil {
			t.Fatal(err)
		}
		if err := s.Close(ctx); err != nil {
			t.Fatal(err)
		}
		s = openStore(t, opts)
		var v view
		v.topics = s.Topics()
		for _, tp := range v.topics {
			subs, err := s.Subscriptions(tp.Name)
			if err != nil {
				t.Fatal(err)
			}
			v.subs = append(v.subs, subs...)
		}
		var err error
		if v.next, err = s.NextIDs(); err != nil {
			t.Fatal(err)
		}
		if v.index, err = s.AdminApplied(group); err != nil {
			t.Fatal(err)
		}
		return v
	}
	a := run(clock.NewFake(t0.Add(time.Hour)))
	b := run(clock.NewFake(t0.Add(48 * time.Hour)))
	if fmt.Sprint(a) != fmt.Sprint(b) {
		t.Fatalf("stores differ:\n%+v\n%+v", a, b)
	}
	if a.index != 13 || a.next != (NextIDs{Topic: 6, Subscription: 5}) {
		t.Fatalf("applied %d, next ids %+v; want 13, {6 5}", a.index, a.next)
	}
	if got := a.topics[1]; got.Name != "t1" || got.ID() != 5 || !got.CreateTime.Equal(t0.Add(13*time.Second)) {
		t.Fatalf("recreated t1 = %+v id %d", got, got.ID())
	}
}

// TestStampID: a create with a Stamp.ID takes that id and raises the
// counter past it; an id in use is refused.
func TestStampID(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, testOptions(t, clock.NewFake(t0)))
	tp, err := s.CreateTopicAt(ctx, "a", TopicConfig{}, Stamp{At: t0, ID: 7})
	if err != nil || tp.ID() != 7 {
		t.Fatalf("CreateTopicAt id 7: %v, id %d", err, tp.ID())
	}
	if _, err := s.CreateTopicAt(ctx, "b", TopicConfig{}, Stamp{At: t0, ID: 7}); !errors.Is(err, ErrIDTaken) {
		t.Fatalf("CreateTopicAt with a taken id: %v, want ErrIDTaken", err)
	}
	if tp, err := s.CreateTopic(ctx, "c", TopicConfig{}); err != nil || tp.ID() != 8 {
		t.Fatalf("CreateTopic after id 7: %v, id %d", err, tp.ID())
	}
	sub, err := s.CreateSubscriptionAt(ctx, "a", "s", nil, [][]byte{nil}, Stamp{At: t0, ID: 3})
	if err != nil || sub.ID != 3 {
		t.Fatalf("CreateSubscriptionAt id 3: %v, id %d", err, sub.ID)
	}
	if _, err := s.CreateSubscriptionAt(ctx, "c", "s", nil, [][]byte{nil}, Stamp{At: t0, ID: 3}); !errors.Is(err, ErrIDTaken) {
		t.Fatalf("CreateSubscriptionAt with a taken id: %v, want ErrIDTaken", err)
	}
	n, err := s.RaiseNextIDs(NextIDs{Topic: 2, Subscription: 10})
	if err != nil || n != (NextIDs{Topic: 9, Subscription: 10}) {
		t.Fatalf("RaiseNextIDs: %+v, %v", n, err)
	}
}
