package storage

import (
	"bytes"
	"encoding/binary"
	"fmt"

	"github.com/dgraph-io/badger/v4"
)

// loadPartitions reads topic t's partition metas, one key per partition in
// one walk (a point lookup each costs ten times as much: a store of 100,000
// partitions opens in a fraction of a second), and makes its partitions;
// their writers start with their first command.
func (s *Store) loadPartitions(txn *badger.Txn, t Topic, imports map[[2]uint32]bool) ([]*Partition, error) {
	opts := badger.DefaultIteratorOptions
	opts.Prefix = topicPrefix(kindPartition, t.id)
	opts.PrefetchValues = false // a few bytes each, inline: read in place
	it := txn.NewIterator(opts)
	defer it.Close()
	parts := make([]*Partition, 0, t.Config.Partitions)
	it.Rewind()
	for part := range t.Config.Partitions {
		if !it.Valid() || !bytes.Equal(it.Item().Key(), partitionKey(t.id, part)) {
			return nil, fmt.Errorf("topic %q partition %d meta: %w", t.Name, part, badger.ErrKeyNotFound)
		}
		st := partitionState{tid: t.id, part: part}
		if err := it.Item().Value(func(v []byte) (err error) {
			st.meta, err = decodePartitionMeta(v)
			return err
		}); err != nil {
			return nil, fmt.Errorf("topic %q partition %d: %w", t.Name, part, err)
		}
		if imports[[2]uint32{t.id, part}] {
			s.log.Warn("partition import was cut short: the partition is empty until its raft group restores it",
				"topic", t.Name, "partition", part)
		}
		parts = append(parts, newPartition(t.Name, st, t.Config.DedupWindow, s.db, s.sync, &s.opts, s.tails))
		it.Next()
	}
	return parts, nil
}

// cutImports returns the partitions whose import was cut short (an import
// marker is left), as topic id and partition.
func cutImports(txn *badger.Txn) (map[[2]uint32]bool, error) {
	opts := badger.DefaultIteratorOptions
	opts.Prefix = []byte{kindImport}
	opts.PrefetchValues = false
	it := txn.NewIterator(opts)
	defer it.Close()
	cut := make(map[[2]uint32]bool)
	for it.Rewind(); it.Valid(); it.Next() {
		k := it.Item().Key()
		if len(k) != partitionPrefixLen {
			return nil, fmt.Errorf("import marker key %x: %w", k, ErrCorrupt)
		}
		cut[[2]uint32{binary.BigEndian.Uint32(k[1:]), binary.BigEndian.Uint32(k[5:])}] = true
	}
	return cut, nil
}
