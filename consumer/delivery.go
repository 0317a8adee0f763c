package consumer

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/ferrymq/ferry/storage"
)

// DeliveryID names one delivery: which message, which attempt (the fencing
// token) and which epoch (bumped by every seek, so a delivery made before a
// seek cannot ack one made after it).
type DeliveryID struct {
	Partition uint32
	Offset    uint64
	Attempt   uint32
	Epoch     uint32
}

// String is partition.offset.attempt.epoch, as in "0.41.2.0": the id
// without its check value (see IDSeal), for logs and tests.
func (d DeliveryID) String() string {
	return fmt.Sprintf("%d.%d.%d.%d", d.Partition, d.Offset, d.Attempt, d.Epoch)
}

// ParseDeliveryID parses what String made. Its errors do not quote s.
func ParseDeliveryID(s string) (DeliveryID, error) {
	f := strings.Split(s, ".")
	if len(f) != 4 {
		return DeliveryID{}, fmt.Errorf("delivery id of %d fields: want partition.offset.attempt.epoch: %w", len(f), ErrUnknownDelivery)
	}
	var n [4]uint64
	for i, bits := range []int{32, 64, 32, 32} {
		v, err := strconv.ParseUint(f[i], 10, bits)
		if err != nil || (f[i] != "0" && f[i][0] == '0') {
			return DeliveryID{}, fmt.Errorf("delivery id: field %d is not a number: %w", i+1, ErrUnknownDelivery)
		}
		n[i] = v
	}
	return DeliveryID{Partition: uint32(n[0]), Offset: n[1], Attempt: uint32(n[2]), Epoch: uint32(n[3])}, nil
}

// Delivery is a message handed to a consumer.
type Delivery struct {
	Consumer uint64
	ID       DeliveryID
	// Message may share memory with the store: read it, never modify it.
	Message storage.Message
}
