package client

import (
	"context"
	"time"

	ferryv1 "github.com/ferrymq/ferry/proto/ferry/v1"
)

// ClientInfo is one client connection of the broker answering
// ListClients.
type ClientInfo struct {
	// Principal its last call counted against: the authenticated
	// principal, or with auth off its IP address; empty before its first
	// call.
	Principal string `json:"principal"`
	// RemoteAddr is the connection's remote address, host:port.
	RemoteAddr string `json:"remote_addr"`
	// ConnectedTime is when the broker accepted the connection.
	ConnectedTime time.Time `json:"connected_time"`
	// PublishStreams and SubscribeStreams are the streams open on it.
	PublishStreams   uint32 `json:"publish_streams"`
	SubscribeStreams uint32 `json:"subscribe_streams"`
	// MessagesInPerSecond and MessagesOutPerSecond are the messages
	// published and delivered per second over the last complete
	// 10-second window.
	MessagesInPerSecond  float64 `json:"messages_in_per_second"`
	MessagesOutPerSecond float64 `json:"messages_out_per_second"`
	// MessagesIn and MessagesOut count them since the connection opened.
	MessagesIn  uint64 `json:"messages_in"`
	MessagesOut uint64 `json:"messages_out"`
	// Calls is how many calls (unary and streams) it started.
	Calls uint64 `json:"calls"`
}

// Clients is the answer of ListClients.
type Clients struct {
	// Clients are the connections the broker tracks, oldest first.
	Clients []ClientInfo `json:"clients"`
	// Untracked is how many more are open but not tracked (the broker's
	// --max-tracked-clients).
	Untracked uint64 `json:"untracked"`
}

// ListClients lists the clients connected to the broker the client
// talks to (in a cluster: that node's clients only). It needs the admin
// permission on every topic once auth is on.
func (c *Client) ListClients(ctx context.Context) (Clients, error) {
	var resp *ferryv1.ListClientsResponse
	err := c.call(ctx, func(ctx context.Context) (err error) {
		resp, err = c.admin.ListClients(ctx, &ferryv1.ListClientsRequest{})
		return err
	})
	if err != nil {
		return Clients{}, err
	}
	out := Clients{Clients: make([]ClientInfo, 0, len(resp.GetClients())), Untracked: resp.GetUntracked()}
	for _, ci := range resp.GetClients() {
		out.Clients = append(out.Clients, ClientInfo{
			Principal: ci.GetPrincipal(), RemoteAddr: ci.GetRemoteAddr(), ConnectedTime: ci.GetConnectedTime().AsTime(),
			PublishStreams: ci.GetPublishStreams(), SubscribeStreams: ci.GetSubscribeStreams(),
			MessagesInPerSecond: ci.GetMessagesInPerSecond(), MessagesOutPerSecond: ci.GetMessagesOutPerSecond(),
			MessagesIn: ci.GetMessagesIn(), MessagesOut: ci.GetMessagesOut(), Calls: ci.GetCalls(),
		})
	}
	return out, nil
}
