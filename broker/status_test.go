package broker

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ferrymq/ferry/cluster"
	"github.com/ferrymq/ferry/consumer"
	"github.com/ferrymq/ferry/storage"
)

// TestToStatusReplicatedWrites: the errors of writes across replicated
// partitions get a code a client can act on and say what to do.
func TestToStatusReplicatedWrites(t *testing.T) {
	for _, tc := range []struct {
		err  error
		code codes.Code
		says string
	}{
		{fmt.Errorf("topic %q partition 1 message 0 has no id: %w", "out", storage.ErrNeedIDs), codes.FailedPrecondition, "needs an id on every output message"},
		{fmt.Errorf("topic %q partition 0: %w", "in", storage.ErrReplicatedMulti), codes.Unavailable, "retry"},
		{fmt.Errorf("topic %q partition 0: subscription 3: write of owner epoch 4, partition 0 has seen 5: %w", "in", storage.ErrFenced), codes.Unavailable, "moved to another node"},
	} {
		st := status.Convert(toStatus(tc.err))
		if st.Code() != tc.code || !strings.Contains(st.Message(), tc.says) {
			t.Errorf("%v: %v %q, want %v saying %q", tc.err, st.Code(), st.Message(), tc.code, tc.says)
		}
	}
}

// TestToStatusExhausted: a limit the broker is over becomes
// RESOURCE_EXHAUSTED with its message and a RetryInfo delay, also wrapped.
func TestToStatusExhausted(t *testing.T) {
	err := fmt.Errorf("publish: %w", exhaustedf(1500*time.Millisecond, "disk reserve reached: %d bytes free", 42))
	st := status.Convert(toStatus(err))
	if st.Code() != codes.ResourceExhausted || st.Message() != "disk reserve reached: 42 bytes free" {
		t.Fatalf("got %v %q", st.Code(), st.Message())
	}
	var delay time.Duration
	for _, d := range st.Details() {
		if ri, ok := d.(*errdetails.RetryInfo); ok {
			delay = ri.GetRetryDelay().AsDuration()
		}
	}
	if delay != 1500*time.Millisecond {
		t.Fatalf("RetryInfo delay %v, want 1.5s (details %v)", delay, st.Details())
	}
}

// TestToStatusDiskFull: a write the store refused for disk space is
// RESOURCE_EXHAUSTED naming free space and the reserve, with a RetryInfo
// delay, whichever level refused it.
func TestToStatusDiskFull(t *testing.T) {
	for _, e := range []*storage.DiskFullError{
		{Free: 100 << 20, Reserve: 256 << 20},
		{Free: 10 << 20, Reserve: 256 << 20, ReadOnly: true},
		{Free: 0, Reserve: 256 << 20, ReadOnly: true, Cause: "disk error: sync: input/output error"},
	} {
		st := status.Convert(toStatus(fmt.Errorf("publish: %w", e)))
		if st.Code() != codes.ResourceExhausted || !strings.Contains(st.Message(), " free, reserve 256.0 MiB") {
			t.Errorf("%v: %v %q", e, st.Code(), st.Message())
		}
		if e.Cause != "" && !strings.Contains(st.Message(), e.Cause) {
			t.Errorf("%v: the cause is not said: %q", e, st.Message())
		}
		var retry time.Duration
		for _, d := range st.Details() {
			if ri, ok := d.(*errdetails.RetryInfo); ok {
				retry = ri.GetRetryDelay().AsDuration()
			}
		}
		if retry != diskRetry {
			t.Errorf("%v: retry %v, want %v", e, retry, diskRetry)
		}
	}
}

// TestToStatusNotOwner: a node that does not own a subscription (Own, or
// a release when it lost the owner partition, as the engine wraps it)
// answers UNAVAILABLE, reconnect, as for a detached consumer, and the
// message names the node and partition without the sentinel's text.
func TestToStatusNotOwner(t *testing.T) {
	lost := fmt.Errorf("node 2 no longer leads topic %q partition 1, which owns the subscription: %w", "orders", cluster.ErrNotOwner)
	for _, tc := range []struct {
		err  error
		want string
	}{
		{fmt.Errorf("node 2 does not lead topic %q partition 1, which owns subscription %q: %w", "orders", "kitchen", cluster.ErrNotOwner),
			`node 2 does not lead topic "orders" partition 1, which owns subscription "kitchen"; reconnect`},
		{fmt.Errorf("subscription %q: %w: %w", "kitchen", consumer.ErrDetached, lost),
			`subscription "kitchen": consumer: detached: node 2 no longer leads topic "orders" partition 1, which owns the subscription; reconnect`},
	} {
		st := status.Convert(toStatus(tc.err))
		if st.Code() != codes.Unavailable || st.Message() != tc.want {
			t.Errorf("%v: %v %q, want UNAVAILABLE %q", tc.err, st.Code(), st.Message(), tc.want)
		}
	}
}
