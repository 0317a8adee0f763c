package storage

import (
	"errors"
	"sync"
	"sync/atomic"

	"github.com/dgraph-io/badger/v4"

	"github.com/ferrymq/ferry/internal/clock"
	"github.com/ferrymq/ferry/internal/failpoint"
)

// committer commits the groups of every partition's writer, many groups in
// one Badger transaction. With many partitions each receiving a message at a
// time, every group is one message; a transaction of its own per group cost
// more than the message did (Badger's oracle, watermarks and write channel,
// a commit marker, a goroutine woken per transaction), and every new
// transaction waited for all those committing before it. The committer
// takes whatever groups wait, applies each to its partition's state in one
// transaction, commits once (synced by Badger under FsyncAlways) and queues
// each group with the syncer, which answers them together.
//
// A writer whose partition is the only one committing commits its group
// itself, in a transaction of its own: with nothing to share it with, the
// hand-over would only add latency. Otherwise it hands its state with its
// group (commitJob) to the committer and waits for the
// state after it, so the committer owns the state meanwhile and a
// partition's groups are committed one at a time, in order. Keys of
// different partitions are disjoint: applying one partition's group sees
// its own earlier groups, committed, and nothing of the others'. A group
// that fails to apply (too big for the transaction, a Badger error) or a
// batch over the transaction's size makes the committer discard the shared
// transaction and commit each group of the batch alone, as a writer did
// before: apply is deterministic and the states are values, so applying
// again from the same state gives the same writes.
type committer struct {
	sync     *syncer
	db       *badger.DB
	clk      clock.Clock
	queue    chan *commitJob
	done     chan struct{}
	maxBytes int           // record bytes of one shared transaction's groups
	taken    atomic.Uint64 // groups taken from the queue (tests)
	active   atomic.Int32  // writers committing a group, alone or through the queue
}

// maxCommitJobs bounds the groups of one shared transaction.
const maxCommitJobs = 1024

// commitJob is one group of a partition's writer, with the state it
// applies to. The committer sets next and err and then signals done.
type commitJob struct {
	p     *Partition
	st    partitionState
	group []*request
	cmds  []*command
	size  int // record bytes of cmds

	next partitionState
	err  error
	done chan struct{} // capacity 1: the job is finished
}

func newCommitter(sy *syncer, db *badger.DB, opts *Options) *committer {
	// Badger refuses a transaction over 15% of a memtable; half that
	// leaves room for keys, dedup entries and cursors.
	c := &committer{sync: sy, db: db, clk: opts.Clock, queue: make(chan *commitJob, maxCommitJobs), done: make(chan struct{}),
		maxBytes: int(min(int64(opts.MaxGroupBytes), opts.MemTableBytes*15/100/2))}
	go c.run()
	return c
}

// jobs recycles commitJobs and their channels: a job per group otherwise.
var jobs = sync.Pool{New: func() any { return &commitJob{done: make(chan struct{}, 1)} }}

// do commits a partition's group, applied to st, and queues it for the
// sync: it returns the state after the group, or an error and nothing
// committed.
func (c *committer) do(p *Partition, st partitionState, group []*request, cmds []*command, size int) (partitionState, error) {
	defer c.active.Add(-1)
	if c.active.Add(1) == 1 {
		// No other partition is committing: nothing to share a
		// transaction with, and the way through the committer would
		// only add two goroutine switches to a lone writer's commit.
		next, results, err := p.applyTxn(st, cmds)
		return c.finish(p, st, group, cmds, next, results, err)
	}
	j := jobs.Get().(*commitJob)
	j.p, j.st, j.group, j.cmds, j.size = p, st, group, cmds, size
	c.queue <- j
	<-j.done
	next, err := j.next, j.err
	*j = commitJob{done: j.done}
	jobs.Put(j)
	return next, err
}

// close waits for every queued job. Only call it after every writer has
// exited, and before the syncer closes.
func (c *committer) close() {
	close(c.queue)
	<-c.done
}

func (c *committer) run() {
	defer close(c.done)
	var batch []*commitJob
	var carry *commitJob // taken from the queue, for the next batch
	for {
		j := carry
		carry = nil
		if j == nil {
			var ok bool
			if j, ok = <-c.queue; !ok {
				return
			}
		}
		c.taken.Add(1)
		batch = append(batch[:0], j)
		size := j.size
	gather:
		for len(batch) < maxCommitJobs {
			select {
			case j, ok := <-c.queue:
				if !ok {
					break gather
				}
				c.taken.Add(1)
				if size+j.size > c.maxBytes {
					carry = j
					break gather
				}
				batch = append(batch, j)
				size += j.size
			default:
				break gather
			}
		}
		if len(batch) == 1 || !c.commitTogether(batch) {
			for _, j := range batch {
				next, results, err := j.p.applyTxn(j.st, j.cmds)
				c.finishJob(j, next, results, err)
			}
		}
		clear(batch)
	}
}

// commitTogether applies every job's group in one transaction and commits
// it. It returns false, having committed and finished nothing, if a group
// fails to apply or the transaction is too big: the caller then commits
// each job alone.
func (c *committer) commitTogether(batch []*commitJob) bool {
	txn := c.db.NewTransaction(true)
	defer txn.Discard()
	now := c.clk.Now()
	nexts := make([]partitionState, len(batch))
	results := make([][]result, len(batch))
	for i, j := range batch {
		var err error
		if nexts[i], results[i], err = j.st.apply(txn, j.cmds, now); err != nil {
			return false
		}
	}
	failpoint.Hit("partition-before-commit")
	err := c.sync.guard.commit(txn.Commit)
	if errors.Is(err, badger.ErrTxnTooBig) {
		return false
	}
	for i, j := range batch {
		c.finishJob(j, nexts[i], results[i], err)
	}
	return true
}

// finishJob finishes j's group and hands the writer the outcome.
func (c *committer) finishJob(j *commitJob, next partitionState, results []result, err error) {
	j.next, j.err = c.finish(j.p, j.st, j.group, j.cmds, next, results, err)
	j.done <- struct{}{}
}

// finish queues a committed group, which took p from st to next, for the
// sync and returns next; or, if it failed with err, returns st and err.
func (c *committer) finish(p *Partition, st partitionState, group []*request, cmds []*command, next partitionState, results []result, err error) (partitionState, error) {
	if err != nil {
		return st, err
	}
	next.committed()
	c.sync.enqueue(p.syncGroupOf(st, next, group, cmds, results))
	return next, nil
}
