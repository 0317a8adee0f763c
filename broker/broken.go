package broker

import "google.golang.org/grpc"

// brokenStreams is empty in every build but the test builds tagged
// ferry_broken_* (broken_amo.go, broken_offset.go), which break a guarantee on purpose
// so that a test can show `ferry verify` catches it. The shipped binary
// never sets it.
var brokenStreams []grpc.StreamServerInterceptor
