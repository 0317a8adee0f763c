package storage

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/dgraph-io/badger/v4"

	"github.com/ferrymq/ferry/internal/clock"
)

// Store is ferry's log: topics of partitions of messages in one Badger
// database. Open it with Open and release it with Close. All methods are
// safe for concurrent use.
type Store struct {
	opts  Options
	db    *badger.DB
	log   *slog.Logger
	sync  *syncer
	guard *diskGuard
	tails *tailBudget // every partition's tail cache together

	adminMu sync.Mutex // serializes CreateTopic, UpdateTopic and DeleteTopic
	multiMu sync.Mutex // serializes multi-partition writes (write.go)

	topicsMu sync.RWMutex // guards topics
	topics   map[string]*topicHandle

	raftMu   sync.Mutex // guards raftLogs; held while a group's log loads or drops
	raftLogs map[uint64]*RaftLog

	bgMu      sync.Mutex // guards closing, timers and background work starts
	closing   bool
	retention clock.Timer
	gc        clock.Timer
	pageout   clock.Timer    // nil when Options.PageOutInterval is 0
	bg        sync.WaitGroup // retention passes, GC runs and topic drops under way

	closeOnce sync.Once
	closeErr  error
}

// Topic is a topic's name and effective config.
type Topic struct {
	Name       string
	Config     TopicConfig
	CreateTime time.Time
	id         uint32 // keys the topic's data; never reused
}

// ID returns the number that keys the topic's data: given from a counter
// in the store at creation, never reused. Two stores given the same
// sequence of creates give the same ids.
func (t Topic) ID() uint32 { return t.id }

// topicHandle is a live topic: its record and its partitions' writers. It
// is replaced, not changed, when the config is updated.
type topicHandle struct {
	topic      Topic
	partitions []*Partition
	subs       *subscriptions // carried over to the new handle on update
}

// PartitionInfo describes what a partition holds, as of its last sync.
type PartitionInfo struct {
	Partition uint32
	First     uint64 // offset of the oldest retained message
	Head      uint64 // offset the next message gets
	Messages  uint64 // Head - First
	Bytes     uint64 // record bytes retained
}

// Open opens (or creates) the store in opts.Dir, finds every topic and
// partition head from one meta key per partition, resumes any unfinished
// topic drop and starts retention and GC.
func Open(opts Options) (*Store, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	guard, err := openDiskGuard(&opts)
	if err != nil {
		return nil, err
	}
	removed, err := removeEmptyLogs(opts.Dir)
	if err != nil {
		return nil, err
	}
	if len(removed) > 0 {
		opts.Logger.Warn("removed empty log files a crash left behind", "files", removed)
	}
	bopts := badgerOptions(opts)
	if guard.openedRO {
		if err := cutWALs(opts.Dir); err != nil {
			return nil, fmt.Errorf("open read-only on a full disk: %w", err)
		}
		bopts = bopts.WithReadOnly(true)
	}
	db, err := badger.Open(bopts)
	if err != nil {
		if guard.openedRO {
			return nil, fmt.Errorf("open badger read-only in %s (%s): %w", opts.Dir, guard.state(), err)
		}
		return nil, fmt.Errorf("open badger in %s: %w", opts.Dir, err)
	}
	s := &Store{
		opts:   opts,
		db:     db,
		log:    opts.Logger,
		guard:  guard,
		topics: make(map[string]*topicHandle),

		raftLogs: make(map[uint64]*RaftLog),
	}
	s.sync = newSyncer(db, &s.opts, guard)
	s.tails = newTailBudget(opts.TailCacheTotalBytes)
	if err := s.load(); err != nil {
		s.sync.close()
		_ = db.Close()
		return nil, err
	}
	guard.start()
	if guard.openedRO {
		return s, nil // no retention or GC: nothing can be written
	}
	s.bgMu.Lock()
	s.retention = s.opts.Clock.AfterFunc(s.opts.RetentionInterval, s.retentionTick)
	s.gc = s.opts.Clock.AfterFunc(s.opts.GCInterval, s.gcTick)
	if s.opts.PageOutInterval > 0 {
		s.pageout = s.opts.Clock.AfterFunc(s.opts.PageOutInterval, s.pageOutTick)
	}
	s.bgMu.Unlock()
	return s, nil
}

// load reads every topic record and partition meta and starts the writers.
func (s *Store) load() error {
	var tombstones []uint32
	var subTombs [][2]uint32
	err := s.db.View(func(txn *badger.Txn) (err error) {
		imports, err := cutImports(txn)
		if err != nil {
			return err
		}
		opts := badger.DefaultIteratorOptions
		opts.Prefix = []byte{kindTopic}
		it := txn.NewIterator(opts)
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			item := it.Item()
			name := string(item.Key()[1:])
			var t Topic
			if err := item.Value(func(v []byte) (err error) {
				t, err = decodeTopicRecord(name, v)
				return err
			}); err != nil {
				return err
			}
			h := &topicHandle{topic: t, subs: newSubscriptions()}
			if h.partitions, err = s.loadPartitions(txn, t, imports); err != nil {
				return err
			}
			s.topics[name] = h
		}
		it.Close()
		tsOpts := badger.DefaultIteratorOptions
		tsOpts.Prefix = []byte{kindTombstone}
		tsOpts.PrefetchValues = false
		ts := txn.NewIterator(tsOpts)
		defer ts.Close()
		for ts.Rewind(); ts.Valid(); ts.Next() {
			tid, err := decodeTombstoneKey(ts.Item().Key())
			if err != nil {
				return err
			}
			tombstones = append(tombstones, tid)
		}
		subTombs, err = s.loadSubscriptions(txn)
		return err
	})
	if err != nil {
		for _, h := range s.topics {
			for _, p := range h.partitions {
				p.close()
			}
		}
		return fmt.Errorf("load topics: %w", err)
	}
	for _, tid := range tombstones {
		s.startTopicDrop(tid)
	}
	for _, ts := range subTombs {
		s.startBackgroundDrop(subTombstoneKey(ts[0], ts[1]), ackedIDPrefix(ts[0], ts[1]))
	}
	for name, h := range s.topics {
		for _, p := range h.partitions {
			m := p.visible.Load()
			s.log.Debug("partition recovered", "topic", name, "partition", p.part, "first_offset", m.first, "head_offset", m.head)
		}
	}
	return nil
}

// Close stops taking requests, finishes every queued write, stops retention
// and GC, and closes Badger. It is idempotent; ctx bounds the wait for
// background work.
func (s *Store) Close(ctx context.Context) error {
	s.closeOnce.Do(func() {
		// Admin calls under way finish first; later ones see closing.
		s.adminMu.Lock()
		defer s.adminMu.Unlock()
		s.bgMu.Lock()
		s.closing = true
		if s.retention != nil {
			s.retention.Stop()
			s.gc.Stop()
		}
		if s.pageout != nil {
			s.pageout.Stop()
		}
		s.bgMu.Unlock()
		s.guard.stop()

		s.topicsMu.Lock()
		handles := s.topics
		s.topics = map[string]*topicHandle{}
		s.topicsMu.Unlock()
		for _, h := range handles {
			for _, p := range h.partitions {
				p.close()
			}
		}
		s.closeRaftLogs()
		s.sync.close()

		bgDone := make(chan struct{})
		go func() { s.bg.Wait(); close(bgDone) }()
		select {
		case <-bgDone:
		case <-ctx.Done():
			s.closeErr = fmt.Errorf("wait for background work: %w", ctx.Err())
		}
		if err := s.db.Close(); err != nil {
			s.closeErr = errors.Join(s.closeErr, fmt.Errorf("close badger: %w", err))
		}
	})
	return s.closeErr
}

// Syncs returns, for benchmarks, how many batches of groups that wrote the
// syncer answered under FsyncAlways: about the fsyncs made, as Badger syncs
// once for the commits it gathers into one write, and a group that wrote
// nothing (a duplicate) needs none.
func (s *Store) Syncs() uint64 { return s.sync.syncs.Load() }

// update runs fn in a read-write transaction, durable under the fsync
// policy as appends are (Badger syncs it under FsyncAlways).
func (s *Store) update(fn func(txn *badger.Txn) error) error {
	return s.guard.commit(func() error { return s.db.Update(fn) })
}

func (s *Store) isClosing() bool {
	s.bgMu.Lock()
	defer s.bgMu.Unlock()
	return s.closing
}

// handle returns the live topic called name.
func (s *Store) handle(name string) (*topicHandle, error) {
	s.topicsMu.RLock()
	defer s.topicsMu.RUnlock()
	h, ok := s.topics[name]
	if !ok {
		if s.closing {
			return nil, ErrClosed
		}
		return nil, fmt.Errorf("topic %q: %w", name, ErrTopicNotFound)
	}
	return h, nil
}

func (s *Store) partition(topic string, part uint32) (*topicHandle, *Partition, error) {
	h, err := s.handle(topic)
	if err != nil {
		return nil, nil, err
	}
	if part >= uint32(len(h.partitions)) {
		return nil, nil, fmt.Errorf("topic %q has %d partitions, no partition %d: %w", topic, len(h.partitions), part, ErrPartitionNotFound)
	}
	return h, h.partitions[part], nil
}

// Topic returns the topic called name, or ErrTopicNotFound.
func (s *Store) Topic(name string) (Topic, error) {
	h, err := s.handle(name)
	if err != nil {
		return Topic{}, err
	}
	return h.topic, nil
}

// Topics returns every topic, ordered by name.
func (s *Store) Topics() []Topic {
	s.topicsMu.RLock()
	ts := make([]Topic, 0, len(s.topics))
	for _, h := range s.topics {
		ts = append(ts, h.topic)
	}
	s.topicsMu.RUnlock()
	slices.SortFunc(ts, func(a, b Topic) int { return cmp.Compare(a.Name, b.Name) })
	return ts
}

// Enqueue queues msgs for appending to a partition and returns without
// waiting for them to be stored. Appends queued one after another by one
// goroutine get increasing offsets in that order. Enqueue blocks only while
// the partition's queue is full.
func (s *Store) Enqueue(ctx context.Context, topic string, part uint32, msgs []Message) (*Pending, error) {
	h, p, err := s.partition(topic, part)
	if err != nil {
		return nil, err
	}
	size := 0
	for i := range msgs {
		if len(msgs[i].ID) > MaxIDBytes {
			// The id rides in the message key; a longer one could not be
			// read back.
			return nil, fmt.Errorf("message %d: id of %d bytes is over %d: %w", i, len(msgs[i].ID), MaxIDBytes, ErrInvalidMessage)
		}
		size += messageRecordSize(&msgs[i])
	}
	if err := s.guard.admit(writeGrow, size); err != nil {
		return nil, err
	}
	r, err := p.submit(ctx, command{kind: cmdAppend, msgs: msgs, dedupWindow: h.topic.Config.DedupWindow, size: size})
	if err != nil {
		return nil, err
	}
	return &Pending{r: r}, nil
}

// Append appends msgs to a partition and returns once they are durable under
// the fsync policy: one result per message, in order.
func (s *Store) Append(ctx context.Context, topic string, part uint32, msgs []Message) ([]AppendResult, error) {
	pend, err := s.Enqueue(ctx, topic, part, msgs)
	if err != nil {
		return nil, err
	}
	return pend.Wait(ctx)
}

// Read returns up to maxMessages messages of a partition from offset from,
// in offset order, whose records add up to at most maxBytes — except that
// the first message is returned whatever its size. Reads near the head are
// served from memory; the returned messages may share memory with the store
// and must not be modified. Reading at the head returns nothing;
// an offset below the first retained one or beyond the head returns an
// *OffsetOutOfRangeError.
func (s *Store) Read(ctx context.Context, topic string, part uint32, from uint64, maxMessages, maxBytes int) ([]Message, error) {
	_, p, err := s.partition(topic, part)
	if err != nil {
		return nil, err
	}
	vis := p.visible.Load()
	if from < vis.first || from > vis.head {
		return nil, &OffsetOutOfRangeError{Offset: from, First: vis.first, Head: vis.head}
	}
	if from == vis.head || maxMessages <= 0 {
		return nil, nil
	}
	if msgs, ok := p.tail.read(from, vis.head, maxMessages, maxBytes); ok {
		return msgs, nil
	}
	tid := p.tid
	var msgs []Message
	err = s.db.View(func(txn *badger.Txn) error {
		// Values are not prefetched: that would only copy each once more
		// before decode copies it, and a reference's entry is read on its
		// own anyway.
		it := messageKeys(txn, tid, part)
		defer it.Close()
		rr := refReader{txn: txn}
		next, bytes := from, 0
		for it.Seek(messageSeekKey(tid, part, from)); it.Valid(); it.Next() {
			if len(msgs) == maxMessages || ctx.Err() != nil {
				break
			}
			item := it.Item()
			info, err := decodeMessageKey(item.Key())
			if err != nil {
				return err
			}
			if len(msgs) > 0 && bytes+int(info.size) > maxBytes {
				break
			}
			if info.offset >= vis.head {
				break // committed but not yet synced: not visible
			}
			if info.offset != next {
				// Retention removed it since vis was read.
				cur := p.visible.Load()
				return &OffsetOutOfRangeError{Offset: next, First: cur.first, Head: cur.head}
			}
			m := Message{ID: info.id, Partition: part, Offset: info.offset, PublishTime: info.publishTime}
			if err := rr.message(item, info, &m); err != nil {
				return fmt.Errorf("offset %d: %w", info.offset, err)
			}
			msgs = append(msgs, m)
			bytes += int(info.size)
			next++
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return msgs, ctx.Err()
}

// WaitHead blocks until a partition holds a readable message at offset off
// (its head is beyond off), and returns the head. It returns ErrClosed if
// the partition goes away (topic deleted, store closed) and ctx's error if
// ctx ends first.
func (s *Store) WaitHead(ctx context.Context, topic string, part uint32, off uint64) (uint64, error) {
	_, p, err := s.partition(topic, part)
	if err != nil {
		return 0, err
	}
	return p.waitHead(ctx, off)
}

// OffsetAt returns the first offset of a partition published at or after t,
// or its head if every retained message is older.
func (s *Store) OffsetAt(topic string, part uint32, t time.Time) (uint64, error) {
	_, p, err := s.partition(topic, part)
	if err != nil {
		return 0, err
	}
	vis := p.visible.Load()
	var off uint64
	err = s.db.View(func(txn *badger.Txn) error {
		it := messageKeys(txn, p.tid, part)
		defer it.Close()
		off, err = searchTime(it, p.tid, part, vis.first, vis.head, func(pt time.Time) bool { return pt.Before(t) })
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("offset at %v: %w", t, err)
	}
	return off, nil
}

// Partitions returns the state of every partition of a topic, as of each
// partition's last sync.
func (s *Store) Partitions(topic string) ([]PartitionInfo, error) {
	h, err := s.handle(topic)
	if err != nil {
		return nil, err
	}
	infos := make([]PartitionInfo, len(h.partitions))
	for i, p := range h.partitions {
		m := p.visible.Load()
		infos[i] = PartitionInfo{Partition: p.part, First: m.first, Head: m.head, Messages: m.head - m.first, Bytes: m.bytes}
	}
	return infos, nil
}

// badgerLogger routes Badger's logs into slog; its chatter goes to Debug.
type badgerLogger struct{ l *slog.Logger }

func (b badgerLogger) Errorf(f string, a ...any) {
	b.l.Error(trimNL(fmt.Sprintf(f, a...)), "component", "badger")
}
func (b badgerLogger) Warningf(f string, a ...any) {
	b.l.Warn(trimNL(fmt.Sprintf(f, a...)), "component", "badger")
}
func (b badgerLogger) Infof(f string, a ...any) {
	b.l.Debug(trimNL(fmt.Sprintf(f, a...)), "component", "badger")
}
func (b badgerLogger) Debugf(f string, a ...any) {
	b.l.Debug(trimNL(fmt.Sprintf(f, a...)), "component", "badger")
}

func trimNL(s string) string {
	for len(s) > 0 && s[len(s)-1] == '\n' {
		s = s[:len(s)-1]
	}
	return s
}
