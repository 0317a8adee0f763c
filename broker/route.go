package broker

import (
	"hash/fnv"
	"sync/atomic"

	ferryv1 "github.com/ferrymq/ferry/proto/ferry/v1"
)

// partitionFor picks a message's partition among n: the explicit partition,
// else a hash of the key, else a hash of the id, else rr. Hashing the id
// sends every retry of a message to the same partition, where its dedup
// entry is. The hash is FNV-1a 32: stable across versions and nodes.
func partitionFor(m *ferryv1.PublishMessage, n uint32, rr uint32) uint32 {
	switch {
	case m.Partition != nil:
		return *m.Partition
	case len(m.Key) > 0:
		h := fnv.New32a()
		h.Write(m.Key)
		return h.Sum32() % n
	case m.Id != "":
		h := fnv.New32a()
		h.Write([]byte(m.Id))
		return h.Sum32() % n
	}
	return rr % n
}

// roundRobin hands each batch its own starting partition for messages with
// neither key nor id: a batch stays on one partition (one group commit)
// while successive batches spread out.
type roundRobin struct{ next atomic.Uint32 }

func (r *roundRobin) take() uint32 { return r.next.Add(1) - 1 }
