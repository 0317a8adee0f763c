//go:build ferry_broken_amo

package broker

import (
	"google.golang.org/grpc"

	ferryv1 "github.com/ferrymq/ferry/proto/ferry/v1"
)

// A broker built with -tags ferry_broken_amo sends every frame of
// deliveries twice: at-most-once subscriptions deliver twice, and
// effectively-once ones hand one attempt out twice. Only the test of
// `ferry verify` builds it, to see verify report the violations.
func init() {
	brokenStreams = append(brokenStreams, func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
		if info.FullMethod != ferryv1.SubscriberService_Subscribe_FullMethodName {
			return h(srv, ss)
		}
		return h(srv, twiceStream{ss})
	})
}

type twiceStream struct{ grpc.ServerStream }

func (s twiceStream) SendMsg(m any) error {
	if err := s.ServerStream.SendMsg(m); err != nil {
		return err
	}
	if r, ok := m.(*ferryv1.SubscribeResponse); ok && len(r.GetDeliveries().GetDeliveries()) > 0 {
		return s.ServerStream.SendMsg(m)
	}
	return nil
}
