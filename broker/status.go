package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"syscall"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/ferrymq/ferry/auth"
	"github.com/ferrymq/ferry/cluster"
	"github.com/ferrymq/ferry/consumer"
	"github.com/ferrymq/ferry/internal/echo"
	"github.com/ferrymq/ferry/storage"
)

// toStatus is the one place an error becomes a gRPC status. Messages say
// what went wrong and, where it helps, what to do; they quote request
// values through echo.Quote, and are cut at maxStatusBytes whatever they
// quote.
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	st := status.Convert(statusOf(err))
	if len(st.Message()) <= maxStatusBytes {
		return st.Err()
	}
	p := st.Proto()
	p.Message = echo.Cut(p.Message, maxStatusBytes)
	return status.FromProto(p).Err()
}

func statusOf(err error) error {
	if _, ok := status.FromError(err); ok {
		return err
	}
	var invalid *invalidError
	var exhausted *exhaustedError
	var oor *storage.OffsetOutOfRangeError
	var full *storage.DiskFullError
	switch {
	case errors.Is(err, auth.ErrUnauthenticated):
		return status.Error(codes.Unauthenticated, describe(err, auth.ErrUnauthenticated))
	case errors.Is(err, auth.ErrDenied):
		return status.Error(codes.PermissionDenied, describe(err, auth.ErrDenied)+"; ask for it in the broker's policy (--auth-policy)")
	case errors.Is(err, errPeerOnly):
		return status.Error(codes.PermissionDenied, err.Error())
	case errors.As(err, &invalid):
		return status.Error(codes.InvalidArgument, invalid.msg)
	case errors.As(err, &exhausted):
		return exhaustedStatus(exhausted.msg, exhausted.retry)
	case errors.As(err, &full):
		return toStatus(diskFull(full))
	case errors.Is(err, storage.ErrInvalidConfig):
		return status.Error(codes.InvalidArgument, describe(err, storage.ErrInvalidConfig))
	case errors.Is(err, storage.ErrTopicNotFound):
		return status.Error(codes.NotFound, describe(err, storage.ErrTopicNotFound)+" not found; create it first (ferry topic create)")
	case errors.Is(err, storage.ErrInvalidMessage):
		return status.Error(codes.InvalidArgument, describe(err, storage.ErrInvalidMessage))
	case errors.Is(err, storage.ErrPartitionNotFound):
		return status.Error(codes.InvalidArgument, describe(err, storage.ErrPartitionNotFound))
	case errors.Is(err, storage.ErrTopicExists):
		return status.Error(codes.AlreadyExists, describe(err, storage.ErrTopicExists)+
			" exists with a different config; delete it first or create it with the same config")
	case errors.Is(err, storage.ErrSubscriptionNotFound), errors.Is(err, consumer.ErrSubscriptionNotFound):
		return status.Error(codes.NotFound, describe(err, consumer.ErrSubscriptionNotFound, storage.ErrSubscriptionNotFound)+
			" not found; create it first (ferry sub create)")
	case errors.Is(err, consumer.ErrSubscriptionExists), errors.Is(err, storage.ErrSubscriptionExists):
		return status.Error(codes.AlreadyExists, describe(err, consumer.ErrSubscriptionExists, storage.ErrSubscriptionExists)+
			" exists with a different config; delete it first or create it with the same config")
	case errors.Is(err, consumer.ErrInvalidOptions):
		return status.Error(codes.InvalidArgument, describe(err, consumer.ErrInvalidOptions))
	case errors.Is(err, consumer.ErrInvalidCredit):
		return status.Error(codes.InvalidArgument, err.Error())
	case errors.Is(err, consumer.ErrExclusiveBusy):
		return status.Error(codes.FailedPrecondition, describe(err, consumer.ErrExclusiveBusy)+
			" already has its consumer (exclusive); use a failover or shared subscription for more than one")
	case errors.Is(err, consumer.ErrStaleAttempt):
		return status.Error(codes.FailedPrecondition, describe(err, consumer.ErrStaleAttempt)+
			": the message was redelivered since; this attempt no longer counts")
	case errors.Is(err, consumer.ErrAlreadyAcked):
		return status.Error(codes.FailedPrecondition, err.Error())
	case errors.Is(err, consumer.ErrUnknownDelivery):
		return status.Error(codes.FailedPrecondition, describe(err, consumer.ErrUnknownDelivery)+
			": no such outstanding delivery (never made, made before a restart, or being committed)")
	case errors.Is(err, consumer.ErrMalformedDelivery):
		return status.Error(codes.InvalidArgument, describe(err, consumer.ErrMalformedDelivery)+
			": malformed delivery id; use the delivery_id of a Delivery as received")
	case errors.Is(err, consumer.ErrForeignDelivery):
		return status.Error(codes.InvalidArgument, describe(err, consumer.ErrForeignDelivery)+
			": not a delivery id of this subscription (another subscription's or topic's, or altered); ack on the subscription that delivered it")
	case errors.Is(err, consumer.ErrNotSupported):
		return status.Error(codes.FailedPrecondition, err.Error())
	case errors.Is(err, consumer.ErrDetached), errors.Is(err, cluster.ErrNotOwner):
		return status.Error(codes.Unavailable, describe(err, consumer.ErrDetached, cluster.ErrNotOwner)+"; reconnect")
	case errors.Is(err, storage.ErrFenced):
		// Another node took the subscription over: this node's write was
		// refused and changed nothing. The owner answers a retry.
		return status.Error(codes.Unavailable, err.Error()+"; the subscription moved to another node: retry (with the same ids), or reconnect")
	case errors.Is(err, storage.ErrNeedIDs):
		return status.Error(codes.FailedPrecondition, describe(err, storage.ErrNeedIDs)+
			": a commit across replicated partitions needs an id on every output message, so that a retry stores it once (client.Process derives them)")
	case errors.Is(err, storage.ErrReplicatedMulti):
		return status.Error(codes.Unavailable, describe(err, storage.ErrReplicatedMulti)+
			": a partition became replicated while the write waited; retry")
	case errors.Is(err, cluster.ErrNotLeader), errors.Is(err, cluster.ErrLeadershipLost),
		errors.Is(err, cluster.ErrProposalDropped), errors.Is(err, storage.ErrNotReplicated):
		// No leader (an election, or this node is cut off from the
		// majority), or the write's outcome is unknown: retry, with the
		// same ids.
		return status.Error(codes.Unavailable, err.Error()+"; retry (with the same message ids)")
	case errors.Is(err, cluster.ErrClosed), errors.Is(err, cluster.ErrGroupFailed):
		return status.Error(codes.Unavailable, err.Error()+"; retry against another node")
	case errors.Is(err, cluster.ErrTooLarge):
		return status.Error(codes.InvalidArgument, describe(err, cluster.ErrTooLarge)+": the batch is too large for one replicated entry; publish smaller batches")
	case errors.Is(err, storage.ErrTooLarge):
		return status.Error(codes.InvalidArgument, "the write is too large for one transaction; commit fewer or smaller messages")
	case errors.As(err, &oor):
		return status.Error(codes.OutOfRange, oor.Error())
	case errors.Is(err, storage.ErrClosed):
		return status.Error(codes.Unavailable, "the broker is shutting down; retry against another node or after it restarts")
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, err.Error())
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, err.Error())
	case errors.Is(err, syscall.ENOSPC):
		return status.Error(codes.ResourceExhausted, "the broker's disk is full: "+err.Error())
	}
	return status.Error(codes.Internal, err.Error())
}

// diskRetry is how long a client refused for disk space should wait: the
// store reads free space every second, but space comes back when an
// operator acts, not in a second.
const diskRetry = 5 * time.Second

// diskFull is the answer to a write the store refused to keep its disk
// reserve.
func diskFull(e *storage.DiskFullError) error {
	space := fmt.Sprintf("%s free, reserve %s (ferry serve --disk-reserve)", storage.FormatBytes(e.Free), storage.FormatBytes(e.Reserve))
	switch {
	case e.Cause != "":
		return exhaustedf(diskRetry, "the broker is read-only: %s; %s; reads go on", e.Cause, space)
	case e.ReadOnly:
		return exhaustedf(diskRetry, "the broker's disk is nearly full, so it is read-only but for deletes: %s; delete topics or grow the volume, then retry", space)
	}
	return exhaustedf(diskRetry, "the broker's disk is below its reserve, so publishing is refused: %s; acks, reads and deletes go on; delete topics, shorten retention or grow the volume, then retry", space)
}

// exhaustedError is a limit the broker is over (disk reserve, memory
// budget, a quota): the call changed nothing and may be retried after
// retry. It maps to RESOURCE_EXHAUSTED with a RetryInfo detail.
type exhaustedError struct {
	msg   string
	retry time.Duration
}

func (e *exhaustedError) Error() string { return e.msg }

// exhaustedf is an exhaustedError whose client should wait retry first.
func exhaustedf(retry time.Duration, format string, args ...any) error {
	return &exhaustedError{msg: fmt.Sprintf(format, args...), retry: retry}
}

// exhaustedStatus is RESOURCE_EXHAUSTED with msg and a RetryInfo detail
// asking the client to wait retry before it tries again (the SDK does).
func exhaustedStatus(msg string, retry time.Duration) error {
	st := status.New(codes.ResourceExhausted, msg)
	if retry <= 0 {
		return st.Err()
	}
	withRetry, err := st.WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(retry)})
	if err != nil { // only a detail that cannot be marshalled fails
		return st.Err()
	}
	return withRetry.Err()
}

// hasRetryInfo reports whether st asks its client to wait and retry:
// RESOURCE_EXHAUSTED with a RetryInfo, as exhaustedStatus makes.
func hasRetryInfo(st *status.Status) bool {
	if st.Code() != codes.ResourceExhausted {
		return false
	}
	for _, d := range st.Details() {
		if _, ok := d.(*errdetails.RetryInfo); ok {
			return true
		}
	}
	return false
}

// describe is err's message without a sentinel's own words at the end,
// which the status code already says.
func describe(err error, sentinels ...error) string {
	msg := err.Error()
	for _, s := range sentinels {
		msg = strings.TrimSuffix(msg, ": "+s.Error())
	}
	return msg
}

// logInternal logs every unary call answered INTERNAL: a broker fault, not
// the client's, and the one kind of error an operator must see.
func logInternal(lg *slog.Logger) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		resp, err := handler(ctx, req)
		if status.Code(err) == codes.Internal {
			lg.Error("internal error answered", "method", info.FullMethod, "err", err)
		}
		return resp, err
	}
}

// logInternalStream is logInternal for streams.
func logInternalStream(lg *slog.Logger) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		err := handler(srv, ss)
		if status.Code(err) == codes.Internal {
			lg.Error("internal error answered", "method", info.FullMethod, "err", err)
		}
		return err
	}
}
