package main

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	ferryv1 "github.com/ferrymq/ferry/proto/ferry/v1"
)

// TestClientsCLI: `ferry clients` lists a consumer connected to a real
// `ferry serve` from 127.0.0.3 (auth off: its principal is its address)
// with its open Subscribe stream and the message delivered, in text and
// as JSON.
func TestClientsCLI(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the real binary")
	}
	p := startFerry(t, t.TempDir(), "--client-series", "5", "--max-tracked-clients", "3")
	mustCLI(t, p, "", "topic", "create", "orders")
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.3")}}
	conn, err := grpc.NewClient(p.grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, a string) (net.Conn, error) { return d.DialContext(ctx, "tcp", a) }))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := ferryv1.NewAdminServiceClient(conn).CreateSubscription(ctx, &ferryv1.CreateSubscriptionRequest{Topic: "orders", Name: "kitchen",
		Config: &ferryv1.SubscriptionConfig{Guarantee: ferryv1.DeliveryGuarantee_DELIVERY_GUARANTEE_AT_LEAST_ONCE, Type: ferryv1.SubscriptionType_SUBSCRIPTION_TYPE_SHARED}}); err != nil {
		t.Fatal(err)
	}
	sub, err := ferryv1.NewSubscriberServiceClient(conn).Subscribe(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := sub.Send(&ferryv1.SubscribeRequest{Frame: &ferryv1.SubscribeRequest_Init{Init: &ferryv1.SubscribeInit{Topic: "orders", Subscription: "kitchen", Credit: 10}}}); err != nil {
		t.Fatal(err)
	}
	mustCLI(t, p, "", "pub", "orders", "margherita")
	if _, err := sub.Recv(); err != nil { // the stream is open on the broker
		t.Fatal(err)
	}

	var mine map[string]any
	for _, c := range jsonLines(t, mustCLI(t, p, "", "clients", "-o", "json"))[0]["clients"].([]any) {
		if c := c.(map[string]any); strings.HasPrefix(c["remote_addr"].(string), "127.0.0.3:") {
			mine = c
		}
	}
	if mine == nil || mine["principal"] != "127.0.0.3" || mine["subscribe_streams"] != 1.0 || mine["publish_streams"] != 0.0 || mine["messages_out"] != 1.0 {
		t.Fatalf("ferry clients -o json: the consumer from 127.0.0.3 is %v", mine)
	}
	text := mustCLI(t, p, "", "clients")
	if !strings.HasPrefix(text, "PRINCIPAL") || !strings.Contains(text, "127.0.0.3  ") {
		t.Fatalf("ferry clients printed:\n%s", text)
	}
	if _, errOut, ok := ferryCLI(t, p, "", "clients", "-o", "yaml"); ok || !strings.Contains(errOut, "--output") {
		t.Fatalf("ferry clients -o yaml: ok=%t %s", ok, errOut)
	}
}
