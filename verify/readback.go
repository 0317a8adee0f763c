package verify

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"google.golang.org/grpc"

	"github.com/ferrymq/ferry/client"
	ferryv1 "github.com/ferrymq/ferry/proto/ferry/v1"
)

// MarkerDetail marks the read-back's marker messages in the history: they
// are published at the end to learn when a node's log is complete, and
// are no input of any promise but the log's.
const MarkerDetail = "marker"

// readBack reads every partition of the run's two topics into the
// history. The SDK has no read call, so this one uses the AdminService's
// ReadMessages, as `ferry read` does. In a cluster a node's log may lag:
// a marker is first published to each partition, and a partition is read
// until its marker shows, so the read holds everything acknowledged
// before it began.
func (r *run) readBack(ctx context.Context) error {
	conn, err := r.readConn(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	admin := ferryv1.NewAdminServiceClient(conn)
	for _, topic := range []string{r.setup.Topic, r.setup.OutputTopic} {
		for part := range r.o.Partitions {
			marker, err := r.publishMarker(ctx, topic, part)
			if err != nil {
				return err
			}
			if err := r.readPartition(ctx, admin, topic, part, marker); err != nil {
				return err
			}
		}
	}
	return nil
}

// readConn connects to the first of the servers that answers.
func (r *run) readConn(ctx context.Context) (*grpc.ClientConn, error) {
	var errs []error
	for _, addr := range strings.Split(r.o.Server, ",") {
		conn, err := grpc.NewClient(strings.TrimSpace(addr), r.o.dialOptions(grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(16<<20)))...)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err = ferryv1.NewAdminServiceClient(conn).ListTopics(cctx, &ferryv1.ListTopicsRequest{})
		cancel()
		if err == nil {
			return conn, nil
		}
		conn.Close()
		errs = append(errs, fmt.Errorf("%s: %w", addr, err))
	}
	return nil, fmt.Errorf("verify: read back: no server answers: %w", errors.Join(errs...))
}

// publishMarker publishes one marker to topic's partition part and records
// it; it returns the marker's id.
func (r *run) publishMarker(ctx context.Context, topic string, part uint32) (string, error) {
	p := r.c.NewProducer(topic, client.ProducerOptions{})
	defer p.Close(context.WithoutCancel(ctx))
	id := fmt.Sprintf("%smarker-%s-%d", r.o.Prefix, strings.TrimPrefix(topic, r.o.Prefix), part)
	call := time.Now()
	pctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	res, err := p.Publish(pctx, &client.Message{ID: id, Partition: &part, Payload: []byte("verify read-back marker")})
	if err != nil {
		return "", fmt.Errorf("verify: publish the read-back marker to %s/%d: %w", topic, part, err)
	}
	r.h.Add(Event{Kind: Publish, Call: call, Topic: topic, ID: id, Partition: res.Partition, Offset: res.Offset,
		Acked: true, Detail: MarkerDetail})
	return id, nil
}

// readPartition reads a partition from offset 0 until the read shows
// marker, and records what it read.
func (r *run) readPartition(ctx context.Context, admin ferryv1.AdminServiceClient, topic string, part uint32, marker string) error {
	deadline := time.Now().Add(60 * time.Second)
	for {
		call := time.Now()
		msgs, err := readAll(ctx, admin, topic, part)
		if err == nil && slices.ContainsFunc(msgs, func(m *ferryv1.Message) bool { return m.GetId() == marker }) {
			ret := time.Now()
			for _, m := range msgs {
				e := Event{Kind: Read, Call: call, Time: ret, Topic: topic, Partition: part, Offset: m.GetOffset(),
					ID: m.GetId(), Key: string(m.GetKey()), Input: m.GetHeaders()[InputHeader]}
				if m.GetId() == marker {
					e.Detail = MarkerDetail
				}
				r.h.Add(e)
			}
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("verify: read back %s/%d: the marker never showed (last error: %v)", topic, part, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// readAll reads a partition's whole log.
func readAll(ctx context.Context, admin ferryv1.AdminServiceClient, topic string, part uint32) ([]*ferryv1.Message, error) {
	var out []*ferryv1.Message
	for next := uint64(0); ; {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		resp, err := admin.ReadMessages(cctx, &ferryv1.ReadMessagesRequest{Topic: topic, Partition: part, FromOffset: next, MaxMessages: 1000})
		cancel()
		if err != nil {
			return nil, err
		}
		out = append(out, resp.GetMessages()...)
		next = resp.GetNextOffset()
		if len(resp.GetMessages()) == 0 || next >= resp.GetHeadOffset() {
			return out, nil
		}
	}
}
