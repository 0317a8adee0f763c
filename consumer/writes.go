package consumer

// The subscription's writes: cursors, attempts and acked ids queued as
// write jobs, issued to the log in order (pipelined where the partition
// allows), and completed when durable.

import (
	"slices"
	"time"

	"github.com/ferrymq/ferry/storage"
)

// writeJob is one storage.Write the loop does for the subscription. A
// partition has at most one write in flight, so writes of a partition land
// in the order they were made and each carries the whole state.
type writeJob struct {
	id    uint64
	parts []uint32
	epoch map[uint32]uint32 // each partition's epoch when the job was made
	acks  map[uint32][]uint64
	// ids, leases and joined are a commit's: the ids it acks, the
	// outstanding deliveries it took, and retries waiting for its outcome.
	ids        []DeliveryID
	sum        uint64 // sumAppends of w.Appends
	leases     []commitLease
	joined     []callID // retries of the commit, answered with its outcome
	deadLetter bool     // a dead letter's write, not a commit's
	// ackedIDs are the ids of the messages it acks, for the acked-id
	// horizon (EFFECTIVELY_ONCE).
	ackedIDs []string
	w        storage.Write
	// sends and waiters of the partitions, taken when the write is issued:
	// they wait for it to be durable.
	sends   []Delivery
	waiters []*waiter
	// call is the commit's caller, answered with its outcome (0: none, a
	// dead letter or a plain state write).
	call callID

	finished  bool // written has its outcome
	completed bool // complete has applied it
	res       [][]storage.AppendResult
	err       error
}

// maxPipelined is the most state writes of a partition in flight at once.
const maxPipelined = 4

// writeRetry is how long a partition waits to write again after a write
// failed, and a message whose commit or dead letter failed to be due again.
const writeRetry = time.Second

// queue adds a job that acks offsets; it is issued once its partitions
// have no write in flight.
func (s *machine) queue(job *writeJob) {
	for part := range job.acks {
		job.parts = append(job.parts, part)
	}
	slices.Sort(job.parts)
	s.queued = append(s.queued, job)
}

// issueWrites issues queued jobs whose partitions are free, in order, then
// a plain state write for every other partition behind its store.
func (s *machine) issueWrites() {
	var taken map[uint32]bool // partitions a queued job waits for; none most of the time
	if len(s.queued) > 0 {
		taken = make(map[uint32]bool)
	}
	kept := s.queued[:0]
	for _, job := range s.queued {
		free := true
		for _, part := range job.parts {
			free = free && len(s.parts[part].writes) == 0 && !taken[part]
		}
		if !free {
			for _, part := range job.parts {
				taken[part] = true // later jobs keep their order
			}
			kept = append(kept, job)
			continue
		}
		s.issue(job)
	}
	clear(s.queued[len(kept):])
	s.queued = kept
	for _, p := range s.parts {
		if p.dirty && !taken[p.n] && s.opts.Guarantee != None && s.mayPipeline(p) {
			s.issue(&writeJob{parts: []uint32{p.n}})
		}
	}
}

// issue snapshots the state of job's partitions — with job's acks applied,
// for a commit or dead letter — into its write and hands it to the loop.
func (s *machine) issue(job *writeJob) {
	s.nextJob++
	job.id = s.nextJob
	job.epoch = make(map[uint32]uint32, len(job.parts))
	job.w.Topic, job.w.Subscription, job.w.AckedIDTTL, job.w.Epoch = s.topic, s.sid, s.horizon, s.epoch
	withAttempts := s.persistAttempts()
	for _, part := range job.parts {
		p := s.parts[part]
		st := p.st
		if offs := job.acks[part]; len(offs) > 0 {
			st = p.st.withAcks(offs)
		}
		job.w.Cursors = append(job.w.Cursors, storage.CursorWrite{Partition: part, State: st.appendBinary(nil, withAttempts)})
		job.epoch[part] = p.st.epoch
		job.sends = append(job.sends, p.sends...)
		job.waiters = append(job.waiters, p.waiters...)
		job.w.AckedIDs = append(job.w.AckedIDs, p.ackedIDs...)
		p.sends, p.waiters, p.ackedIDs = nil, nil, nil
		p.writes = append(p.writes, job)
		p.dirty = false
	}
	job.w.AckedIDs = append(job.w.AckedIDs, job.ackedIDs...)
	s.out.writes = append(s.out.writes, job)
}

// mayPipeline reports whether a plain state write of p may be issued now.
// Writes of a partition land in the order they are issued, each with the
// whole state, so several may be in flight — up to maxPipelined, and only
// when deliveries or replies wait for them (acks alone are written behind,
// one at a time). A commit or dead letter is alone in flight: a state
// write issued meanwhile would not hold its acks yet, and would drop them.
func (s *machine) mayPipeline(p *partition) bool {
	switch {
	case s.now.Before(p.retryWriteAt):
		return false
	case len(p.writes) == 0:
		return true
	case p.writes[0].acks != nil || len(p.writes) >= maxPipelined:
		return false
	}
	return len(p.sends) > 0 || len(p.waiters) > 0
}

// settled reports whether everything the subscription holds is stored, or
// its last write failed: nothing is in flight or queued.
func (s *machine) settled() bool {
	if len(s.queued) > 0 {
		return false
	}
	for _, p := range s.parts {
		if len(p.writes) > 0 || (p.dirty && p.retryWriteAt.IsZero()) {
			return false
		}
	}
	return true
}

// written takes the outcome of a write issued by issue. Outcomes are
// applied in issue order per partition: one that arrives early waits for
// those before it.
func (s *machine) written(job *writeJob, res [][]storage.AppendResult, err error, now time.Time) {
	job.finished, job.res, job.err = true, res, err
	if len(job.parts) == 0 {
		s.complete(job) // a commit that only publishes holds no partition
	}
	for _, part := range job.parts {
		p := s.parts[part]
		for len(p.writes) > 0 && p.writes[0].finished {
			j := p.writes[0]
			p.writes = p.writes[1:]
			s.complete(j)
		}
	}
	s.step(now)
}

// complete applies a finished write: its acks, sends, waiters and reply.
func (s *machine) complete(job *writeJob) {
	if job.completed {
		return // a multi-partition job, completed from another partition
	}
	job.completed = true
	err := job.err
	for _, part := range job.parts {
		p := s.parts[part]
		for _, off := range job.acks[part] {
			delete(p.busy, off)
			switch {
			case job.epoch[part] != p.st.epoch:
				// Seeked since: the delivery is gone either way.
			case err == nil:
				s.forget(p, off)
				p.st.cursor.Ack(off)
				if !job.deadLetter {
					s.stats.Acked++ // dead letters are counted apart
				}
			case job.deadLetter:
				s.toRetry(p, off, s.now.Add(writeRetry))
			default:
				s.restoreLease(p, job, off)
			}
		}
		p.retryWriteAt = time.Time{}
		if err != nil {
			// What it held is still to be stored: try again, not at once.
			p.dirty = true
			p.retryWriteAt = s.now.Add(writeRetry)
		}
	}
	for i := range job.sends {
		if c := s.consumer(job.sends[i].Consumer); c != nil {
			c.pendingBytes = max(c.pendingBytes-deliverySize(&job.sends[i]), 0)
		}
	}
	if err == nil {
		for _, d := range job.sends {
			s.send(d)
		}
	} else {
		s.dropSends(job.sends)
	}
	for _, w := range job.waiters {
		s.landed(w, err)
	}
	if job.deadLetter && err == nil {
		s.stats.DeadLettered++
	}
	if !job.deadLetter && job.ids != nil {
		s.commitDone(job, err)
	}
	s.answer(reply{call: job.call, res: job.res, err: err})
}

// landed counts one write w waited for, with its error; the last answers.
func (s *machine) landed(w *waiter, err error) {
	if w.err == nil {
		w.err = err
	}
	if w.left--; w.left == 0 {
		s.answer(w.reply)
	}
}

// dropSends handles deliveries whose write failed: they never went out, so
// their credit is freed; under EFFECTIVELY_ONCE they are due again at once
// (AT_MOST_ONCE loses them, as it may).
func (s *machine) dropSends(sends []Delivery) {
	for i := range sends {
		d := &sends[i]
		p := s.parts[d.ID.Partition]
		if l, ok := p.inflight.Get(d.ID.Offset); !ok || l.Attempt != d.ID.Attempt {
			continue
		}
		s.release(p, d.ID.Offset)
		if s.opts.Guarantee != AtMostOnce {
			s.toRetry(p, d.ID.Offset, time.Time{})
		}
	}
}
