package consumer

import (
	"errors"
	"testing"
	"time"

	"github.com/ferrymq/ferry/storage"
)

// TestCommitRetryJoinsOneInFlight retries a Commit while the first is in
// flight (its write held): the retry writes nothing of its own and is
// answered with the first's outcome, and a Commit of the same id with
// other outputs meanwhile is refused. Then a Commit whose write failed
// with the outcome unknown, retried twice at once: one write, both OK.
func TestCommitRetryJoinsOneInFlight(t *testing.T) {
	h := newHarness(t)
	h.createTopic("t", storage.TopicConfig{Partitions: 1})
	h.createTopic("out", storage.TopicConfig{Partitions: 1})
	o := DefaultOptions(EffectivelyOnce)
	o.AckTimeout = 30 * time.Second
	if err := h.createSub("t", "s", o); err != nil {
		t.Fatal(err)
	}
	h.publish("t", 0, []storage.Message{{ID: "a", Payload: []byte("a")}, {ID: "b", Payload: []byte("b")}})
	if err := h.attach(1, 10); err != nil {
		t.Fatal(err)
	}
	sent := h.takeSent()
	if len(sent) != 2 {
		t.Fatalf("%d deliveries, want 2", len(sent))
	}
	out := func(id string) []storage.AppendBatch {
		return []storage.AppendBatch{{Topic: "out", Messages: []storage.Message{{ID: id, Payload: []byte(id)}}}}
	}
	ids := []DeliveryID{sent[0].ID}

	h.hold = true
	first := h.commit(ids, out("x"))
	retry := h.commit(ids, out("x"))
	other := h.commit(ids, out("w"))
	if first.done || retry.done {
		t.Fatal("a commit was answered before its write")
	}
	if !other.done || other.err == nil {
		t.Fatalf("a commit of the same id with other outputs while one is in flight: done %v, %v; want refused", other.done, other.err)
	}
	if n := len(h.held); n != 1 {
		t.Fatalf("%d writes held, want 1: the retry joins the first", n)
	}
	h.releaseWrites()
	for name, r := range map[string]*commitResult{"first": first, "retry": retry} {
		if !r.done || r.err != nil || len(r.res) != 1 || r.res[0][0].Offset != 0 {
			t.Fatalf("%s: done %v, %+v, %v; want ok at out/0@0", name, r.done, r.res, r.err)
		}
	}

	// Failed with the outcome unknown (it landed): two retries at once.
	ids = []DeliveryID{sent[1].ID}
	h.losing = 1
	if r := h.commit(ids, out("y")); r.err == nil {
		t.Fatal("the commit whose answer was lost answered ok")
	}
	h.hold = true
	a, b := h.commit(ids, out("y")), h.commit(ids, out("y"))
	if n := len(h.held); n != 1 {
		t.Fatalf("%d writes held for two retries, want 1", n)
	}
	h.releaseWrites()
	for name, r := range map[string]*commitResult{"a": a, "b": b} {
		if !r.done || r.err != nil || !r.res[0][0].Duplicate || r.res[0][0].Offset != 1 {
			t.Fatalf("retry %s: done %v, %+v, %v; want ok, a duplicate at out/0@1", name, r.done, r.res, r.err)
		}
	}
	msgs, err := h.st.Read(t.Context(), "out", 0, 0, 10, 1<<20)
	if err != nil || len(msgs) != 2 {
		t.Fatalf("out holds %d messages (%v), want 2: one output per input", len(msgs), err)
	}
}

// TestCommittedIDsAreBounded: the ids of landed commits are remembered
// up to one bound for all the subscriptions of an engine together. Two
// subscriptions share a memory of 100 ids and commit 150 each: at most 100
// are held; a retry of the latest commit of each is answered OK with its
// results, a retry of one of the oldest is refused (already acked) and
// writes nothing.
func TestCommittedIDsAreBounded(t *testing.T) {
	const bound, n = 100, 150
	mem := newCommitMemory(bound)
	subs := []*machine{
		newMachine("t", "a", 1, DefaultOptions(EffectivelyOnce), []*cursorRecord{newCursorRecord(0)}, nil, nil),
		newMachine("t", "b", 2, DefaultOptions(EffectivelyOnce), []*cursorRecord{newCursorRecord(0)}, nil, nil),
	}
	for _, s := range subs {
		s.commits = mem
		for i := range n {
			id := DeliveryID{Offset: uint64(i), Attempt: 1}
			s.parts[0].st.cursor.Ack(uint64(i))
			s.commitDone(&writeJob{ids: []DeliveryID{id}, sum: sumAppends(nil), res: [][]storage.AppendResult{{{Offset: uint64(i)}}}}, nil)
			if mem.len() > bound {
				t.Fatalf("after %d commits of %s: %d remembered, want at most %d", i+1, s.name, mem.len(), bound)
			}
		}
	}
	retry := func(s *machine, off uint64) ([][]storage.AppendResult, error) {
		s.commit(1, []DeliveryID{{Offset: off, Attempt: 1}}, nil, t0)
		replies := s.out.replies
		if len(s.out.writes) != 0 {
			t.Fatalf("a retry of %s/%d wrote", s.name, off)
		}
		if len(replies) != 1 || replies[0].call != 1 {
			t.Fatalf("a retry of %s/%d: replies %+v, want one to call 1", s.name, off, replies)
		}
		s.out = output{}
		return replies[0].res, replies[0].err
	}
	if res, err := retry(subs[1], n-1); err != nil || len(res) != 1 || !res[0][0].Duplicate || res[0][0].Offset != n-1 {
		t.Fatalf("a retry of b's latest commit: %+v, %v; want its result as a duplicate", res, err)
	}
	if _, err := retry(subs[0], n-1); !errors.Is(err, ErrAlreadyAcked) {
		t.Fatalf("a retry of a's latest commit, pushed out by b's: %v, want ErrAlreadyAcked", err)
	}
	if _, err := retry(subs[1], 0); !errors.Is(err, ErrAlreadyAcked) {
		t.Fatalf("a retry of b's oldest commit: %v, want ErrAlreadyAcked", err)
	}
}
