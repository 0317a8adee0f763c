package storage

import (
	"context"
	"encoding/binary"
	"fmt"

	"github.com/dgraph-io/badger/v4"
)

// Import replaces a replicated partition's state with a peer's Export
// (export.go), chunk by chunk as they arrive, holding one chunk at a time:
//
//  1. Replica.Import parks the partition's writer and, in one transaction,
//     writes the import marker (i <tid> <part>) and an empty meta, whose
//     applied index is 0. Then it deletes the partition's messages and
//     dedup ids.
//  2. Add writes each chunk's pairs, checked (importCheck), in write
//     batches: messages, cursors (overwriting this node's) and acked ids
//     (added to this node's: other partitions' groups write them too).
//  3. Finish writes the partition's dedup ids (d keys, from the messages'
//     keys), then the export's meta, with its applied index, and deletes
//     the marker in one last transaction, syncs, and resumes the writer.
//
// So the applied index is written last: a crash (or an Abort) in between
// leaves a partition that claims nothing applied, whose meta says it is
// empty (readers see no message), and whose group restores it again from
// the snapshot it saved — deleting what the cut-short import left. Only
// the marker says why it is empty; Open logs it.
//
// Cursors and acked ids of a subscription this node has deleted are not
// imported (the peer may not have applied the delete yet); those of a
// subscription this node has not created yet are (its create keeps the
// cursor a partition's group wrote first).
type Import struct {
	p       *Partition
	s       *Store
	resume  func(partitionState)
	check   importCheck
	wb      *badger.WriteBatch
	nextSub uint32 // the store's next subscription id when the import began
	err     error  // the first failure; the import is over
	done    bool   // finished or aborted: the writer runs again
}

// Import starts replacing the partition with an export whose applied index
// is at least minApplied (a snapshot's index). Until Finish or Abort the
// partition's writer waits, and its reads find it empty. Writes this node
// proposed and that were not applied yet fail with ErrReplaced: the
// export may hold them or not. Every Import must end with Finish or
// Abort.
func (r *Replica) Import(ctx context.Context, minApplied uint64) (*Import, error) {
	p := r.p
	st, resume, err := p.hold(ctx)
	if err != nil {
		return nil, err
	}
	im := &Import{p: p, s: r.s, resume: resume, check: importCheck{tid: p.tid, part: p.part, minApplied: minApplied}}
	if err := im.begin(ctx); err != nil {
		if im.marked() {
			im.resumeEmpty() // the marker stays: the partition is empty and claims nothing
		} else {
			resume(st)
		}
		return nil, fmt.Errorf("import topic %q partition %d: %w", p.topic, p.part, err)
	}
	im.wb = p.db.NewWriteBatch()
	return im, nil
}

// marked reports whether the marker was written: the writer's state is the
// empty one from then on.
func (im *Import) marked() bool { return im.nextSub != 0 }

// begin writes the marker and an empty meta, and deletes the messages.
func (im *Import) begin(ctx context.Context) error {
	p := im.p
	err := p.db.Update(func(txn *badger.Txn) error {
		next, err := readCounter(txn, nextSubIDKey())
		if err != nil {
			return err
		}
		if err := txn.Set(importKey(p.tid, p.part), encodeImportMarker(im.check.minApplied)); err != nil {
			return err
		}
		empty := partitionMeta{}
		if err := txn.Set(partitionKey(p.tid, p.part), empty.encode()); err != nil {
			return err
		}
		im.nextSub = next // not 0: counters start at 1
		return nil
	})
	if err != nil {
		return fmt.Errorf("mark the import: %w", err)
	}
	p.failProposals(ErrReplaced)
	p.applied.Store(0)
	p.tail.reset()
	p.publish(&partitionMeta{}, nil, nil)
	for _, kind := range []byte{kindMessage, kindDedup} {
		for {
			if err := ctx.Err(); err != nil {
				return err
			}
			n, err := deleteSome(p.db, partitionPrefix(kind, p.tid, p.part), deleteLimit)
			if err != nil {
				return fmt.Errorf("delete the partition's messages and dedup ids: %w", err)
			}
			if n == 0 {
				break
			}
		}
	}
	return nil
}

// Import marker, the value of an i key:
//
//	ver u8 | snapshot index u64 (the least applied index the import takes)
func encodeImportMarker(index uint64) []byte {
	return binary.BigEndian.AppendUint64([]byte{recordVersion}, index)
}

// Add writes one chunk of the export, in order. Import keeps chunk until
// Finish or Abort. A chunk that is malformed, holds a key of another
// partition or out of order, or makes the export inconsistent fails with
// ErrInvalidExport; after any failure the import is aborted and every call
// returns the error.
func (im *Import) Add(chunk []byte) error {
	if im.err != nil {
		return im.err
	}
	if im.done {
		return fmt.Errorf("import is over: %w", ErrClosed)
	}
	pairs, err := decodeExportChunk(chunk)
	if err != nil {
		return im.fail(err)
	}
	for _, pr := range pairs {
		if err := im.check.add(pr); err != nil {
			return im.fail(err)
		}
		if !im.keep(pr.key) {
			continue
		}
		e := badger.NewEntry(pr.key, pr.value)
		e.ExpiresAt = pr.expires
		if err := im.wb.SetEntry(e); err != nil {
			return im.fail(fmt.Errorf("write key %x: %w", pr.key, err))
		}
	}
	return nil
}

// keep reports whether a checked key is written now: not the meta (which
// goes last), nor a cursor or acked id of a subscription this node deleted.
func (im *Import) keep(k []byte) bool {
	var sid uint32
	switch k[0] {
	case kindPartition:
		return false
	case kindAckedID:
		sid = binary.BigEndian.Uint32(k[5:])
	case kindCursor:
		sid = binary.BigEndian.Uint32(k[9:])
	default:
		return true
	}
	if sid >= im.nextSub {
		return true // not created here yet
	}
	h, err := im.s.handle(im.p.topic)
	return err == nil && h.subs.isLive(sid)
}

// Finish checks that the export was complete, writes its meta and applied
// index last, makes it durable, and lets the writer go on from the
// imported state: Replica.Applied returns the export's applied index.
func (im *Import) Finish() error {
	if im.err != nil {
		return im.err
	}
	if im.done {
		return fmt.Errorf("import is over: %w", ErrClosed)
	}
	if err := im.check.finish(); err != nil {
		return im.fail(err)
	}
	p, meta := im.p, *im.check.meta
	// Every message imported is a record: none pins the log here.
	meta.pin, meta.pinOff = 0, 0
	if err := im.wb.Flush(); err != nil {
		return im.fail(fmt.Errorf("write the export: %w", err))
	}
	window := DefaultDedupWindow
	if h, err := im.s.handle(p.topic); err == nil {
		window = h.topic.Config.DedupWindow
	}
	// The last publish time, not this node's clock: every entry to come is
	// applied at that time or later, so the d keys hold every id a lookup
	// can find, whatever this node's clock says.
	dedup, err := importDedup(p.db, p.tid, p.part, meta, window)
	if err != nil {
		return im.fail(fmt.Errorf("write the dedup ids: %w", err))
	}
	err = p.db.Update(func(txn *badger.Txn) error {
		if err := txn.Set(partitionKey(p.tid, p.part), meta.encode()); err != nil {
			return err
		}
		return txn.Delete(importKey(p.tid, p.part))
	})
	if err != nil {
		return im.fail(fmt.Errorf("write the meta: %w", err))
	}
	// The writer is parked, so Close has not closed the syncer.
	if err := enqueueSync(p.sync).wait(); err != nil {
		return im.fail(err)
	}
	st := partitionState{tid: p.tid, part: p.part, meta: meta, dedup: dedup}
	im.done = true
	p.applied.Store(meta.applied)
	p.syncedPin.Store(0)
	p.pin.Store(0)
	if p.refLog != nil {
		// The entries the snapshot that asked for the import replaced
		// were kept while the partition referenced them (RaftLog.save).
		if err := p.refLog.dropReplaced(); err != nil {
			p.log.Warn("entries a snapshot replaced not deleted; they go when the log is next loaded", "topic", p.topic, "partition", p.part, "err", err)
		}
	}
	p.publish(&meta, nil, nil)
	im.resume(st)
	p.log.Info("partition imported", "topic", p.topic, "partition", p.part, "applied", meta.applied,
		"first_offset", meta.first, "head_offset", meta.head, "dedup_ids", st.dedup.len())
	return nil
}

// Abort gives up the import: the partition stays empty, claiming nothing
// applied, with its marker, until an import finishes. Safe to call more
// than once, and after Finish (it then does nothing).
func (im *Import) Abort() {
	if im.done {
		return
	}
	im.done = true
	im.wb.Cancel()
	im.resumeEmpty()
}

// resumeEmpty lets the writer go on from the empty state the marker stands
// for.
func (im *Import) resumeEmpty() {
	im.resume(partitionState{tid: im.p.tid, part: im.p.part, dedup: newDedupIndex()})
}

// fail aborts the import with err, which every later call returns.
func (im *Import) fail(err error) error {
	im.err = fmt.Errorf("import topic %q partition %d: %w", im.p.topic, im.p.part, err)
	im.Abort()
	return im.err
}
