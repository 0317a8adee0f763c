package main

import (
	"context"
	"flag"
	"path/filepath"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/ferrymq/ferry/client"
)

// The kinds of text the notifier sends.
const (
	textConfirmed = "confirmed"  // for an order: "we got your order"
	textOnTheWay  = "on-the-way" // for a pizza: "your pizza is on the way"
)

// runNotifier texts customers through the at-most-once subscriptions
// notifier on orders and on pizzas.ready.
//
// "Sending a text" appends a line to outbox.log, fsynced: the log of the
// SMS gateway, which has the text from then on; the gateway's answer takes
// --send-time more. The notifier checks nothing before sending; the broker moved
// the subscription's cursor before it sent the message, so a crash loses
// what was sent and not yet texted, and nothing is ever sent twice. Two
// lines of one kind for one order in the outbox would be spam, and the
// checker counts them.
func runNotifier(args []string) error {
	fs := flag.NewFlagSet("notifier", flag.ExitOnError)
	var sf serviceFlags
	sf.register(fs, "notifier")
	concurrency := fs.Int("concurrency", 4, "texts sent at once, per subscription")
	sendTime := fs.Duration("send-time", 200*time.Millisecond, "how long the SMS gateway takes to answer, after it has the text")
	_ = fs.Parse(args)
	ctx, stop, lg, err := sf.start("notifier")
	if err != nil {
		return err
	}
	defer stop()

	outbox, err := openLineLog(filepath.Join(sf.dir, outboxLog))
	if err != nil {
		return err
	}
	defer outbox.Close()
	c, err := connect(ctx, sf, lg)
	if err != nil {
		return err
	}
	defer c.Close()
	lg.Info("notifier ready")
	// send texts the customer of an order, and waits for the gateway.
	send := func(ctx context.Context, kind, orderID string) error {
		if err := outbox.append(kind, orderID); err != nil {
			return err
		}
		sleepCtx(ctx, *sendTime)
		return nil
	}
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		return c.Subscribe(ctx, topicOrders, "notifier", func(ctx context.Context, m *client.Message) error {
			var o Order
			if err := decode(topicOrders, m.Payload, &o); err != nil {
				return err
			}
			return send(ctx, textConfirmed, o.ID)
		}, subscribeOptions(*concurrency)...)
	})
	g.Go(func() error {
		return c.Subscribe(ctx, topicReady, "notifier", func(ctx context.Context, m *client.Message) error {
			var pz Pizza
			if err := decode(topicReady, m.Payload, &pz); err != nil {
				return err
			}
			return send(ctx, textOnTheWay, pz.OrderID)
		}, subscribeOptions(*concurrency)...)
	})
	return g.Wait()
}
