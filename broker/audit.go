package broker

import (
	"context"
	"log/slog"

	"google.golang.org/grpc/peer"

	"github.com/ferrymq/ferry/auth"
)

// audited are the admin actions: the calls that change topics,
// subscriptions or a subscription's cursor. Each writes one audit line
// when it is answered (auditor.action); a call refused by auth before it
// ran has the refusal's line instead (guard.refuse).
var audited = map[string]bool{
	adminSvc + "CreateTopic":        true,
	adminSvc + "UpdateTopic":        true,
	adminSvc + "DeleteTopic":        true,
	adminSvc + "CreateSubscription": true,
	adminSvc + "UpdateSubscription": true,
	adminSvc + "DeleteSubscription": true,
	subscriberSvc + "Seek":          true,
}

// auditor writes the audit lines of admin actions.
type auditor struct {
	log *slog.Logger
}

// action writes the audit line of an admin action answered with err:
//
//	level=INFO msg="audit: admin action" principal=alice auth_method=token
//	peer=127.0.0.1:5312 method=/ferry.v1.AdminService/DeleteTopic
//	resource="topic \"orders\"" result=ok
//
// The same keys as a refusal's line; resource names are quoted and cut
// (auth.Resource.String), so a line stays bounded.
func (a *auditor) action(ctx context.Context, principal, method string, req any, err error) {
	res := ""
	if acc, ok := rpcTable[method]; ok && acc.needs != nil {
		if ns := acc.needs(req); len(ns) > 0 {
			res = ns[0].res.String()
		}
	}
	id, _ := auth.FromContext(ctx)
	addr := ""
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		addr = p.Addr.String()
	}
	a.log.LogAttrs(ctx, slog.LevelInfo, "audit: admin action",
		slog.String("principal", principal), slog.String("auth_method", id.Method),
		slog.String("peer", addr), slog.String("method", method),
		slog.String("resource", res), slog.String("result", codeName(err)))
}
