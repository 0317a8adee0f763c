package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
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
	token   tokenFlags
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

// tokenFlags are --token, --token-file and --token-over-plaintext
// (docs/security.md).
type tokenFlags struct {
	token, file string
	plaintext   bool
}

func (t *tokenFlags) add(fs *pflag.FlagSet) {
	fs.StringVar(&t.token, "token", "", "bearer token for a broker with --auth-tokens (env FERRY_TOKEN); sent over TLS only")
	fs.StringVar(&t.file, "token-file", "", "file holding the bearer token (env FERRY_TOKEN_FILE), read once; surrounding whitespace is ignored")
	fs.BoolVar(&t.plaintext, "token-over-plaintext", false, "send the token even without TLS (tests and loopback only: anyone reading the traffic can replay it)")
}

// value is the token of --token or --token-file; "" for neither.
func (t *tokenFlags) value() (string, error) {
	switch {
	case t.token != "" && t.file != "":
		return "", fmt.Errorf("--token and --token-file: give one")
	case t.file == "":
		return t.token, nil
	}
	b, err := os.ReadFile(t.file)
	if err != nil {
		return "", fmt.Errorf("--token-file: %w", err)
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return "", fmt.Errorf("--token-file %s is empty", t.file)
	}
	return tok, nil
}

// creds are the per-RPC credentials of the token flags; nil for no token.
func (t *tokenFlags) creds() (credentials.PerRPCCredentials, error) {
	tok, err := t.value()
	if err != nil || tok == "" {
		return nil, err
	}
	return client.TokenCredentials(func(context.Context) (string, error) { return tok, nil }, t.plaintext), nil
}

// options are the SDK's options for the token flags.
func (t *tokenFlags) options() ([]client.Option, error) {
	tok, err := t.value()
	if err != nil || tok == "" {
		return nil, err
	}
	opts := []client.Option{client.WithToken(tok)}
	if t.plaintext {
		opts = append(opts, client.WithTokenOverPlaintext())
	}
	return opts, nil
}

// addClientFlags adds --server, --timeout and, if withOutput, -o.
func addClientFlags(cmd *cobra.Command, withOutput bool) *clientFlags {
	cf := &clientFlags{server: "localhost:7420", output: "text", timeout: 30 * time.Second}
	cmd.Flags().StringVar(&cf.server, "server", cf.server, "broker address (env FERRY_SERVER)")
	cmd.Flags().DurationVar(&cf.timeout, "rpc-timeout", cf.timeout, "deadline for each unary call")
	cf.tls.add(cmd.Flags())
	cf.token.add(cmd.Flags())
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
	dopts := []grpc.DialOption{grpc.WithTransportCredentials(creds),
		// A read returns at least one message, and a message may be 4 MiB.
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxRecvBytes))}
	perRPC, err := cf.token.creds()
	if err != nil {
		return nil, err
	}
	if perRPC != nil {
		if perRPC.RequireTransportSecurity() && creds.Info().SecurityProtocol != "tls" {
			return nil, fmt.Errorf("a token is sent over TLS only: give --tls-ca (or, for loopback tests, --token-over-plaintext)")
		}
		dopts = append(dopts, grpc.WithPerRPCCredentials(perRPC))
	}
	conn, err := grpc.NewClient(cf.server, dopts...)
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", cf.server, err)
	}
	return conn, nil
}

// connect returns an SDK client for the flags. It does not wait for the
// connection: a call to a broker it cannot reach fails with the reason
// (rpcError adds what a TLS refusal may lack). Each unary call runs under
// the --rpc-timeout deadline.
func (cf *clientFlags) connect() (*client.Client, error) {
	if err := cf.validate(); err != nil {
		return nil, err
	}
	creds, err := cf.tls.creds()
	if err != nil {
		return nil, err
	}
	opts, err := cf.token.options()
	if err != nil {
		return nil, err
	}
	if len(opts) > 0 && !cf.token.plaintext && creds.Info().SecurityProtocol != "tls" {
		return nil, fmt.Errorf("a token is sent over TLS only: give --tls-ca (or, for loopback tests, --token-over-plaintext)")
	}
	opts = append(opts, client.WithTLS(creds), client.WithCallTimeout(cf.timeout), client.WithLazyConnect(),
		client.WithLogger(slog.New(slog.DiscardHandler)))
	c, err := client.Dial(context.Background(), cf.server, opts...)
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", cf.server, err)
	}
	return c, nil
}

// withClient connects to the server and runs f, whose calls each run
// under the --rpc-timeout deadline; a gRPC error comes back in the
// server's words.
func (cf *clientFlags) withClient(ctx context.Context, f func(context.Context, *client.Client) error) error {
	c, err := cf.connect()
	if err != nil {
		return err
	}
	defer c.Close()
	return rpcError(f(ctx, c))
}

// call runs one unary call under the --rpc-timeout deadline.
func (cf *clientFlags) call(ctx context.Context, f func(ctx context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, cf.timeout)
	defer cancel()
	return rpcError(f(ctx))
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

// tlsHint says what a connection refused at the handshake may lack. A
// TLS 1.3 server that wants a client certificate refuses after the
// client's side of the handshake is done, so the client learns it from
// its next read or write: the alert ("tls: certificate required"), or,
// when the server closed first, a broken pipe or a reset connection.
func tlsHint(st *status.Status) string {
	if st.Code() != codes.Unavailable {
		return ""
	}
	const refused = " (TLS refused: check --tls-ca, and --tls-cert/--tls-key if the server requires a client certificate)"
	switch m := st.Message(); {
	case strings.Contains(m, "tls:") || strings.Contains(m, "certificate"):
		return refused
	case strings.Contains(m, "server preface"): // a TLS port may reset a plaintext client too
		return " (is it a TLS port? give --tls-ca)"
	case strings.Contains(m, "broken pipe") || strings.Contains(m, "connection reset by peer"):
		return refused
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
