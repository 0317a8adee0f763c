package broker

import (
	"fmt"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

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
	} {
		st := status.Convert(toStatus(tc.err))
		if st.Code() != tc.code || !strings.Contains(st.Message(), tc.says) {
			t.Errorf("%v: %v %q, want %v saying %q", tc.err, st.Code(), st.Message(), tc.code, tc.says)
		}
	}
}
