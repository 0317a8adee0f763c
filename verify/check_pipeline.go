package verify

import (
	"cmp"
	"fmt"
	"slices"
)

// checkPipeline: the Commit pipeline writes exactly one output per input:
// never two (a retried or superseded commit stored again), and, once the
// run drained, never none.
func checkPipeline(s Setup, ix *index) (int, []Violation) {
	if s.Pipeline == "" {
		return 0, nil
	}
	outs := map[string][]Event{}
	for _, r := range ix.stored {
		if r.Topic == s.OutputTopic && r.Detail != MarkerDetail {
			outs[r.Input] = append(outs[r.Input], r)
		}
	}
	n := 0
	var vs []Violation
	for _, p := range ix.mustDeliver() {
		n++
		in := ix.evidenceOf(p)
		got := outs[in.ID]
		delete(outs, in.ID)
		switch {
		case len(got) > 1:
			slices.SortFunc(got, func(a, b Event) int { return cmp.Compare(a.Offset, b.Offset) })
			vs = append(vs, Violation{Message: fmt.Sprintf("pipeline %s wrote %d outputs for input %s (%s): at %s",
				s.Pipeline, len(got), in.ID, p, places(got)), Evidence: append([]Event{in}, got...)})
		case len(got) == 0 && s.Drained:
			vs = append(vs, Violation{Message: fmt.Sprintf("pipeline %s wrote no output for input %s (%s), published at %s",
				s.Pipeline, in.ID, p, stamp(in.Time)), Evidence: []Event{in}})
		}
	}
	for _, input := range sortedKeys(outs) {
		vs = append(vs, Violation{Message: fmt.Sprintf("pipeline %s wrote %d outputs for %q, which is no stored input",
			s.Pipeline, len(outs[input]), input), Evidence: outs[input]})
	}
	return n, vs
}

// checkKeyShared: a key-shared subscription first delivers each key's
// messages in offset order, and gives a key to one consumer at a time: no
// consumer receives a key while another holds one of its messages and
// later has its ack of it confirmed (effectively-once acks say when a
// hold was still valid).
func checkKeyShared(s Setup, ix *index) (int, []Violation) {
	n := 0
	var vs []Violation
	for _, sub := range subsWith(s, func(sp SubSpec) bool { return sp.Type == KeyShared }) {
		byKey := map[string][]Event{}
		for _, ds := range ix.delivered[sub] {
			for _, d := range ds {
				if d.Key != "" {
					byKey[d.Key] = append(byKey[d.Key], d)
				}
			}
		}
		for _, key := range sortedKeys(byKey) {
			n++
			vs = append(vs, keyOrder(sub, key, byKey[key])...)
		}
		vs = append(vs, keyHeldTwice(sub, ix, byKey)...)
	}
	return n, vs
}

// keyOrder checks that the first deliveries (attempt 1) of one key's
// messages come in offset order. Redeliveries may come later: a nack
// frees the key for the next message. A first delivery the consumer
// never handled (nacked by the SDK while it detached) is not in the
// history, and its message is left out.
func keyOrder(sub, key string, ds []Event) []Violation {
	first := map[place]Event{}
	for _, d := range ds {
		if d.Attempt == 1 {
			first[d.place()] = d
		}
	}
	fs := make([]Event, 0, len(first))
	for _, f := range first {
		fs = append(fs, f)
	}
	slices.SortFunc(fs, func(a, b Event) int {
		return cmp.Or(cmp.Compare(a.Partition, b.Partition), cmp.Compare(a.Offset, b.Offset))
	})
	var vs []Violation
	for i := 1; i < len(fs); i++ {
		a, b := fs[i-1], fs[i]
		if a.Partition == b.Partition && b.Time.Before(a.Time) {
			vs = append(vs, Violation{Message: fmt.Sprintf("%s (key-shared): key %q: %s (%s) was first delivered at %s to %s, before the earlier %s (%s) at %s to %s",
				sub, key, b.ID, b.place(), stamp(b.Time), b.Consumer, a.ID, a.place(), stamp(a.Time), a.Consumer), Evidence: []Event{a, b}})
		}
	}
	return vs
}

// keyHeldTwice finds a delivery of a key to one consumer made while
// another consumer held a message of the key whose ack was then
// confirmed.
func keyHeldTwice(sub string, ix *index, byKey map[string][]Event) []Violation {
	var vs []Violation
	for _, c := range ix.confirmed[sub] {
		held, ok := heldBy(ix.delivered[sub][c.place()], c)
		if !ok || held.Key == "" {
			continue
		}
		for _, d := range byKey[held.Key] {
			if d.Consumer != c.Consumer && d.Time.After(held.Time) && d.Time.Before(c.Call) {
				vs = append(vs, Violation{Message: fmt.Sprintf("%s (key-shared): key %q went to %s at %s (%s) while %s held %s (%s, delivered at %s, ack sent at %s and confirmed)",
					sub, held.Key, d.Consumer, stamp(d.Time), d.place(), c.Consumer, held.ID, held.place(), stamp(held.Time), stamp(c.Call)),
					Evidence: []Event{held, d, c}})
				break
			}
		}
	}
	return vs
}

// heldBy returns the delivery a confirmed ack c settled.
func heldBy(ds []Event, c Event) (Event, bool) {
	for _, d := range ds {
		if d.Consumer == c.Consumer && d.Attempt == c.Attempt {
			return d, true
		}
	}
	return Event{}, false
}
