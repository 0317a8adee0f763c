package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/ferrymq/ferry/client"
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
	tls     tlsFlags
}

// tlsFlags are --tls-ca, --tls-cert and --tls-key (docs/security.md).
type tlsFlags struct{ ca, cert, key string }

func (t *tlsFlags) add(fs *pflag.FlagSet) {
	fs.StringVar(&t.ca, "tls-ca", "", "connect over TLS, trusting the CAs of this PEM file (env FERRY_TLS_CA); with --tls-cert alone, the system's roots")
	fs.StringVar(&t.cert, "tls-cert", "", "client certificate (PEM) for a broker that requires one; with --tls-key (env FERRY_TLS_CERT)")
	fs.StringVar(&t.key, "tls-key", "", "the client certificate's private key (PEM) (env FERRY_TLS_KEY)")
}

// creds are the transport credentials: plaintext unless a --tls-* flag is
// set.
func (t *tlsFlags) creds() (credentials.TransportCredentials, error) {
	if t.ca == "" && t.cert == "" && t.key == "" {
		return insecure.NewCredentials(), nil
	}
	return client.TLSFromFiles(t.ca, t.cert, t.key)
}

// addClientFlags adds --server, --timeout and, if withOutput, -o.
func addClientFlags(cmd *cobra.Command, withOutput bool) *clientFlags {
	cf := &clientFlags{server: "localhost:7420", output: "text", timeout: 30 * time.Second}
	cmd.Flags().StringVar(&cf.server, "server", cf.server, "broker address (env FERRY_SERVER)")
	cmd.Flags().DurationVar(&cf.timeout, "rpc-timeout", cf.timeout, "deadline for each unary call")
	cf.tls.add(cmd.Flags())
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
	creds, err := cf.tls.creds()
	if err != nil {
		return nil, err
	}
	conn, err := grpc.NewClient(cf.server, grpc.WithTransportCredentials(creds),
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
		return fmt.Errorf("%s: %s%s", st.Code(), st.Message(), tlsHint(st))
	}
	return err
}

// tlsHint says what a connection refused at the handshake may lack.
func tlsHint(st *status.Status) string {
	if st.Code() != codes.Unavailable {
		return ""
	}
	switch m := st.Message(); {
	case strings.Contains(m, "tls:") || strings.Contains(m, "certificate") || strings.Contains(m, "broken pipe"):
		return " (TLS refused: check --tls-ca, and --tls-cert/--tls-key if the server requires a client certificate)"
	case strings.Contains(m, "server preface"):
		return " (is it a TLS port? give --tls-ca)"
	}
	return ""
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
