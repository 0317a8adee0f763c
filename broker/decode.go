package broker

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/encoding"
	gproto "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/ferrymq/ferry/internal/clock"
	"github.com/ferrymq/ferry/internal/echo"
)

// A request that does not decode (bad wire format, or a string that is
// not UTF-8, which proto3 forbids) is the client's fault: INVALID_ARGUMENT.
// grpc-go answers a codec error with INTERNAL, and for a unary call
// before any interceptor runs, so the server's codec does not return it:
// it resets the message and marks it with the error in an unknown field
// (markField), and the interceptors, first thing, refuse a marked message.
// The schema and the proto3 rule stay as they are; a marked message that
// somehow reached a handler would be an empty one, which every handler
// refuses.

// markField is the field number of the mark: the largest there is, unused
// by the API.
const markField protowire.Number = protowire.MaxValidNumber

// requestCodec is the default protobuf codec, except that a message that
// does not decode is marked instead of failing.
type requestCodec struct{ encoding.CodecV2 }

func newRequestCodec() requestCodec { return requestCodec{encoding.GetCodecV2(gproto.Name)} }

func (c requestCodec) Unmarshal(data mem.BufferSlice, v any) error {
	err := c.CodecV2.Unmarshal(data, v)
	m, ok := v.(proto.Message)
	if err == nil || !ok {
		return err
	}
	proto.Reset(m)
	mark := protowire.AppendTag(nil, markField, protowire.BytesType)
	mark = protowire.AppendString(mark, echo.Cut(err.Error(), 200))
	m.ProtoReflect().SetUnknown(mark)
	return nil
}

// undecodable returns the decoding error a message was marked with.
func undecodable(v any) (string, bool) {
	m, ok := v.(proto.Message)
	if !ok {
		return "", false
	}
	u := m.ProtoReflect().GetUnknown()
	if len(u) == 0 {
		return "", false
	}
	num, typ, n := protowire.ConsumeTag(u)
	if n < 0 || num != markField || typ != protowire.BytesType {
		return "", false
	}
	msg, n := protowire.ConsumeString(u[n:])
	if n < 0 {
		return "", false
	}
	return msg, true
}

// undecodableStatus is the answer to a marked request.
func undecodableStatus(msg string) error {
	return status.Error(codes.InvalidArgument, "the request does not decode ("+msg+"); strings must be valid UTF-8")
}

// refuseUndecodable answers a marked unary request INVALID_ARGUMENT,
// logging it at WARN at most once per rl's interval.
func refuseUndecodable(rl *rateLog) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if msg, bad := undecodable(req); bad {
			rl.warn("request refused: it does not decode", "method", info.FullMethod, "err", msg)
			return nil, undecodableStatus(msg)
		}
		return handler(ctx, req)
	}
}

// refuseUndecodableStream ends a stream with INVALID_ARGUMENT at its first
// marked frame.
func refuseUndecodableStream(rl *rateLog) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		return handler(srv, &checkedStream{ServerStream: ss, rl: rl, method: info.FullMethod})
	}
}

type checkedStream struct {
	grpc.ServerStream
	rl     *rateLog
	method string
}

func (s *checkedStream) RecvMsg(m any) error {
	if err := s.ServerStream.RecvMsg(m); err != nil {
		return err
	}
	if msg, bad := undecodable(m); bad {
		s.rl.warn("stream frame refused: it does not decode", "method", s.method, "err", msg)
		return undecodableStatus(msg)
	}
	return nil
}

// rateLog logs at WARN at most once per interval, saying how many lines
// it left out since the last: a client sending garbage in a loop must not
// flood the log.
type rateLog struct {
	lg       *slog.Logger
	clk      clock.Clock
	interval time.Duration

	mu      sync.Mutex // guards next and dropped
	next    time.Time
	dropped int
}

func newRateLog(lg *slog.Logger, clk clock.Clock, interval time.Duration) *rateLog {
	return &rateLog{lg: lg, clk: clk, interval: interval}
}

func (r *rateLog) warn(msg string, args ...any) {
	now := r.clk.Now()
	r.mu.Lock()
	if now.Before(r.next) {
		r.dropped++
		r.mu.Unlock()
		return
	}
	dropped := r.dropped
	r.next, r.dropped = now.Add(r.interval), 0
	r.mu.Unlock()
	if dropped > 0 {
		args = append(args, "left_out", dropped)
	}
	r.lg.Warn(msg, args...)
}
