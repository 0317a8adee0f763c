package verify

import (
	"cmp"
	"fmt"
	"hash/fnv"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/anishathalye/porcupine"
)

// LogKey names one partition's log.
type LogKey struct {
	Topic     string
	Partition uint32
}

func (k LogKey) String() string { return fmt.Sprintf("%s/%d", k.Topic, k.Partition) }

// LogInput is an operation on one partition: a publish of id, or a read.
type LogInput struct {
	Key  LogKey
	Read bool
	ID   string
}

// LogOutput is what an operation returned: for a publish, whether it was
// acknowledged and at which offset; for a read, the ids at offsets 0, 1,
// … and their logHash.
type LogOutput struct {
	Acked  bool
	Offset uint64
	IDs    []string
	Hash   uint64
}

// PendingReturn is the return time of an operation whose outcome is
// unknown: the end of time.
const PendingReturn = math.MaxInt64

// CheckLog checks ops against LogModel, after dropping the pending
// publishes that cannot matter (pruneUnseen), and says how many it dropped.
func CheckLog(ops []porcupine.Operation, timeout time.Duration) (porcupine.CheckResult, int, porcupine.LinearizationInfo) {
	kept := pruneUnseen(ops)
	res, info := porcupine.CheckOperationsVerbose(LogModel(), kept, timeout)
	return res, len(ops) - len(kept), info
}

// pruneUnseen drops the pending publishes no read shows, on the partitions
// where one read shows every acknowledged publish. That changes nothing:
// such a read F follows every acknowledged publish in any linearization
// (each id is stored by one operation, and F shows them all), and a
// pending publish P that F does not show comes after F. After P there can
// only be pending publishes, whose outputs say nothing, and no read (none
// shows P), so P can be moved to the end and then removed. Without this,
// porcupine tries every order of the pending publishes at every step:
// exponential in how many are outstanding.
func pruneUnseen(ops []porcupine.Operation) []porcupine.Operation {
	type partInfo struct {
		seen  map[string]bool
		acked []string
		reads [][]string
	}
	parts := map[LogKey]*partInfo{}
	get := func(k LogKey) *partInfo {
		if parts[k] == nil {
			parts[k] = &partInfo{seen: map[string]bool{}}
		}
		return parts[k]
	}
	for _, op := range ops {
		in, out := op.Input.(LogInput), op.Output.(LogOutput)
		p := get(in.Key)
		switch {
		case in.Read:
			p.reads = append(p.reads, out.IDs)
			for _, id := range out.IDs {
				p.seen[id] = true
			}
		case out.Acked:
			p.acked = append(p.acked, in.ID)
		}
	}
	prunable := map[LogKey]bool{}
	for k, p := range parts {
		for _, r := range p.reads {
			all := make(map[string]bool, len(r))
			for _, id := range r {
				all[id] = true
			}
			if !slices.ContainsFunc(p.acked, func(id string) bool { return !all[id] }) {
				prunable[k] = true
				break
			}
		}
	}
	var kept []porcupine.Operation
	for _, op := range ops {
		in := op.Input.(LogInput)
		if !in.Read && op.Return == PendingReturn && prunable[in.Key] && !parts[in.Key].seen[in.ID] {
			continue
		}
		kept = append(kept, op)
	}
	return kept
}

// logState is a partition's log in the model: an immutable list, newest
// first, so a step shares its predecessor. nil is the empty log.
type logState struct {
	prev *logState
	id   string
	n    int    // length of the log
	hash uint64 // logHash of the log
}

func (s *logState) len() int {
	if s == nil {
		return 0
	}
	return s.n
}

func (s *logState) sum() uint64 {
	if s == nil {
		return logHashSeed
	}
	return s.hash
}

func (s *logState) push(id string) *logState {
	return &logState{prev: s, id: id, n: s.len() + 1, hash: logHashStep(s.sum(), id)}
}

// ids returns the log, oldest first.
func (s *logState) ids() []string {
	ids := make([]string, s.len())
	for ; s != nil; s = s.prev {
		ids[s.n-1] = s.id
	}
	return ids
}

// equalIDs reports whether the log is ids.
func (s *logState) equalIDs(ids []string) bool {
	if s.len() != len(ids) {
		return false
	}
	for ; s != nil; s = s.prev {
		if ids[s.n-1] != s.id {
			return false
		}
	}
	return true
}

func (s *logState) equal(o *logState) bool {
	for ; s != o; s, o = s.prev, o.prev {
		if s.len() != o.len() || s.sum() != o.sum() || s.id != o.id {
			return false
		}
	}
	return true
}

const logHashSeed = 14695981039346656037

// logHashStep extends a log's hash with one more id: a polynomial hash
// over the ids' FNV-1a hashes, so order matters.
func logHashStep(h uint64, id string) uint64 {
	f := fnv.New64a()
	f.Write([]byte(id))
	return h*1099511628211 + f.Sum64()
}

func LogHash(ids []string) uint64 {
	h := uint64(logHashSeed)
	for _, id := range ids {
		h = logHashStep(h, id)
	}
	return h
}

// LogModel is one append-only log per partition. A publish appends its id
// and, if acknowledged, must have got the offset it was appended at; a
// read returns the whole log. The model does not deduplicate: each id is
// published by one operation, and a log holding an id twice is wrong.
func LogModel() porcupine.Model {
	return porcupine.Model{
		Partition: func(ops []porcupine.Operation) [][]porcupine.Operation {
			byKey := map[LogKey][]porcupine.Operation{}
			for _, op := range ops {
				k := op.Input.(LogInput).Key
				byKey[k] = append(byKey[k], op)
			}
			keys := slices.SortedFunc(func(yield func(LogKey) bool) {
				for k := range byKey {
					if !yield(k) {
						return
					}
				}
			}, func(a, b LogKey) int {
				return cmp.Or(cmp.Compare(a.Topic, b.Topic), cmp.Compare(a.Partition, b.Partition))
			})
			var parts [][]porcupine.Operation
			for _, k := range keys {
				parts = append(parts, byKey[k])
			}
			return parts
		},
		Init: func() any { return (*logState)(nil) },
		Step: func(state, input, output any) (bool, any) {
			s, in, out := state.(*logState), input.(LogInput), output.(LogOutput)
			if in.Read {
				return out.Hash == s.sum() && s.equalIDs(out.IDs), s
			}
			if out.Acked && out.Offset != uint64(s.len()) {
				return false, s
			}
			return true, s.push(in.ID)
		},
		Equal: func(a, b any) bool { return a.(*logState).equal(b.(*logState)) },
		Hash:  func(s any) uint64 { return s.(*logState).sum() },
		DescribeOperation: func(input, output any) string {
			in, out := input.(LogInput), output.(LogOutput)
			switch {
			case in.Read:
				return fmt.Sprintf("read %s → %d messages %s", in.Key, len(out.IDs), shortIDs(out.IDs))
			case out.Acked:
				return fmt.Sprintf("publish %s %s → offset %d", in.Key, in.ID, out.Offset)
			}
			return fmt.Sprintf("publish %s %s → unknown", in.Key, in.ID)
		},
		DescribeState: func(state any) string {
			s := state.(*logState)
			return fmt.Sprintf("%d messages %s", s.len(), shortIDs(s.ids()))
		},
	}
}

// shortIDs shows the last few of ids.
func shortIDs(ids []string) string {
	if len(ids) > 4 {
		return fmt.Sprintf("[… %s]", strings.Join(ids[len(ids)-4:], " "))
	}
	return fmt.Sprintf("%v", ids)
}

// ExplainLog looks for the plainest reasons a history is not
// linearizable, to say more than porcupine's verdict: two acknowledged
// publishes at one offset, a read holding an id twice or missing one
// acknowledged before it began, an acknowledged offset that a later read
// shows holding another id, two reads that are not prefixes of each other.
// It returns the reasons sorted, each once; none when no single pair of
// operations explains the verdict.
func ExplainLog(ops []porcupine.Operation) []string {
	var why []string
	type where struct {
		key    LogKey
		offset uint64
	}
	ackedAt := map[where]string{}
	for _, op := range ops {
		in, out := op.Input.(LogInput), op.Output.(LogOutput)
		if in.Read || !out.Acked {
			continue
		}
		w := where{in.Key, out.Offset}
		if other, ok := ackedAt[w]; ok {
			why = append(why, fmt.Sprintf("%s and %s both acknowledged at %s offset %d", other, in.ID, in.Key, out.Offset))
		}
		ackedAt[w] = in.ID
	}
	longest := map[LogKey][]string{}
	for _, r := range ops {
		in, out := r.Input.(LogInput), r.Output.(LogOutput)
		if !in.Read {
			continue
		}
		at := map[string]int{}
		for i, id := range out.IDs {
			if j, dup := at[id]; dup {
				why = append(why, fmt.Sprintf("a read of %s holds %s at offsets %d and %d", in.Key, id, j, i))
			}
			at[id] = i
		}
		for _, p := range ops {
			pin, pout := p.Input.(LogInput), p.Output.(LogOutput)
			if pin.Read || pin.Key != in.Key || !pout.Acked {
				continue
			}
			i, ok := at[pin.ID]
			switch {
			case !ok && p.Return < r.Call:
				why = append(why, fmt.Sprintf("a read of %s misses %s, acknowledged at offset %d before the read began", in.Key, pin.ID, pout.Offset))
			case ok && uint64(i) != pout.Offset:
				why = append(why, fmt.Sprintf("a read of %s shows %s at offset %d, acknowledged at %d", in.Key, pin.ID, i, pout.Offset))
			}
		}
		l := longest[in.Key]
		short, long := out.IDs, l
		if len(short) > len(long) {
			short, long = long, short
		}
		if !slices.Equal(short, long[:len(short)]) {
			why = append(why, fmt.Sprintf("two reads of %s disagree: neither is a prefix of the other", in.Key))
		}
		if len(out.IDs) > len(l) {
			longest[in.Key] = out.IDs
		}
	}
	slices.Sort(why)
	return slices.Compact(why)
}

// PublishOp is a publish of id to key's log, called at call and answered at
// ret: acknowledged at offset when acked, else of unknown outcome (its
// return is then PendingReturn, whatever ret says).
func PublishOp(key LogKey, id string, call, ret int64, acked bool, offset uint64) porcupine.Operation {
	out := LogOutput{Acked: acked, Offset: offset}
	if !acked {
		ret = PendingReturn
	}
	return porcupine.Operation{Input: LogInput{Key: key, ID: id}, Call: call, Output: out, Return: ret}
}

// ReadOp is a read of key's whole log, called at call, returning ids at ret.
func ReadOp(key LogKey, call, ret int64, ids []string) porcupine.Operation {
	return porcupine.Operation{Input: LogInput{Key: key, Read: true}, Call: call,
		Output: LogOutput{IDs: ids, Hash: LogHash(ids)}, Return: ret}
}
