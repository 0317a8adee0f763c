package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"path/filepath"
	"strconv"
	"time"

	"github.com/ferrymq/ferry/client"
)

// runKitchen cooks orders: an effectively-once, key-shared Process on
// orders whose one Commit acks the order and publishes its pizza to
// pizzas.ready. Several kitchens share the subscription; each order's key
// is its id, so one order is at one kitchen at a time.
//
// The kitchen keeps no record of what it cooked, and checks nothing before
// cooking: the only record is pizzas.ready itself, where a pizza's id names
// its order and the delivery attempt that cooked it. Were a superseded
// delivery ever allowed to commit, its order would have two pizzas there,
// and the checker would see them. attempts.log records each cooking begun,
// for the count of redeliveries.
func runKitchen(args []string) error {
	fs := flag.NewFlagSet("kitchen", flag.ExitOnError)
	var sf serviceFlags
	sf.register(fs, "kitchen")
	name := fs.String("name", "kitchen", "this kitchen's name, written on its pizzas")
	cookTime := fs.Duration("cook-time", 500*time.Millisecond, "how long cooking a pizza takes")
	concurrency := fs.Int("concurrency", 8, "pizzas cooked at once")
	_ = fs.Parse(args)
	ctx, stop, lg, err := sf.start(*name)
	if err != nil {
		return err
	}
	defer stop()

	attempts, err := openLineLog(filepath.Join(sf.dir, attemptsLog))
	if err != nil {
		return err
	}
	defer attempts.Close()
	c, err := connect(ctx, sf, lg)
	if err != nil {
		return err
	}
	defer c.Close()
	lg.Info("kitchen open", "cook_time", cookTime.String())
	return c.Process(ctx, topicOrders, "kitchen", func(ctx context.Context, in *client.Message) ([]*client.Message, error) {
		var o Order
		if err := decode(topicOrders, in.Payload, &o); err != nil {
			return nil, err
		}
		attempt := strconv.FormatUint(uint64(in.Attempt), 10)
		if err := attempts.append(o.ID, attempt); err != nil {
			return nil, err
		}
		if !sleepCtx(ctx, *cookTime) {
			return nil, ctx.Err()
		}
		payload, err := json.Marshal(Pizza{OrderID: o.ID, Customer: o.Customer, Pizza: o.Pizza, Kitchen: *name,
			Attempt: in.Attempt, CookedAt: time.Now()})
		if err != nil {
			return nil, err
		}
		return []*client.Message{{
			Topic:   topicReady,
			ID:      fmt.Sprintf("%s/attempt-%s", o.ID, attempt),
			Key:     []byte(o.ID),
			Payload: payload,
		}}, nil
	}, subscribeOptions(*concurrency)...)
}
