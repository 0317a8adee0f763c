package main

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"regexp"
	"time"
)

// Order is the payload of a message in orders.
type Order struct {
	ID         string    `json:"id"`
	Customer   string    `json:"customer"`
	Pizza      string    `json:"pizza"`
	PriceCents int       `json:"price_cents"`
	PlacedAt   time.Time `json:"placed_at"`
}

// Pizza is the payload of a message in pizzas.ready.
type Pizza struct {
	OrderID  string    `json:"order_id"`
	Customer string    `json:"customer"`
	Pizza    string    `json:"pizza"`
	Kitchen  string    `json:"kitchen"`
	Attempt  uint32    `json:"attempt"`
	CookedAt time.Time `json:"cooked_at"`
}

// Delivery is the payload of a message in pizzas.delivered.
type Delivery struct {
	OrderID     string    `json:"order_id"`
	DeliveredAt time.Time `json:"delivered_at"`
}

// MenuItem is a pizza on the menu.
type MenuItem struct {
	Name       string `json:"name"`
	Toppings   string `json:"toppings"`
	PriceCents int    `json:"price_cents"`
}

// menu is what the storefront sells.
var menu = []MenuItem{
	{"margherita", "tomato, mozzarella, basil", 900},
	{"marinara", "tomato, garlic, oregano", 800},
	{"diavola", "tomato, mozzarella, spicy salami", 1150},
	{"funghi", "tomato, mozzarella, mushrooms", 1050},
	{"quattro formaggi", "mozzarella, gorgonzola, fontina, parmesan", 1250},
}

func menuItem(name string) (MenuItem, bool) {
	for _, m := range menu {
		if m.Name == name {
			return m, true
		}
	}
	return MenuItem{}, false
}

// orderIDPattern is what an order id may look like: it is a message id
// and a key, and it is written into the services' line logs, so no
// spaces.
var orderIDPattern = regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`)

// newOrderID returns a random order id. The page makes its own the same
// way, before the first POST, so a retry carries the same id.
func newOrderID() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b) // never fails (crypto/rand)
	return "o-" + hex.EncodeToString(b)
}

// decode parses a JSON payload into v, naming the topic on error.
func decode(topic string, payload []byte, v any) error {
	if err := json.Unmarshal(payload, v); err != nil {
		return fmt.Errorf("decode %s message: %w", topic, err)
	}
	return nil
}
