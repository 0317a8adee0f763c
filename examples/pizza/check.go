package main

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

// Report is the checker's verdict on the evidence: per service what it
// handled, the duplicates and losses it saw and whether its guarantee
// held.
type Report struct {
	// Final: the run is over. Before that, an order still on its way is
	// pending, not lost.
	Final    bool            `json:"final"`
	Orders   Totals          `json:"orders"`
	Services []ServiceReport `json:"services"`
	// Held: every service's guarantee held.
	Held bool `json:"held"`
}

// Totals count orders by how far they got.
type Totals struct {
	Placed        int `json:"placed"`         // distinct orders in orders
	Accepted      int `json:"accepted"`       // distinct orders the storefront answered with success
	DoubleSubmits int `json:"double_submits"` // POSTs of an id placed before, stored nothing
	Cooked        int `json:"cooked"`         // orders with a pizza in pizzas.ready
	Charged       int `json:"charged"`        // orders with a charge in the ledger
	Delivered     int `json:"delivered"`      // cooked orders the courier delivered
	Confirmed     int `json:"confirmed"`      // orders whose customer got the "confirmed" text
	OnTheWay      int `json:"on_the_way"`     // cooked orders whose customer got the "on the way" text
}

// ServiceReport is one service's line of the report.
type ServiceReport struct {
	Name      string `json:"name"`
	Guarantee string `json:"guarantee"`
	// Handled counts the orders (or texts) the service's effect happened for.
	Handled int `json:"handled"`
	// Duplicates counts repeats the service saw: double submits absorbed,
	// redeliveries, extra texts.
	Duplicates int `json:"duplicates"`
	// Losses counts orders (or texts) whose effect never happened although
	// it was due.
	Losses int `json:"losses"`
	// Pending counts orders still on their way (never in a final report).
	Pending int `json:"pending"`
	// Violations says how the guarantee was broken, if it was: at most
	// maxViolations lines.
	Violations []string `json:"violations,omitempty"`
	Held       bool     `json:"held"`
}

// maxViolations caps the violations listed per service.
const maxViolations = 20

// violations collects a service's violations, listing the first few.
type violations struct {
	lines []string
	n     int
}

func (v *violations) add(format string, args ...any) {
	v.n++
	if len(v.lines) < maxViolations {
		v.lines = append(v.lines, fmt.Sprintf(format, args...))
	}
}

func (v *violations) list() []string {
	if v.n > len(v.lines) {
		return append(v.lines, fmt.Sprintf("... and %d more", v.n-len(v.lines)))
	}
	return v.lines
}

// Check judges the evidence. In a final check everything due has had its
// time: an order never handled is lost. Before that, an order is due once
// it is older than grace (as of now); one that is not is pending, and a
// loss counts but is no violation yet.
//
// The rules, per guarantee:
//   - storefront (idempotent publish): no order id stored twice in orders,
//     and every order answered with success is in orders.
//   - kitchen (effectively-once): at most one pizza per order in
//     pizzas.ready; finally, exactly one.
//   - billing (effectively-once): at most one charge row per order in the
//     ledger, and no delivery of an order after the broker confirmed its
//     ack; finally, exactly one charge.
//   - courier (at-least-once): finally, every pizza delivered at least once.
//     Duplicates are allowed.
//   - notifier (at-most-once): at most one text of each kind per order.
//     Losses are allowed.
func Check(ev *Evidence, now time.Time, final bool, grace time.Duration) Report {
	due := func(t time.Time) bool { return final || now.Sub(t) >= grace }
	ids := slices.Sorted(maps.Keys(ev.Orders))
	r := Report{Final: final}
	r.Orders.Placed = len(ids)
	r.Orders.Accepted = len(ev.Accepted)
	r.Orders.DoubleSubmits = ev.DoubleSubmits

	// exactlyOnce judges an effect that must happen once per order.
	exactlyOnce := func(s *ServiceReport, v *violations, id string, n int, since time.Time, twice string) {
		switch {
		case n > 1:
			v.add("order %s %s %d times", id, twice, n)
			s.Handled++
		case n == 1:
			s.Handled++
		case due(since):
			s.Losses++
			if final {
				v.add("order %s never %s", id, twice)
			}
		default:
			s.Pending++
		}
	}

	store, storeV := checkStorefront(ev, ids)

	kitchen := ServiceReport{Name: "kitchen", Guarantee: "effectively-once"}
	var kitchenV violations
	billing := ServiceReport{Name: "billing", Guarantee: "effectively-once"}
	var billingV violations
	courier := ServiceReport{Name: "courier", Guarantee: "at-least-once"}
	var courierV violations
	notifier := ServiceReport{Name: "notifier", Guarantee: "at-most-once"}
	var notifierV violations
	atMostOnce := func(kind, id string, since time.Time) {
		switch n := ev.Texts[kind][id]; {
		case n > 1:
			notifier.Handled++
			notifier.Duplicates += n - 1
			notifierV.add("customer of order %s texted %q %d times", id, kind, n)
		case n == 1:
			notifier.Handled++
		case due(since):
			notifier.Losses++
		default:
			notifier.Pending++
		}
	}
	for _, id := range ids {
		order := ev.Orders[id]
		pizza := ev.Pizzas[id]

		exactlyOnce(&kitchen, &kitchenV, id, pizza.Copies, order.First, "cooked")
		kitchen.Duplicates += max(ev.CookAttempts[id]-1, 0)

		exactlyOnce(&billing, &billingV, id, ev.Ledger.Charges[id], order.First, "charged")
		billing.Duplicates += ev.Ledger.Redelivered[id] + ev.Ledger.AfterAck[id]
		if n := ev.Ledger.AfterAck[id]; n > 0 {
			billingV.add("order %s delivered %d times after the broker confirmed its ack", id, n)
		}

		atMostOnce(textConfirmed, id, order.First)
		if pizza.Copies == 0 {
			continue
		}
		atMostOnce(textOnTheWay, id, pizza.First)
		switch n := ev.Deliveries[id]; {
		case n > 0:
			courier.Handled++
			courier.Duplicates += n - 1
		case due(pizza.First):
			courier.Losses++
			if final {
				courierV.add("pizza of order %s never delivered", id)
			}
		default:
			courier.Pending++
		}
	}

	r.Orders.Cooked = kitchen.Handled
	r.Orders.Charged = billing.Handled
	r.Orders.Delivered = courier.Handled
	r.Orders.Confirmed, r.Orders.OnTheWay = countTexts(ev, ids)
	r.Held = true
	for _, s := range []struct {
		r *ServiceReport
		v *violations
	}{{&store, &storeV}, {&kitchen, &kitchenV}, {&billing, &billingV}, {&courier, &courierV}, {&notifier, &notifierV}} {
		s.r.Violations = s.v.list()
		s.r.Held = s.v.n == 0
		r.Held = r.Held && s.r.Held
		r.Services = append(r.Services, *s.r)
	}
	return r
}

// checkStorefront judges the storefront (idempotent publish): no order id
// stored twice, and every accepted order stored. ids are the stored
// orders' ids, sorted.
func checkStorefront(ev *Evidence, ids []string) (ServiceReport, violations) {
	store := ServiceReport{Name: "storefront", Guarantee: "idempotent publish", Handled: len(ids), Duplicates: ev.DoubleSubmits}
	var storeV violations
	for _, id := range ids {
		if n := ev.Orders[id].Copies; n > 1 {
			storeV.add("order %s stored %d times", id, n)
		}
	}
	for _, id := range slices.Sorted(maps.Keys(ev.Accepted)) {
		if _, ok := ev.Orders[id]; !ok {
			store.Losses++
			storeV.add("order %s was accepted but is not in %s", id, topicOrders)
		}
	}
	return store, storeV
}

// countTexts counts the orders of ids whose customer got each text.
func countTexts(ev *Evidence, ids []string) (confirmed, onTheWay int) {
	for _, id := range ids {
		if ev.Texts[textConfirmed][id] > 0 {
			confirmed++
		}
		if ev.Texts[textOnTheWay][id] > 0 {
			onTheWay++
		}
	}
	return confirmed, onTheWay
}

// service returns the report of the named service, or nil.
func (r *Report) service(name string) *ServiceReport {
	for i := range r.Services {
		if r.Services[i].Name == name {
			return &r.Services[i]
		}
	}
	return nil
}

// caughtUp reports whether every order has been cooked, charged and
// delivered: nothing is pending or late at the services that must not
// lose anything.
func (r *Report) caughtUp() bool {
	for _, s := range r.Services {
		if s.Name != "notifier" && (s.Pending > 0 || s.Losses > 0) {
			return false
		}
	}
	return true
}

// write prints the report as a table.
func (r *Report) write(w io.Writer) error {
	o := r.Orders
	var b strings.Builder
	fmt.Fprintf(&b, "orders: %d placed (%d accepted, %d double submits stored nothing), %d cooked, %d charged, %d delivered\n",
		o.Placed, o.Accepted, o.DoubleSubmits, o.Cooked, o.Charged, o.Delivered)
	fmt.Fprintf(&b, "texts:  %d \"confirmed\", %d \"on the way\"\n\n", o.Confirmed, o.OnTheWay)
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "service\tguarantee\thandled\tduplicates\tlosses\theld")
	for _, s := range r.Services {
		held := "yes"
		if !s.Held {
			held = "NO"
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%s\n", s.Name, s.Guarantee, s.Handled, s.Duplicates, s.Losses, held)
	}
	tw.Flush()
	for _, s := range r.Services {
		for _, v := range s.Violations {
			fmt.Fprintf(&b, "%s violated %s: %s\n", s.Name, s.Guarantee, v)
		}
	}
	if r.Held {
		b.WriteString("\nevery guarantee held\n")
	} else {
		b.WriteString("\nA GUARANTEE WAS BROKEN\n")
	}
	_, err := io.WriteString(w, b.String())
	return err
}
