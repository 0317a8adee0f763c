package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/ferrymq/ferry/client"
)

// Evidence is what the demo left behind, read back for the checker: the
// topics as the broker stored them, and each service's own durable record
// of its side effects. Only orders in Orders are judged; the rest of the
// evidence is per order id.
type Evidence struct {
	// Orders holds, per order id, its messages in orders.
	Orders map[string]Stored
	// Pizzas holds, per order id, its messages in pizzas.ready.
	Pizzas map[string]Stored
	// Accepted counts, per order id, the POSTs the storefront answered with
	// success (its accepted.log).
	Accepted map[string]int
	// DoubleSubmits counts the POSTs that found their id placed before.
	DoubleSubmits int
	// CookAttempts counts, per order id, the cookings begun (the kitchens'
	// attempts.log).
	CookAttempts map[string]int
	// Ledger is billing's ledger.
	Ledger ledgerEvidence
	// Deliveries counts, per order id, the courier's deliveries (its
	// deliveries.log).
	Deliveries map[string]int
	// Texts counts, per kind of text and order id, the texts sent (the
	// notifier's outbox.log).
	Texts map[string]map[string]int
}

// Stored is what a topic holds for one order id.
type Stored struct {
	Copies int       // messages
	First  time.Time // publish time of the first
}

func newEvidence() Evidence {
	return Evidence{
		Orders: map[string]Stored{}, Pizzas: map[string]Stored{}, Accepted: map[string]int{},
		CookAttempts: map[string]int{}, Deliveries: map[string]int{},
		Ledger: ledgerEvidence{Charges: map[string]int{}, Redelivered: map[string]int{}, AfterAck: map[string]int{}},
		Texts:  map[string]map[string]int{textConfirmed: {}, textOnTheWay: {}},
	}
}

// auditMessage is what the audit reads of a stored message.
type auditMessage struct {
	Key         string
	PublishTime time.Time
}

// topicReader reads topics as stored, moving no cursor.
type topicReader interface {
	// heads returns the head offset of each of the topic's partitions.
	heads(ctx context.Context, topic string) ([]uint64, error)
	// read returns messages of a partition from offset from, and the offset
	// to read next; nothing once from is the head.
	read(ctx context.Context, topic string, partition uint32, from uint64) ([]auditMessage, uint64, error)
}

// brokerReader reads topics from a running broker.
type brokerReader struct {
	c *client.Client
}

func (r brokerReader) heads(ctx context.Context, topic string) ([]uint64, error) {
	t, err := r.c.GetTopic(ctx, topic)
	if err != nil {
		return nil, err
	}
	heads := make([]uint64, len(t.Partitions))
	for i, p := range t.Partitions {
		heads[i] = p.HeadOffset
	}
	return heads, nil
}

func (r brokerReader) read(ctx context.Context, topic string, partition uint32, from uint64) ([]auditMessage, uint64, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	rd, err := r.c.ReadMessages(ctx, topic, partition, from, 1000)
	if err != nil {
		return nil, 0, err
	}
	msgs := make([]auditMessage, len(rd.Messages))
	for i, m := range rd.Messages {
		msgs[i] = auditMessage{Key: string(m.Key), PublishTime: m.PublishTime}
	}
	return msgs, rd.NextOffset, nil
}

// scope is where the demo's evidence starts in each topic: the head
// offsets of each partition when the data directory was first used. With
// --server the broker may hold messages of earlier runs, whose effects are
// recorded in other data directories.
type scope map[string][]uint64

// loadScope reads the scope file of the data directory, creating it from
// the topics' heads now if it is missing.
func loadScope(ctx context.Context, path string, r topicReader) (scope, error) {
	data, err := os.ReadFile(path)
	if err == nil {
		var s scope
		if err := json.Unmarshal(data, &s); err != nil {
			return nil, fmt.Errorf("read %s: %w", path, err)
		}
		return s, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	s := scope{}
	for _, name := range []string{topicOrders, topicReady} {
		if s[name], err = r.heads(ctx, name); err != nil {
			return nil, fmt.Errorf("scope of %s: %w", name, err)
		}
	}
	if data, err = json.Marshal(s); err != nil {
		return nil, err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return nil, err
	}
	return s, os.Rename(tmp, path)
}

// Layout of a demo's data directory: each service's state directory (its
// --dir) under it.
const (
	scopeFile        = "scope.json"
	brokerDir        = "broker"
	storefrontDir    = "storefront"
	billingDir       = "billing"
	courierDir       = "courier"
	notifierDir      = "notifier"
	acceptedLog      = "accepted.log"
	attemptsLog      = "attempts.log"
	deliveriesLog    = "deliveries.log"
	outboxLog        = "outbox.log"
	ledgerSubdir     = "ledger"
	logsDir          = "logs"
	kitchenDirPrefix = "kitchen-"
)

// collector gathers evidence incrementally: each collect reads what was
// added since the last one. It is not safe for concurrent use.
type collector struct {
	topics   topicReader
	ledger   func(context.Context) (ledgerEvidence, error)
	next     scope // per topic and partition, the next offset to read
	tails    []collectedLog
	ev       Evidence
	ledgerOK bool // ev.Ledger was read at least once
}

// collectedLog is a line log and what to do with each of its lines.
type collectedLog struct {
	tail *lineTail
	line func(ev *Evidence, fields []string)
}

// newCollector returns a collector of the evidence in the data directory
// dir, with kitchens kitchens, reading topics through topics from sc and
// the ledger through ledger.
func newCollector(dir string, kitchens int, sc scope, topics topicReader, ledger func(context.Context) (ledgerEvidence, error)) *collector {
	c := &collector{topics: topics, ledger: ledger, next: scope{}, ev: newEvidence()}
	for name, offs := range sc {
		c.next[name] = append([]uint64(nil), offs...)
	}
	add := func(path string, line func(ev *Evidence, fields []string)) {
		c.tails = append(c.tails, collectedLog{&lineTail{path: path}, line})
	}
	add(filepath.Join(dir, storefrontDir, acceptedLog), func(ev *Evidence, f []string) {
		if len(f) == 2 {
			ev.Accepted[f[0]]++
			if f[1] == "dup" {
				ev.DoubleSubmits++
			}
		}
	})
	for i := 1; i <= kitchens; i++ {
		add(filepath.Join(dir, kitchenDirPrefix+strconv.Itoa(i), attemptsLog), func(ev *Evidence, f []string) {
			if len(f) == 2 {
				ev.CookAttempts[f[0]]++
			}
		})
	}
	add(filepath.Join(dir, courierDir, deliveriesLog), func(ev *Evidence, f []string) {
		if len(f) == 2 {
			ev.Deliveries[f[0]]++
		}
	})
	add(filepath.Join(dir, notifierDir, outboxLog), func(ev *Evidence, f []string) {
		if len(f) == 2 && ev.Texts[f[0]] != nil {
			ev.Texts[f[0]][f[1]]++
		}
	})
	return c
}

// collect reads what was added since the last call and returns the
// evidence so far; it is owned by the collector and changes on the next
// call. The services' records are read before the topics: whatever a
// record says was published, the topics then hold. An error from the
// ledger keeps the ledger as last read; an error reading a topic is
// returned, and the next call goes on from where this one stopped.
func (c *collector) collect(ctx context.Context) (*Evidence, error) {
	for _, l := range c.tails {
		if err := l.tail.read(func(f []string) { l.line(&c.ev, f) }); err != nil {
			return nil, err
		}
	}
	if le, err := c.ledger(ctx); err == nil {
		c.ev.Ledger, c.ledgerOK = le, true
	} else if !c.ledgerOK {
		return nil, fmt.Errorf("ledger: %w", err)
	}
	for _, t := range []struct {
		name string
		into map[string]Stored
	}{{topicOrders, c.ev.Orders}, {topicReady, c.ev.Pizzas}} {
		if err := c.readTopic(ctx, t.name, t.into); err != nil {
			return nil, fmt.Errorf("read %s: %w", t.name, err)
		}
	}
	return &c.ev, nil
}

// readTopic reads every partition of topic up to its head now.
func (c *collector) readTopic(ctx context.Context, topic string, into map[string]Stored) error {
	heads, err := c.topics.heads(ctx, topic)
	if err != nil {
		return err
	}
	next := c.next[topic]
	for p := range next {
		for p < len(heads) && next[p] < heads[p] {
			msgs, n, err := c.topics.read(ctx, topic, uint32(p), next[p])
			if err != nil {
				return err
			}
			for _, m := range msgs {
				st := into[m.Key]
				if st.Copies == 0 {
					st.First = m.PublishTime
				}
				st.Copies++
				into[m.Key] = st
			}
			if len(msgs) == 0 {
				break
			}
			next[p] = n
		}
	}
	return nil
}

// ledgerFromDisk opens billing's ledger (billing must not be running),
// reads it and closes it.
func ledgerFromDisk(dir string) func(context.Context) (ledgerEvidence, error) {
	return func(context.Context) (ledgerEvidence, error) {
		l, err := openLedger(filepath.Join(dir, billingDir, ledgerSubdir))
		if err != nil {
			return ledgerEvidence{}, err
		}
		defer l.Close()
		return l.evidence()
	}
}
