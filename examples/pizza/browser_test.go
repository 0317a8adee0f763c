package main

import (
	"bytes"
	"context"
	"fmt"
	"iter"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/ferrymq/ferry/internal/ferrytest"
)

// TestPizzaInBrowser drives the storefront page in headless Chromium as a
// person would. It types a customer's name, picks a pizza and presses
// "Place order", and watches each order's card appear on the board and
// move placed → cooked → delivered. A double click on the button places
// one order. It presses "Kill something", reads which process was killed,
// places one more order once everything is back, and waits until the
// guarantees table shows every order handled and every guarantee held.
// Then it saves a full-page screenshot to t.ArtifactDir(), or to
// FERRY_PIZZA_SCREENSHOT (relative to the repository root) if set; the
// README's picture is made with
//
//	FERRY_PIZZA_SCREENSHOT=examples/pizza/screenshot.png go test -run Browser ./examples/pizza
//
// It needs Chromium (/usr/bin/chromium, or chromium on PATH): without it
// the test is skipped, or fails under FERRY_REQUIRE_BROWSER=1 (CI). FERRY_PIZZA_SEED picks the
// victim of the chaos button (default 5: the broker; 1: the storefront).
func TestPizzaInBrowser(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the demo and a browser for about 15s")
	}
	chromium := findChromium(t)
	seed := uint64(5)
	if s := os.Getenv("FERRY_PIZZA_SEED"); s != "" {
		var err error
		if seed, err = strconv.ParseUint(s, 10, 64); err != nil {
			t.Fatalf("FERRY_PIZZA_SEED: %v", err)
		}
	}
	t.Logf("chaos seed %d (FERRY_PIZZA_SEED=%d replays its choice)", seed, seed)

	// No --orders: the demo runs until it is interrupted. No --chaos: the
	// button is what kills. Cooking and driving are slow enough to watch a
	// card in each column.
	d := startDemo(t, "--http-addr", "127.0.0.1:0", "--seed", strconv.FormatUint(seed, 10),
		"--cook-time", "700ms", "--drive-time", "500ms", "--send-time", "50ms")
	b := openBrowser(t, chromium, d)

	b.do("open the storefront", chromedp.Navigate(d.url))
	b.waitTrue("the board to go live, the menu and the guarantees table to load", 20*time.Second, `() =>
		testid("board-status").textContent === "board: live" &&
		testid("order-pizza").options.length > 0 &&
		testid("stat-storefront-held") !== null`)
	// Record every column each card is seen in (a card may pass through
	// one faster than a poll could see it), and count the form's submits.
	b.do("watch the board", chromedp.Evaluate[chromedp.Void](`{
		window.seenColumns = {};
		const board = document.querySelector('[data-testid="board"]');
		new MutationObserver(() => {
			for (const c of board.querySelectorAll('[data-testid="order-card"]')) {
				const seen = (window.seenColumns[c.dataset.orderId] ||= []);
				if (seen[seen.length - 1] !== c.dataset.column) seen.push(c.dataset.column);
			}
		}).observe(board, { subtree: true, childList: true, attributes: true, attributeFilter: ["data-column"] });
		window.submits = 0;
		document.querySelector('[data-testid="order-form"]').addEventListener("submit", () => window.submits++);
	}`))

	// Four orders, one click each.
	type order struct{ id, customer, pizza string }
	var orders []order
	for _, o := range []order{
		{customer: "Ada", pizza: "margherita"}, {customer: "Edsger", pizza: "diavola"},
		{customer: "Grace", pizza: "funghi"}, {customer: "Barbara", pizza: "quattro formaggi"},
	} {
		o.id = b.placeOrder(o.customer, o.pizza)
		orders = append(orders, o)
	}
	// Barbara's click was the first of a double click, and the storefront
	// answered it before the second came, as a fast one does. The second
	// sends the same order again, which the broker stores once. (chromedp's
	// DoubleClick is one click with a click count of 2: a second click.)
	barbara := orders[len(orders)-1].id
	if _, status := b.submit("the double click's second click", chromedp.DoubleClick(chromedp.CSS(submitButton))); status != "Order "+barbara+" placed (a repeat: stored once)." {
		t.Errorf("the second click of a double click on Place order: the status says %q, want Barbara's order %s again, stored once", status, barbara)
	}

	for _, o := range orders {
		b.waitTrue("the card of "+o.customer+"'s order "+o.id+" in the delivered column", 30*time.Second,
			`(id) => document.querySelector('[data-testid="board-column-delivered"] [data-order-id="' + id + '"]') !== null`, o.id)
		seen := run(b, "the columns "+o.id+" was seen in", chromedp.Evaluate[[]string](`window.seenColumns[`+strconv.Quote(o.id)+`]`))
		if got := strings.Join(seen, " → "); got != "placed → cooked → delivered" {
			t.Errorf("the card of order %s went %s, want placed → cooked → delivered", o.id, got)
		}
		card := run(b, "the card of "+o.id, chromedp.Attributes(chromedp.CSS(`[data-order-id="`+o.id+`"]`)))
		if card["data-customer"] != o.customer || card["data-pizza"] != o.pizza {
			t.Errorf("the card of order %s says %s ordered a %s, want %s a %s", o.id, card["data-customer"], card["data-pizza"], o.customer, o.pizza)
		}
	}
	// The double click made one order: one card, one order in the
	// storefront's count, and one double submit that stored nothing.
	b.waitSettled(len(orders))
	if n := run(b, "Barbara's cards", chromedp.Evaluate[int](
		`document.querySelectorAll('[data-testid="order-card"][data-customer="Barbara"]').length`)); n != 1 {
		t.Errorf("a double click on Place order made %d cards, want 1", n)
	}
	if n := run(b, "the storefront's duplicates", chromedp.Text(chromedp.CSS(`[data-testid="stat-storefront-duplicates"]`))); n != "1" {
		t.Errorf("the storefront counted %s double submits, want 1: the double click", n)
	}

	// Chaos: the button kills one process, which is started again.
	b.do("press Kill something", chromedp.Click(chromedp.CSS(`[data-testid="chaos-button"]`)))
	result := b.waitValue("the chaos button's result", 10*time.Second, `() => testid("chaos-result").textContent`)
	m := regexp.MustCompile(`^killed (\S+) \(pid \d+\); back in \S+$|^killed the (storefront), probably: it is restarting$`).FindStringSubmatch(result)
	if m == nil {
		b.fatalf("the chaos button's result says %q, want which process was killed", result)
	}
	victim := m[1] + m[2]
	t.Logf("the chaos button: %s", result)
	b.waitTrue("the kill of "+victim+" in the chaos log", 20*time.Second,
		`(victim) => [...testid("chaos-events").children].some((li) => li.textContent.includes(" killed " + victim + " (pid "))`, victim)
	b.waitSettled(len(orders))

	// An order placed once everything is back goes through too. (The board
	// may have missed it: it reads through NONE subscriptions, and the kill
	// may have detached them for a while.)
	orders = append(orders, order{id: b.placeOrder("Tony", "marinara"), customer: "Tony", pizza: "marinara"})
	b.waitSettled(len(orders))
	b.screenshot()
	for _, e := range b.console.exceptions() {
		t.Errorf("the page threw: %s", e)
	}
	d.stop(t)
}

// findChromium returns the path of the Chromium the test drives. Without
// one the test is skipped, so that `go test ./...` needs only Go — unless
// FERRY_REQUIRE_BROWSER=1 (CI sets it, after installing Chromium): then it
// fails, saying how to install it.
func findChromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"/usr/bin/chromium", "chromium"} {
		if path, err := exec.LookPath(name); err == nil {
			return path
		}
	}
	msg := "this test drives the storefront in headless Chromium, and there is none " +
		"(neither /usr/bin/chromium nor chromium on PATH); install it (Debian: apt-get install chromium)"
	if os.Getenv("FERRY_REQUIRE_BROWSER") == "1" {
		t.Fatal(msg)
	}
	t.Skip(msg + "; FERRY_REQUIRE_BROWSER=1 makes this a failure, as in CI")
	return ""
}

// demo is a running demo supervisor.
type demo struct {
	url    string // the storefront
	dir    string // the data directory
	cmd    *exec.Cmd
	out    *demoOutput
	exited chan struct{} // closed when the supervisor has exited
	err    error         // its exit, once exited is closed
}

// startDemo builds the demo and starts it on a temporary data directory
// with args, and returns once the storefront answers. If the test ends
// with the demo running, it is stopped.
func startDemo(t *testing.T, args ...string) *demo {
	t.Helper()
	bin := buildDemo(t)
	d := &demo{dir: t.TempDir(), out: &demoOutput{url: make(chan string, 1)}, exited: make(chan struct{})}
	d.cmd = exec.Command(bin, append([]string{"--data-dir", d.dir}, args...)...)
	d.cmd.Stdout, d.cmd.Stderr = d.out, d.out
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		d.err = d.cmd.Wait()
		close(d.exited)
	}()
	// Registered after t.TempDir, so it runs before the directory is
	// removed; an interrupt waits for the demo's processes.
	t.Cleanup(func() { _ = d.interrupt() })
	select {
	case d.url = <-d.out.url:
	case <-d.exited:
		t.Fatalf("the demo exited before its storefront answered: %v\n%s", d.err, d.out)
	case <-time.After(time.Minute):
		t.Fatalf("the demo's storefront did not answer within a minute:\n%s", d.out)
	}
	t.Logf("the demo's storefront is at %s", d.url)
	return d
}

// interrupt stops the demo as Ctrl-C does and waits until it has exited:
// it stops its processes first. It kills the demo if it takes more than
// 30s, and then reports false.
func (d *demo) interrupt() bool {
	select {
	case <-d.exited:
		return true
	default:
	}
	_ = d.cmd.Process.Signal(os.Interrupt)
	select {
	case <-d.exited:
		return true
	case <-time.After(30 * time.Second):
		_ = d.cmd.Process.Kill()
		<-d.exited
		return false
	}
}

// stop interrupts the demo and checks that it exits 0: every guarantee
// held in its last report.
func (d *demo) stop(t *testing.T) {
	t.Helper()
	if !d.interrupt() {
		t.Fatalf("the demo did not stop within 30s of an interrupt:\n%s", d.out)
	}
	if d.err != nil {
		t.Errorf("the interrupted demo exited with %v, want 0 (every guarantee held):\n%s", d.err, d.out)
		dumpLogs(t, d.dir)
	}
}

// demoOutput collects the supervisor's output and sends the storefront's
// URL on url once the supervisor prints it.
type demoOutput struct {
	mu   sync.Mutex // guards buf and sent
	buf  bytes.Buffer
	url  chan string
	sent bool
}

func (o *demoOutput) Write(b []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.buf.Write(b)
	if !o.sent {
		const prefix = "pizza: the storefront is at "
		if _, rest, ok := strings.Cut(o.buf.String(), prefix); ok {
			if url, _, ok := strings.Cut(rest, " "); ok {
				o.url <- url
				o.sent = true
			}
		}
	}
	return len(b), nil
}

func (o *demoOutput) String() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.buf.String()
}

// browser is headless Chromium with the storefront in a tab.
type browser struct {
	t       *testing.T
	ctx     context.Context // the tab
	d       *demo
	console *consoleLog
}

// openBrowser starts headless Chromium with a tab; the test's end stops it.
func openBrowser(t *testing.T, chromium string, d *demo) *browser {
	t.Helper()
	// The defaults include --headless, --no-first-run, --disable-sync and
	// --disable-background-networking, and each browser gets a fresh
	// --user-data-dir; with background networking on, Chromium reaches out
	// to the internet at start. --no-sandbox lets it run as root.
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromium),
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.WindowSize(1280, 900),
	)
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelTab := chromedp.NewContext(actx)
	b := &browser{t: t, ctx: ctx, d: d, console: &consoleLog{}}
	msgs := chromedp.Console(ctx) // starts the browser
	var wg sync.WaitGroup
	wg.Go(func() { b.console.collect(msgs) }) // until cancelTab
	t.Cleanup(func() {
		cancelTab()
		wg.Wait()
		cancelAlloc()
	})
	return b
}

// do runs actions in the storefront's tab, or fails the test.
func (b *browser) do(what string, actions ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 20*time.Second)
	defer cancel()
	if err := chromedp.Do(ctx, actions...); err != nil {
		b.fatalf("%s: %v", what, err)
	}
}

// run runs an action in the storefront's tab and returns its value, or
// fails the test.
func run[T any](b *browser, what string, a chromedp.Action[T]) T {
	b.t.Helper()
	return runWithin(b, what, 20*time.Second, a)
}

// runWithin is run with a timeout.
func runWithin[T any](b *browser, what string, timeout time.Duration, a chromedp.Action[T]) T {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, timeout)
	defer cancel()
	v, err := chromedp.Run(ctx, a)
	if err != nil {
		b.fatalf("%s: %v", what, err)
	}
	return v
}

// poll wraps a JavaScript function for waitValue and waitTrue: fn may call
// testid(id), which finds the element with that data-testid.
func poll(fn string) string {
	return `(...args) => {
		const testid = (id) => document.querySelector('[data-testid="' + id + '"]');
		return (` + fn + `)(...args);
	}`
}

// waitValue waits until the JavaScript function fn, called with args,
// returns a truthy string, and returns it. (chromedp passes an empty
// string or array in args as undefined.)
func (b *browser) waitValue(what string, timeout time.Duration, fn string, args ...any) string {
	b.t.Helper()
	// An exception in fn stops the polling: the context's timeout, a little
	// longer, ends the wait then.
	return runWithin(b, "waiting for "+what, timeout+5*time.Second, chromedp.PollFunction[string](poll(fn),
		chromedp.WithPollingArgs(args...), chromedp.WithPollingInterval(50*time.Millisecond), chromedp.WithPollingTimeout(timeout)))
}

// waitTrue waits until the JavaScript function fn, called with args,
// returns true.
func (b *browser) waitTrue(what string, timeout time.Duration, fn string, args ...any) {
	b.t.Helper()
	runWithin(b, "waiting for "+what, timeout+5*time.Second, chromedp.PollFunction[chromedp.Void](poll(fn),
		chromedp.WithPollingArgs(args...), chromedp.WithPollingInterval(50*time.Millisecond), chromedp.WithPollingTimeout(timeout)))
}

// orderPlaced matches the order form's status line after a success.
var orderPlaced = regexp.MustCompile(`^Order (\S+) placed(?: \(a repeat: stored once\))?\.$`)

// The order form's fields.
const (
	nameField    = `[data-testid="order-customer"]`
	pizzaMenu    = `[data-testid="order-pizza"]`
	submitButton = `[data-testid="order-submit"]`
)

// placeOrder fills in the order form, presses "Place order" and returns
// the id of the order placed. On an error the page asks to press again,
// which keeps the order id; so does placeOrder, a few times.
func (b *browser) placeOrder(customer, pizza string) string {
	b.t.Helper()
	b.do("fill in the order form for "+customer,
		chromedp.Focus(chromedp.CSS(nameField)),
		chromedp.KeyEvent("a", chromedp.KeyModifiers(chromedp.ModifierCtrl)), // the last order's name
		chromedp.SendKeys(chromedp.CSS(nameField), customer),
		chromedp.SendKeys(chromedp.CSS(pizzaMenu), pizza), // a closed <select> picks the option typed
	)
	if got := run(b, "the name typed", chromedp.Value(chromedp.CSS(nameField))); got != customer {
		b.fatalf("typing %q as the name left %q in the field", customer, got)
	}
	if got := run(b, "the pizza picked", chromedp.Value(chromedp.CSS(pizzaMenu))); got != pizza {
		b.fatalf("typing %q on the pizza menu picked %q", pizza, got)
	}
	for press := 1; ; press++ {
		placed, status := b.submit(customer+"'s order", chromedp.Click(chromedp.CSS(submitButton)))
		if placed {
			m := orderPlaced.FindStringSubmatch(status)
			if m == nil {
				b.fatalf("the order status says %q", status)
			}
			b.t.Logf("%s ordered a %s: %s", customer, pizza, status)
			return m[1]
		}
		if press == 5 {
			b.fatalf("%s's order was not placed after %d presses: %s", customer, press, status)
		}
		b.t.Logf("%s's order: %s", customer, status)
	}
}

// submit runs click, which submits the order form, waits for the
// storefront's answer and returns whether the order was placed and the
// status line.
func (b *browser) submit(what string, click chromedp.Action[chromedp.Void]) (placed bool, status string) {
	b.t.Helper()
	before := run(b, "the submits so far", chromedp.Evaluate[int](`window.submits`))
	b.do("submit "+what, click)
	// The page's handler has run when the count goes up; it is done when
	// the button is enabled again.
	answer := b.waitValue(what+" to be answered", 20*time.Second, `(before) =>
		window.submits > (before || 0) && !testid("order-submit").disabled &&
		testid("order-status").dataset.result + " " + testid("order-status").textContent`, before)
	result, status, _ := strings.Cut(answer, " ")
	return result == "placed", status
}

// waitSettled waits until every process is up, the board is live, and the
// guarantees table, in a check made after that, shows orders placed,
// cooked, charged and delivered, nothing pending and every guarantee
// held.
func (b *browser) waitSettled(orders int) {
	b.t.Helper()
	// Seven processes: the broker and six services.
	checked := b.waitValue("every process up and the board live", 30*time.Second, `() =>
		[...testid("processes").children].length === 7 &&
		[...testid("processes").children].every((c) => c.dataset.up === "true") &&
		testid("board-status").textContent === "board: live" &&
		testid("stats-status").textContent`)
	b.waitTrue(fmt.Sprintf("the guarantees table to show %d orders handled and every guarantee held", orders), 30*time.Second,
		`(checked, orders) => {
			const status = testid("stats-status").textContent, stat = (s, f) => testid("stat-" + s + "-" + f).textContent;
			return status !== checked && status.startsWith("checked ") &&
				["storefront", "kitchen", "billing", "courier"].every((s) => stat(s, "handled") === String(orders)) &&
				["storefront", "kitchen", "billing", "courier", "notifier"].every((s) =>
					stat(s, "pending") === "0" && testid("stat-" + s + "-held").dataset.held === "yes");
		}`, checked, orders)
}

// screenshot saves a full-page PNG of the storefront to t.ArtifactDir(), or to
// FERRY_PIZZA_SCREENSHOT if set (relative to the repository root).
func (b *browser) screenshot() {
	b.t.Helper()
	path := filepath.Join(b.t.ArtifactDir(), "storefront.png")
	if env := os.Getenv("FERRY_PIZZA_SCREENSHOT"); env != "" {
		path = env
		if !filepath.IsAbs(path) {
			path = filepath.Join(ferrytest.ModuleRoot(b.t), path)
		}
	}
	png := run(b, "a screenshot", chromedp.FullScreenshot(100))
	if err := os.WriteFile(path, png, 0o644); err != nil {
		b.t.Fatal(err)
	}
	b.t.Logf("screenshot: %s (%d KiB)", path, len(png)/1024)
}

// fatalf saves a screenshot to t.ArtifactDir(), logs the page's console
// and the demo's logs, and fails the test.
func (b *browser) fatalf(format string, args ...any) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 10*time.Second)
	defer cancel()
	if png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100)); err == nil {
		path := filepath.Join(b.t.ArtifactDir(), "failure.png")
		if os.WriteFile(path, png, 0o644) == nil {
			b.t.Logf("the page at the failure: %s (kept with go test -artifacts)", path)
		}
	}
	b.t.Logf("the page's console:\n%s", strings.Join(b.console.all(), "\n"))
	b.t.Logf("the demo's output:\n%s", b.d.out)
	dumpLogs(b.t, b.d.dir)
	b.t.Fatalf(format, args...)
}

// consoleLog collects a tab's console messages.
type consoleLog struct {
	mu   sync.Mutex // guards msgs
	msgs []chromedp.ConsoleMessage
}

func (c *consoleLog) collect(msgs iter.Seq2[chromedp.ConsoleMessage, error]) {
	for m, err := range msgs {
		if err != nil {
			return
		}
		c.mu.Lock()
		c.msgs = append(c.msgs, m)
		c.mu.Unlock()
	}
}

func (c *consoleLog) all() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]string, len(c.msgs))
	for i, m := range c.msgs {
		out[i] = m.String()
	}
	return out
}

// exceptions returns the uncaught exceptions the page threw.
func (c *consoleLog) exceptions() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for _, m := range c.msgs {
		if m.IsException() {
			out = append(out, m.String())
		}
	}
	return out
}
