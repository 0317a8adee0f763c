package client_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/ferrymq/ferry/broker"
	"github.com/ferrymq/ferry/client"
	"github.com/ferrymq/ferry/storage"
)

// TestReadMessages reads a partition's log through the SDK: a window from
// an offset, what the next read starts at, the head, and no cursor moved.
func TestReadMessages(t *testing.T) {
	b := startBroker(t, t.TempDir())
	c := dial(t, b.addr)
	ctx := context.Background()
	if _, err := c.CreateTopic(ctx, "log", client.TopicConfig{Partitions: 1}); err != nil {
		t.Fatal(err)
	}
	p := c.NewProducer("log", client.ProducerOptions{})
	for i := range 5 {
		if _, err := p.Publish(ctx, &client.Message{ID: fmt.Sprint("id-", i), Key: []byte("k"), Payload: []byte(fmt.Sprint("m", i)),
			Headers: map[string]string{"n": fmt.Sprint(i)}}); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.Close(ctx); err != nil {
		t.Fatal(err)
	}
	r, err := c.ReadMessages(ctx, "log", 0, 1, 2)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Messages) != 2 || r.NextOffset != 3 || r.HeadOffset != 5 {
		t.Fatalf("read from 1, max 2: %d messages, next %d, head %d; want 2, 3, 5", len(r.Messages), r.NextOffset, r.HeadOffset)
	}
	for i, m := range r.Messages {
		want := i + 1
		if m.Offset != uint64(want) || m.Partition == nil || *m.Partition != 0 || m.ID != fmt.Sprint("id-", want) ||
			string(m.Payload) != fmt.Sprint("m", want) || string(m.Key) != "k" || m.Headers["n"] != fmt.Sprint(want) || m.PublishTime.IsZero() {
			t.Fatalf("message %d: %+v", i, m)
		}
	}
	r, err = c.ReadMessages(ctx, "log", 0, 5, 0)
	if err != nil || len(r.Messages) != 0 || r.HeadOffset != 5 {
		t.Fatalf("read at the head: %d messages, head %d, err %v; want none, 5", len(r.Messages), r.HeadOffset, err)
	}
	if _, err := c.ReadMessages(ctx, "nope", 0, 0, 0); client.StatusCode(err) != codes.NotFound {
		t.Fatalf("read of a missing topic: %v, want NOT_FOUND", err)
	}
}

// TestNames: the SDK's enums and positions print and parse the CLI's
// names, and a bad name is refused.
func TestNames(t *testing.T) {
	for _, g := range []client.Guarantee{client.None, client.AtMostOnce, client.AtLeastOnce, client.EffectivelyOnce} {
		back, err := client.ParseGuarantee(g.String())
		if err != nil || back != g {
			t.Errorf("guarantee %d: %q parses to %v, %v", g, g.String(), back, err)
		}
	}
	for _, typ := range []client.SubscriptionType{client.Shared, client.KeyShared, client.Exclusive, client.Failover} {
		back, err := client.ParseSubscriptionType(typ.String())
		if err != nil || back != typ {
			t.Errorf("type %d: %q parses to %v, %v", typ, typ.String(), back, err)
		}
	}
	if got := client.AtLeastOnce.String() + " " + client.KeyShared.String() + " " + client.Guarantee(9).String(); got != "at-least-once key-shared Guarantee(9)" {
		t.Errorf("names: %q", got)
	}
	for _, s := range []string{"earliest", "latest", "offset:42", "time:2026-11-24T18:00:00.5Z"} {
		p, err := client.ParsePosition(s)
		if err != nil || p.String() != s {
			t.Errorf("position %q: %q, %v", s, p.String(), err)
		}
	}
	if (client.Position{}).String() != "latest" {
		t.Errorf("zero position: %q", client.Position{}.String())
	}
	for _, bad := range []string{"", "at-least-twice", strings.Repeat("x", 1<<20)} {
		if _, err := client.ParseGuarantee(bad); err == nil || len(err.Error()) > 200 {
			t.Errorf("guarantee %.20q: %v", bad, err)
		}
		if _, err := client.ParseSubscriptionType(bad); err == nil || len(err.Error()) > 200 {
			t.Errorf("type %.20q: %v", bad, err)
		}
		if _, err := client.ParsePosition(bad); err == nil || len(err.Error()) > 200 {
			t.Errorf("position %.20q: %v", bad, err)
		}
	}
	if _, err := client.ParsePosition("offset:-1"); err == nil {
		t.Error("offset:-1 parsed")
	}
}

// TestLazyConnect: with WithLazyConnect, Dial to a port nobody listens on
// returns at once, and a call fails at once with UNAVAILABLE and the
// transport's reason.
func TestLazyConnect(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, addr, client.WithLazyConnect(), client.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))))
	if err != nil {
		t.Fatalf("lazy dial: %v", err)
	}
	defer c.Close()
	_, err = c.ListTopics(ctx)
	if client.StatusCode(err) != codes.Unavailable || !strings.Contains(err.Error(), "connection refused") {
		t.Fatalf("call to a closed port: %v, want UNAVAILABLE, connection refused", err)
	}
	if ctx.Err() != nil {
		t.Fatal("the call waited for the deadline")
	}
}

// TestClusterStatus: a one-node cluster reports its node and its groups;
// a single-node broker refuses with FAILED_PRECONDITION.
func TestClusterStatus(t *testing.T) {
	single := dial(t, startBroker(t, t.TempDir()).addr)
	if _, err := single.ClusterStatus(context.Background()); client.StatusCode(err) != codes.FailedPrecondition {
		t.Fatalf("single node: %v, want FAILED_PRECONDITION", err)
	}

	peer := freeAddr(t)
	opts := broker.DefaultOptions(t.TempDir())
	opts.GRPCAddr, opts.HTTPAddr = "127.0.0.1:0", ""
	opts.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	opts.Storage.MemTableBytes = storage.MinMemTableBytes
	opts.Cluster = &broker.ClusterOptions{NodeID: 1, Addr: peer, Peers: map[uint64]string{1: peer}}
	srv, err := broker.Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve() }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	})
	c := dial(t, srv.GRPCAddr().String())
	ctx := context.Background()
	waitFor(t, waitLimit, "the topic created", func() bool {
		_, err := c.CreateTopic(ctx, "orders", client.TopicConfig{Partitions: 2})
		return err == nil
	})
	var nodes []client.NodeStatus
	waitFor(t, waitLimit, "three groups led by node 1", func() bool {
		nodes, err = c.ClusterStatus(ctx)
		if err != nil || len(nodes) != 1 || len(nodes[0].Groups) != 3 {
			return false
		}
		for _, g := range nodes[0].Groups {
			if g.Role != "leader" || g.Leader != 1 || g.Term == 0 || g.CommitIndex == 0 {
				return false
			}
		}
		return true
	})
	n := nodes[0]
	if n.NodeID != 1 || n.PeerAddr != peer || n.Error != "" {
		t.Fatalf("node: %+v", n)
	}
	if g := n.Groups; g[0].Topic != "" || g[1].Topic != "orders" || g[1].Partition != 0 || g[2].Partition != 1 || g[2].GroupID == 0 {
		t.Fatalf("groups: %+v", g)
	}
}
