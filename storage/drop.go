package storage

import (
	"errors"
	"fmt"

	"github.com/dgraph-io/badger/v4"
)

// startBackgroundDrop deletes every key under prefixes in the background,
// then the tombstone that marks the drop (resumed at the next Open if
// interrupted). Badger's DropPrefix would block every other topic's writes
// meanwhile, so the keys go through write batches instead.
func (s *Store) startBackgroundDrop(tomb []byte, prefixes ...[]byte) {
	s.bgMu.Lock()
	defer s.bgMu.Unlock()
	if s.closing {
		return
	}
	s.bg.Add(1)
	go func() {
		defer s.bg.Done()
		// A drop the disk guard stopped resumes at the next open.
		var full *DiskFullError
		if err := s.drop(tomb, prefixes); err != nil && !s.isClosing() && !errors.As(err, &full) {
			s.log.Error("drop deleted data", "tombstone", fmt.Sprintf("%x", tomb), "err", err)
		}
	}()
}

// startTopicDrop drops a deleted topic's data: messages, subscriptions,
// cursors and acked ids.
func (s *Store) startTopicDrop(tid uint32) {
	prefixes := make([][]byte, 0, len(topicDataKinds))
	for _, k := range topicDataKinds {
		prefixes = append(prefixes, topicPrefix(k, tid))
	}
	s.startBackgroundDrop(tombstoneKey(tid), prefixes...)
}

func (s *Store) drop(tomb []byte, prefixes [][]byte) error {
	if err := s.dropAtOnce(prefixes); err != nil {
		return err
	}
	for _, prefix := range prefixes {
		for {
			if s.isClosing() {
				return ErrClosed
			}
			if err := s.guard.admit(writeFree, 0); err != nil {
				return err
			}
			n, err := s.deleteSome(prefix, 10000)
			if err != nil {
				return err
			}
			if n == 0 {
				break
			}
		}
	}
	return s.update(func(txn *badger.Txn) error { return txn.Delete(tomb) })
}

// deleteSome deletes up to limit keys under prefix and says how many.
func (s *Store) deleteSome(prefix []byte, limit int) (int, error) {
	return deleteSome(s.db, prefix, limit)
}

// deleteSome deletes up to limit keys of db under prefix and says how many.
func deleteSome(db *badger.DB, prefix []byte, limit int) (int, error) {
	var keys [][]byte
	err := db.View(func(txn *badger.Txn) error {
		opts := badger.DefaultIteratorOptions
		opts.PrefetchValues = false
		opts.Prefix = prefix
		it := txn.NewIterator(opts)
		defer it.Close()
		for it.Rewind(); it.Valid() && len(keys) < limit; it.Next() {
			keys = append(keys, it.Item().KeyCopy(nil))
		}
		return nil
	})
	if err != nil || len(keys) == 0 {
		return 0, err
	}
	wb := db.NewWriteBatch()
	defer wb.Cancel()
	for _, k := range keys {
		if err := wb.Delete(k); err != nil {
			return 0, err
		}
	}
	return len(keys), wb.Flush()
}
