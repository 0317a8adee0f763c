package verify

import (
	"cmp"
	"fmt"
	"maps"
	"slices"
	"strings"
)

// checkAtMostOnce: an at-most-once subscription delivers each message at
// most once, across consumers, reconnects and restarts.
func checkAtMostOnce(s Setup, ix *index) (int, []Violation) {
	n := 0
	var vs []Violation
	for _, sub := range subsWith(s, func(sp SubSpec) bool { return sp.Guarantee == AtMostOnce }) {
		for _, p := range sortedPlaces(ix.delivered[sub]) {
			ds := ix.delivered[sub][p]
			n++
			if len(ds) > 1 {
				vs = append(vs, Violation{Message: fmt.Sprintf("%s (at-most-once) delivered %s (%s) %d times: %s",
					sub, ds[0].ID, p, len(ds), deliveries(ds)), Evidence: ds})
			}
		}
	}
	return n, vs
}

// checkAtLeastOnce: at-least-once and effectively-once subscriptions
// deliver every stored message at least once by the end of the run. Only
// judged when the run drained.
func checkAtLeastOnce(s Setup, ix *index) (int, []Violation) {
	if !s.Drained {
		return 0, nil
	}
	n := 0
	var vs []Violation
	must := ix.mustDeliver()
	for _, sub := range subsWith(s, func(sp SubSpec) bool {
		return sp.Guarantee == AtLeastOnce || sp.Guarantee == EffectivelyOnce
	}) {
		for _, p := range must {
			n++
			if len(ix.delivered[sub][p]) == 0 {
				e := ix.evidenceOf(p)
				vs = append(vs, Violation{Message: fmt.Sprintf("%s (%s) never delivered %s (%s), published at %s",
					sub, s.Subs[sub].Guarantee, e.ID, p, stamp(e.Time)), Evidence: []Event{e}})
			}
		}
	}
	return n, vs
}

// checkEffectivelyOnce: under effectively-once every delivery carries a
// fresh attempt (two deliveries with one attempt would let two consumers
// hold one fencing token), and once attempt n's ack is confirmed no later
// attempt exists: delivered after the confirmation, it breaks "never
// delivered again"; delivered before the ack was sent, the broker accepted
// a stale attempt's ack while another consumer held the message.
func checkEffectivelyOnce(s Setup, ix *index) (int, []Violation) {
	n := 0
	var vs []Violation
	for _, sub := range subsWith(s, func(sp SubSpec) bool { return sp.Guarantee == EffectivelyOnce }) {
		for _, p := range sortedPlaces(ix.delivered[sub]) {
			n++
			vs = append(vs, attemptReused(sub, ix.delivered[sub][p])...)
		}
		for _, c := range ix.confirmed[sub] {
			for _, d := range ix.delivered[sub][c.place()] {
				if d.Attempt > c.Attempt {
					vs = append(vs, afterConfirm(sub, c, d))
				}
			}
		}
	}
	return n, vs
}

func attemptReused(sub string, ds []Event) []Violation {
	byAttempt := map[uint32][]Event{}
	for _, d := range ds {
		byAttempt[d.Attempt] = append(byAttempt[d.Attempt], d)
	}
	var vs []Violation
	for _, a := range slices.Sorted(maps.Keys(byAttempt)) {
		if same := byAttempt[a]; len(same) > 1 {
			vs = append(vs, Violation{Message: fmt.Sprintf("%s (effectively-once) delivered %s (%s) attempt %d %d times: %s",
				sub, same[0].ID, same[0].place(), a, len(same), deliveries(same)), Evidence: same})
		}
	}
	return vs
}

// afterConfirm explains a delivery d of a later attempt than the confirmed
// ack c.
func afterConfirm(sub string, c, d Event) Violation {
	if d.Time.Before(c.Call) {
		return Violation{Message: fmt.Sprintf("%s (effectively-once): %s (%s) attempt %d was delivered to %s at %s, yet the ack of the stale attempt %d sent by %s at %s was confirmed at %s (two consumers held it at once)",
			sub, d.ID, d.place(), d.Attempt, d.Consumer, stamp(d.Time), c.Attempt, c.Consumer, stamp(c.Call), stamp(c.Time)), Evidence: []Event{d, c}}
	}
	return Violation{Message: fmt.Sprintf("%s (effectively-once): %s (%s) was delivered again to %s at %s (attempt %d) after %s's ack of attempt %d was confirmed at %s",
		sub, d.ID, d.place(), d.Consumer, stamp(d.Time), d.Attempt, c.Consumer, c.Attempt, stamp(c.Time)), Evidence: []Event{c, d}}
}

// deliveries lists deliveries for a message: when, to whom, which attempt.
func deliveries(ds []Event) string {
	parts := make([]string, len(ds))
	for i, d := range ds {
		parts[i] = fmt.Sprintf("%s to %s attempt %d", stamp(d.Time), d.Consumer, d.Attempt)
	}
	return strings.Join(parts, "; ")
}

func sortedPlaces(m map[place][]Event) []place {
	ps := make([]place, 0, len(m))
	for p := range m {
		ps = append(ps, p)
	}
	slices.SortFunc(ps, func(a, b place) int {
		return cmp.Or(cmp.Compare(a.topic, b.topic), cmp.Compare(a.partition, b.partition), cmp.Compare(a.offset, b.offset))
	})
	return ps
}
