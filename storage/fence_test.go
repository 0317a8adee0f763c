package storage

import (
	"context"
	"encoding/hex"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ferrymq/ferry/internal/clock"
)

// stateDump is a replica's dump without the partition meta, whose applied
// index moves with every entry, refused or not.
func stateDump(tb testing.TB, r *replica) []string {
	tb.Helper()
	meta := hex.EncodeToString(partitionKey(r.st.tid, r.st.part)) + "="
	return slices.DeleteFunc(r.dump(tb), func(s string) bool { return strings.HasPrefix(s, meta) })
}

// TestFenceRefusesStaleOwnerOnEveryReplica feeds three replicas of a
// partition the same entries: an owner's write at epoch 3, a new owner's
// fence at epoch 4, then the old owner's write at epoch 3 — a cursor, an
// acked id and a message in one command, in an entry with another
// subscription's write. Every replica refuses the stale command alike
// (ErrFenced, nothing of it written, its message neither) and applies the
// rest of the entry; the same command at epoch 4 applies; a fence below
// the epoch is refused; and the epochs survive a reopen.
func TestFenceRefusesStaleOwnerOnEveryReplica(t *testing.T) {
	const sid, other = 5, 6
	opts := make([]Options, 3)
	reps := make([]*replica, 3)
	for i := range reps {
		opts[i] = DefaultOptions(t.TempDir())
		reps[i] = &replica{s: openStore(t, opts[i]), st: partitionState{tid: 1000, part: 3, dedup: newDedupIndex()}}
	}
	at := time.Date(2026, 12, 6, 0, 0, 0, 0, time.UTC)
	index := uint64(0)
	applyAll := func(cmds ...*command) []result {
		t.Helper()
		index++
		at = at.Add(time.Second)
		data, err := encodeEntry(at, index, cmds)
		if err != nil {
			t.Fatal(err)
		}
		var first []result
		for i, r := range reps {
			res, err := r.apply(t, index, data)
			if err != nil {
				t.Fatalf("replica %d, entry %d: %v", i, index, err)
			}
			if i == 0 {
				first = res
				continue
			}
			for j := range res {
				if (res[j].err == nil) != (first[j].err == nil) || len(res[j].appended) != len(first[j].appended) {
					t.Fatalf("entry %d command %d: replica %d answered %v, replica 0 %v", index, j, i, res[j].err, first[j].err)
				}
			}
		}
		return first
	}
	write := func(epoch uint64, state, id string) *command {
		return &command{kind: cmdAppend, epoch: epoch, dedupWindow: time.Minute,
			msgs:    []Message{{ID: "out-" + id, Payload: []byte(id)}},
			cursors: []cursorWrite{{sid: sid, state: []byte(state)}},
			acked:   &ackedIDs{sid: sid, ids: []string{id}}}
	}

	if res := applyAll(write(3, "owner-3", "a")); res[0].err != nil {
		t.Fatalf("the first owner's write: %v", res[0].err)
	}
	if res := applyAll(&command{kind: cmdFence, sid: sid, epoch: 4}); res[0].err != nil {
		t.Fatalf("the new owner's fence: %v", res[0].err)
	}
	before := stateDump(t, reps[0])

	res := applyAll(write(3, "stale", "late"), &command{kind: cmdAppend, cursors: []cursorWrite{{sid: other, state: []byte("other")}}})
	if !errors.Is(res[0].err, ErrFenced) {
		t.Fatalf("the stale owner's write after the fence: %v, want ErrFenced", res[0].err)
	}
	if res[1].err != nil {
		t.Fatalf("another subscription's write in the same entry: %v", res[1].err)
	}
	for i, r := range reps {
		after := stateDump(t, r)
		if len(after) != len(before)+1 { // the other subscription's cursor
			t.Fatalf("replica %d: %d keys after the refused write, want %d", i, len(after), len(before)+1)
		}
		if r.st.meta.head != 1 {
			t.Fatalf("replica %d: head %d, want 1: the refused command's message was stored", i, r.st.meta.head)
		}
	}
	if a, b, c := stateDump(t, reps[0]), stateDump(t, reps[1]), stateDump(t, reps[2]); !slices.Equal(a, b) || !slices.Equal(a, c) {
		t.Fatal("the replicas differ")
	}

	if res := applyAll(&command{kind: cmdFence, sid: sid, epoch: 2}); !errors.Is(res[0].err, ErrFenced) {
		t.Fatalf("a fence below the epoch: %v, want ErrFenced", res[0].err)
	}
	if res := applyAll(write(4, "owner-4", "b")); res[0].err != nil || len(res[0].appended) != 1 {
		t.Fatalf("the new owner's write: %+v, %v", res[0].appended, res[0].err)
	}
	if reps[2].st.meta.head != 2 {
		t.Fatalf("head %d after the new owner's write, want 2", reps[2].st.meta.head)
	}

	// A reopened store loads the epochs from its keys.
	s := reopenStore(t, reps[1].s, opts[1])
	reps[1] = &replica{s: s, st: partitionState{tid: 1000, part: 3, meta: reps[1].st.meta, dedup: newDedupIndex()}}
	if res := applyAll(write(3, "stale", "later")); !errors.Is(res[0].err, ErrFenced) {
		t.Fatalf("a stale write after a reopen: %v, want ErrFenced", res[0].err)
	}
}

// TestFenceThroughTheStore raises an owner epoch through Store.Fence on a
// replicated partition (a real Raft group of one) and on a single node's:
// a Write of a lower epoch is refused with ErrFenced and changes nothing —
// cursor, acked ids, the message in the same partition — one of the epoch
// applies, and a fence below it is refused. Deleting the subscription
// deletes its epoch keys.
func TestFenceThroughTheStore(t *testing.T) {
	for _, replicated := range []bool{false, true} {
		t.Run(map[bool]string{false: "single", true: "replicated"}[replicated], func(t *testing.T) {
			ctx := context.Background()
			s := openStore(t, testOptions(t, clock.NewFake(t0)))
			mustCreate(t, s, "orders", TopicConfig{Partitions: 1})
			sub := mustCreateSub(t, s, "orders", "audit", []byte("config"), "")
			if replicated {
				l := mustRaftLog(t, s, 1)
				mustSave(t, l, nil, nil, snapshotAt(1, 1, nil, 1))
				rp := startRaftProposer(t, s, "orders", 0, l)
				rp.campaign()
				deadline := time.Now().Add(10 * time.Second)
				for s.Fence(ctx, "orders", sub.ID, 7) != nil {
					if time.Now().After(deadline) {
						t.Fatal("no leader in 10s")
					}
					time.Sleep(10 * time.Millisecond)
				}
			} else if err := s.Fence(ctx, "orders", sub.ID, 7); err != nil {
				t.Fatal(err)
			}
			w := func(epoch uint64, state, id string) Write {
				return Write{Topic: "orders", Subscription: sub.ID, Epoch: epoch,
					Cursors:  []CursorWrite{{Partition: 0, State: []byte(state)}},
					AckedIDs: []string{id},
					Appends:  []AppendBatch{{Topic: "orders", Partition: 0, Messages: []Message{{ID: "out-" + id, Payload: []byte(id)}}}}}
			}
			if _, err := s.Write(ctx, w(6, "stale", "x")); !errors.Is(err, ErrFenced) {
				t.Fatalf("a write of epoch 6 after a fence at 7: %v, want ErrFenced", err)
			}
			if cs, _ := s.Cursors("orders", sub.ID); string(cs[0]) == "stale" {
				t.Fatal("the refused write moved the cursor")
			}
			if acked, _ := s.AckedIDs("orders", sub.ID, []string{"x"}); acked[0] {
				t.Fatal("the refused write stored its acked id")
			}
			if ps, _ := s.Partitions("orders"); ps[0].Head != 0 {
				t.Fatalf("the refused write stored a message: head %d", ps[0].Head)
			}
			if _, err := s.Write(ctx, w(7, "owner", "y")); err != nil {
				t.Fatalf("a write of the fenced epoch: %v", err)
			}
			if cs, _ := s.Cursors("orders", sub.ID); string(cs[0]) != "owner" {
				t.Fatalf("cursor %q after the owner's write", cs[0])
			}
			if err := s.Fence(ctx, "orders", sub.ID, 5); !errors.Is(err, ErrFenced) {
				t.Fatalf("a fence at 5 after 7: %v, want ErrFenced", err)
			}
			if replicated {
				return
			}
			if err := s.DeleteSubscription(ctx, "orders", "audit"); err != nil {
				t.Fatal(err)
			}
			if n := countKeys(t, s, kindCursor); n != 0 {
				t.Fatalf("%d cursor and epoch keys left after the delete", n)
			}
		})
	}
}
