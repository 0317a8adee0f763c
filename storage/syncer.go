package storage

// The store-wide syncer: it answers committed groups, of every partition
// and Raft group, once they are durable.

import (
	"sync/atomic"
	"time"

	"github.com/dgraph-io/badger/v4"
)

// syncer answers committed groups once they are durable: under FsyncAlways
// every commit is synced by Badger before it returns (durableCommit), so a
// group is durable once committed; the syncer takes every group waiting,
// publishes each partition's new state (the tail cache, waiting readers)
// and answers the requests, in commit order across partitions. Under
// FsyncNever nothing is synced.
type syncer struct {
	queue   chan syncGroup
	done    chan struct{}
	always  bool          // FsyncAlways
	syncs   atomic.Uint64 // batches with a group that wrote, under FsyncAlways
	metrics *Metrics
	guard   *diskGuard // partitions tell it of commit errors
	commits *committer // commits partitions' groups, then queues them here
}

// slowFsync is how long a durable commit (its fsyncs) may take before it
// is logged.
const slowFsync = 500 * time.Millisecond

func newSyncer(db *badger.DB, opts *Options, guard *diskGuard) *syncer {
	s := &syncer{always: opts.Fsync == FsyncAlways, metrics: opts.Metrics, guard: guard,
		queue: make(chan syncGroup, opts.QueueLength), done: make(chan struct{})}
	go s.run()
	s.commits = newCommitter(s, db, opts)
	return s
}

func (s *syncer) enqueue(g syncGroup) { s.queue <- g }

// close waits for every enqueued group to be answered. Only call it after
// every writer has exited.
func (s *syncer) close() {
	s.commits.close()
	close(s.queue)
	<-s.done
}

func (s *syncer) run() {
	defer close(s.done)
	var batch []syncGroup
	for g := range s.queue {
		batch = append(batch[:0], g)
	gather:
		for {
			select {
			case g, ok := <-s.queue:
				if !ok {
					break gather
				}
				batch = append(batch, g)
			default:
				break gather
			}
		}
		requests, wrote := 0, false
		for _, g := range batch {
			requests += len(g.reqs)
			wrote = wrote || g.wrote
		}
		s.metrics.observeGroup(requests)
		if s.always && wrote {
			s.syncs.Add(1)
		}
		for _, g := range batch {
			if g.p != nil {
				g.p.publish(g.meta, g.msgs, g.sizes)
			}
			for _, r := range g.reqs {
				close(r.done)
			}
		}
	}
}

// enqueueSync asks the syncer for an fsync (under the fsync policy) that
// covers everything committed so far; it shares the fsync with whatever
// partitions and groups are syncing too. The caller must keep Close from
// closing the syncer meanwhile.
func enqueueSync(sy *syncer) *request {
	r := &request{done: make(chan struct{})}
	sy.enqueue(syncGroup{wrote: true, reqs: []*request{r}})
	return r
}
