package verify

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
)

// maxPrinted is how many violations PrintText shows; -o json has all.
const maxPrinted = 50

// PrintText writes a result for people: a summary line, one line per
// check, then each violation with its evidence.
func PrintText(w io.Writer, r Result) error {
	var b strings.Builder
	drained := "drained"
	if !r.Setup.Drained {
		drained = "NOT drained"
	}
	fmt.Fprintf(&b, "ferry verify: topic %s, %d publishes, %d deliveries, %d acks confirmed, %d refused, disruptions: %s; %s\n",
		r.Setup.Topic, r.Counts[Publish], r.Counts[Deliver], r.Counts[AckConfirmed], r.Counts[AckRefused], disruptions(r), drained)
	for _, c := range r.Checks {
		verdict := "ok  "
		if c.Violations > 0 {
			verdict = "FAIL"
		}
		fmt.Fprintf(&b, "  %s %-20s %7d checked %5d violations  %s\n", verdict, c.Name, c.Checked, c.Violations, c.Promise)
	}
	for i, v := range r.Violations {
		if i == maxPrinted {
			fmt.Fprintf(&b, "… and %d more violations (-o json lists them all)\n", len(r.Violations)-maxPrinted)
			break
		}
		fmt.Fprintf(&b, "VIOLATION %s: %s\n", v.Check, v.Message)
		for _, e := range v.Evidence {
			fmt.Fprintf(&b, "    %s\n", e)
		}
	}
	if r.OK() {
		b.WriteString("no violations\n")
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// disruptions says how many disruptions of each kind were made, and how
// many failed: "2 kill, 1 pause, 1 failed" or "none".
func disruptions(r Result) string {
	var parts []string
	for _, f := range slices.Sorted(maps.Keys(r.Disruptions)) {
		parts = append(parts, fmt.Sprintf("%d %s", r.Disruptions[f], f))
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}

// String formats an event on one line: time, kind and what is set.
func (e Event) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s", e.Time.UTC().Format("15:04:05.000000"), e.Kind)
	add := func(k, v string) {
		if v != "" {
			fmt.Fprintf(&b, " %s=%s", k, v)
		}
	}
	add("sub", e.Sub)
	add("consumer", e.Consumer)
	add("id", e.ID)
	add("key", e.Key)
	add("input", e.Input)
	if e.Kind != Disruption && (e.Kind != Publish || e.Acked) {
		fmt.Fprintf(&b, " at=%s/%d@%d", e.Topic, e.Partition, e.Offset)
	}
	if e.Attempt > 0 {
		fmt.Fprintf(&b, " attempt=%d", e.Attempt)
	}
	if !e.Call.IsZero() {
		fmt.Fprintf(&b, " called=%s", e.Call.UTC().Format("15:04:05.000000"))
	}
	add("fault", string(e.Fault))
	add("detail", e.Detail)
	add("err", e.Err)
	return b.String()
}
