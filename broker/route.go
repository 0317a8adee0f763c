package broker

import (
	"hash/fnv"
	"sync/atomic"

	ferryv1 "github.com/ferrymq/ferry/proto/ferry/v1"
	"github.com/ferrymq/ferry/storage"
)

// partitionFor picks a message's partition among n: the explicit partition,
// else a hash of the key, else a hash of the id, else rr. Hashing the id
// sends every retry of a message to the same partition, where its dedup
// entry is. The hash is FNV-1a 32: stable across versions and nodes.
func partitionFor(m *ferryv1.PublishMessage, n uint32, rr uint32) uint32 {
	if m.Partition != nil {
		return *m.Partition
	}
	return hashPartition(m.Key, m.Id, n, rr)
}

// hashPartition is partitionFor without an explicit partition.
func hashPartition(key []byte, id string, n, rr uint32) uint32 {
	switch {
	case len(key) > 0:
		h := fnv.New32a()
		h.Write(key)
		return h.Sum32() % n
	case id != "":
		h := fnv.New32a()
		h.Write([]byte(id))
		return h.Sum32() % n
	}
	return rr % n
}

// storeRouter routes messages the engine publishes (dead letters) the way
// publishers' messages are routed.
func storeRouter(st *storage.Store) func(topic string, m *storage.Message) (uint32, error) {
	var rr roundRobin
	return func(topic string, m *storage.Message) (uint32, error) {
		t, err := st.Topic(topic)
		if err != nil {
			return 0, err
		}
		return hashPartition(m.Key, m.ID, t.Config.Partitions, rr.take()), nil
	}
}

// roundRobin hands each batch its own starting partition for messages with
// neither key nor id: a batch stays on one partition (one group commit)
// while successive batches spread out.
type roundRobin struct{ next atomic.Uint32 }

func (r *roundRobin) take() uint32 { return r.next.Add(1) - 1 }
