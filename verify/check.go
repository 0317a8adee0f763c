package verify

import (
	"fmt"
	"slices"
	"time"
)

// Violation is one broken promise with the events that show it.
type Violation struct {
	Check    string  `json:"check"`
	Message  string  `json:"message"`
	Evidence []Event `json:"evidence"`
}

// CheckSummary is one checker's outcome: how many things it judged and
// how many of them broke its promise.
type CheckSummary struct {
	Name       string `json:"name"`
	Promise    string `json:"promise"`
	Checked    int    `json:"checked"`
	Violations int    `json:"violations"`
}

// Result is a checked history.
type Result struct {
	Setup  Setup        `json:"setup"`
	Counts map[Kind]int `json:"counts"`
	// Disruptions counts the disruptions made, by fault, and under
	// FailedDisruption those that failed.
	Disruptions map[Fault]int  `json:"disruptions,omitempty"`
	Checks      []CheckSummary `json:"checks"`
	Violations  []Violation    `json:"violations"`
}

// FailedDisruption counts, in Result.Disruptions, the disruptions that
// failed (a pid file that names no process, a command that failed).
const FailedDisruption Fault = "failed"

// OK reports whether no promise was broken.
func (r Result) OK() bool { return len(r.Violations) == 0 }

// A checker judges one promise over a history: it returns how many things
// it judged and what broke.
type checker struct {
	name    string
	promise string
	check   func(s Setup, ix *index) (int, []Violation)
}

// checkers are every promise ferry verify checks, in report order.
var checkers = []checker{
	{"stored", "every acknowledged publish is stored exactly once, at the offset it was acknowledged at (linearizable log)", checkStored},
	{"delivered-as-stored", "every delivery is the message stored at its offset", checkDeliveredAsStored},
	{"at-most-once", "an at-most-once subscription never delivers a message twice", checkAtMostOnce},
	{"at-least-once", "at-least-once and effectively-once subscriptions deliver every stored message at least once", checkAtLeastOnce},
	{"effectively-once", "effectively-once: an attempt is never delivered twice, nothing is delivered after a confirmed ack, a stale attempt's ack is refused", checkEffectivelyOnce},
	{"pipeline", "a Commit pipeline writes exactly one output per input", checkPipeline},
	{"key-order", "key-shared: each key's messages are first delivered in offset order, to one consumer at a time", checkKeyShared},
	{"drained", "once producers stop, durable subscriptions deliver everything within the drain timeout", checkDrained},
}

// checkDrained: a subscription that never delivers what it holds breaks
// its promise as surely as one that loses it; the other checks judge loss
// only when the run drained.
func checkDrained(s Setup, _ *index) (int, []Violation) {
	if s.Drained {
		return 1, nil
	}
	return 1, []Violation{{Message: "consumers did not receive everything in time (loss was not judged): " + s.Undrained}}
}

// Check judges events against every promise of the subscriptions in s.
func Check(s Setup, events []Event) Result {
	ix := newIndex(s, events)
	res := Result{Setup: s, Counts: map[Kind]int{}, Disruptions: map[Fault]int{}}
	for _, e := range events {
		res.Counts[e.Kind]++
		switch {
		case e.Kind != Disruption:
		case e.Err != "":
			res.Disruptions[FailedDisruption]++
		case e.Fault != "":
			res.Disruptions[e.Fault]++
		}
	}
	for _, c := range checkers {
		n, vs := c.check(s, ix)
		for i := range vs {
			vs[i].Check = c.name
		}
		res.Checks = append(res.Checks, CheckSummary{Name: c.name, Promise: c.promise, Checked: n, Violations: len(vs)})
		res.Violations = append(res.Violations, vs...)
	}
	return res
}

// index groups a history's events for the checkers.
type index struct {
	publishes []Event                      // every Publish
	published map[string]Event             // Publish by id
	stored    map[place]Event              // Read by place
	storedIDs map[string][]Event           // Read by id, per topic in order read
	delivered map[string]map[place][]Event // Deliver by subscription, place
	confirmed map[string][]Event           // AckConfirmed by subscription
	disrupted []Event
}

func newIndex(s Setup, events []Event) *index {
	ix := &index{published: map[string]Event{}, stored: map[place]Event{}, storedIDs: map[string][]Event{},
		delivered: map[string]map[place][]Event{}, confirmed: map[string][]Event{}}
	for _, e := range events {
		switch e.Kind {
		case Publish:
			ix.publishes = append(ix.publishes, e)
			ix.published[e.ID] = e
		case Read:
			ix.stored[e.place()] = e
			ix.storedIDs[e.ID] = append(ix.storedIDs[e.ID], e)
		case Deliver:
			if ix.delivered[e.Sub] == nil {
				ix.delivered[e.Sub] = map[place][]Event{}
			}
			ix.delivered[e.Sub][e.place()] = append(ix.delivered[e.Sub][e.place()], e)
		case AckConfirmed:
			ix.confirmed[e.Sub] = append(ix.confirmed[e.Sub], e)
		case Disruption:
			ix.disrupted = append(ix.disrupted, e)
		}
	}
	return ix
}

// subsWith returns the names of s's subscriptions for which keep holds,
// sorted.
func subsWith(s Setup, keep func(SubSpec) bool) []string {
	var names []string
	for name, spec := range s.Subs {
		if keep(spec) {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	return names
}

// mustDeliver returns the places an at-least-once subscription must
// deliver: every acknowledged publish and every stored message a producer
// published (the read-back's markers aside), in order.
func (ix *index) mustDeliver() []place {
	seen := map[place]bool{}
	var out []place
	add := func(p place) {
		if !seen[p] {
			seen[p] = true
			out = append(out, p)
		}
	}
	for _, e := range ix.publishes {
		if e.Detail == MarkerDetail {
			continue
		}
		if e.Acked {
			add(e.place())
		} else if rs := ix.storedIDs[e.ID]; len(rs) > 0 {
			add(rs[0].place())
		}
	}
	return out
}

// evidenceOf is the event that shows p was stored: its acknowledged
// publish if any, else its read-back.
func (ix *index) evidenceOf(p place) Event {
	if r, ok := ix.stored[p]; ok {
		if pub, ok := ix.published[r.ID]; ok {
			return pub
		}
		return r
	}
	for _, e := range ix.publishes {
		if e.Acked && e.place() == p {
			return e
		}
	}
	return Event{Kind: Publish, Topic: p.topic, Partition: p.partition, Offset: p.offset}
}

func (p place) String() string { return fmt.Sprintf("%s/%d@%d", p.topic, p.partition, p.offset) }

// stamp formats a time for a violation's message.
func stamp(t time.Time) string { return t.UTC().Format("15:04:05.000") }
