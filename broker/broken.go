package broker

import "google.golang.org/grpc"

// brokenStreams is empty in every build but the test builds tagged
// ferry_broken_* (see broken_amo.go), which break a guarantee on purpose
// so that a test can show `ferry verify` catches it. The shipped binary
// never sets it.
var brokenStreams []grpc.StreamServerInterceptor
