package consumer

// Commit: acks and appends in one write, and what a retry of a Commit is
// answered. A Commit's outcome can be unknown to the caller — its reply
// lost, or its write failed with the outcome unknown (a cluster's
// UNAVAILABLE: the leader changed, the proposal was dropped, and the entry
// may still commit) — and the caller is told to send it again with the
// same ids. So a retry of the current attempt is answered by the outcome:
//
//   - while the first is in flight, the retry waits for it and gets its
//     answer (joined);
//   - if the first failed, its deliveries were left outstanding until
//     their deadline (restoreLeases), not made due again, and the retry is
//     made as a Commit of its own: if the first did land after all, its
//     ack is written again and its outputs are duplicates, answered with
//     their offsets;
//   - if the first succeeded (and is still remembered: commit_memory.go), the
//     retry — the same ids and the same outputs — is answered with the
//     first's results, every output a duplicate, and writes nothing. A
//     commit of the same ids with other outputs is refused as before
//     (ErrAlreadyAcked): an input has one set of outputs.
//
// Never FAILED_PRECONDITION for a retry of the current attempt.

import (
	"encoding/binary"
	"fmt"
	"hash/maphash"
	"slices"
	"time"

	"github.com/ferrymq/ferry/storage"
)

// commitLease is an outstanding delivery a commit took: restored if the
// commit's write fails.
type commitLease struct {
	part  uint32
	lease Lease
}

// commitRecord is what a landed commit is answered again with.
type commitRecord struct {
	ids int    // how many ids it acked
	sum uint64 // sumAppends of its outputs
	res [][]storage.AppendResult
}

// commit acks deliveries and appends messages in one atomic write. Every
// id must name the current attempt; else nothing happens and the reply to
// call has the first refusal. A retry is answered by the outcome of what
// it retries (see above).
func (s *machine) commit(call callID, ids []DeliveryID, appends []storage.AppendBatch, now time.Time) {
	if s.opts.Guarantee != AtLeastOnce && s.opts.Guarantee != EffectivelyOnce {
		s.answer(reply{call: call, err: fmt.Errorf("commit: %w", ErrNotSupported)})
		return
	}
	sum := sumAppends(appends)
	if job := s.inFlightCommit(ids, sum); job != nil {
		job.joined = append(job.joined, call)
		return
	}
	if rec := s.landedCommit(ids, sum); rec != nil {
		s.answer(reply{call: call, res: duplicates(rec.res)})
		return
	}
	acks := map[uint32][]uint64{}
	seen := map[DeliveryID]bool{}
	for _, id := range ids {
		if _, err := s.check(id, s.opts.Guarantee == AtLeastOnce); err != nil || seen[id] {
			if err == nil {
				err = fmt.Errorf("delivery %s named twice: %w", id, ErrUnknownDelivery)
			}
			s.stats.StaleAcks++
			s.answer(reply{call: call, err: err})
			return
		}
		seen[id] = true
		acks[id.Partition] = append(acks[id.Partition], id.Offset)
	}
	job := &writeJob{acks: acks, ids: slices.Clone(ids), sum: sum, w: storage.Write{Appends: appends}, call: call}
	if s.opts.Guarantee == EffectivelyOnce {
		for _, id := range ids {
			if mid := s.messageID(s.parts[id.Partition], id.Offset); mid != "" {
				job.ackedIDs = append(job.ackedIDs, mid)
			}
		}
	}
	for _, id := range ids {
		p := s.parts[id.Partition]
		if l, ok := p.inflight.Get(id.Offset); ok {
			job.leases = append(job.leases, commitLease{part: p.n, lease: l})
		}
		s.release(p, id.Offset)
		p.busy[id.Offset] = true
		s.committing[id] = job
		// Not redelivered while its commit is in flight: a failed
		// write makes it outstanding again (restoreLease).
		if i, found := slices.BinarySearch(p.retry, id.Offset); found {
			p.retry = slices.Delete(p.retry, i, i+1)
		}
	}
	s.queue(job)
	s.step(now)
}

// sumSeed keys sumAppends for the process's life: sums are kept in memory
// only.
var sumSeed = maphash.MakeSeed()

// sumAppends is a hash of a commit's outputs, to tell a retry (the same
// outputs) from another commit of the same ids.
func sumAppends(appends []storage.AppendBatch) uint64 {
	var h maphash.Hash
	h.SetSeed(sumSeed)
	var n [binary.MaxVarintLen64]byte // lengths, so fields cannot run together
	length := func(l int) { _, _ = h.Write(binary.AppendUvarint(n[:0], uint64(l))) }
	for _, b := range appends {
		length(len(b.Topic))
		_, _ = h.WriteString(b.Topic)
		_, _ = h.Write(binary.BigEndian.AppendUint32(n[:0], b.Partition))
		for i := range b.Messages {
			m := &b.Messages[i]
			length(len(m.ID))
			_, _ = h.WriteString(m.ID)
			length(len(m.Key))
			_, _ = h.Write(m.Key)
			length(len(m.Payload))
			_, _ = h.Write(m.Payload)
		}
	}
	return h.Sum64()
}

// duplicates is res with every output marked a duplicate, for a retry.
func duplicates(res [][]storage.AppendResult) [][]storage.AppendResult {
	out := make([][]storage.AppendResult, len(res))
	for i, rs := range res {
		out[i] = make([]storage.AppendResult, len(rs))
		for j, r := range rs {
			out[i][j] = storage.AppendResult{Offset: r.Offset, Duplicate: true}
		}
	}
	return out
}

// landedCommit is the record of the landed commit that acked exactly ids
// with outputs summing to sum, if one is remembered.
func (s *machine) landedCommit(ids []DeliveryID, sum uint64) *commitRecord {
	if len(ids) == 0 {
		return nil
	}
	rec := s.commits.get(s.num, ids[0])
	if rec == nil || rec.ids != len(ids) || rec.sum != sum {
		return nil
	}
	for _, id := range ids[1:] {
		if s.commits.get(s.num, id) != rec {
			return nil
		}
	}
	return rec
}

// inFlightCommit is the commit in flight that acks exactly ids with
// outputs summing to sum, if any: a retry of it waits for its outcome.
func (s *machine) inFlightCommit(ids []DeliveryID, sum uint64) *writeJob {
	if len(ids) == 0 {
		return nil
	}
	job := s.committing[ids[0]]
	if job == nil || len(job.ids) != len(ids) || job.sum != sum {
		return nil
	}
	for _, id := range ids {
		if s.committing[id] != job {
			return nil
		}
	}
	return job
}

// commitDone settles a finished commit: its ids are remembered if it
// landed, and the retries that joined it get its answer.
func (s *machine) commitDone(job *writeJob, err error) {
	var rec *commitRecord
	if err == nil {
		rec = &commitRecord{ids: len(job.ids), sum: job.sum, res: job.res}
	}
	for _, id := range job.ids {
		if s.committing[id] == job {
			delete(s.committing, id)
		}
		if rec != nil {
			s.commits.add(s.num, id, rec)
		}
	}
	for _, call := range job.joined {
		s.answer(reply{call: call, res: job.res, err: err})
	}
}

// restoreLease makes off, whose commit failed, outstanding again as it was
// before the commit, until its deadline: the commit's outcome may be
// unknown, and a retry of it with the same attempt must find the delivery
// current. A delivery the commit found not outstanding (due, awaiting
// redelivery) is due again after writeRetry.
func (s *machine) restoreLease(p *partition, job *writeJob, off uint64) {
	for _, cl := range job.leases {
		if cl.part != p.n || cl.lease.Offset != off {
			continue
		}
		l := cl.lease
		if c := s.consumer(l.Consumer); c != nil {
			c.out++
		} else {
			l.Consumer = 0 // its consumer left: outstanding until the deadline all the same
		}
		if p.inflight.Add(l) {
			s.pinTo(p, off, l.Consumer)
		}
		return
	}
	s.toRetry(p, off, s.now.Add(writeRetry))
}
