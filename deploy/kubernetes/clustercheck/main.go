// Command clustercheck checks a ferry cluster on Kubernetes from outside
// it; deploy/kubernetes/e2e.sh runs it on the host, which reaches the pods
// over the pod bridge and resolves their names through the cluster's DNS
// (-dns).
//
//	clustercheck status -server ADDR -nodes 3
//	clustercheck load -servers A,B,C -topic T -disrupt 'kubectl ...'
//
// status passes when every node answers, every node is in every Raft group,
// and every group has one leader that all nodes name, with nodes-1 active
// followers.
//
// load publishes with acks (the SDK's Producer, one message per Publish,
// each with an id) from several producers while an effectively-once
// pipeline (client.Process) copies every input to the topic T-out. After
// -warmup it runs -disrupt in a shell, waits for it, publishes -after more,
// then stops and checks:
//
//   - every acknowledged publish is on every node, at the acknowledged
//     partition and offset, and the nodes' logs are identical (each node
//     is read directly: a linearizable read, so a node that is behind
//     must catch up first);
//   - no publish failed, and none took longer than -max-latency from its
//     first try to its ack: that bounds the failover time clients see;
//   - every input that was stored has exactly one output in T-out;
//   - every node applied every group up to the same index.
//
// It exits 1 if a check fails.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/ferrymq/ferry/client"
)

func main() {
	lg := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	if len(os.Args) < 2 {
		usage()
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	var err error
	switch os.Args[1] {
	case "status":
		err = runStatus(ctx, lg, os.Args[2:])
	case "load":
		err = runLoad(ctx, lg, os.Args[2:])
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "clustercheck:", err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: clustercheck status|load [flags]; clustercheck status -h")
	os.Exit(2)
}

// errCheck marks a failed check, as opposed to a failure to run one.
var errCheck = errors.New("check failed")

// useDNS makes every name this process resolves go to the DNS server at
// addr (host:port), such as the cluster's CoreDNS: the pods' names
// (ferry-0.ferry-headless.ferry.svc.cluster.local) follow a pod that comes
// back with a new address. gRPC dials through net.DefaultResolver.
func useDNS(addr string) {
	if addr == "" {
		return
	}
	d := &net.Dialer{Timeout: 2 * time.Second}
	net.DefaultResolver = &net.Resolver{
		PreferGo: true,
		Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return d.DialContext(ctx, network, addr)
		},
	}
}

// commonFlags are the flags of both commands.
type commonFlags struct {
	dns       string
	timeout   time.Duration
	tlsCA     string
	tokenFile string
}

func (c *commonFlags) add(fs *flag.FlagSet, timeout time.Duration) {
	fs.StringVar(&c.dns, "dns", "", "DNS server (host:port) for every name, such as the cluster's; empty: the system's")
	fs.DurationVar(&c.timeout, "timeout", timeout, "give up after this long")
	fs.StringVar(&c.tlsCA, "tls-ca", "", "connect over TLS, trusting this CA (PEM); empty: plaintext")
	fs.StringVar(&c.tokenFile, "token-file", "", "send the bearer token in this file (read once) with every call")
}

// dialing is how every connection of this process is made: the
// credentials of -tls-ca and -token-file, set once by setup.
var dialing struct {
	creds credentials.TransportCredentials
	token string
}

// setup applies -dns, -tls-ca and -token-file to every connection this
// process makes.
func (c *commonFlags) setup() error {
	useDNS(c.dns)
	dialing.creds = insecure.NewCredentials()
	if c.tlsCA != "" {
		creds, err := client.TLSFromFiles(c.tlsCA, "", "")
		if err != nil {
			return err
		}
		dialing.creds = creds
	}
	if c.tokenFile != "" {
		b, err := os.ReadFile(c.tokenFile)
		if err != nil {
			return err
		}
		dialing.token = strings.TrimSpace(string(b))
	}
	return nil
}

// grpcOptions are the dial options of a raw gRPC connection.
func grpcOptions() []grpc.DialOption {
	opts := []grpc.DialOption{grpc.WithTransportCredentials(dialing.creds)}
	if dialing.token != "" {
		tok := dialing.token
		opts = append(opts, grpc.WithPerRPCCredentials(client.TokenCredentials(
			func(context.Context) (string, error) { return tok, nil }, false)))
	}
	return opts
}

// clientOptions are the SDK's options for the same.
func clientOptions() []client.Option {
	var opts []client.Option
	if dialing.creds.Info().SecurityProtocol == "tls" {
		opts = append(opts, client.WithTLS(dialing.creds))
	}
	if dialing.token != "" {
		opts = append(opts, client.WithToken(dialing.token))
	}
	return opts
}

// splitList splits a comma-separated list, dropping empty items.
func splitList(s string) []string {
	var out []string
	for _, x := range strings.Split(s, ",") {
		if x = strings.TrimSpace(x); x != "" {
			out = append(out, x)
		}
	}
	return out
}
