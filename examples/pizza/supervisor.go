package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/ferrymq/ferry/client"
)

// lateAfter is how old an order may get, while the demo runs, before the
// page counts it as late rather than pending: several ack timeouts, and a
// broker restart.
const lateAfter = 20 * time.Second

// supervisorOptions are the supervisor's flags.
type supervisorOptions struct {
	dataDir       string
	server        string
	brokerAddr    string
	httpAddr      string
	kitchens      int
	chaos         bool
	chaosInterval time.Duration
	seed          uint64
	orders        int
	rate          float64
	timeout       time.Duration
	reportJSON    string
	cookTime      time.Duration
	driveTime     time.Duration
	sendTime      time.Duration
	insecure      bool
}

func parseSupervisorFlags(args []string) (supervisorOptions, error) {
	var o supervisorOptions
	fs := flag.NewFlagSet("pizza", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: pizza [flags]            run the demo (see README.md)")
		fmt.Fprintln(fs.Output(), "       pizza SUBCOMMAND [flags]  run one of its processes: broker, storefront, kitchen, billing, courier, notifier")
		fs.PrintDefaults()
	}
	fs.StringVar(&o.dataDir, "data-dir", "", "directory for the broker's data and the services' records (default: a temporary directory, removed at exit)")
	fs.StringVar(&o.server, "server", "", "use the broker at this address instead of starting one (chaos then spares the broker)")
	fs.StringVar(&o.brokerAddr, "broker-addr", "127.0.0.1:0", "gRPC address of the broker the demo starts (port 0: a free port, kept across restarts)")
	fs.StringVar(&o.httpAddr, "http-addr", ":8080", "storefront address (port 0: a free port)")
	fs.IntVar(&o.kitchens, "kitchens", 2, "kitchen processes sharing the key-shared subscription")
	fs.BoolVar(&o.chaos, "chaos", false, "kill a service or the broker with SIGKILL every --chaos-interval and restart it; each is killed once per round of kills, in an order --seed decides")
	fs.DurationVar(&o.chaosInterval, "chaos-interval", 3*time.Second, "time between two kills under --chaos")
	fs.Uint64Var(&o.seed, "seed", 0, "seed of chaos's and the generator's choices (0: from the clock; the seed used is logged)")
	fs.IntVar(&o.orders, "orders", 0, "place this many orders, wait until every service has handled them, report and exit (0: run until interrupted)")
	fs.Float64Var(&o.rate, "rate", 20, "orders placed per second with --orders")
	fs.DurationVar(&o.timeout, "timeout", 2*time.Minute, "with --orders: how long placing and handling every order may take; chaos stops at half of it at the latest")
	fs.StringVar(&o.reportJSON, "report-json", "", "with --orders: also write the final report to this file as JSON")
	fs.DurationVar(&o.cookTime, "cook-time", 500*time.Millisecond, "how long a kitchen takes to cook a pizza")
	fs.DurationVar(&o.driveTime, "drive-time", 300*time.Millisecond, "how long the courier takes to deliver one")
	fs.DurationVar(&o.sendTime, "send-time", 200*time.Millisecond, "how long the SMS gateway takes to answer the notifier")
	fs.BoolVar(&o.insecure, "insecure", false, "run the broker plaintext and without auth, for debugging (default: TLS, a token per process and a least-privilege policy; see README.md)")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	switch {
	case fs.NArg() > 0:
		return o, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	case o.kitchens < 1:
		return o, fmt.Errorf("--kitchens %d: want at least 1", o.kitchens)
	case o.chaosInterval <= 0:
		return o, fmt.Errorf("--chaos-interval %v: want more than 0", o.chaosInterval)
	case o.orders < 0:
		return o, fmt.Errorf("--orders %d: want 0 or more", o.orders)
	case o.rate <= 0:
		return o, fmt.Errorf("--rate %v: want more than 0", o.rate)
	case o.server != "" && !o.insecure:
		return o, errors.New("--server needs --insecure: the demo makes its identities for the broker it starts (README.md)")
	}
	if o.seed == 0 {
		o.seed = uint64(time.Now().UnixNano())
	}
	return o, nil
}

// supervisor runs the demo: the processes, chaos, the live stats and the
// final check.
type supervisor struct {
	o     supervisorOptions
	lg    *slog.Logger
	exe   string // this binary: every process runs it
	dir   string
	sc    scope
	c     *client.Client
	read  brokerReader
	start time.Time
	ids   *identities // nil with --insecure

	broker   *proc   // nil with --server
	services []*proc // in start order

	// Addresses fixed when the services first start, so restarts keep them.
	storefrontURL string
	billingURL    string // billing's ledger evidence

	control     *http.Server // the page's stats and chaos button, via the storefront
	controlDone chan struct{}

	chaosMu   sync.Mutex // guards rng, bag and chaosOver
	rng       *rand.Rand
	bag       []*proc // the next victims
	chaosOver bool    // the run is being checked: no more kills

	stopChaos, stopWatchLoop context.CancelFunc
	chaosDone, watchDone     chan struct{}

	statsMu   sync.Mutex // guards the fields below
	report    Report
	reportAt  time.Time // when report was collected
	statsErr  string    // why the last collection failed, if it did
	events    []chaosEvent
	autoChaos bool
}

// chaosEvent is one kill.
type chaosEvent struct {
	At      time.Time `json:"at"`
	Victim  string    `json:"victim"`
	PID     int       `json:"pid"`
	Pause   string    `json:"pause"`   // before the restart
	Trigger string    `json:"trigger"` // "auto" or "button"
}

// maxEvents is how many chaos events the page is shown.
const maxEvents = 30

// runSupervisor runs the demo and reports whether every guarantee held.
func runSupervisor(args []string) (bool, error) {
	o, err := parseSupervisorFlags(args)
	if errors.Is(err, flag.ErrHelp) {
		return true, nil
	}
	if err != nil {
		return false, err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	lg := slog.New(slog.NewTextHandler(os.Stderr, nil))
	exe, err := os.Executable()
	if err != nil {
		return false, err
	}
	dir := o.dataDir
	if dir == "" {
		if dir, err = os.MkdirTemp("", "pizza-"); err != nil {
			return false, err
		}
		defer os.RemoveAll(dir)
	}
	if dir, err = filepath.Abs(dir); err != nil {
		return false, err
	}
	if err := os.MkdirAll(filepath.Join(dir, logsDir), 0o755); err != nil {
		return false, err
	}
	s := &supervisor{o: o, lg: lg, exe: exe, dir: dir, start: time.Now(), rng: rand.New(rand.NewPCG(o.seed, 0)), autoChaos: o.chaos}
	lg.Info("pizza demo starting", "data_dir", dir, "seed", o.seed)
	defer s.stopAll()

	if o.server == "" {
		addr, err := freeAddr(o.brokerAddr)
		if err != nil {
			return false, err
		}
		args := []string{"broker", "--data-dir", filepath.Join(dir, brokerDir), "--grpc-addr", addr}
		if !o.insecure {
			host, _, _ := net.SplitHostPort(addr)
			ids, err := makeIdentities(filepath.Join(dir, identityDir), host, o.kitchens)
			if err != nil {
				return false, fmt.Errorf("identities: %w", err)
			}
			s.ids = &ids
			args = append(args, ids.brokerArgs()...)
		}
		s.broker = s.newProc("broker", args...)
		go s.broker.run()
		s.o.server = addr
	}
	if err := s.connect(ctx); err != nil {
		return false, err
	}
	if err := s.startServices(); err != nil {
		return false, err
	}
	s.startWatch(ctx)
	defer s.stopWatch()
	if err := waitHTTP(ctx, s.storefrontURL+"/api/menu"); err != nil {
		return false, fmt.Errorf("storefront: %w", err)
	}
	fmt.Printf("pizza: the storefront is at %s (broker %s, data in %s)\n", s.storefrontURL, s.o.server, dir)
	if o.orders == 0 {
		s.startChaos(ctx, time.Time{})
		defer s.endChaos()
		<-ctx.Done()
		fmt.Println("pizza: interrupted; the report so far:")
		r, _, _ := s.latest()
		return r.Held, r.write(os.Stdout)
	}
	return s.runOrders(ctx)
}

func (s *supervisor) newProc(name string, args ...string) *proc {
	return newProc(name, s.exe, filepath.Join(s.dir, logsDir, name+".log"), s.lg, args...)
}

// connect dials the broker, creates the topics and subscriptions and
// reads the evidence's scope.
func (s *supervisor) connect(ctx context.Context) error {
	dctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	var sec security
	if s.ids != nil {
		var err error
		if sec, err = loadSecurity(s.ids.caFile(), s.ids.tokenFile(supervisorPrincipal)); err != nil {
			return err
		}
	}
	c, err := client.Dial(dctx, s.o.server, append(sec.dialOptions(), client.WithCallTimeout(5*time.Second), client.WithLogger(s.lg))...)
	if err != nil && s.broker != nil {
		return fmt.Errorf("%w (the broker's log: %s)", err, s.broker.logPath)
	}
	if err != nil {
		return err
	}
	s.c = c
	s.read = brokerReader{c: c}
	if err := setup(dctx, c); err != nil {
		return err
	}
	s.sc, err = loadScope(dctx, filepath.Join(s.dir, scopeFile), s.read)
	return err
}

// startServices starts the control server and every service.
func (s *supervisor) startServices() error {
	httpAddr, err := freeAddr(s.o.httpAddr)
	if err != nil {
		return err
	}
	evidenceAddr, err := freeAddr("127.0.0.1:0")
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	// Each service's principal is its process's name.
	state := func(name string) []string {
		args := []string{"--server", s.o.server, "--dir", filepath.Join(s.dir, name)}
		if s.ids != nil {
			args = append(args, s.ids.serviceArgs(name)...)
		}
		return args
	}
	s.services = append(s.services, s.newProc("storefront", append([]string{"storefront", "--http-addr", httpAddr,
		"--control-url", "http://" + ln.Addr().String()}, state(storefrontDir)...)...))
	for i := 1; i <= s.o.kitchens; i++ {
		name := kitchenName(i)
		s.services = append(s.services, s.newProc(name, append([]string{"kitchen", "--name", name,
			"--cook-time", s.o.cookTime.String()}, state(name)...)...))
	}
	s.services = append(s.services,
		s.newProc("billing", append([]string{"billing", "--evidence-addr", evidenceAddr}, state(billingDir)...)...),
		s.newProc("courier", append([]string{"courier", "--drive-time", s.o.driveTime.String()}, state(courierDir)...)...),
		s.newProc("notifier", append([]string{"notifier", "--send-time", s.o.sendTime.String()}, state(notifierDir)...)...))
	s.storefrontURL = storefrontURL(httpAddr)
	s.billingURL = "http://" + evidenceAddr + "/evidence"
	s.control = &http.Server{Handler: s.controlRoutes(), ReadHeaderTimeout: 5 * time.Second}
	s.controlDone = make(chan struct{})
	go func() {
		defer close(s.controlDone)
		_ = s.control.Serve(ln) // until stopAll closes it
	}()
	for _, p := range s.services {
		go p.run()
	}
	return nil
}

// startWatch starts collecting the evidence and checking it every second,
// for the page.
func (s *supervisor) startWatch(ctx context.Context) {
	ctx, s.stopWatchLoop = context.WithCancel(ctx)
	s.watchDone = make(chan struct{})
	hc := &http.Client{Timeout: 2 * time.Second}
	col := newCollector(s.dir, s.o.kitchens, s.sc, s.read, func(ctx context.Context) (ledgerEvidence, error) {
		return fetchLedger(ctx, hc, s.billingURL)
	})
	go func() {
		defer close(s.watchDone)
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			at := time.Now()
			ev, err := col.collect(ctx)
			s.statsMu.Lock()
			if err != nil {
				s.statsErr = err.Error()
			} else {
				s.report, s.reportAt, s.statsErr = Check(ev, at, false, lateAfter), at, ""
			}
			s.statsMu.Unlock()
			select {
			case <-t.C:
			case <-ctx.Done():
				return
			}
		}
	}()
}

// stopWatch stops the collection started by startWatch.
func (s *supervisor) stopWatch() {
	if s.stopWatchLoop != nil {
		s.stopWatchLoop()
		<-s.watchDone
		s.stopWatchLoop = nil
	}
}

// latest returns the last report, when its evidence was collected, and why
// the last collection failed, if it did.
func (s *supervisor) latest() (Report, time.Time, string) {
	s.statsMu.Lock()
	defer s.statsMu.Unlock()
	return s.report, s.reportAt, s.statsErr
}

// fetchLedger reads billing's ledger evidence over HTTP.
func fetchLedger(ctx context.Context, hc *http.Client, url string) (ledgerEvidence, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return ledgerEvidence{}, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return ledgerEvidence{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return ledgerEvidence{}, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	var ev ledgerEvidence
	if err := json.NewDecoder(resp.Body).Decode(&ev); err != nil {
		return ledgerEvidence{}, fmt.Errorf("GET %s: %w", url, err)
	}
	return ev, nil
}

// startChaos starts killing a random process every chaos interval, with
// --chaos, until endChaos or until (if not zero).
func (s *supervisor) startChaos(ctx context.Context, until time.Time) {
	ctx, s.stopChaos = context.WithCancel(ctx)
	stopAtDeadline := context.CancelFunc(func() {})
	if !until.IsZero() {
		ctx, stopAtDeadline = context.WithDeadline(ctx, until)
	}
	s.chaosDone = make(chan struct{})
	go func() {
		defer close(s.chaosDone)
		defer stopAtDeadline()
		if !s.o.chaos {
			return
		}
		s.lg.Info("chaos on", "interval", s.o.chaosInterval.String(), "seed", s.o.seed)
		t := time.NewTicker(s.o.chaosInterval)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				s.chaosRound("auto")
			case <-ctx.Done():
				s.lg.Info("chaos off")
				return
			}
		}
	}()
}

// endChaos stops chaos for good: the button does nothing either.
func (s *supervisor) endChaos() {
	if s.stopChaos != nil {
		s.stopChaos()
		<-s.chaosDone
	}
	s.chaosMu.Lock()
	s.chaosOver = true
	s.chaosMu.Unlock()
	s.statsMu.Lock()
	s.autoChaos = false
	s.statsMu.Unlock()
}

// chaosRound kills the next victim — a service or the broker the demo
// started — with SIGKILL; it is started again after a short pause. Victims
// come from a shuffled bag of every process, refilled when empty, so each
// is killed once every len(processes) rounds, in an order the seed
// decides. A victim still down from an earlier kill is spared: the round
// kills nothing, and it reports false.
func (s *supervisor) chaosRound(trigger string) (chaosEvent, bool) {
	s.chaosMu.Lock()
	defer s.chaosMu.Unlock()
	if s.chaosOver {
		return chaosEvent{}, false
	}
	if len(s.bag) == 0 {
		s.bag = s.processes()
		s.rng.Shuffle(len(s.bag), func(i, j int) { s.bag[i], s.bag[j] = s.bag[j], s.bag[i] })
	}
	victim := s.bag[0]
	s.bag = s.bag[1:]
	pause := 200*time.Millisecond + time.Duration(s.rng.Int64N(int64(800*time.Millisecond)))
	pid := victim.kill(pause)
	if pid == 0 {
		s.lg.Info("chaos: spared; still down", "process", victim.name, "trigger", trigger)
		return chaosEvent{Victim: victim.name}, false
	}
	ev := chaosEvent{At: time.Now(), Victim: victim.name, PID: pid, Pause: pause.Round(time.Millisecond).String(), Trigger: trigger}
	s.lg.Info("chaos: killed with SIGKILL", "process", victim.name, "pid", pid, "restart_in", ev.Pause, "trigger", trigger)
	s.statsMu.Lock()
	s.events = append(s.events, ev)
	if len(s.events) > maxEvents {
		s.events = s.events[len(s.events)-maxEvents:]
	}
	s.statsMu.Unlock()
	return ev, true
}

// processes returns the broker (if the demo started it) and the services,
// in a new slice.
func (s *supervisor) processes() []*proc {
	if s.broker == nil {
		return append([]*proc(nil), s.services...)
	}
	return append([]*proc{s.broker}, s.services...)
}

// statsView is what the page polls: the live report, the processes and
// chaos.
type statsView struct {
	Report    Report       `json:"report"`
	UpdatedAt time.Time    `json:"updated_at"`
	Error     string       `json:"error,omitempty"` // why the last collection failed
	Processes []procStatus `json:"processes"`
	Chaos     chaosView    `json:"chaos"`
}

type chaosView struct {
	Auto     bool         `json:"auto"`
	Interval string       `json:"interval"`
	Kills    int          `json:"kills"`
	Events   []chaosEvent `json:"events"` // the latest, oldest first
}

// controlRoutes serves the control server the storefront proxies to.
func (s *supervisor) controlRoutes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /stats", func(w http.ResponseWriter, r *http.Request) {
		v := statsView{Chaos: chaosView{Interval: s.o.chaosInterval.String()}}
		for _, p := range s.processes() {
			st := p.status()
			v.Processes = append(v.Processes, st)
			v.Chaos.Kills += st.Kills
		}
		s.statsMu.Lock()
		v.Report, v.UpdatedAt, v.Error = s.report, s.reportAt, s.statsErr
		v.Chaos.Auto = s.autoChaos
		v.Chaos.Events = append([]chaosEvent(nil), s.events...)
		s.statsMu.Unlock()
		writeJSON(w, http.StatusOK, v)
	})
	mux.HandleFunc("POST /chaos", func(w http.ResponseWriter, r *http.Request) {
		ev, ok := s.chaosRound("button")
		switch {
		case !ok && ev.Victim != "":
			writeError(w, http.StatusConflict, ev.Victim+" was picked, but it is still down from the last kill")
			return
		case !ok:
			writeError(w, http.StatusConflict, "chaos is over: the run is being checked")
			return
		}
		writeJSON(w, http.StatusOK, ev)
	})
	return mux
}

// runSummary is the final report as --report-json writes it.
type runSummary struct {
	Report
	Generated int          `json:"generated"` // orders the generator placed
	CaughtUp  bool         `json:"caught_up"` // every order was handled before the timeout
	Seed      uint64       `json:"seed"`
	Elapsed   string       `json:"elapsed"`
	Processes []procStatus `json:"processes"`
}

// runOrders places --orders orders, waits until every service has handled
// them, stops chaos and the services, checks the evidence and reports.
func (s *supervisor) runOrders(ctx context.Context) (bool, error) {
	deadline := s.start.Add(s.o.timeout)
	// Chaos stops once the orders are handled, or at half the timeout:
	// the rest is time to catch up.
	s.startChaos(ctx, s.start.Add(s.o.timeout/2))
	defer s.endChaos()
	dctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()

	g := &generator{url: s.storefrontURL, http: &http.Client{Timeout: 10 * time.Second},
		rng: rand.New(rand.NewPCG(s.o.seed, 1)), lg: s.lg}
	placed, genErr := g.place(dctx, s.o.orders, s.o.rate)
	s.lg.Info("orders placed", "placed", placed, "of", s.o.orders)
	caughtUp := s.waitCaughtUp(dctx, time.Now(), placed)
	s.endChaos()
	// The last kill may have interrupted work: let the processes come back
	// and catch up again.
	caughtUp = s.waitAllUp(dctx) && s.waitCaughtUp(dctx, time.Now(), placed) && caughtUp
	if ctx.Err() != nil {
		return false, ctx.Err()
	}
	if caughtUp {
		s.lg.Info("every order handled; stopping the services")
	} else {
		s.lg.Warn("timed out waiting for the services; stopping them", "timeout", s.o.timeout.String())
	}
	s.stopWatch()
	s.stopServices()
	s.lg.Info("services stopped; checking the evidence")

	// The final check reads everything back from scratch: the topics from
	// the broker, the ledger and the logs from disk.
	col := newCollector(s.dir, s.o.kitchens, s.sc, s.read, ledgerFromDisk(s.dir))
	var ev *Evidence
	var err error
	for range 10 {
		if ev, err = col.collect(ctx); err == nil {
			break
		}
		sleepCtx(ctx, 500*time.Millisecond)
	}
	if err != nil {
		return false, fmt.Errorf("final evidence: %w", err)
	}
	sum := runSummary{Report: Check(ev, time.Now(), true, 0), Generated: placed, CaughtUp: caughtUp, Seed: s.o.seed,
		Elapsed: time.Since(s.start).Round(time.Millisecond).String()}
	for _, p := range s.processes() {
		sum.Processes = append(sum.Processes, p.status())
	}
	s.stopAll()

	fmt.Printf("\npizza: %d orders placed and checked in %s\n", placed, sum.Elapsed)
	if s.o.chaos {
		kills, each := 0, []string{}
		for _, p := range sum.Processes {
			kills += p.Kills
			if p.Kills > 0 {
				each = append(each, fmt.Sprintf("%s %d", p.Name, p.Kills))
			}
		}
		fmt.Printf("chaos: %d kills with SIGKILL (%s), seed %d\n", kills, strings.Join(each, ", "), s.o.seed)
	}
	fmt.Println()
	if err := sum.Report.write(os.Stdout); err != nil {
		return false, err
	}
	if s.o.reportJSON != "" {
		data, err := json.MarshalIndent(sum, "", "  ")
		if err != nil {
			return false, err
		}
		if err := os.WriteFile(s.o.reportJSON, data, 0o644); err != nil {
			return false, err
		}
	}
	if genErr != nil {
		return false, fmt.Errorf("placing orders: %w", genErr)
	}
	return sum.Held, nil
}

// waitCaughtUp waits until a report collected after since says that every
// order (at least want of them accepted) is cooked, charged and delivered,
// and the notifier's subscriptions are drained. It reports false if ctx
// ends first.
func (s *supervisor) waitCaughtUp(ctx context.Context, since time.Time, want int) bool {
	for {
		r, at, _ := s.latest()
		if at.After(since) && r.Orders.Accepted >= want && r.caughtUp() && s.notifierDrained(ctx) {
			return true
		}
		if !sleepCtx(ctx, 500*time.Millisecond) {
			return false
		}
	}
}

// notifierDrained reports whether the notifier's subscriptions have nothing
// left to send and nothing in flight.
func (s *supervisor) notifierDrained(ctx context.Context) bool {
	for _, topic := range []string{topicOrders, topicReady} {
		sub, err := s.c.GetSubscription(ctx, topic, "notifier")
		if err != nil || sub.Stats.Backlog > 0 || sub.Stats.InFlight > 0 {
			return false
		}
	}
	return true
}

// waitAllUp waits until every process is up, or ctx ends.
func (s *supervisor) waitAllUp(ctx context.Context) bool {
	for {
		up := true
		for _, p := range s.processes() {
			up = up && p.status().Up
		}
		if up {
			return true
		}
		if !sleepCtx(ctx, 100*time.Millisecond) {
			return false
		}
	}
}

// stopServices stops every service, gracefully, at once.
func (s *supervisor) stopServices() {
	var wg sync.WaitGroup
	for _, p := range s.services {
		wg.Go(func() { p.stop(15 * time.Second) })
	}
	wg.Wait()
}

// stopAll stops chaos, the services and then the broker. Idempotent.
func (s *supervisor) stopAll() {
	s.endChaos()
	s.stopWatch()
	s.stopServices()
	if s.broker != nil {
		s.broker.stop(15 * time.Second)
	}
	if s.control != nil {
		_ = s.control.Close()
		<-s.controlDone
		s.control = nil
	}
	if s.c != nil {
		s.c.Close()
		s.c = nil
	}
}

// freeAddr returns addr, with a free port in place of port 0.
func freeAddr(addr string) (string, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", err
	}
	if port != "0" {
		return addr, nil
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return net.JoinHostPort(host, strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)), nil
}

// storefrontURL is the URL of a storefront listening on addr.
func storefrontURL(addr string) string {
	host, port, _ := net.SplitHostPort(addr)
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "localhost"
	}
	return "http://" + net.JoinHostPort(host, port)
}

// waitHTTP waits until url answers 200, for up to a minute.
func waitHTTP(ctx context.Context, url string) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	hc := &http.Client{Timeout: 2 * time.Second}
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		if resp, err := hc.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if !sleepCtx(ctx, 200*time.Millisecond) {
			return fmt.Errorf("%s did not answer: %w", url, ctx.Err())
		}
	}
}
