package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	ferryv1 "github.com/ferrymq/ferry/proto/ferry/v1"
)

// maxRecvBytes is the largest answer the CLI accepts: a 4 MiB message with
// room for its framing.
const maxRecvBytes = 8 << 20

// clientFlags are the flags every client command shares.
type clientFlags struct {
	server  string
	output  string
	timeout time.Duration
}

// addClientFlags adds --server, --timeout and, if withOutput, -o.
func addClientFlags(cmd *cobra.Command, withOutput bool) *clientFlags {
	cf := &clientFlags{server: "localhost:7420", output: "text", timeout: 30 * time.Second}
	cmd.Flags().StringVar(&cf.server, "server", cf.server, "broker address (env FERRY_SERVER)")
	cmd.Flags().DurationVar(&cf.timeout, "rpc-timeout", cf.timeout, "deadline for each unary call")
	if withOutput {
		cmd.Flags().StringVarP(&cf.output, "output", "o", cf.output, "text or json (one object per line)")
	}
	return cf
}

func (cf *clientFlags) validate() error {
	if cf.output != "text" && cf.output != "json" {
		return fmt.Errorf("--output %q: want text or json", cf.output)
	}
	return nil
}

func (cf *clientFlags) dial() (*grpc.ClientConn, error) {
	if err := cf.validate(); err != nil {
		return nil, err
	}
	conn, err := grpc.NewClient(cf.server, grpc.WithTransportCredentials(insecure.NewCredentials()),
		// A read returns at least one message, and a message may be 4 MiB.
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxRecvBytes)))
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", cf.server, err)
	}
	return conn, nil
}

// call runs one unary call under the --rpc-timeout deadline.
func (cf *clientFlags) call(ctx context.Context, f func(ctx context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, cf.timeout)
	defer cancel()
	return rpcError(f(ctx))
}

// withAdmin connects to the server and runs f, one admin call, under the
// --rpc-timeout deadline.
func (cf *clientFlags) withAdmin(ctx context.Context, f func(context.Context, ferryv1.AdminServiceClient) error) error {
	conn, err := cf.dial()
	if err != nil {
		return err
	}
	defer conn.Close()
	return cf.call(ctx, func(ctx context.Context) error { return f(ctx, ferryv1.NewAdminServiceClient(conn)) })
}

// rpcError turns a gRPC status into the server's own words.
func rpcError(err error) error {
	if err == nil {
		return nil
	}
	if st, ok := status.FromError(err); ok {
		return fmt.Errorf("%s: %s", st.Code(), st.Message())
	}
	return err
}

// printJSON writes v as one line of JSON.
func printJSON(w io.Writer, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	b = append(b, '\n')
	_, err = w.Write(b)
	return err
}
