package storage

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"

	"github.com/ferrymq/ferry/internal/clock"
)

// stallCommits holds the committer in a commit — of a group of partition 0
// of topic, whose writer it parks, and of whatever groups join it before
// the committer blocks — until the returned function is called; release
// then waits for that commit and resumes the writer.
func stallCommits(t *testing.T, s *Store, topic string) (release func()) {
	t.Helper()
	_, p, err := s.partition(topic, 0)
	if err != nil {
		t.Fatal(err)
	}
	st, resume, err := p.hold(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	s.guard.dropMu.Lock()        // the committer waits for it to commit
	s.sync.commits.active.Add(1) // a commit under way: writers queue theirs
	r := &request{cmd: command{kind: cmdAppend, msgs: []Message{{Payload: []byte("stall")}}}, done: make(chan struct{})}
	j := &commitJob{p: p, st: st, group: []*request{r}, cmds: []*command{&r.cmd}, done: make(chan struct{}, 1)}
	s.sync.commits.queue <- j
	var once sync.Once
	release = func() {
		once.Do(func() {
			s.guard.dropMu.Unlock()
			<-j.done
			s.sync.commits.active.Add(-1)
			<-r.done
			resume(j.next)
			if j.err != nil || r.err != nil {
				t.Errorf("stalled commit: %v, %v", j.err, r.err)
			}
		})
	}
	t.Cleanup(release)
	return release
}

// waitSent waits until n groups more than before were sent to the
// committer: taken by it or waiting in its queue.
func waitSent(t *testing.T, s *Store, before uint64, n int) {
	t.Helper()
	c := s.sync.commits
	deadline := time.Now().Add(10 * time.Second)
	for c.taken.Load()+uint64(len(c.queue)) < before+uint64(n) {
		if time.Now().After(deadline) {
			t.Fatalf("%d groups sent to the committer after 10s, want %d", c.taken.Load()+uint64(len(c.queue))-before, n)
		}
		time.Sleep(time.Millisecond)
	}
}

// messageVersions returns the Badger version (commit timestamp) of each
// message of a partition: messages committed in one transaction share it.
func messageVersions(t *testing.T, s *Store, topic string, part uint32) []uint64 {
	t.Helper()
	_, p, err := s.partition(topic, part)
	if err != nil {
		t.Fatal(err)
	}
	var versions []uint64
	err = s.db.View(func(txn *badger.Txn) error {
		opts := badger.DefaultIteratorOptions
		opts.Prefix = partitionPrefix(kindMessage, p.tid, part)
		opts.PrefetchValues = false
		it := txn.NewIterator(opts)
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			versions = append(versions, it.Item().Version())
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return versions
}

// appendEach appends a batch, msgs(part), to each of parts, concurrently,
// and returns a function that waits for them and fails the test on an
// error.
func appendEach(t *testing.T, s *Store, topic string, parts []uint32, msgs func(part uint32) []Message) (wait func()) {
	var wg sync.WaitGroup
	errs := make([]error, len(parts))
	for i, part := range parts {
		wg.Go(func() {
			_, errs[i] = s.Append(context.Background(), topic, part, msgs(part))
		})
	}
	return func() {
		t.Helper()
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Errorf("append to partition %d: %v", parts[i], err)
			}
		}
	}
}

// Groups of different partitions waiting together are committed in one
// Badger transaction, and each is durable, readable and in order.
func TestCommitterSharesTransaction(t *testing.T) {
	s := openStore(t, testOptions(t, clock.NewFake(t0)))
	mustCreate(t, s, "t", TopicConfig{Partitions: 8})
	before := s.sync.commits.taken.Load()
	release := stallCommits(t, s, "t")
	rest := []uint32{1, 2, 3, 4, 5, 6, 7}
	wait := appendEach(t, s, "t", rest, func(part uint32) []Message {
		return []Message{{ID: "m" + string(rune('0'+part)), Payload: []byte{byte(part)}}}
	})
	waitSent(t, s, before, 1+len(rest))
	release()
	wait()

	// Groups that joined the stalled commit share its version; every
	// other group is in the next transaction.
	stalled := messageVersions(t, s, "t", 0)
	versions := map[uint64][]uint32{}
	for _, part := range rest {
		v := messageVersions(t, s, "t", part)
		if len(v) != 1 {
			t.Fatalf("partition %d holds %d messages, want 1", part, len(v))
		}
		if v[0] != stalled[0] {
			versions[v[0]] = append(versions[v[0]], part)
		}
	}
	if len(versions) > 1 {
		t.Errorf("the groups queued behind a commit were committed at versions %v (partitions by version), want one transaction", versions)
	}
	for _, part := range rest {
		msgs, err := s.Read(context.Background(), "t", part, 0, 10, 1<<20)
		if err != nil || len(msgs) != 1 || msgs[0].Payload[0] != byte(part) {
			t.Errorf("partition %d reads %v, %v; want its one message", part, msgs, err)
		}
	}
	// The next group of a partition goes on from the state the shared
	// transaction left: the next offset, and its id still a duplicate.
	res := mustAppend(t, s, "t", 3, Message{ID: "m3", Payload: []byte("again")}, Message{ID: "new", Payload: []byte("b")})
	if !res[0].Duplicate || res[0].Offset != 0 || res[1].Duplicate || res[1].Offset != 1 {
		t.Errorf("append after the shared commit: %+v, want a duplicate of 0 and offset 1", res)
	}
}

// A batch too big for one transaction is committed group by group: every
// append succeeds, none is lost.
func TestCommitterTooBigCommitsAlone(t *testing.T) {
	s := openStore(t, testOptions(t, clock.NewFake(t0)))
	s.sync.commits.maxBytes = 1 << 40 // gather past Badger's limit
	mustCreate(t, s, "t", TopicConfig{Partitions: 4})
	// Badger takes 15% of a memtable in a transaction: three of these
	// groups together are over it, each alone is not. Records stay inline
	// (under ValueThreshold), so they count whole.
	const size = 512 << 10
	limit := int(s.opts.MemTableBytes * 15 / 100)
	n := limit / 2 / size
	before := s.sync.commits.taken.Load()
	release := stallCommits(t, s, "t")
	rest := []uint32{1, 2, 3}
	wait := appendEach(t, s, "t", rest, func(part uint32) []Message {
		msgs := make([]Message, n)
		for i := range msgs {
			msgs[i] = Message{ID: fmt.Sprintf("big-%d-%d", part, i), Payload: make([]byte, size)}
			msgs[i].Payload[0] = byte(part)
		}
		return msgs
	})
	waitSent(t, s, before, 1+len(rest))
	release()
	wait()
	for _, part := range rest {
		msgs, err := s.Read(context.Background(), "t", part, 0, 2*n, 1<<30)
		if err != nil || len(msgs) != n || msgs[n-1].Payload[0] != byte(part) {
			t.Errorf("partition %d reads %d messages, %v; want its %d", part, len(msgs), err, n)
		}
	}
}

// A writer alone in committing commits its groups itself: none goes
// through the committer's queue.
func TestCommitterLoneWriterCommitsItself(t *testing.T) {
	s := openStore(t, testOptions(t, clock.NewFake(t0)))
	mustCreate(t, s, "t", TopicConfig{Partitions: 2})
	before := s.sync.commits.taken.Load()
	for i := range 20 {
		mustAppend(t, s, "t", 1, Message{ID: fmt.Sprint(i), Payload: []byte("x")})
	}
	if n := s.sync.commits.taken.Load() - before; n != 0 {
		t.Errorf("%d of 20 groups of a lone writer went through the committer, want 0", n)
	}
	if v := messageVersions(t, s, "t", 1); len(v) != 20 || v[0] == v[19] {
		t.Errorf("versions %v, want 20 transactions", v)
	}
}
