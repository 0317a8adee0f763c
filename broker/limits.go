package broker

import (
	"fmt"
	"strings"
	"time"

	"github.com/ferrymq/ferry/internal/echo"
	ferryv1 "github.com/ferrymq/ferry/proto/ferry/v1"
	"github.com/ferrymq/ferry/storage"
)

// Request limits. Payloads are further bounded by each topic's
// max_message_bytes.
const (
	MaxIDBytes          = storage.MaxIDBytes
	MaxKeyBytes         = 4 << 10
	MaxHeaders          = 64
	MaxHeaderBytes      = 16 << 10
	MaxBatchMessages    = 1000
	MaxBatchBytes       = 4 << 20
	MaxReadMessages     = 1000
	DefaultReadMessages = 100
	// DefaultReadBytes keeps a default read well inside a default gRPC
	// client's 4 MiB receive limit.
	DefaultReadBytes = 1 << 20
	// MaxRetentionAge is the longest retention_max_age a topic takes.
	MaxRetentionAge = 100 * 365 * 24 * time.Hour
	// maxStatusBytes bounds a status message, whatever it quotes.
	maxStatusBytes = 1 << 10
	// maxRecvMsgBytes is gRPC's own limit: above a full batch, so that an
	// oversize batch up to twice the limit gets our message, not gRPC's.
	maxRecvMsgBytes = 2 * MaxBatchBytes
)

// validateBatch checks every message of a publish against the request limits
// and the topic's config. It returns an error naming the first offending
// message and field; nothing is queued if it fails.
func validateBatch(t storage.Topic, msgs []*ferryv1.PublishMessage) error {
	if len(msgs) == 0 {
		return invalidf("the batch has no messages; send 1 to %d", MaxBatchMessages)
	}
	if len(msgs) > MaxBatchMessages {
		return invalidf("the batch has %d messages, over the limit of %d; split it", len(msgs), MaxBatchMessages)
	}
	total := 0
	for i, m := range msgs {
		if m == nil {
			return invalidf("message %d is null", i)
		}
		if len(m.Id) > MaxIDBytes {
			return invalidf("message %d: id is %d bytes, over the limit of %d", i, len(m.Id), MaxIDBytes)
		}
		if len(m.Key) > MaxKeyBytes {
			return invalidf("message %d: key is %d bytes, over the limit of %d", i, len(m.Key), MaxKeyBytes)
		}
		if len(m.Payload) > int(t.Config.MaxMessageBytes) {
			return invalidf("message %d: payload is %d bytes, over topic %s's limit of %d (max_message_bytes)",
				i, len(m.Payload), echo.Quote(t.Name), t.Config.MaxMessageBytes)
		}
		if len(m.Headers) > MaxHeaders {
			return invalidf("message %d has %d headers, over the limit of %d", i, len(m.Headers), MaxHeaders)
		}
		hb := 0
		for k, v := range m.Headers {
			hb += len(k) + len(v)
		}
		if hb > MaxHeaderBytes {
			return invalidf("message %d: headers are %d bytes, over the limit of %d", i, hb, MaxHeaderBytes)
		}
		for k := range m.Headers {
			if err := validateHeaderName(k); err != nil {
				return invalidf("message %d: %s", i, err.Error())
			}
		}
		if m.Partition != nil && *m.Partition >= t.Config.Partitions {
			return invalidf("message %d: partition %d is out of range; topic %s has partitions 0 to %d",
				i, *m.Partition, echo.Quote(t.Name), t.Config.Partitions-1)
		}
		total += len(m.Id) + len(m.Key) + len(m.Payload) + hb
	}
	if total > MaxBatchBytes {
		return invalidf("the batch is %d bytes, over the limit of %d; split it", total, MaxBatchBytes)
	}
	return nil
}

// ReservedHeaderPrefix starts the names of headers only the broker sets
// (the dead-letter headers, ferry-dead-letter-*). A publish may not set
// one, in any case of letters: a consumer of a dead-letter topic must be
// able to trust them.
const ReservedHeaderPrefix = "ferry-"

// validateHeaderName refuses a header name that is empty, has a byte
// outside printable ASCII (! to ~: no space, no control character), or
// starts with ReservedHeaderPrefix.
func validateHeaderName(k string) error {
	if k == "" {
		return invalidf("a header name is empty")
	}
	for j := 0; j < len(k); j++ {
		if c := k[j]; c < '!' || c > '~' {
			return invalidf("header name %s has byte %#02x at %d; names are printable ASCII, ! to ~", echo.Quote(k), c, j)
		}
	}
	if len(k) >= len(ReservedHeaderPrefix) && strings.EqualFold(k[:len(ReservedHeaderPrefix)], ReservedHeaderPrefix) {
		return invalidf("header name %s: the prefix %s is reserved to the broker", echo.Quote(k), ReservedHeaderPrefix)
	}
	return nil
}

// invalidError is a request that breaks a rule; it maps to INVALID_ARGUMENT.
type invalidError struct{ msg string }

func (e *invalidError) Error() string { return e.msg }

func invalidf(format string, args ...any) error {
	return &invalidError{msg: fmt.Sprintf(format, args...)}
}
