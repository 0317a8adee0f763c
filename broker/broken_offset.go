//go:build ferry_broken_offset

package broker

import (
	"google.golang.org/grpc"

	ferryv1 "github.com/ferrymq/ferry/proto/ferry/v1"
)

// A broker built with -tags ferry_broken_offset answers one streamed
// publish in ten with the offset after the one it stored the message at.
// Only the test of `ferry verify` builds it, to see verify report the
// acknowledged offsets that the log contradicts.
func init() {
	brokenStreams = append(brokenStreams, func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
		if info.FullMethod != ferryv1.PublisherService_PublishStream_FullMethodName {
			return h(srv, ss)
		}
		return h(srv, offByOneStream{ss})
	})
}

type offByOneStream struct{ grpc.ServerStream }

func (s offByOneStream) SendMsg(m any) error {
	if r, ok := m.(*ferryv1.PublishStreamResponse); ok {
		for _, res := range r.GetResults() {
			if res.GetOffset()%10 == 3 {
				res.Offset++
			}
		}
	}
	return s.ServerStream.SendMsg(m)
}
