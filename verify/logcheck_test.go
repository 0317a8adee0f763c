package verify

import (
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
)

// TestCheckLog feeds the checker hand-made histories: the broken
// ones must be rejected, the correct ones (concurrency, publishes of
// unknown outcome stored or not) accepted.
func TestCheckLog(t *testing.T) {
	k := LogKey{Topic: "t"}
	pub := func(id string, call, ret int64, offset uint64) porcupine.Operation {
		return PublishOp(k, id, call, ret, true, offset)
	}
	unknown := func(id string, call int64) porcupine.Operation {
		return PublishOp(k, id, call, 0, false, 0)
	}
	read := func(call, ret int64, ids ...string) porcupine.Operation {
		return ReadOp(k, call, ret, ids)
	}
	other := func(op porcupine.Operation) porcupine.Operation {
		in := op.Input.(LogInput)
		in.Key = LogKey{Topic: "t", Partition: 1}
		op.Input = in
		return op
	}
	tests := []struct {
		name string
		ops  []porcupine.Operation
		ok   bool
	}{
		{"sequential", []porcupine.Operation{pub("a", 0, 10, 0), pub("b", 20, 30, 1), read(40, 50, "a", "b")}, true},
		{"concurrent publishes in either order", []porcupine.Operation{pub("a", 0, 30, 1), pub("b", 10, 20, 0), read(40, 50, "b", "a")}, true},
		{"read concurrent with a publish may miss it", []porcupine.Operation{pub("a", 0, 10, 0), pub("b", 20, 40, 1), read(25, 30, "a")}, true},
		{"read concurrent with a publish may see it", []porcupine.Operation{pub("a", 0, 10, 0), pub("b", 20, 40, 1), read(25, 30, "a", "b")}, true},
		{"unknown publish stored", []porcupine.Operation{pub("a", 0, 10, 0), unknown("x", 5), pub("b", 20, 30, 2), read(40, 50, "a", "x", "b")}, true},
		{"unknown publish stored after the last read", []porcupine.Operation{pub("a", 0, 10, 0), unknown("x", 5), read(40, 50, "a")}, true},
		{"unknown publish never stored", []porcupine.Operation{pub("a", 0, 10, 0), unknown("x", 5), pub("b", 20, 30, 1), read(40, 50, "a", "b")}, true},
		{"partitions are separate logs", []porcupine.Operation{pub("a", 0, 10, 0), other(pub("b", 0, 10, 0)), read(20, 30, "a"), other(read(20, 30, "b"))}, true},

		{"two acknowledged publishes at one offset", []porcupine.Operation{pub("a", 0, 10, 0), pub("b", 20, 30, 0)}, false},
		{"two concurrent acknowledged publishes at one offset", []porcupine.Operation{pub("a", 0, 30, 0), pub("b", 10, 20, 0)}, false},
		{"an offset skipped", []porcupine.Operation{pub("a", 0, 10, 0), pub("b", 20, 30, 2), read(40, 50, "a", "b")}, false},
		{"a read misses an acknowledged publish", []porcupine.Operation{pub("a", 0, 10, 0), pub("b", 20, 30, 1), read(40, 50, "a")}, false},
		{"a read shows an id twice", []porcupine.Operation{pub("a", 0, 10, 0), read(20, 30, "a", "a")}, false},
		{"a read shows another order", []porcupine.Operation{pub("a", 0, 10, 0), pub("b", 20, 30, 1), read(40, 50, "b", "a")}, false},
		{"a read shows a message nobody published", []porcupine.Operation{pub("a", 0, 10, 0), read(20, 30, "a", "z")}, false},
		{"an unknown publish seen, then gone", []porcupine.Operation{pub("a", 0, 10, 0), unknown("x", 5), read(20, 30, "a", "x"), read(40, 50, "a")}, false},
		{"an acknowledged publish seen, then gone", []porcupine.Operation{pub("a", 0, 10, 0), read(20, 30, "a"), read(40, 50)}, false},
		{"a read of the other partition's message", []porcupine.Operation{pub("a", 0, 10, 0), other(pub("b", 0, 10, 0)), read(20, 30, "a", "b")}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			res, _, _ := CheckLog(tc.ops, 10*time.Second)
			if got := res == porcupine.Ok; got != tc.ok {
				t.Fatalf("check = %s, want linearizable %t; explained: %q", res, tc.ok, ExplainLog(tc.ops))
			}
		})
	}
}
