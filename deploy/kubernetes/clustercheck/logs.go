package main

import (
	"context"
	"fmt"
	"slices"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	ferryv1 "github.com/ferrymq/ferry/proto/ferry/v1"
)

// partitionLogs is a topic as one node stores it: each partition's
// messages in offset order.
type partitionLogs [][]*ferryv1.Message

// readAll reads every partition of topic from the node at addr alone (no
// failover to another node). A read in a cluster is linearizable: the node
// first catches up with its partition's leader, so a node that is behind
// answers once it is not. UNAVAILABLE is tried again until ctx ends.
func readAll(ctx context.Context, addr, topic string, partitions uint32) (partitionLogs, error) {
	conn, err := grpc.NewClient("passthrough:///"+addr, append(grpcOptions(),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20)))...)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	admin := ferryv1.NewAdminServiceClient(conn)
	logs := make(partitionLogs, partitions)
	for p := range partitions {
		var from uint64
		for {
			rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			resp, err := admin.ReadMessages(rctx, &ferryv1.ReadMessagesRequest{Topic: topic, Partition: p, FromOffset: from, MaxMessages: 1000})
			cancel()
			if err != nil {
				if c := status.Code(err); (c == codes.Unavailable || c == codes.DeadlineExceeded) && sleepCtx(ctx, 500*time.Millisecond) {
					continue
				}
				return nil, fmt.Errorf("partition %d from offset %d: %w", p, from, err)
			}
			logs[p] = append(logs[p], resp.GetMessages()...)
			from = resp.GetNextOffset()
			if from >= resp.GetHeadOffset() {
				break
			}
		}
	}
	return logs, nil
}

func (l partitionLogs) count() int {
	n := 0
	for _, ms := range l {
		n += len(ms)
	}
	return n
}

// ids returns the set of message ids.
func (l partitionLogs) ids() map[string]bool {
	ids := map[string]bool{}
	for _, ms := range l {
		for _, m := range ms {
			ids[m.GetId()] = true
		}
	}
	return ids
}

// payloadCounts counts the messages by payload.
func (l partitionLogs) payloadCounts() map[string]int {
	n := map[string]int{}
	for _, ms := range l {
		for _, m := range ms {
			n[string(m.GetPayload())]++
		}
	}
	return n
}

// missing lists the acknowledged publishes not found at their partition
// and offset.
func (l partitionLogs) missing(acked map[string]ack) []string {
	at := map[ack]string{}
	for p, ms := range l {
		for _, m := range ms {
			at[ack{uint32(p), m.GetOffset()}] = m.GetId()
		}
	}
	var out []string
	for id, a := range acked {
		if got, ok := at[a]; !ok || got != id {
			out = append(out, fmt.Sprintf("%s (acked at %d/%d, found %q)", id, a.partition, a.offset, got))
		}
	}
	slices.Sort(out)
	return out
}

// duplicates lists ids stored more than once.
func (l partitionLogs) duplicates() []string {
	seen := map[string]bool{}
	var out []string
	for _, ms := range l {
		for _, m := range ms {
			if seen[m.GetId()] {
				out = append(out, m.GetId())
			}
			seen[m.GetId()] = true
		}
	}
	return out
}

// diff describes the first difference from o, or returns "".
func (l partitionLogs) diff(o partitionLogs) string {
	for p := range l {
		a, b := l[p], o[p]
		if len(a) != len(b) {
			return fmt.Sprintf("partition %d holds %d messages here, %d there", p, len(a), len(b))
		}
		for i := range a {
			if a[i].GetOffset() != b[i].GetOffset() || a[i].GetId() != b[i].GetId() {
				return fmt.Sprintf("partition %d: %s at %d here, %s at %d there", p, a[i].GetId(), a[i].GetOffset(), b[i].GetId(), b[i].GetOffset())
			}
		}
	}
	return ""
}
