package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// doubleClickEvery is how often the generator submits an order twice at
// once, as a double click does.
const doubleClickEvery = 10

// maxPosting bounds the orders being posted at once.
const maxPosting = 64

var customers = []string{"Ada", "Barbara", "Edsger", "Grace", "Ken", "Leslie", "Margaret", "Niklaus", "Rob", "Tony"}

// generator places orders through the storefront's API the way the page
// does: it picks an order's id before the first POST and retries with the
// same id until the storefront answers with success.
type generator struct {
	url  string // the storefront
	http *http.Client
	rng  *rand.Rand
	lg   *slog.Logger
}

// place places n orders at rate orders per second and returns how many
// were placed (answered with success) before ctx ended.
func (g *generator) place(ctx context.Context, n int, rate float64) (int, error) {
	var (
		placed  atomic.Int64
		wg      sync.WaitGroup
		errOnce sync.Once
		failure error
	)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	slots := make(chan struct{}, maxPosting)
	tick := time.NewTicker(time.Duration(float64(time.Second) / rate))
	defer tick.Stop()
	for i := range n {
		if i > 0 {
			select {
			case <-tick.C:
			case <-ctx.Done():
			}
		}
		select {
		case slots <- struct{}{}:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
		item := menu[g.rng.IntN(len(menu))]
		req := orderRequest{ID: newOrderID(), Customer: customers[g.rng.IntN(len(customers))], Pizza: item.Name}
		clicks := 1
		if i%doubleClickEvery == doubleClickEvery-1 {
			clicks = 2
		}
		wg.Go(func() {
			defer func() { <-slots }()
			var clicked sync.WaitGroup
			var ok atomic.Bool
			for range clicks {
				clicked.Go(func() {
					if err := g.post(ctx, req); err != nil {
						errOnce.Do(func() { failure = err; cancel() })
						return
					}
					ok.Store(true)
				})
			}
			clicked.Wait()
			if ok.Load() {
				placed.Add(1)
			}
		})
	}
	wg.Wait()
	if failure == nil && int(placed.Load()) < n {
		failure = fmt.Errorf("%d of %d orders placed: %w", placed.Load(), n, context.Cause(ctx))
	}
	return int(placed.Load()), failure
}

// post places one order, retrying with the same id until the storefront
// answers with success. A 4xx answer is an error: retrying cannot help.
func (g *generator) post(ctx context.Context, o orderRequest) error {
	body, err := json.Marshal(o)
	if err != nil {
		return err
	}
	wait := 100 * time.Millisecond
	for attempt := 1; ; attempt++ {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, g.url+"/api/orders", bytes.NewReader(body))
		if err != nil {
			return err
		}
		req.Header.Set("Content-Type", "application/json")
		resp, err := g.http.Do(req)
		if err == nil {
			msg, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
			resp.Body.Close()
			switch {
			case resp.StatusCode == http.StatusOK:
				return nil
			case resp.StatusCode >= 400 && resp.StatusCode < 500:
				return fmt.Errorf("order %s: %s: %s", o.ID, resp.Status, bytes.TrimSpace(msg))
			}
			err = fmt.Errorf("%s: %s", resp.Status, bytes.TrimSpace(msg))
		}
		if attempt%10 == 0 {
			g.lg.Warn("order not placed yet; retrying with the same id", "order", o.ID, "attempt", attempt, "err", err)
		}
		if !sleepCtx(ctx, wait) {
			return fmt.Errorf("order %s: %w", o.ID, ctx.Err())
		}
		wait = min(2*wait, time.Second)
	}
}
