package consumer

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cockroachdb/datadriven"
	"github.com/ferrymq/ferry/storage"
)

// TestScenarios runs the datadriven scripts in testdata/scenarios against
// the harness. Each file starts with a fresh store on a fake clock at t0.
// Commands (t is the default topic, s the subscription):
//
//	topic [name=t] [partitions=1] [retention-age=1h]
//	sub [topic=t] [name=s] guarantee=G [type=T] [ack-timeout=30s] [backoff-min=1s]
//	    [backoff-max=60s] [max-deliveries=N dlq=TOPIC] [dedup-horizon=D] [start=earliest]
//	publish [topic=t] [partition=0] ids=a,b,c [keys=k1,k2,k1]   (- is no id or key)
//	attach c=1 credit=2 | detach c=1 | credit c=1 n=5
//	ack ids=0.0.1.0,... | nack ids=... | extend ids=... by=60s
//	commit ids=... [publish=topic:partition:id,...]
//	seek to=earliest|latest|offset:N|time:RFC3339
//	advance 31s
//	restart [soft]          (soft: the store stays open; else closed and reopened)
//	writes hold|release|fail=N
//	retention [topic=t] max-messages=N
//	read topic=dead [partition=0]
//	stats
//
// Every command prints the deliveries it caused, one per line, as
// "c1 <- partition.offset.attempt.epoch id=... key=...".
func TestScenarios(t *testing.T) {
	datadriven.Walk(t, "testdata/scenarios", func(t *testing.T, path string) {
		h := newHarness(t)
		datadriven.RunTest(t, path, func(t *testing.T, d *datadriven.TestData) string {
			var b strings.Builder
			h.tb = t
			runScenarioCmd(t, h, d, &b)
			h.acksWaiting = slices.DeleteFunc(h.acksWaiting, func(report func() bool) bool { return report() })
			for _, n := range h.notes {
				b.WriteString(n + "\n")
			}
			h.notes = nil
			for _, s := range h.takeSent() {
				fmt.Fprintf(&b, "c%d <- %s%s\n", s.Consumer, s.ID, describe(&s.Message))
			}
			if b.Len() == 0 {
				return "ok\n"
			}
			return b.String()
		})
	})
}

func describe(m *storage.Message) string {
	s := ""
	if m.ID != "" {
		s += " id=" + m.ID
	}
	if len(m.Key) > 0 {
		s += " key=" + string(m.Key)
	}
	return s
}

// args reads a command's key=value arguments; a bare word maps to "".
func args(d *datadriven.TestData) map[string]string {
	a := map[string]string{}
	for _, c := range d.CmdArgs {
		a[c.Key] = strings.Join(c.Vals, ",")
	}
	return a
}

func get(a map[string]string, key, def string) string {
	if v, ok := a[key]; ok {
		return v
	}
	return def
}

func num(t *testing.T, s string) uint64 {
	t.Helper()
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		t.Fatalf("%q: %v", s, err)
	}
	return n
}

func dur(t *testing.T, s string) time.Duration {
	t.Helper()
	d, err := time.ParseDuration(s)
	if err != nil {
		t.Fatalf("%q: %v", s, err)
	}
	return d
}

func list(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(s, ",")
}

func deliveryIDs(t *testing.T, s string) []DeliveryID {
	t.Helper()
	var ids []DeliveryID
	for _, f := range list(s) {
		id, err := ParseDeliveryID(f)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	return ids
}

func runScenarioCmd(t *testing.T, h *harness, d *datadriven.TestData, b *strings.Builder) {
	a := args(d)
	ctx := context.Background()
	switch d.Cmd {
	case "topic":
		cfg := storage.TopicConfig{Partitions: uint32(num(t, get(a, "partitions", "1")))}
		if v, ok := a["retention-age"]; ok {
			cfg.RetentionMaxAge = dur(t, v)
		}
		h.createTopic(get(a, "name", "t"), cfg)

	case "sub":
		g, err := ParseGuarantee(get(a, "guarantee", "at-least-once"))
		if err != nil {
			t.Fatal(err)
		}
		o := DefaultOptions(g)
		if o.Type, err = ParseType(get(a, "type", "shared")); err != nil {
			t.Fatal(err)
		}
		o.AckTimeout = dur(t, get(a, "ack-timeout", "30s"))
		o.BackoffMin = dur(t, get(a, "backoff-min", "1s"))
		o.BackoffMax = dur(t, get(a, "backoff-max", "60s"))
		o.MaxDeliveries = uint32(num(t, get(a, "max-deliveries", "0")))
		o.DeadLetterTopic = get(a, "dlq", "")
		o.DedupHorizon = dur(t, get(a, "dedup-horizon", "0s"))
		if o.Start, err = ParseStartPosition(get(a, "start", "latest")); err != nil {
			t.Fatal(err)
		}
		if err := h.createSub(get(a, "topic", "t"), get(a, "name", "s"), o); err != nil {
			fmt.Fprintf(b, "error: %s\n", errName(err))
		}

	case "publish":
		topic := get(a, "topic", "t")
		ids := list(a["ids"])
		keys := list(a["keys"])
		msgs := make([]storage.Message, len(ids))
		for i, id := range ids {
			if id != "-" {
				msgs[i].ID = id
			}
			if i < len(keys) && keys[i] != "-" {
				msgs[i].Key = []byte(keys[i])
			}
			msgs[i].Payload = []byte("p")
		}
		part := uint32(num(t, get(a, "partition", "0")))
		res := h.publish(topic, part, msgs)
		var parts []string
		for i, r := range res {
			s := fmt.Sprintf("%s@%d.%d", ids[i], part, r.Offset)
			if r.Duplicate {
				s += "(duplicate)"
			}
			parts = append(parts, s)
		}
		h.notes = append([]string{"published " + strings.Join(parts, " ")}, h.notes...)

	case "attach":
		if err := h.attach(num(t, a["c"]), int(parseInt(t, a["credit"]))); err != nil {
			fmt.Fprintf(b, "error: %s\n", errName(err))
		}

	case "detach":
		h.detach(num(t, a["c"]))

	case "credit":
		if err := h.setCredit(num(t, a["c"]), int(parseInt(t, a["n"]))); err != nil {
			fmt.Fprintf(b, "error: %s\n", errName(err))
		}

	case "ack":
		ids := deliveryIDs(t, a["ids"])
		r := h.ack(ids)
		reportAck(b, ids, r)
		if !r.done {
			// Reported when its write is done.
			h.pendingAck(ids, r)
		}

	case "nack":
		ids := deliveryIDs(t, a["ids"])
		for i, err := range h.nack(ids) {
			fmt.Fprintf(b, "nack %s: %s\n", ids[i], errName(err))
		}

	case "extend":
		ids := deliveryIDs(t, a["ids"])
		for i, err := range h.extend(ids, dur(t, get(a, "by", "60s"))) {
			fmt.Fprintf(b, "extend %s: %s\n", ids[i], errName(err))
		}

	case "commit":
		ids := deliveryIDs(t, a["ids"])
		var appends []storage.AppendBatch
		for _, p := range list(a["publish"]) {
			f := strings.Split(p, ":")
			if len(f) != 3 {
				t.Fatalf("publish %q: want topic:partition:id", p)
			}
			appends = append(appends, storage.AppendBatch{Topic: f[0], Partition: uint32(num(t, f[1])),
				Messages: []storage.Message{{ID: f[2], Payload: []byte("out")}}})
		}
		r := h.commit(ids, appends)
		switch {
		case !r.done:
			b.WriteString("commit pending: not yet durable\n")
		case r.err != nil:
			fmt.Fprintf(b, "commit: %s\n", errName(r.err))
		default:
			var out []string
			for i, res := range r.res {
				for _, x := range res {
					dup := map[bool]string{true: "(dup)"}[x.Duplicate]
					out = append(out, fmt.Sprintf("%s/%d@%d%s", appends[i].Topic, appends[i].Partition, x.Offset, dup))
				}
			}
			fmt.Fprintf(b, "commit: ok %s\n", strings.Join(out, " "))
		}

	case "seek":
		pos, err := ParseStartPosition(a["to"])
		if err != nil {
			t.Fatal(err)
		}
		if err := h.seek(pos); err != nil {
			fmt.Fprintf(b, "error: %s\n", errName(err))
		}

	case "advance":
		if len(d.CmdArgs) != 1 {
			t.Fatal("advance wants a duration")
		}
		h.advance(dur(t, d.CmdArgs[0].Key))
		fmt.Fprintf(b, "now t0+%v\n", h.now().Sub(t0))

	case "restart":
		_, soft := a["soft"]
		h.restart(!soft)
		h.settle()

	case "writes":
		switch {
		case hasKey(a, "hold"):
			h.hold = true
		case hasKey(a, "release"):
			n := len(h.held)
			h.releaseWrites()
			fmt.Fprintf(b, "released %d writes\n", n)
		case hasKey(a, "fail"):
			h.failing = int(num(t, a["fail"]))
			h.settle()
		case hasKey(a, "lose-reply"):
			h.losing = int(num(t, a["lose-reply"]))
			h.settle()
		default:
			t.Fatal("writes hold|release|fail=N|lose-reply=N")
		}

	case "retention":
		topic := get(a, "topic", "t")
		n := num(t, a["max-messages"])
		if _, err := h.st.UpdateTopic(ctx, topic, func(c *storage.TopicConfig) { c.RetentionMaxMessages = n }); err != nil {
			t.Fatal(err)
		}
		if err := h.st.EnforceRetention(ctx); err != nil {
			t.Fatal(err)
		}
		parts, _ := h.st.Partitions(topic)
		for _, p := range parts {
			fmt.Fprintf(b, "%s/%d: first %d head %d\n", topic, p.Partition, p.First, p.Head)
		}
		h.settle()

	case "read":
		topic := get(a, "topic", "t")
		part := uint32(num(t, get(a, "partition", "0")))
		msgs, err := h.st.Read(ctx, topic, part, 0, 100, 1<<20)
		if err != nil {
			fmt.Fprintf(b, "error: %v\n", err)
			break
		}
		for _, m := range msgs {
			fmt.Fprintf(b, "%s/%d@%d%s\n", topic, part, m.Offset, describe(&m))
			for _, k := range slices.Sorted(maps.Keys(m.Headers)) {
				fmt.Fprintf(b, "  %s: %s\n", k, m.Headers[k])
			}
		}
		if len(msgs) == 0 {
			b.WriteString("empty\n")
		}

	case "stats":
		s := h.stats()
		fmt.Fprintf(b, "backlog=%d inflight=%d consumers=%d delivered=%d redelivered=%d acked=%d nacked=%d dead-lettered=%d stale=%d skipped=%d\n",
			s.Backlog, s.Inflight, s.Consumers, s.Delivered, s.Redelivered, s.Acked, s.Nacked, s.DeadLettered, s.StaleAcks, s.Skipped)

	default:
		t.Fatalf("unknown command %q", d.Cmd)
	}
}

func hasKey(a map[string]string, k string) bool {
	_, ok := a[k]
	return ok
}

func parseInt(t *testing.T, s string) int64 {
	t.Helper()
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		t.Fatalf("%q: %v", s, err)
	}
	return n
}

// reportAck prints an ack's results, or that it awaits its write.
func reportAck(b *strings.Builder, ids []DeliveryID, r *ackResult) {
	if !r.done {
		b.WriteString("ack pending: not yet durable\n")
		return
	}
	for i, id := range ids {
		fmt.Fprintf(b, "ack %s: %s\n", id, errName(r.results[i]))
	}
	if r.err != nil {
		fmt.Fprintf(b, "ack write: %s\n", errName(r.err))
	}
}

// pendingAck reports an ack's results in the output of the command that
// completes it.
func (h *harness) pendingAck(ids []DeliveryID, r *ackResult) {
	h.acksWaiting = append(h.acksWaiting, func() bool {
		if !r.done {
			return false
		}
		var b strings.Builder
		reportAck(&b, ids, r)
		h.notes = append(h.notes, strings.TrimSuffix(b.String(), "\n"))
		return true
	})
}

// TestEffectivelyOnceAckBeforeRefetch: docs/design.md §2 rule 4 after a
// restart — an ack of a pre-restart attempt that arrives before the
// message is read again (the machine does not hold it) still records the
// message's id (the loop reads the ids first), so a later message with
// that id is skipped.
func TestEffectivelyOnceAckBeforeRefetch(t *testing.T) {
	h := newHarness(t)
	h.effectivelyOnce("t", 2, 10)
	h.publish("t", 0, []storage.Message{{ID: "a", Payload: []byte("p")}})
	h.restart(true)
	if r := h.ack([]DeliveryID{{Partition: 0, Offset: 0, Attempt: 1}}); !r.done || r.results[0] != nil || r.err != nil {
		t.Fatalf("ack: %+v", r)
	}
	if err := h.attach(2, 10); err != nil {
		t.Fatal(err)
	}
	h.takeSent()
	h.publish("t", 1, []storage.Message{{ID: "a", Payload: []byte("p")}})
	if sent := h.takeSent(); len(sent) != 0 {
		t.Fatalf("a message with the acked id a was delivered: %v", sent[0].ID)
	}
}

// TestCommitTakesQueuedRedelivery: a commit of a message waiting for
// redelivery (nacked, its backoff over, no credit to send it) must take it
// out of the queue. Before the fix, the credit the commit freed sent it out
// again, riding on the commit's own write: delivered after its commit was
// confirmed, under EFFECTIVELY_ONCE.
func TestCommitTakesQueuedRedelivery(t *testing.T) {
	h := newHarness(t)
	h.effectivelyOnce("t", 1, 2)
	h.publish("t", 0, []storage.Message{{ID: "e"}, {ID: "f"}, {ID: "g"}})
	h.nack([]DeliveryID{{Partition: 0, Offset: 0, Attempt: 1}})
	h.advance(time.Second) // e is due; g holds the credit e's nack freed
	h.takeSent()
	r := h.commit([]DeliveryID{{Partition: 0, Offset: 0, Attempt: 1}, {Partition: 0, Offset: 1, Attempt: 1}}, nil)
	if !r.done || r.err != nil {
		t.Fatalf("commit: %+v", r)
	}
	if sent := h.takeSent(); len(sent) != 0 {
		t.Fatalf("delivered after its commit: %v", sent[0].ID) // the harness reports it too
	}
}

// TestCommitIsOneWrite: a Commit of inputs from two partitions with
// outputs in two partitions of another topic is one storage Write — the
// inputs' cursors and the outputs together — which the store commits as
// one transaction (storage's TestWriteIsOneTransaction). Written apart, a
// crash between the writes would leave outputs without the inputs' ack
// (published twice on redelivery) or the ack without the outputs (lost).
func TestCommitIsOneWrite(t *testing.T) {
	h := newHarness(t)
	h.createTopic("out", storage.TopicConfig{Partitions: 2})
	h.effectivelyOnce("t", 2, 10)
	h.publish("t", 0, []storage.Message{{ID: "a"}})
	h.publish("t", 1, []storage.Message{{ID: "b"}})
	h.takeSent()
	before := len(h.writes)
	r := h.commit([]DeliveryID{{Partition: 0, Offset: 0, Attempt: 1}, {Partition: 1, Offset: 0, Attempt: 1}},
		[]storage.AppendBatch{
			{Topic: "out", Partition: 0, Messages: []storage.Message{{ID: "a-out"}}},
			{Topic: "out", Partition: 1, Messages: []storage.Message{{ID: "b-out"}}},
		})
	if !r.done || r.err != nil {
		t.Fatalf("commit: %+v", r)
	}
	writes := h.writes[before:]
	if len(writes) != 1 {
		t.Fatalf("the commit made %d writes, want 1: %+v", len(writes), writes)
	}
	w := writes[0]
	parts := map[uint32]bool{}
	for _, c := range w.Cursors {
		parts[c.Partition] = true
	}
	if w.Topic != "t" || !parts[0] || !parts[1] || len(w.Appends) != 2 {
		t.Fatalf("the commit's write has cursors of partitions %v and %d append batches, want both partitions' cursors with both outputs: %+v", parts, len(w.Appends), w)
	}
}

// effectivelyOnce creates topic with parts partitions and an
// effectively-once subscription "s" on it from the earliest offset, and
// attaches consumer 1 with credit.
func (h *harness) effectivelyOnce(topic string, parts uint32, credit int) {
	h.tb.Helper()
	h.createTopic(topic, storage.TopicConfig{Partitions: parts})
	o := DefaultOptions(EffectivelyOnce)
	o.Start = StartPosition{Kind: StartEarliest}
	if err := h.createSub(topic, "s", o); err != nil {
		h.tb.Fatal(err)
	}
	if err := h.attach(1, credit); err != nil {
		h.tb.Fatal(err)
	}
}

// TestKeySharedHoldsKeyAcrossRestart: under EFFECTIVELY_ONCE a delivery
// made before a restart (or an owner change) stays outstanding at its
// unknown holder until its deadline, and KEY_SHARED keeps its key there:
// a later message of the key waits until the old delivery is acked or its
// deadline passes, rather than going to another consumer at once (two
// consumers holding one key, the later message first). ferry verify's
// key-order check caught this in TestClusterChaos (CI run 51): a pod
// paused with a delivery in flight, the new owner sent the key's next
// message elsewhere.
func TestKeySharedHoldsKeyAcrossRestart(t *testing.T) {
	h, _ := keySharedDelivered(t)
	if sent := h.takeSent(); len(sent) != 1 || sent[0].ID.Offset != 0 {
		t.Fatalf("before the restart: sent %v, want a", sent)
	}
	h.restart(true)
	if err := h.attach(2, 10); err != nil {
		t.Fatal(err)
	}
	h.publish("t", 0, []storage.Message{{ID: "b", Key: []byte("k"), Payload: []byte("b")}})
	if sent := h.takeSent(); len(sent) != 0 {
		t.Fatalf("after the restart, with a still outstanding at its old holder: sent %v to consumer %d, want nothing", sent[0].ID, sent[0].Consumer)
	}
	// The old holder's ack of a (attempt 1) frees the key: b goes out.
	if r := h.ack([]DeliveryID{{Partition: 0, Offset: 0, Attempt: 1}}); !r.done || r.results[0] != nil || r.err != nil {
		t.Fatalf("ack of a: %+v", r)
	}
	if sent := h.takeSent(); len(sent) != 1 || sent[0].ID.Offset != 1 {
		t.Fatalf("after a's ack: sent %v, want b", sent)
	}
}

// TestKeySharedHeldKeyFreedAtDeadline: the key held for a delivery made
// before a restart is freed when that delivery's deadline passes; the
// message is then redelivered first, before the key's next message.
func TestKeySharedHeldKeyFreedAtDeadline(t *testing.T) {
	h, o := keySharedDelivered(t)
	h.takeSent()
	h.restart(true)
	if err := h.attach(2, 10); err != nil {
		t.Fatal(err)
	}
	h.publish("t", 0, []storage.Message{{ID: "b", Key: []byte("k"), Payload: []byte("b")}})
	if sent := h.takeSent(); len(sent) != 0 {
		t.Fatalf("before a's deadline: sent %v, want nothing", sent[0].ID)
	}
	h.advance(o.AckTimeout)
	sent := h.takeSent()
	if len(sent) == 0 || sent[0].ID.Offset != 0 || sent[0].ID.Attempt != 2 {
		t.Fatalf("after a's deadline: sent %v, want a's second attempt first", sent)
	}
}

// keySharedDelivered is an EFFECTIVELY_ONCE KEY_SHARED subscription with
// consumer 1 attached and message a (key k) published to it.
func keySharedDelivered(t *testing.T) (*harness, Options) {
	t.Helper()
	h := newHarness(t)
	h.createTopic("t", storage.TopicConfig{Partitions: 1})
	o := DefaultOptions(EffectivelyOnce)
	o.Type = KeyShared
	o.Start = StartPosition{Kind: StartEarliest}
	if err := h.createSub("t", "s", o); err != nil {
		t.Fatal(err)
	}
	if err := h.attach(1, 10); err != nil {
		t.Fatal(err)
	}
	h.publish("t", 0, []storage.Message{{ID: "a", Key: []byte("k"), Payload: []byte("a")}})
	return h, o
}
