package broker

import (
	"github.com/ferrymq/ferry/auth"
	ferryv1 "github.com/ferrymq/ferry/proto/ferry/v1"
)

// need is one permission a call needs, on one resource.
type need struct {
	perm auth.Permission
	res  auth.Resource
}

// rpcAccess is what one RPC of the public port asks of its caller once
// auth is on (docs/security.md has this table in prose).
type rpcAccess struct {
	// open: no credentials needed (health).
	open bool
	// needs lists the permissions a request (of a stream: a frame) needs;
	// an RPC with needs nil only needs its caller authenticated.
	needs func(req any) []need
	// perFrame: each frame of the stream is checked by its handler
	// (checkFrame), which answers a refused frame and goes on; else only
	// the first frame is checked, and a refusal ends the stream.
	perFrame bool
	// list: the call needs the permission on at least something, and its
	// answer is filtered (filter) to what the caller holds it on.
	list   auth.Permission
	filter func(resp any, allowed func(auth.Resource) bool)
}

func topicRes(t string) auth.Resource               { return auth.Resource{Topic: t} }
func subRes(t, s string) auth.Resource              { return auth.Resource{Topic: t, Subscription: s} }
func one(p auth.Permission, r auth.Resource) []need { return []need{{p, r}} }

const (
	publisherSvc  = "/ferry.v1.PublisherService/"
	subscriberSvc = "/ferry.v1.SubscriberService/"
	adminSvc      = "/ferry.v1.AdminService/"
)

// rpcTable maps every method the public port serves to what it needs. A
// method missing here is refused to everyone (TestAuthTableCoversEveryRPC
// fails when a new RPC has no entry).
var rpcTable = map[string]rpcAccess{
	publisherSvc + "Publish": {needs: func(r any) []need {
		return one(auth.Publish, topicRes(r.(*ferryv1.PublishRequest).GetTopic()))
	}},
	publisherSvc + "PublishStream": {perFrame: true, needs: func(r any) []need {
		return one(auth.Publish, topicRes(r.(*ferryv1.PublishStreamRequest).GetTopic()))
	}},

	subscriberSvc + "Subscribe": {needs: func(r any) []need {
		in := r.(*ferryv1.SubscribeRequest).GetInit() // no init: the handler refuses the stream
		return one(auth.Subscribe, subRes(in.GetTopic(), in.GetSubscription()))
	}},
	subscriberSvc + "Ack": {needs: func(r any) []need {
		q := r.(*ferryv1.AckRequest)
		return one(auth.Subscribe, subRes(q.GetTopic(), q.GetSubscription()))
	}},
	subscriberSvc + "Nack": {needs: func(r any) []need {
		q := r.(*ferryv1.NackRequest)
		return one(auth.Subscribe, subRes(q.GetTopic(), q.GetSubscription()))
	}},
	subscriberSvc + "ModifyAckDeadline": {needs: func(r any) []need {
		q := r.(*ferryv1.ModifyAckDeadlineRequest)
		return one(auth.Subscribe, subRes(q.GetTopic(), q.GetSubscription()))
	}},
	subscriberSvc + "Seek": {needs: func(r any) []need {
		q := r.(*ferryv1.SeekRequest)
		return one(auth.Subscribe, subRes(q.GetTopic(), q.GetSubscription()))
	}},
	subscriberSvc + "Commit": {needs: func(r any) []need {
		q := r.(*ferryv1.CommitRequest)
		ns := one(auth.Subscribe, subRes(q.GetTopic(), q.GetSubscription()))
		for _, p := range q.GetPublishes() {
			n := need{auth.Publish, topicRes(p.GetTopic())}
			if ns[len(ns)-1] != n {
				ns = append(ns, n)
			}
		}
		return ns
	}},

	adminSvc + "CreateTopic": {needs: func(r any) []need {
		return one(auth.Admin, topicRes(r.(*ferryv1.CreateTopicRequest).GetName()))
	}},
	adminSvc + "UpdateTopic": {needs: func(r any) []need {
		return one(auth.Admin, topicRes(r.(*ferryv1.UpdateTopicRequest).GetName()))
	}},
	adminSvc + "DeleteTopic": {needs: func(r any) []need {
		return one(auth.Admin, topicRes(r.(*ferryv1.DeleteTopicRequest).GetName()))
	}},
	adminSvc + "GetTopic": {needs: func(r any) []need {
		return one(auth.Read, topicRes(r.(*ferryv1.GetTopicRequest).GetName()))
	}},
	adminSvc + "ListTopics": {list: auth.Read, filter: func(resp any, allowed func(auth.Resource) bool) {
		lr := resp.(*ferryv1.ListTopicsResponse)
		kept := lr.Topics[:0]
		for _, t := range lr.Topics {
			if allowed(topicRes(t.GetName())) {
				kept = append(kept, t)
			}
		}
		lr.Topics = kept
	}},
	adminSvc + "ReadMessages": {needs: func(r any) []need {
		return one(auth.Read, topicRes(r.(*ferryv1.ReadMessagesRequest).GetTopic()))
	}},
	adminSvc + "CreateSubscription": {needs: func(r any) []need {
		q := r.(*ferryv1.CreateSubscriptionRequest)
		return one(auth.Admin, subRes(q.GetTopic(), q.GetName()))
	}},
	adminSvc + "UpdateSubscription": {needs: func(r any) []need {
		q := r.(*ferryv1.UpdateSubscriptionRequest)
		return one(auth.Admin, subRes(q.GetTopic(), q.GetName()))
	}},
	adminSvc + "DeleteSubscription": {needs: func(r any) []need {
		q := r.(*ferryv1.DeleteSubscriptionRequest)
		return one(auth.Admin, subRes(q.GetTopic(), q.GetName()))
	}},
	adminSvc + "GetSubscription": {needs: func(r any) []need {
		q := r.(*ferryv1.GetSubscriptionRequest)
		return one(auth.Read, subRes(q.GetTopic(), q.GetName()))
	}},
	adminSvc + "ListSubscriptions": {needs: func(r any) []need {
		return one(auth.Read, topicRes(r.(*ferryv1.ListSubscriptionsRequest).GetTopic()))
	}},
	adminSvc + "GetClusterStatus": {needs: func(any) []need {
		return one(auth.Cluster, auth.Resource{})
	}},
	// ListClients shows every principal's connections: admin on every
	// topic, not on some.
	adminSvc + "ListClients": {needs: func(any) []need {
		return one(auth.Admin, topicRes("*"))
	}},

	// Health stays open: probes carry no credentials.
	"/grpc.health.v1.Health/Check": {open: true},
	"/grpc.health.v1.Health/Watch": {open: true},
	"/grpc.health.v1.Health/List":  {open: true},
	// Reflection describes the API only, to any authenticated caller.
	"/grpc.reflection.v1.ServerReflection/ServerReflectionInfo":      {},
	"/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": {},
}
