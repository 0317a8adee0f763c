package main

import (
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TestTLSHint pins the CLI's hint to the refusals seen from real TLS
// ports (TestClusterTLSProcesses meets them by chance of timing): a
// plaintext client gets "give --tls-ca" even when the port reset it, a
// TLS client without the certificate the server requires gets "TLS
// refused" whichever way the refusal reached it.
func TestTLSHint(t *testing.T) {
	for _, c := range []struct{ msg, want string }{
		{`connection error: desc = "error reading server preface: connection reset by peer"`, "give --tls-ca"},
		{`connection error: desc = "error reading server preface: EOF"`, "give --tls-ca"},
		{`write tcp 127.0.0.1:37226->127.0.0.1:28417: write: connection reset by peer`, "TLS refused"},
		{`write tcp 127.0.0.1:1->127.0.0.1:2: write: broken pipe`, "TLS refused"},
		{`remote error: tls: certificate required`, "TLS refused"},
		{`connection error: desc = "error reading server preface: remote error: tls: certificate required"`, "TLS refused"},
	} {
		if got := tlsHint(status.New(codes.Unavailable, c.msg)); !strings.Contains(got, c.want) {
			t.Errorf("hint for %q: %q, want %q", c.msg, got, c.want)
		}
	}
	if got := tlsHint(status.New(codes.NotFound, "tls: no")); got != "" {
		t.Errorf("hint for a NotFound: %q, want none", got)
	}
}
