package main

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/dgraph-io/badger/v4"
)

// Ledger keys (integers big-endian, so charges iterate in the order they
// were written):
//
//	c/<seq u64>    → charge JSON: one row per charge, never overwritten
//	o/<order id>   → seq u64 of the order's charge: the idempotency key
//	k/<order id>   → (empty) the broker confirmed the order's ack
//	r/<order id>   → u32: deliveries of an order already charged, its ack
//	                 not yet confirmed (a crash between charge and ack)
//	a/<order id>   → u32: deliveries of an order whose ack the broker had
//	                 confirmed; effectively-once promises there are none
//
// The checker counts charges from the c/ rows, not from the index: were
// the index ever bypassed, a second row for one order would show.
var (
	prefixCharge    = []byte("c/")
	prefixIndex     = []byte("o/")
	prefixConfirmed = []byte("k/")
	prefixRedeliver = []byte("r/")
	prefixAfterAck  = []byte("a/")
)

// charge is one row of the ledger.
type charge struct {
	OrderID     string    `json:"order_id"`
	AmountCents int       `json:"amount_cents"`
	ChargedAt   time.Time `json:"charged_at"`
}

// ledger is billing's own store: an embedded Badger with synced writes, so
// a charge written survives kill -9 before the order is acked.
type ledger struct {
	db *badger.DB

	mu  sync.Mutex // guards seq and serializes settle: one check-then-charge at a time
	seq uint64     // the next charge row
}

// openLedger opens (or creates) the ledger in dir.
func openLedger(dir string) (*ledger, error) {
	opts := badger.DefaultOptions(dir).
		WithSyncWrites(true). // a charge is durable before it is acked
		WithLogger(nil).
		WithMemTableSize(8 << 20).
		WithValueLogFileSize(16 << 20).
		WithBlockCacheSize(8 << 20)
	db, err := badger.Open(opts)
	if err != nil {
		return nil, fmt.Errorf("open ledger: %w", err)
	}
	l := &ledger{db: db}
	err = db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Reverse: true, Prefix: prefixCharge})
		defer it.Close()
		it.Seek(append(append([]byte{}, prefixCharge...), bytes.Repeat([]byte{0xff}, 9)...)) // past the last row
		if it.Valid() {
			l.seq = binary.BigEndian.Uint64(it.Item().Key()[len(prefixCharge):]) + 1
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("open ledger: %w", err)
	}
	return l, nil
}

// Close closes the ledger.
func (l *ledger) Close() error { return l.db.Close() }

// outcome is what settle did with a delivery of an order.
type outcome int

const (
	// charged: the order was new; its charge is written.
	charged outcome = iota + 1
	// redelivered: the order was charged before, its ack not confirmed.
	redelivered
	// afterAck: the order's ack was confirmed before: a broker violation.
	afterAck
)

func orderKey(prefix []byte, id string) []byte { return append(append([]byte{}, prefix...), id...) }

// settle charges o unless it was charged already, and records a delivery
// of an order seen before. It returns once the write is durable.
func (l *ledger) settle(o Order, now time.Time) (outcome, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out outcome
	err := l.db.Update(func(txn *badger.Txn) error {
		switch {
		case exists(txn, orderKey(prefixConfirmed, o.ID)):
			out = afterAck
			return increment(txn, orderKey(prefixAfterAck, o.ID))
		case exists(txn, orderKey(prefixIndex, o.ID)):
			out = redelivered
			return increment(txn, orderKey(prefixRedeliver, o.ID))
		}
		out = charged
		row, err := json.Marshal(charge{OrderID: o.ID, AmountCents: o.PriceCents, ChargedAt: now})
		if err != nil {
			return err
		}
		return l.writeCharge(txn, o.ID, row)
	})
	if err != nil {
		return 0, fmt.Errorf("settle order %s: %w", o.ID, err)
	}
	if out == charged {
		l.seq++
	}
	return out, nil
}

// writeCharge writes the charge row at seq and the order's index entry.
func (l *ledger) writeCharge(txn *badger.Txn, orderID string, row []byte) error {
	key := binary.BigEndian.AppendUint64(append([]byte{}, prefixCharge...), l.seq)
	if err := txn.Set(key, row); err != nil {
		return err
	}
	return txn.Set(orderKey(prefixIndex, orderID), binary.BigEndian.AppendUint64(nil, l.seq))
}

// confirm records that the broker confirmed the ack of order id: from now
// on, a delivery of it is a violation.
func (l *ledger) confirm(id string) error {
	err := l.db.Update(func(txn *badger.Txn) error { return txn.Set(orderKey(prefixConfirmed, id), nil) })
	if err != nil {
		return fmt.Errorf("confirm order %s: %w", id, err)
	}
	return nil
}

func exists(txn *badger.Txn, key []byte) bool {
	_, err := txn.Get(key)
	return err == nil
}

// increment adds one to the u32 counter at key.
func increment(txn *badger.Txn, key []byte) error {
	var n uint32
	item, err := txn.Get(key)
	switch {
	case err == nil:
		if err := item.Value(func(v []byte) error { n = binary.BigEndian.Uint32(v); return nil }); err != nil {
			return err
		}
	case !errors.Is(err, badger.ErrKeyNotFound):
		return err
	}
	return txn.Set(key, binary.BigEndian.AppendUint32(nil, n+1))
}

// ledgerEvidence is what the ledger says happened, per order id.
type ledgerEvidence struct {
	// Charges counts charge rows per order.
	Charges map[string]int `json:"charges"`
	// Redelivered counts deliveries of orders already charged.
	Redelivered map[string]int `json:"redelivered"`
	// AfterAck counts deliveries of orders whose ack was confirmed.
	AfterAck map[string]int `json:"after_ack"`
}

// evidence reads the whole ledger.
func (l *ledger) evidence() (ledgerEvidence, error) {
	ev := ledgerEvidence{Charges: map[string]int{}, Redelivered: map[string]int{}, AfterAck: map[string]int{}}
	err := l.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.DefaultIteratorOptions)
		defer it.Close()
		for it.Seek(prefixCharge); it.ValidForPrefix(prefixCharge); it.Next() {
			var c charge
			if err := it.Item().Value(func(v []byte) error { return json.Unmarshal(v, &c) }); err != nil {
				return fmt.Errorf("charge row %x: %w", it.Item().Key(), err)
			}
			ev.Charges[c.OrderID]++
		}
		for _, counter := range []struct {
			prefix []byte
			into   map[string]int
		}{{prefixRedeliver, ev.Redelivered}, {prefixAfterAck, ev.AfterAck}} {
			for it.Seek(counter.prefix); it.ValidForPrefix(counter.prefix); it.Next() {
				err := it.Item().Value(func(v []byte) error {
					counter.into[string(it.Item().Key()[len(counter.prefix):])] = int(binary.BigEndian.Uint32(v))
					return nil
				})
				if err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		return ledgerEvidence{}, fmt.Errorf("read ledger: %w", err)
	}
	return ev, nil
}
