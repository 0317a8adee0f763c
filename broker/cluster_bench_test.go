package broker

import (
	"context"
	"testing"

	ferryv1 "github.com/ferrymq/ferry/proto/ferry/v1"
	"github.com/ferrymq/ferry/storage"
)

// BenchmarkClusterPublish compares, in one run, a pipelined publish stream
// (1 KiB messages with ids, batches of 100, 32 batches in flight,
// fsync=always) to a one-partition topic on a single node and on a
// three-node cluster: sent to the partition's leader, and through a
// follower, which forwards. The three nodes run in this process and share
// its cores, so the cluster's numbers are a lower bound of three machines'.
//
//	go test -run '^$' -bench ClusterPublish -benchtime 20000x ./broker
func BenchmarkClusterPublish(b *testing.B) {
	fsyncAlways := func(o *Options) { o.Storage.Fsync = storage.FsyncAlways }
	b.Run("nodes=1", func(b *testing.B) {
		ts := startServer(b, fsyncAlways)
		ts.createTopic(b, "bench", &ferryv1.TopicConfig{Partitions: 1})
		benchPublishStream(b, ts.pub, "bench")
	})
	for _, to := range []string{"leader", "follower"} {
		b.Run("nodes=3/to="+to, func(b *testing.B) {
			// The default tick (elections after 1 to 2 s), as in production:
			// at full load the tests' 20 ms tick makes a leader step down.
			c := startTestCluster(b, 3, fsyncAlways, defaultTick)
			c[1].createTopic(b, "bench", &ferryv1.TopicConfig{Partitions: 1})
			leader := partitionLeader(b, c[1], "bench", 0)
			target := leader
			if to == "follower" {
				target = leader%3 + 1
			}
			benchPublishStream(b, c[target].pub, "bench")
		})
	}
}

// partitionLeader returns the node that leads topic's partition part, as
// ts's node sees it once a leader is known.
func partitionLeader(tb testing.TB, ts *testServer, topic string, part uint32) uint64 {
	tb.Helper()
	var leader uint64
	eventuallyB(tb, "the partition has a leader", func() bool {
		resp, err := ts.admin.GetClusterStatus(context.Background(), &ferryv1.GetClusterStatusRequest{Local: true})
		if err != nil {
			tb.Fatal(err)
		}
		for _, g := range resp.GetNodes()[0].GetGroups() {
			if g.GetTopic() == topic && g.GetPartition() == part {
				leader = g.GetLeader()
			}
		}
		return leader != 0
	})
	return leader
}
