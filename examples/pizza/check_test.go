package main

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"
)

var t0 = time.Date(2026, 11, 24, 18, 0, 0, 0, time.UTC)

// goodEvidence is three orders, each cooked, charged, delivered and
// texted once.
func goodEvidence() *Evidence {
	ev := newEvidence()
	for _, id := range []string{"o-1", "o-2", "o-3"} {
		ev.Orders[id] = Stored{Copies: 1, First: t0}
		ev.Accepted[id] = 1
		ev.Pizzas[id] = Stored{Copies: 1, First: t0.Add(time.Second)}
		ev.CookAttempts[id] = 1
		ev.Ledger.Charges[id] = 1
		ev.Deliveries[id] = 1
		ev.Texts[textConfirmed][id] = 1
		ev.Texts[textOnTheWay][id] = 1
	}
	return &ev
}

// TestCheck breaks each guarantee once and checks that the checker says
// which, and lets through what each guarantee allows.
func TestCheck(t *testing.T) {
	for _, tc := range []struct {
		name   string
		change func(ev *Evidence)
		broken string // the service whose guarantee breaks; "" if none
		want   string // in its violations
	}{
		{"every order handled once", func(*Evidence) {}, "", ""},
		{"an order stored twice", func(ev *Evidence) { ev.Orders["o-2"] = Stored{Copies: 2, First: t0} }, "storefront", "order o-2 stored 2 times"},
		{"an accepted order missing", func(ev *Evidence) { ev.Accepted["o-9"] = 1 }, "storefront", "order o-9 was accepted but is not in orders"},
		{"a double submit", func(ev *Evidence) { ev.Accepted["o-1"]++; ev.DoubleSubmits++ }, "", ""},
		{"a pizza cooked twice", func(ev *Evidence) { ev.Pizzas["o-1"] = Stored{Copies: 2, First: t0} }, "kitchen", "order o-1 cooked 2 times"},
		{"a pizza never cooked", func(ev *Evidence) { delete(ev.Pizzas, "o-3") }, "kitchen", "order o-3 never cooked"},
		{"a cooking retried", func(ev *Evidence) { ev.CookAttempts["o-1"] = 3 }, "", ""},
		{"a double charge", func(ev *Evidence) { ev.Ledger.Charges["o-2"] = 2 }, "billing", "order o-2 charged 2 times"},
		{"a charge missing", func(ev *Evidence) { delete(ev.Ledger.Charges, "o-2") }, "billing", "order o-2 never charged"},
		{"a redelivery before the ack was confirmed", func(ev *Evidence) { ev.Ledger.Redelivered["o-2"] = 1 }, "", ""},
		{"a redelivery after the ack was confirmed", func(ev *Evidence) { ev.Ledger.AfterAck["o-2"] = 1 }, "billing", "order o-2 delivered 1 times after the broker confirmed its ack"},
		{"a pizza delivered twice", func(ev *Evidence) { ev.Deliveries["o-1"] = 2 }, "", ""},
		{"a pizza never delivered", func(ev *Evidence) { delete(ev.Deliveries, "o-1") }, "courier", "pizza of order o-1 never delivered"},
		{"a text lost", func(ev *Evidence) { delete(ev.Texts[textOnTheWay], "o-1") }, "", ""},
		{"a text sent twice", func(ev *Evidence) { ev.Texts[textConfirmed]["o-3"] = 2 }, "notifier", `customer of order o-3 texted "confirmed" 2 times`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ev := goodEvidence()
			tc.change(ev)
			r := Check(ev, t0.Add(time.Hour), true, 0)
			for _, s := range r.Services {
				broken := s.Name == tc.broken
				if s.Held == broken {
					t.Errorf("%s held %t; violations %q", s.Name, s.Held, s.Violations)
				}
				if broken && !slices.Contains(s.Violations, tc.want) {
					t.Errorf("%s violations %q, want %q among them", s.Name, s.Violations, tc.want)
				}
			}
			if r.Held != (tc.broken == "") {
				t.Errorf("report held %t", r.Held)
			}
		})
	}
}

// TestCheckCounts checks the counts a report shows for allowed
// duplicates and losses.
func TestCheckCounts(t *testing.T) {
	ev := goodEvidence()
	ev.DoubleSubmits = 2
	ev.CookAttempts["o-1"] = 3
	ev.Ledger.Redelivered["o-2"] = 1
	ev.Deliveries["o-3"] = 4
	delete(ev.Texts[textOnTheWay], "o-1")
	r := Check(ev, t0.Add(time.Hour), true, 0)
	for _, want := range []ServiceReport{
		{Name: "storefront", Handled: 3, Duplicates: 2},
		{Name: "kitchen", Handled: 3, Duplicates: 2},
		{Name: "billing", Handled: 3, Duplicates: 1},
		{Name: "courier", Handled: 3, Duplicates: 3},
		{Name: "notifier", Handled: 5, Losses: 1},
	} {
		s := r.service(want.Name)
		if s.Handled != want.Handled || s.Duplicates != want.Duplicates || s.Losses != want.Losses || !s.Held {
			t.Errorf("%s: %+v, want handled %d, duplicates %d, losses %d, held", want.Name, *s, want.Handled, want.Duplicates, want.Losses)
		}
	}
	if want := (Totals{Placed: 3, Accepted: 3, DoubleSubmits: 2, Cooked: 3, Charged: 3, Delivered: 3, Confirmed: 3, OnTheWay: 2}); r.Orders != want {
		t.Errorf("totals %+v, want %+v", r.Orders, want)
	}
}

// TestCheckWhileRunning checks that before the end an order on its way is
// pending, a late one is a loss but not yet a violation, and that a
// violation needs no waiting.
func TestCheckWhileRunning(t *testing.T) {
	ev := goodEvidence()
	ev.Orders["o-4"] = Stored{Copies: 1, First: t0.Add(50 * time.Second)} // recent
	ev.Orders["o-5"] = Stored{Copies: 1, First: t0}                       // late
	r := Check(ev, t0.Add(time.Minute), false, 20*time.Second)
	k := r.service("kitchen")
	if k.Pending != 1 || k.Losses != 1 || !k.Held {
		t.Errorf("kitchen %+v, want 1 pending, 1 late, held", *k)
	}
	if r.caughtUp() {
		t.Error("caught up with two orders not cooked")
	}
	ev.Ledger.Charges["o-1"] = 2
	if r = Check(ev, t0.Add(time.Minute), false, 20*time.Second); r.service("billing").Held {
		t.Error("a double charge held while running")
	}
	if r = Check(goodEvidence(), t0.Add(time.Minute), false, 20*time.Second); !r.caughtUp() {
		t.Errorf("not caught up: %+v", r)
	}
}

// TestLedger settles deliveries into a real ledger and checks what the
// checker makes of it: a redelivery before the ack is confirmed is
// harmless, one after it breaks effectively-once, and a second charge row
// for one order — a billing that skipped its idempotency check — is a
// double charge.
func TestLedger(t *testing.T) {
	dir := t.TempDir()
	l, err := openLedger(dir)
	if err != nil {
		t.Fatal(err)
	}
	settle := func(id string, want outcome) {
		t.Helper()
		got, err := l.settle(Order{ID: id, PriceCents: 900}, t0)
		if err != nil || got != want {
			t.Fatalf("settle %s: %v, %v; want %v", id, got, err, want)
		}
	}
	settle("o-1", charged)
	settle("o-2", charged)
	settle("o-1", redelivered) // crashed before the ack
	if err := l.confirm("o-1"); err != nil {
		t.Fatal(err)
	}
	if err := l.confirm("o-2"); err != nil {
		t.Fatal(err)
	}

	ev := goodEvidence()
	delete(ev.Orders, "o-3")
	check := func() *Report {
		t.Helper()
		if ev.Ledger, err = l.evidence(); err != nil {
			t.Fatal(err)
		}
		r := Check(ev, t0, true, 0)
		return &r
	}
	if b := check().service("billing"); !b.Held || b.Handled != 2 || b.Duplicates != 1 {
		t.Fatalf("billing %+v, want held, 2 handled, 1 duplicate", *b)
	}

	// Reopened, the ledger goes on after its last row.
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if l, err = openLedger(dir); err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	settle("o-2", afterAck)
	if b := check().service("billing"); b.Held || !slices.Contains(b.Violations, "order o-2 delivered 1 times after the broker confirmed its ack") {
		t.Fatalf("billing %+v, want a delivery after the confirmed ack", *b)
	}

	// A charge written without the check.
	err = l.db.Update(func(txn *badger.Txn) error { return l.writeCharge(txn, "o-1", []byte(`{"order_id":"o-1"}`)) })
	if err != nil {
		t.Fatal(err)
	}
	l.seq++
	settle("o-3", charged) // a new row after it, not over it
	if b := check().service("billing"); b.Held || !slices.Contains(b.Violations, "order o-1 charged 2 times") {
		t.Fatalf("billing %+v, want a double charge", *b)
	}
}

// TestLineLog checks that a torn last line is never read and is cut off
// when the log is opened again.
func TestLineLog(t *testing.T) {
	path := filepath.Join(t.TempDir(), "outbox.log")
	l, err := openLineLog(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"o-1", "o-2"} {
		if err := l.append(textConfirmed, id); err != nil {
			t.Fatal(err)
		}
	}
	l.Close()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString("confirmed o-"); err != nil { // a crash mid-write
		t.Fatal(err)
	}
	f.Close()

	tail := &lineTail{path: path}
	var got []string
	read := func() {
		t.Helper()
		if err := tail.read(func(f []string) { got = append(got, strings.Join(f, " ")) }); err != nil {
			t.Fatal(err)
		}
	}
	read()
	if want := []string{"confirmed o-1", "confirmed o-2"}; !slices.Equal(got, want) {
		t.Fatalf("read %q, want %q", got, want)
	}
	if l, err = openLineLog(path); err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if err := l.append(textOnTheWay, "o-1"); err != nil {
		t.Fatal(err)
	}
	read()
	if want := []string{"confirmed o-1", "confirmed o-2", "on-the-way o-1"}; !slices.Equal(got, want) {
		t.Fatalf("read %q, want %q", got, want)
	}
}

// TestPageTestIDs checks that the page keeps the ids browser tests find
// its parts by.
func TestPageTestIDs(t *testing.T) {
	for _, id := range []string{
		`data-testid="order-form"`, `data-testid="order-customer"`, `data-testid="order-pizza"`, `data-testid="order-submit"`,
		`data-testid="order-status"`, `data-testid="chaos-button"`, `data-testid="board-column-placed"`,
		`data-testid="board-column-cooked"`, `data-testid="board-column-delivered"`, `dataset.testid = "order-card"`,
		`dataset.testid = "stat-" + s.name + "-" + field`, `dataset.testid = "service-" + s.name`,
	} {
		if !strings.Contains(string(page), id) {
			t.Errorf("page.html lacks %s", id)
		}
	}
}
