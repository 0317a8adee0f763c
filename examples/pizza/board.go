package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/ferrymq/ferry/client"
)

// The board's columns, in the order a card moves through them.
const (
	columnPlaced    = "placed"
	columnCooked    = "cooked"
	columnDelivered = "delivered"
)

var columnRank = map[string]int{columnPlaced: 0, columnCooked: 1, columnDelivered: 2}

// maxCards is how many cards the board keeps; the oldest go first.
const maxCards = 300

// card is one order on the board.
type card struct {
	ID       string    `json:"id"`
	Customer string    `json:"customer,omitempty"`
	Pizza    string    `json:"pizza,omitempty"`
	Column   string    `json:"column"`
	Kitchen  string    `json:"kitchen,omitempty"`
	Updated  time.Time `json:"updated"`
}

// board is the live order board: what the storefront's NONE subscriptions
// saw since it started, pushed to each page over server-sent events. A
// NONE subscription is the live tail only: what is published while the
// storefront is down never reaches the board, and a page keeps showing
// such a card in the column it last saw.
type board struct {
	mu       sync.Mutex // guards cards, ids and watchers
	cards    map[string]*card
	ids      []string // card ids, oldest first
	watchers map[chan card]struct{}
}

func newBoard() *board {
	return &board{cards: map[string]*card{}, watchers: map[chan card]struct{}{}}
}

// follow feeds the board from NONE subscriptions on the three topics until
// ctx ends.
func (b *board) follow(ctx context.Context, c *client.Client) error {
	g, ctx := errgroup.WithContext(ctx)
	feeds := []struct {
		topic string
		apply func(payload []byte) (card, error)
	}{
		{topicOrders, func(payload []byte) (card, error) {
			var o Order
			err := decode(topicOrders, payload, &o)
			return card{ID: o.ID, Customer: o.Customer, Pizza: o.Pizza, Column: columnPlaced}, err
		}},
		{topicReady, func(payload []byte) (card, error) {
			var p Pizza
			err := decode(topicReady, payload, &p)
			return card{ID: p.OrderID, Customer: p.Customer, Pizza: p.Pizza, Column: columnCooked, Kitchen: p.Kitchen}, err
		}},
		{topicDelivered, func(payload []byte) (card, error) {
			var d Delivery
			err := decode(topicDelivered, payload, &d)
			return card{ID: d.OrderID, Column: columnDelivered}, err
		}},
	}
	for _, f := range feeds {
		g.Go(func() error {
			return c.Subscribe(ctx, f.topic, boardSubscription, func(ctx context.Context, m *client.Message) error {
				cd, err := f.apply(m.Payload)
				if err != nil {
					return err
				}
				b.update(cd)
				return nil
			}, append(subscribeOptions(1), client.WithCreateNone())...)
		})
	}
	return g.Wait()
}

// update merges an event into its card — a card never moves back — and
// tells the watchers.
func (b *board) update(ev card) {
	ev.Updated = time.Now()
	b.mu.Lock()
	defer b.mu.Unlock()
	cd, ok := b.cards[ev.ID]
	if !ok {
		cd = &card{ID: ev.ID, Column: ev.Column}
		b.cards[ev.ID] = cd
		b.ids = append(b.ids, ev.ID)
		if len(b.ids) > maxCards {
			delete(b.cards, b.ids[0])
			b.ids = b.ids[1:]
		}
	}
	if columnRank[ev.Column] >= columnRank[cd.Column] {
		cd.Column = ev.Column
	}
	if ev.Customer != "" {
		cd.Customer, cd.Pizza = ev.Customer, ev.Pizza
	}
	if ev.Kitchen != "" {
		cd.Kitchen = ev.Kitchen
	}
	cd.Updated = ev.Updated
	for w := range b.watchers {
		select {
		case w <- *cd:
		default:
			// Too slow: its stream ends, and the page reconnects to a
			// fresh snapshot.
			delete(b.watchers, w)
			close(w)
		}
	}
}

// watch registers a watcher and returns it with a snapshot of the board.
func (b *board) watch() (chan card, []card) {
	w := make(chan card, 256)
	b.mu.Lock()
	defer b.mu.Unlock()
	b.watchers[w] = struct{}{}
	snapshot := make([]card, 0, len(b.ids))
	for _, id := range b.ids {
		snapshot = append(snapshot, *b.cards[id])
	}
	return w, snapshot
}

func (b *board) unwatch(w chan card) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, ok := b.watchers[w]; ok {
		delete(b.watchers, w)
		close(w)
	}
}

// serveEvents streams the board: a "card" event per card now on it, then
// one per change, as server-sent events.
func (b *board) serveEvents(w http.ResponseWriter, r *http.Request) {
	flusher, ok := w.(http.Flusher)
	if !ok {
		http.Error(w, "streaming unsupported", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	ch, snapshot := b.watch()
	defer b.unwatch(ch)
	send := func(cd card) bool {
		data, err := json.Marshal(cd)
		if err != nil {
			return false
		}
		_, err = fmt.Fprintf(w, "event: card\ndata: %s\n\n", data)
		return err == nil
	}
	for _, cd := range snapshot {
		if !send(cd) {
			return
		}
	}
	flusher.Flush()
	ping := time.NewTicker(15 * time.Second)
	defer ping.Stop()
	for {
		select {
		case cd, ok := <-ch:
			if !ok || !send(cd) {
				return
			}
		case <-ping.C:
			if _, err := fmt.Fprint(w, ": ping\n\n"); err != nil {
				return
			}
		case <-r.Context().Done():
			return
		}
		flusher.Flush()
	}
}
