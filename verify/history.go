package verify

import (
	"slices"
	"sync"
	"time"
)

// Kind is what an Event records.
type Kind string

// The kinds of events a run records.
const (
	// Publish: a publish of ID was called at Call and answered at Time:
	// stored at Partition/Offset when Acked, else of unknown outcome (Err).
	Publish Kind = "publish"
	// Deliver: Consumer received ID (Partition/Offset, Attempt) from Sub.
	Deliver Kind = "deliver"
	// Ack: Consumer acked a delivery, fire and forget.
	Ack Kind = "ack"
	// AckConfirmed: an ack called at Call was confirmed durable at Time
	// (effectively-once).
	AckConfirmed Kind = "ack_confirmed"
	// AckRefused: an ack called at Call was refused at Time (Err), e.g. as
	// stale.
	AckRefused Kind = "ack_refused"
	// Nack: Consumer nacked a delivery.
	Nack Kind = "nack"
	// Silence: Consumer let the delivery's ack deadline pass.
	Silence Kind = "silence"
	// Disconnect: Consumer detached from Sub on purpose.
	Disconnect Kind = "disconnect"
	// Disruption: a step of a disruption of the broker by the nemesis:
	// Fault names the disruption a step begins, Detail says what was done;
	// a failed one has Err.
	Disruption Kind = "disruption"
	// Read: the final read-back found ID at Topic Partition/Offset. Call is
	// when the read of that partition began.
	Read Kind = "read"
)

// Event is one thing a run did or saw. Times are wall-clock with Go's
// monotonic reading, so they order events of one run.
type Event struct {
	Time      time.Time `json:"time"`
	Call      time.Time `json:"call,omitzero"` // when the operation began, if it spans time
	Kind      Kind      `json:"kind"`
	Topic     string    `json:"topic,omitempty"`
	Sub       string    `json:"subscription,omitempty"`
	Consumer  string    `json:"consumer,omitempty"`
	ID        string    `json:"id,omitempty"`
	Key       string    `json:"key,omitempty"`
	Input     string    `json:"input,omitempty"` // a pipeline output's input id
	Partition uint32    `json:"partition"`
	Offset    uint64    `json:"offset"`
	Attempt   uint32    `json:"attempt,omitempty"`
	Acked     bool      `json:"acked,omitempty"`
	Err       string    `json:"err,omitempty"`
	Detail    string    `json:"detail,omitempty"`
	Fault     Fault     `json:"fault,omitempty"` // the disruption a Disruption step begins
}

// History is the events of one run. It is safe for concurrent use.
type History struct {
	mu     sync.Mutex // guards events
	events []Event
}

// Add records e; a zero Time is now.
func (h *History) Add(e Event) {
	if e.Time.IsZero() {
		e.Time = time.Now()
	}
	h.mu.Lock()
	h.events = append(h.events, e)
	h.mu.Unlock()
}

// Events returns a copy of the events, in time order.
func (h *History) Events() []Event {
	h.mu.Lock()
	ev := slices.Clone(h.events)
	h.mu.Unlock()
	slices.SortStableFunc(ev, func(a, b Event) int { return a.Time.Compare(b.Time) })
	return ev
}

// Len is how many events were recorded.
func (h *History) Len() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.events)
}

// place names one message: a topic's partition and offset.
type place struct {
	topic     string
	partition uint32
	offset    uint64
}

func (e Event) place() place { return place{e.Topic, e.Partition, e.Offset} }

// Setup says what a run created, for the checkers: which subscription
// promises what.
type Setup struct {
	// Topic is the topic the producers publish to.
	Topic string `json:"topic"`
	// OutputTopic is where the Commit pipeline publishes.
	OutputTopic string `json:"output_topic"`
	// Subs maps each subscription's name to its guarantee and type.
	Subs map[string]SubSpec `json:"subscriptions"`
	// Pipeline is the subscription the Commit pipeline consumes.
	Pipeline string `json:"pipeline"`
	// Drained: consumers ran until every acknowledged publish was delivered
	// (or gave up trying); loss is only judged when true.
	Drained bool `json:"drained"`
	// Undrained says what was left when the run gave up draining.
	Undrained string `json:"undrained,omitempty"`
}

// SubSpec is a subscription's guarantee and type, in the CLI's words
// ("at-most-once", "key-shared").
type SubSpec struct {
	Guarantee string `json:"guarantee"`
	Type      string `json:"type"`
}

// The guarantee and type names a SubSpec uses.
const (
	None            = "none"
	AtMostOnce      = "at-most-once"
	AtLeastOnce     = "at-least-once"
	EffectivelyOnce = "effectively-once"
	KeyShared       = "key-shared"
)
