package main

import (
	"context"
	"encoding/json"
	"flag"
	"path/filepath"
	"strconv"
	"time"

	"github.com/ferrymq/ferry/client"
)

// runCourier delivers pizzas through the at-least-once subscription
// courier on pizzas.ready.
//
// For each delivery it first appends a line to deliveries.log (fsynced),
// then publishes to pizzas.delivered with the order id as message id, then
// acks. A crash anywhere before the ack brings the pizza back: the courier
// drives it again, which is harmless — the customer has a pizza, the log
// has one more line and the broker stores the second pizzas.delivered
// message once. The courier deliberately keeps no "already delivered"
// check, so the log shows every delivery the broker made.
func runCourier(args []string) error {
	fs := flag.NewFlagSet("courier", flag.ExitOnError)
	var sf serviceFlags
	sf.register(fs, "courier")
	driveTime := fs.Duration("drive-time", 300*time.Millisecond, "how long a delivery takes")
	concurrency := fs.Int("concurrency", 8, "pizzas delivered at once")
	_ = fs.Parse(args)
	ctx, stop, lg, err := sf.start("courier")
	if err != nil {
		return err
	}
	defer stop()

	deliveries, err := openLineLog(filepath.Join(sf.dir, deliveriesLog))
	if err != nil {
		return err
	}
	defer deliveries.Close()
	c, err := connect(ctx, sf, lg)
	if err != nil {
		return err
	}
	defer c.Close()
	p := c.NewProducer(topicDelivered, client.ProducerOptions{})
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = p.Close(cctx)
	}()
	lg.Info("courier on the road", "drive_time", driveTime.String())
	return c.Subscribe(ctx, topicReady, "courier", func(ctx context.Context, m *client.Message) error {
		var pz Pizza
		if err := decode(topicReady, m.Payload, &pz); err != nil {
			return err
		}
		if !sleepCtx(ctx, *driveTime) {
			return ctx.Err()
		}
		if err := deliveries.append(pz.OrderID, strconv.FormatUint(uint64(m.Attempt), 10)); err != nil {
			return err
		}
		payload, err := json.Marshal(Delivery{OrderID: pz.OrderID, DeliveredAt: time.Now()})
		if err != nil {
			return err
		}
		pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		_, err = p.Publish(pctx, &client.Message{ID: pz.OrderID, Key: []byte(pz.OrderID), Payload: payload})
		return err
	}, subscribeOptions(*concurrency)...)
}
