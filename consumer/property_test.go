package consumer

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/ferrymq/ferry/storage"
)

// TestPropertyGuarantees runs random interleavings of publishes, attaches,
// detaches, credit changes, acks (current and stale), nacks, commits, time
// and crashes (the store closed and reopened, writes in flight lost)
// against each guarantee, and checks them against a plain model: the
// harness checks every delivery as it goes out (flow control; AT_MOST_ONCE
// never twice; EFFECTIVELY_ONCE never twice at once and never after a
// confirmed ack; never more than max_deliveries times, across restarts;
// KEY_SHARED: a key at one consumer at a time, its first deliveries in
// offset order), an EFFECTIVELY_ONCE ack or commit naming an attempt older
// than the latest delivered must be refused (a commit publishing nothing),
// and at the end a drain — attach, ack everything, let time pass — must
// empty the backlog with every published message acked by a consumer or
// dead-lettered: nothing lost.
//
// FERRY_PROPERTY_SEED sets the seed (default 1) and FERRY_PROPERTY_ITERS
// the runs per configuration (default 4); FERRY_PROPERTY_VERBOSE=1 logs
// every step and delivery.
func TestPropertyGuarantees(t *testing.T) {
	seed := uint64(1)
	if s := os.Getenv("FERRY_PROPERTY_SEED"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("FERRY_PROPERTY_SEED=%q: %v", s, err)
		}
		seed = v
	}
	iters := 4
	if s := os.Getenv("FERRY_PROPERTY_ITERS"); s != "" {
		v, err := strconv.Atoi(s)
		if err != nil || v < 1 {
			t.Fatalf("FERRY_PROPERTY_ITERS=%q: want a positive number", s)
		}
		iters = v
	}
	t.Logf("seed %d, %d runs per configuration (FERRY_PROPERTY_SEED, FERRY_PROPERTY_ITERS)", seed, iters)
	configs := []struct {
		g   Guarantee
		dlq bool
	}{
		{AtMostOnce, false},
		{AtLeastOnce, false},
		{AtLeastOnce, true},
		{EffectivelyOnce, false},
		{EffectivelyOnce, true},
	}
	for ci, c := range configs {
		t.Run(fmt.Sprintf("%v/dlq=%v", c.g, c.dlq), func(t *testing.T) {
			for i := range iters {
				runSeed := seed*1000 + uint64(ci*100+i)
				propertyRun(t, c.g, c.dlq, runSeed)
				if t.Failed() {
					t.Fatalf("failed with run seed %d (FERRY_PROPERTY_SEED=%d)", runSeed, seed)
				}
			}
		})
	}
}

func propertyRun(t *testing.T, g Guarantee, dlq bool, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, 0x5eed))
	h := newHarness(t)
	h.createTopic("t", storage.TopicConfig{Partitions: 2})
	h.createTopic("dead", storage.TopicConfig{})
	h.createTopic("out", storage.TopicConfig{})
	o := DefaultOptions(g)
	o.Type = []Type{Shared, KeyShared, Exclusive, Failover}[rng.IntN(4)]
	o.AckTimeout = 5 * time.Second
	o.BackoffMin, o.BackoffMax = time.Second, 4*time.Second
	o.Start = StartPosition{Kind: StartEarliest}
	if dlq {
		o.MaxDeliveries, o.DeadLetterTopic = 4, "dead"
	}
	if err := h.createSub("t", "s", o); err != nil {
		t.Fatal(err)
	}
	var (
		published []pOff
		all       []Delivery
		attached  []uint64
		nextC     uint64
		nextID    int
	)
	collect := func() {
		sent := h.takeSent()
		if os.Getenv("FERRY_PROPERTY_VERBOSE") != "" {
			for _, d := range sent {
				t.Logf("  c%d <- %s", d.Consumer, d.ID)
			}
		}
		all = append(all, sent...)
	}
	randomIDs := func() []DeliveryID {
		if len(all) == 0 {
			return nil
		}
		ids := make([]DeliveryID, 1+rng.IntN(3))
		for i := range ids {
			// Mostly recent deliveries (likely current), some old (stale).
			j := len(all) - 1 - rng.IntN(min(len(all), 8))
			if rng.IntN(4) == 0 {
				j = rng.IntN(len(all))
			}
			ids[i] = all[j].ID
		}
		return ids
	}
	// staleOf says which of ids name an attempt older than the latest
	// delivered of their offset.
	staleOf := func(ids []DeliveryID) []bool {
		latest := map[pOff]uint32{}
		for _, d := range all {
			k := pOff{d.ID.Partition, d.ID.Offset}
			latest[k] = max(latest[k], d.ID.Attempt)
		}
		stale := make([]bool, len(ids))
		for i, id := range ids {
			stale[i] = id.Attempt < latest[pOff{id.Partition, id.Offset}]
		}
		return stale
	}
	outHead := func() uint64 {
		parts, err := h.st.Partitions("out")
		if err != nil {
			t.Fatal(err)
		}
		return parts[0].Head
	}
	verbose := os.Getenv("FERRY_PROPERTY_VERBOSE") != ""
	steps := 40 + rng.IntN(40)
	for step := 0; step < steps; step++ {
		k := rng.IntN(100)
		if verbose {
			t.Logf("step %d op %d now t0+%v", step, k, h.now().Sub(t0))
		}
		switch {
		case k < 20:
			part := uint32(rng.IntN(2))
			msgs := make([]storage.Message, 1+rng.IntN(3))
			for i := range msgs {
				nextID++
				msgs[i] = storage.Message{ID: fmt.Sprintf("m%d", nextID), Key: []byte(fmt.Sprintf("k%d", rng.IntN(4))), Payload: []byte("p")}
			}
			for _, r := range h.publish("t", part, msgs) {
				published = append(published, pOff{part, r.Offset})
			}
		case k < 30:
			if len(attached) < 3 {
				nextC++
				if err := h.attach(nextC, 1+rng.IntN(4)); err == nil {
					attached = append(attached, nextC)
				}
			}
		case k < 36:
			if len(attached) > 0 {
				i := rng.IntN(len(attached))
				h.detach(attached[i])
				attached = append(attached[:i], attached[i+1:]...)
			}
		case k < 42:
			if len(attached) > 0 {
				if err := h.setCredit(attached[rng.IntN(len(attached))], 1+rng.IntN(4)); err != nil {
					t.Fatal(err)
				}
			}
		case k < 62:
			if ids := randomIDs(); ids != nil {
				stale := staleOf(ids)
				if r := h.ack(ids); r.done && g == EffectivelyOnce {
					for i, id := range ids {
						if stale[i] && r.results[i] == nil {
							t.Errorf("effectively-once: stale ack of %s taken: a later attempt was delivered", id)
						}
					}
				}
			}
		case k < 70:
			if ids := randomIDs(); ids != nil {
				h.nack(ids)
			}
		case k < 74:
			if ids := randomIDs(); ids != nil && g != AtMostOnce {
				nextID++
				stale := slices.Contains(staleOf(ids), true)
				head := outHead()
				r := h.commit(ids, []storage.AppendBatch{{Topic: "out", Messages: []storage.Message{{ID: fmt.Sprintf("o%d", nextID), Payload: []byte("o")}}}})
				if g == EffectivelyOnce && stale && r.done && (r.err == nil || outHead() != head) {
					t.Errorf("effectively-once: commit of %v with a stale attempt: err %v, out head %d -> %d; want refused, nothing published", ids, r.err, head, outHead())
				}
			}
		case k < 92:
			h.advance(time.Duration(500+rng.IntN(8000)) * time.Millisecond)
		default:
			// A crash, sometimes with an ack (and the deliveries it
			// frees) not yet durable.
			if ids := randomIDs(); ids != nil && rng.IntN(2) == 0 {
				h.hold = true
				h.ack(ids)
			}
			collect()
			h.restart(true)
			attached = nil
		}
		collect()
	}

	if g == AtMostOnce {
		return // nothing to drain: what was lost is lost
	}
	// Drain: one consumer acks everything it gets until the backlog is 0.
	for _, c := range attached {
		h.detach(c)
	}
	collect()
	nextC++
	c := nextC
	if err := h.attach(c, 100); err != nil {
		t.Fatal(err)
	}
	for round := 0; ; round++ {
		collect()
		if ids := h.outstandingOf(c, all); len(ids) > 0 {
			h.ack(ids)
			collect()
		}
		if s := h.stats(); s.Backlog == 0 {
			break
		}
		if round > 200 {
			t.Fatalf("drain: backlog %d after %d rounds\n%s", h.stats().Backlog, round, h.dump())
		}
		h.advance(5 * time.Second)
	}
	dead := map[pOff]bool{}
	msgs, err := h.st.Read(context.Background(), "dead", 0, 0, 10000, 1<<30)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range msgs {
		part, _ := strconv.ParseUint(m.Headers[HeaderDeadLetterPartition], 10, 32)
		off, _ := strconv.ParseUint(m.Headers[HeaderDeadLetterOffset], 10, 64)
		k := pOff{uint32(part), off}
		if dead[k] {
			t.Errorf("offset %s dead-lettered twice", k)
		}
		dead[k] = true
	}
	for _, k := range published {
		if !h.model.acked[k] && !dead[k] {
			t.Errorf("%v: offset %s is acked in the cursor but no consumer acked it and it was not dead-lettered (delivered %d times)", g, k, h.model.sends[k])
		}
	}
}
