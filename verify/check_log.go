package verify

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/anishathalye/porcupine"
)

// logCheckTimeout bounds porcupine's search on one history.
const logCheckTimeout = time.Minute

// checkStored checks the producers' topic as a linearizable log: each
// acknowledged publish read back at its offset, no id stored twice, no gap.
// The plain checks give the evidence; porcupine (LogModel) gives the
// verdict on the whole history, publishes of unknown outcome included.
func checkStored(s Setup, ix *index) (int, []Violation) {
	var vs []Violation
	acked := 0
	for _, e := range ix.publishes {
		if !e.Acked {
			continue
		}
		acked++
		if v, bad := storedAsAcked(ix, e); bad {
			vs = append(vs, v)
		}
	}
	vs = append(vs, storedTwice(ix)...)
	vs = append(vs, ackedTwice(ix)...)
	vs = append(vs, realTimeOrder(s, ix)...)
	if len(vs) == 0 {
		if res, why := linearizable(s, ix); res != porcupine.Ok {
			vs = append(vs, Violation{Message: fmt.Sprintf("the log of %s is not linearizable (%s): %s", s.Topic, res, strings.Join(why, "; "))})
		}
	}
	return acked, vs
}

// storedAsAcked checks that the acknowledged publish e is read back at its
// place.
func storedAsAcked(ix *index, e Event) (Violation, bool) {
	r, ok := ix.stored[e.place()]
	switch {
	case !ok:
		return Violation{Message: fmt.Sprintf("publish %s acknowledged at %s at %s: the offset is not in the log read back", e.ID, e.place(), stamp(e.Time)),
			Evidence: []Event{e}}, true
	case r.ID != e.ID:
		return Violation{Message: fmt.Sprintf("publish %s acknowledged at %s at %s: the log holds %s there", e.ID, e.place(), stamp(e.Time), r.ID),
			Evidence: []Event{e, r}}, true
	}
	return Violation{}, false
}

// storedTwice finds ids read back at more than one offset.
func storedTwice(ix *index) []Violation {
	var vs []Violation
	for id, rs := range ix.storedIDs {
		byTopic := map[string][]Event{}
		for _, r := range rs {
			byTopic[r.Topic] = append(byTopic[r.Topic], r)
		}
		for topic, rs := range byTopic {
			if len(rs) > 1 {
				vs = append(vs, Violation{Message: fmt.Sprintf("id %s is stored %d times in %s: at %s", id, len(rs), topic, places(rs)),
					Evidence: rs})
			}
		}
	}
	slices.SortFunc(vs, func(a, b Violation) int { return cmp.Compare(a.Message, b.Message) })
	return vs
}

// ackedTwice finds two acknowledged publishes of different ids at one
// place.
func ackedTwice(ix *index) []Violation {
	at := map[place]Event{}
	var vs []Violation
	for _, e := range ix.publishes {
		if !e.Acked {
			continue
		}
		if o, ok := at[e.place()]; ok && o.ID != e.ID {
			vs = append(vs, Violation{Message: fmt.Sprintf("publishes %s and %s both acknowledged at %s", o.ID, e.ID, e.place()),
				Evidence: []Event{o, e}})
		}
		at[e.place()] = e
	}
	return vs
}

// realTimeOrder finds a message stored before another whose publish was
// acknowledged before its own publish was called: the log does not follow
// real time.
func realTimeOrder(s Setup, ix *index) []Violation {
	var vs []Violation
	for _, rs := range readsByPartition(ix, s.Topic) {
		var later *Event // the acknowledged publish stored after, answered first
		for i := len(rs) - 1; i >= 0; i-- {
			x, ok := ix.published[rs[i].ID]
			if !ok {
				continue
			}
			if later != nil && later.Time.Before(x.Call) {
				vs = append(vs, Violation{Message: fmt.Sprintf("%s is stored at %s, before %s at %s, though %s was acknowledged at %s and %s only called at %s",
					x.ID, rs[i].place(), later.ID, later.place(), later.ID, stamp(later.Time), x.ID, stamp(x.Call)), Evidence: []Event{x, *later, rs[i]}})
			}
			if x.Acked && (later == nil || x.Time.Before(later.Time)) {
				later = &x
			}
		}
	}
	return vs
}

func places(es []Event) string {
	ps := make([]string, len(es))
	for i, e := range es {
		ps[i] = e.place().String()
	}
	return strings.Join(ps, ", ")
}

// linearizable runs porcupine on the producers' topic: each publish, and
// one read per partition (the read-back, from offset 0). A publish of
// unknown outcome belongs to the partition the read-back shows it in; one
// never seen cannot matter and is left out.
func linearizable(s Setup, ix *index) (porcupine.CheckResult, []string) {
	var base time.Time
	if len(ix.publishes) > 0 {
		base = ix.publishes[0].Call
	}
	ns := func(t time.Time) int64 { return int64(t.Sub(base)) }
	var ops []porcupine.Operation
	for _, e := range ix.publishes {
		if e.Topic != s.Topic {
			continue
		}
		k := LogKey{Topic: e.Topic, Partition: e.Partition}
		if !e.Acked {
			rs := ix.storedIDs[e.ID]
			if len(rs) == 0 {
				continue
			}
			k.Partition = rs[0].Partition
		}
		ops = append(ops, PublishOp(k, e.ID, ns(e.Call), ns(e.Time), e.Acked, e.Offset))
	}
	for k, rs := range readsByPartition(ix, s.Topic) {
		ids := make([]string, len(rs))
		for i, r := range rs {
			ids[i] = r.ID
		}
		ops = append(ops, ReadOp(k, ns(rs[0].Call), ns(rs[0].Time), ids))
	}
	res, _, _ := CheckLog(ops, logCheckTimeout)
	return res, ExplainLog(ops)
}

// readsByPartition returns topic's read-back per partition, in offset
// order.
func readsByPartition(ix *index, topic string) map[LogKey][]Event {
	out := map[LogKey][]Event{}
	for p, r := range ix.stored {
		if p.topic == topic {
			k := LogKey{Topic: topic, Partition: p.partition}
			out[k] = append(out[k], r)
		}
	}
	for _, rs := range out {
		slices.SortFunc(rs, func(a, b Event) int { return cmp.Compare(a.Offset, b.Offset) })
	}
	return out
}

// checkDeliveredAsStored checks that each delivery carries the id stored
// at its offset: no phantom or misplaced delivery.
func checkDeliveredAsStored(_ Setup, ix *index) (int, []Violation) {
	n := 0
	var vs []Violation
	for _, sub := range sortedKeys(ix.delivered) {
		for _, ds := range ix.delivered[sub] {
			for _, d := range ds {
				n++
				r, ok := ix.stored[d.place()]
				if ok && r.ID == d.ID {
					continue
				}
				what := "nothing"
				if ok {
					what = r.ID
				}
				vs = append(vs, Violation{Message: fmt.Sprintf("%s delivered %s as %s at %s to %s; the log holds %s there",
					sub, d.ID, d.place(), stamp(d.Time), d.Consumer, what), Evidence: []Event{d}})
			}
		}
	}
	return n, vs
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
