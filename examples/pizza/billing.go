package main

import (
	"context"
	"flag"
	"log/slog"
	"net/http"
	"path/filepath"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/ferrymq/ferry/client"
)

// runBilling charges orders into its ledger through the effectively-once
// subscription billing on orders.
//
// Each delivery is settled in the ledger first — a charge if the order is
// new, a count of the redelivery if it was charged before — and then acked
// with AckSync, which returns once the broker holds the ack durably. Only
// then is the order marked confirmed. The ledger's order-id key covers the
// one window the broker cannot: a crash after the charge and before the
// ack. A delivery of a confirmed order is counted as a violation of
// effectively-once, which promises that a confirmed ack is final.
func runBilling(args []string) error {
	fs := flag.NewFlagSet("billing", flag.ExitOnError)
	var sf serviceFlags
	sf.register(fs, "billing")
	evidenceAddr := fs.String("evidence-addr", "", "serve the ledger's evidence as JSON at http://ADDR/evidence (empty: off)")
	concurrency := fs.Int("concurrency", 4, "orders settled at once")
	_ = fs.Parse(args)
	ctx, stop, lg, err := sf.start("billing")
	if err != nil {
		return err
	}
	defer stop()

	l, err := openLedger(filepath.Join(sf.dir, ledgerSubdir))
	if err != nil {
		return err
	}
	defer l.Close()
	g, ctx := errgroup.WithContext(ctx)
	if *evidenceAddr != "" {
		mux := http.NewServeMux()
		mux.HandleFunc("GET /evidence", func(w http.ResponseWriter, r *http.Request) {
			ev, err := l.evidence()
			if err != nil {
				writeError(w, http.StatusInternalServerError, err.Error())
				return
			}
			writeJSON(w, http.StatusOK, ev)
		})
		g.Go(func() error { return serveHTTP(ctx, *evidenceAddr, mux) })
	}
	g.Go(func() error {
		c, err := connect(ctx, sf, lg)
		if err != nil {
			return err
		}
		defer c.Close()
		lg.Info("billing open")
		return c.Subscribe(ctx, topicOrders, "billing", settle(l, lg), subscribeOptions(*concurrency)...)
	})
	return g.Wait()
}

// settle is billing's handler: charge (or count the redelivery), AckSync,
// and mark the order confirmed once the broker holds the ack.
func settle(l *ledger, lg *slog.Logger) client.Handler {
	return func(ctx context.Context, m *client.Message) error {
		var o Order
		if err := decode(topicOrders, m.Payload, &o); err != nil {
			return err
		}
		out, err := l.settle(o, time.Now())
		if err != nil {
			return err // nacked: settled on a redelivery
		}
		if out == afterAck {
			lg.Error("order delivered again after the broker confirmed its ack", "order", o.ID, "attempt", m.Attempt)
		}
		actx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		if err := m.AckSync(actx); err != nil {
			// Not confirmed: the order comes back and finds its charge.
			lg.Warn("ack not confirmed; the order will be redelivered", "order", o.ID, "err", err)
			return nil
		}
		if err := l.confirm(o.ID); err != nil {
			lg.Error("ack confirmation not recorded", "order", o.ID, "err", err)
		}
		return nil
	}
}
