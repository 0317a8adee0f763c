package storage

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/dgraph-io/badger/v4"
)

// deleteLimit bounds the keys one trim command deletes, so one command never
// makes a transaction too big or holds up appends for long.
const deleteLimit = 10000

// EnforceRetention runs one retention pass now: for every partition it
// deletes the messages the topic's retention limits exclude and forgets the
// ids older than the dedup window. Deletions go through each partition's
// writer like appends. The background loop calls it every
// Options.RetentionInterval.
func (s *Store) EnforceRetention(ctx context.Context) error {
	s.topicsMu.RLock()
	handles := make([]*topicHandle, 0, len(s.topics))
	for _, h := range s.topics {
		handles = append(handles, h)
	}
	s.topicsMu.RUnlock()
	var errs []error
	for _, h := range handles {
		for _, p := range h.partitions {
			if err := s.enforcePartition(ctx, h.topic.Config, p); err != nil {
				errs = append(errs, fmt.Errorf("topic %q partition %d: %w", h.topic.Name, p.part, err))
			}
		}
	}
	return errors.Join(errs...)
}

func (s *Store) enforcePartition(ctx context.Context, cfg TopicConfig, p *Partition) error {
	if s.opts.Replicated {
		// Trims and expiries are entries of the partition's Raft group,
		// applied on every replica: the leader proposes them; a
		// partition with no group yet has nothing to do.
		if lp := p.leadership.Load(); lp == nil || !(*lp).Leads() {
			return nil
		}
	}
	if s.guard.admit(writeFree, 0) != nil {
		return nil // read-only: the guard has said so
	}
	to, err := s.trimPoint(p, cfg, s.opts.Clock.Now())
	if err != nil {
		return err
	}
	for to > p.visible.Load().first {
		res, err := p.do(ctx, command{kind: cmdTrim, trimTo: to, limit: deleteLimit})
		if err != nil {
			return fmt.Errorf("trim to %d: %w", to, err)
		}
		s.opts.Metrics.retained(p.topic, res.deleted)
		if !res.more {
			break
		}
	}
	// Deletes the d keys of expired ids and drops the filters whose ids
	// all expired, a bounded number of keys per command. A partition with
	// no ids in memory is left alone: its writer is not started for
	// nothing (its d keys are expired when the writer next starts).
	if !p.dedupLoaded() {
		return nil
	}
	for {
		res, err := p.do(ctx, command{kind: cmdExpireDedup, dedupWindow: cfg.DedupWindow})
		if err != nil {
			return fmt.Errorf("forget expired ids: %w", err)
		}
		if !res.more {
			return nil
		}
	}
}

// trimPoint returns the first offset the partition should keep under cfg's
// limits at now. It walks message keys from the oldest, reading no values.
func (s *Store) trimPoint(p *Partition, cfg TopicConfig, now time.Time) (uint64, error) {
	vis := p.visible.Load()
	to := vis.first
	if n := cfg.RetentionMaxMessages; n > 0 && vis.head-vis.first > n {
		to = vis.head - n
	}
	if cfg.RetentionMaxAge == 0 && cfg.RetentionMaxBytes == 0 || vis.head == to {
		return to, nil
	}
	bytes := vis.bytes
	err := s.db.View(func(txn *badger.Txn) error {
		it := messageKeys(txn, p.tid, p.part)
		defer it.Close()
		for it.Seek(messageSeekKey(p.tid, p.part, vis.first)); it.Valid(); it.Next() {
			info, err := decodeMessageKey(it.Item().Key())
			if err != nil {
				return err
			}
			if info.offset >= vis.head {
				break
			}
			if info.offset >= to {
				tooOld := cfg.RetentionMaxAge > 0 && now.Sub(info.publishTime) >= cfg.RetentionMaxAge
				tooBig := cfg.RetentionMaxBytes > 0 && bytes > cfg.RetentionMaxBytes
				if !tooOld && !tooBig {
					break
				}
				to = info.offset + 1
			}
			bytes -= min(bytes, uint64(info.size))
		}
		return nil
	})
	return to, err
}

// retentionTick runs a retention pass and schedules the next one.
func (s *Store) retentionTick() {
	if !s.startBackground() {
		return
	}
	defer s.bg.Done()
	if err := s.EnforceRetention(context.Background()); err != nil && !s.isClosing() {
		s.log.Error("retention pass", "err", err)
	}
	s.bgMu.Lock()
	defer s.bgMu.Unlock()
	if !s.closing {
		s.retention = s.opts.Clock.AfterFunc(s.opts.RetentionInterval, s.retentionTick)
	}
}

// gcTick rewrites value-log files that are mostly garbage (deleted or
// expired messages), deletes the message keys such rewrites brought back
// below their partition's first offset (sweep.go), and schedules the next
// run.
func (s *Store) gcTick() {
	if !s.startBackground() {
		return
	}
	defer s.bg.Done()
	s.collectValueLog()
	s.sweepPartitions()
	s.bgMu.Lock()
	defer s.bgMu.Unlock()
	if !s.closing {
		s.gc = s.opts.Clock.AfterFunc(s.opts.GCInterval, s.gcTick)
	}
}

// The share of a value-log file that must be garbage for GC to rewrite it
// (the copy it makes is at most the rest): half, or a fifth while the disk
// is below its reserve, when any space back counts more than the copying.
const (
	gcDiscardRatio        = 0.5
	gcDiscardRatioLowDisk = 0.2
)

// collectValueLog runs Badger's value-log GC until it finds no file with
// enough garbage, at most 16 files a run. Badger learns what is garbage
// from its compactions and DropPrefix (discard statistics). A GC copies a
// file's live values into the newest file before it removes the file: it
// runs only while the disk has room for that copy above half the reserve
// (diskGuard.roomFor), which Badger's own flushes keep.
func (s *Store) collectValueLog() {
	for runs := 0; runs < 16 && !s.isClosing(); runs++ {
		ratio := gcDiscardRatio
		if s.guard.state().Low {
			ratio = gcDiscardRatioLowDisk
		}
		if !s.guard.roomFor(uint64(float64(s.opts.ValueLogFileBytes) * (1 - ratio))) {
			return
		}
		if err := s.db.RunValueLogGC(ratio); err != nil {
			if !errors.Is(err, badger.ErrNoRewrite) && !errors.Is(err, badger.ErrRejected) {
				s.log.Warn("value log gc", "err", err)
			}
			return
		}
		s.opts.Metrics.gcRan()
		s.guard.look()
	}
}

// pageOutTick hands the mapped pages of Badger's files back to the page
// cache (pageOut) and schedules the next pass.
func (s *Store) pageOutTick() {
	if !s.startBackground() {
		return
	}
	defer s.bg.Done()
	if _, err := pageOut(s.opts.Dir); err != nil {
		s.log.Debug("page out badger files", "err", err)
	}
	s.bgMu.Lock()
	defer s.bgMu.Unlock()
	if !s.closing {
		s.pageout = s.opts.Clock.AfterFunc(s.opts.PageOutInterval, s.pageOutTick)
	}
}

// startBackground registers a background run unless the store is closing.
func (s *Store) startBackground() bool {
	s.bgMu.Lock()
	defer s.bgMu.Unlock()
	if s.closing {
		return false
	}
	s.bg.Add(1)
	return true
}
