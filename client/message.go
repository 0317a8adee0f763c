package client

import (
	"context"
	"time"

	ferryv1 "github.com/ferrymq/ferry/proto/ferry/v1"
)

// Message is a message to publish or one received.
type Message struct {
	// ID is the dedup id: a second publish of one id to a topic within its
	// dedup window is not stored again. Empty: the producer sets a UUIDv7.
	ID string
	// Key routes the message (one key, one partition, in order).
	Key []byte
	// Payload is the body.
	Payload []byte
	// Headers are application headers.
	Headers map[string]string
	// Partition, if set, picks the partition explicitly.
	Partition *uint32
	// Topic is where Process publishes an output message.
	Topic string

	// Set on received messages:
	Offset      uint64    // offset in its partition
	PublishTime time.Time // when the broker stored it
	Attempt     uint32    // 1 for the first delivery; the fencing token
	DeliveryID  string    // names this delivery in acks

	d *delivery // how to ack it; nil on messages to publish
}

// PublishResult says where a message was stored.
type PublishResult struct {
	Partition uint32
	Offset    uint64
	// Duplicate: the id was already published within the topic's dedup
	// window; nothing was stored and Partition and Offset are the
	// original's.
	Duplicate bool
}

// Ack acks the message (fire and forget). Under effectively-once use
// AckSync to learn whether the broker confirmed it.
func (m *Message) Ack() {
	if m.d != nil {
		m.d.settle(ackAck)
	}
}

// Nack asks for the message to be redelivered after the subscription's
// backoff.
func (m *Message) Nack() {
	if m.d != nil {
		m.d.settle(ackNack)
	}
}

// AckSync acks the message and returns the broker's answer: nil once the
// ack is durable (effectively-once) or taken, a FAILED_PRECONDITION error
// if the delivery is stale (redelivered since) or already acked.
func (m *Message) AckSync(ctx context.Context) error {
	if m.d == nil {
		return nil
	}
	return m.d.ackSync(ctx)
}

func toPublishMessage(m *Message) *ferryv1.PublishMessage {
	return &ferryv1.PublishMessage{Id: m.ID, Key: m.Key, Payload: m.Payload, Headers: m.Headers, Partition: m.Partition}
}

func fromMessage(pm *ferryv1.Message) *Message {
	return &Message{
		ID:          pm.GetId(),
		Key:         pm.GetKey(),
		Payload:     pm.GetPayload(),
		Headers:     pm.GetHeaders(),
		Partition:   ptr(pm.GetPartition()),
		Offset:      pm.GetOffset(),
		PublishTime: pm.GetPublishTime().AsTime(),
	}
}

func ptr[T any](v T) *T { return &v }

// size is what a message counts against a producer's byte limits.
func (m *Message) size() int {
	n := len(m.ID) + len(m.Key) + len(m.Payload) + 16
	for k, v := range m.Headers {
		n += len(k) + len(v)
	}
	return n
}
