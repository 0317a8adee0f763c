package verify

import (
	"maps"
	"strings"
	"testing"
	"time"
)

// histories builds hand-made histories on one clock: t(n) is n ms after
// the start.
var t0 = time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)

func at(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }

func testSetup() Setup {
	return Setup{Topic: "in", OutputTopic: "out", Pipeline: "pipe", Drained: true, Subs: map[string]SubSpec{
		"amo":  {AtMostOnce, "shared"},
		"alo":  {AtLeastOnce, "failover"},
		"eo":   {EffectivelyOnce, "shared"},
		"ks":   {EffectivelyOnce, KeyShared},
		"pipe": {EffectivelyOnce, "shared"},
	}}
}

func pub(id, key string, off uint64, ms int) Event {
	return Event{Kind: Publish, Topic: "in", ID: id, Key: key, Offset: off, Acked: true, Call: at(ms), Time: at(ms + 1)}
}

func read(topic, id, input string, off uint64) Event {
	return Event{Kind: Read, Topic: topic, ID: id, Input: input, Offset: off, Call: at(900), Time: at(901)}
}

func deliver(sub, consumer, id, key string, off uint64, attempt uint32, ms int) Event {
	return Event{Kind: Deliver, Topic: "in", Sub: sub, Consumer: consumer, ID: id, Key: key, Offset: off, Attempt: attempt, Time: at(ms)}
}

func confirm(sub, consumer string, off uint64, attempt uint32, call, ms int) Event {
	return Event{Kind: AckConfirmed, Topic: "in", Sub: sub, Consumer: consumer, Offset: off, Attempt: attempt, Call: at(call), Time: at(ms)}
}

func nack(sub, consumer string, off uint64, attempt uint32, ms int) Event {
	return Event{Kind: Nack, Topic: "in", Sub: sub, Consumer: consumer, Offset: off, Attempt: attempt, Time: at(ms)}
}

// cleanHistory is a correct run: two keyed messages, each delivered once
// to every subscription, the pipeline's outputs read back; eo redelivers a
// once its deadline passed (its later attempt confirmed), pipe once c1
// nacked it.
func cleanHistory() []Event {
	ev := []Event{pub("a", "k", 0, 10), pub("b", "k", 1, 20), read("in", "a", "", 0), read("in", "b", "", 1),
		read("out", "oa", "a", 0), read("out", "ob", "b", 1)}
	for _, sub := range []string{"amo", "alo", "eo", "ks", "pipe"} {
		ev = append(ev, deliver(sub, "c1", "a", "k", 0, 1, 100), deliver(sub, "c1", "b", "k", 1, 1, 110))
	}
	ev = append(ev, confirm("ks", "c1", 0, 1, 101, 102), confirm("ks", "c1", 1, 1, 111, 112))
	ev = append(ev, deliver("eo", "c2", "a", "k", 0, 2, 2100), confirm("eo", "c2", 0, 2, 2101, 2102))
	return append(ev, nack("pipe", "c1", 0, 1, 105), deliver("pipe", "c2", "a", "k", 0, 2, 300))
}

func TestCheckCleanHistory(t *testing.T) {
	res := Check(testSetup(), cleanHistory())
	if !res.OK() {
		t.Fatalf("violations in a clean history: %+v", res.Violations)
	}
	for _, c := range res.Checks {
		if c.Checked == 0 {
			t.Errorf("check %s judged nothing", c.Name)
		}
	}
}

// TestCheckRejects: each hand-made history breaks one promise, and its
// checker must say so, naming the evidence. (A broken log also shows in
// the checks built on it; only the named one is required.)
func TestCheckRejects(t *testing.T) {
	tests := []struct {
		name   string
		check  string
		change func([]Event) []Event
		want   string // in the violation's message
	}{
		{"acked publish lost", "stored", func(ev []Event) []Event {
			return drop(ev, func(e Event) bool { return e.Kind == Read && e.ID == "b" })
		}, "b acknowledged at in/0@1"},
		{"acked publish at another offset", "stored", func(ev []Event) []Event {
			return append(ev, pub("c", "", 1, 30))
		}, "the log holds b there"},
		{"stored twice", "stored", func(ev []Event) []Event {
			return append(ev, read("in", "a", "", 2))
		}, "id a is stored 2 times"},
		{"reordered log", "stored", func(ev []Event) []Event {
			// b acknowledged before c was called, yet c comes first in the log.
			ev = drop(ev, func(e Event) bool { return e.Kind == Read && e.Topic == "in" })
			c := pub("c", "", 0, 50)
			c.Acked = false
			return append(ev, c, read("in", "c", "", 0), read("in", "a", "", 1), read("in", "b", "", 2))
		}, "acknowledged at"},
		{"stored before a publish answered before it was called", "stored", func(ev []Event) []Event {
			// Every acknowledged offset holds its id; the order breaks real time.
			ev = drop(ev, func(e Event) bool { return e.Topic == "in" && (e.Kind == Read || e.Kind == Publish) })
			c := pub("c", "", 0, 50)
			c.Acked = false
			return append(ev, pub("a", "k", 1, 10), c, read("in", "c", "", 0), read("in", "a", "", 1))
		}, "c is stored at in/0@0, before a"},
		{"phantom delivery", "delivered-as-stored", func(ev []Event) []Event {
			return append(ev, deliver("alo", "c2", "zz", "", 0, 2, 200))
		}, "the log holds a there"},
		{"at-most-once twice", "at-most-once", func(ev []Event) []Event {
			return append(ev, deliver("amo", "c2", "a", "k", 0, 1, 200))
		}, "amo (at-most-once) delivered a (in/0@0) 2 times"},
		{"at-least-once lost", "at-least-once", func(ev []Event) []Event {
			return drop(ev, func(e Event) bool { return e.Kind == Deliver && e.Sub == "alo" && e.ID == "b" })
		}, "alo (at-least-once) never delivered b"},
		{"effectively-once attempt reused", "effectively-once", func(ev []Event) []Event {
			return append(ev, deliver("eo", "c2", "a", "k", 0, 1, 105))
		}, "attempt 1 2 times"},
		{"effectively-once delivered after a confirmed ack", "effectively-once", func(ev []Event) []Event {
			return append(ev, confirm("eo", "c1", 0, 1, 101, 102), deliver("eo", "c2", "a", "k", 0, 2, 300))
		}, "delivered again to c2"},
		{"effectively-once stale ack accepted", "effectively-once", func(ev []Event) []Event {
			return append(ev, deliver("eo", "c2", "a", "k", 0, 2, 150), confirm("eo", "c1", 0, 1, 200, 201))
		}, "stale attempt 1"},
		{"pipeline output twice", "pipeline", func(ev []Event) []Event {
			return append(ev, read("out", "oa2", "a", 2))
		}, "wrote 2 outputs for input a"},
		{"pipeline output missing", "pipeline", func(ev []Event) []Event {
			return drop(ev, func(e Event) bool { return e.Topic == "out" && e.Input == "b" })
		}, "wrote no output for input b"},
		{"key order", "key-order", func(ev []Event) []Event {
			ev = drop(ev, func(e Event) bool { return e.Sub == "ks" })
			return append(ev, deliver("ks", "c1", "b", "k", 1, 1, 100), deliver("ks", "c1", "a", "k", 0, 1, 110))
		}, "before the earlier a"},
		{"key held by two consumers", "key-order", func(ev []Event) []Event {
			ev = drop(ev, func(e Event) bool { return e.Sub == "ks" })
			return append(ev, deliver("ks", "c1", "a", "k", 0, 1, 100), deliver("ks", "c2", "b", "k", 1, 1, 110),
				confirm("ks", "c1", 0, 1, 120, 121), confirm("ks", "c2", 1, 1, 130, 131))
		}, `key "k" went to c2`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			res := Check(testSetup(), tc.change(cleanHistory()))
			var found bool
			for _, v := range res.Violations {
				if v.Check == tc.check && strings.Contains(v.Message, tc.want) && len(v.Evidence) > 0 {
					found = true
				}
			}
			if !found {
				t.Fatalf("no %s violation with evidence saying %q; got %+v", tc.check, tc.want, res.Violations)
			}
		})
	}
}

// TestCheckUndrained: loss is not judged when the run could not drain,
// but the run fails for it.
func TestCheckUndrained(t *testing.T) {
	s := testSetup()
	s.Drained, s.Undrained = false, "alo: backlog 2, in flight 0, consumers 1"
	ev := drop(cleanHistory(), func(e Event) bool { return e.Kind == Deliver && e.Sub == "alo" })
	res := Check(s, ev)
	if len(res.Violations) != 1 || res.Violations[0].Check != "drained" || !strings.Contains(res.Violations[0].Message, "alo: backlog 2") {
		t.Fatalf("violations: %+v, want one of drained", res.Violations)
	}
}

func drop(ev []Event, bad func(Event) bool) []Event {
	var out []Event
	for _, e := range ev {
		if !bad(e) {
			out = append(out, e)
		}
	}
	return out
}

// TestPrintText: a violation is printed with its evidence, and a failed
// check is marked.
func TestPrintText(t *testing.T) {
	ev := append(cleanHistory(), deliver("amo", "c2", "a", "k", 0, 1, 200))
	var b strings.Builder
	if err := PrintText(&b, Check(testSetup(), ev)); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"FAIL at-most-once", "VIOLATION at-most-once: amo (at-most-once) delivered a (in/0@0) 2 times",
		"deliver sub=amo consumer=c2 id=a key=k at=in/0@0 attempt=1", "ok   stored"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, b.String())
		}
	}
}

// TestCheckCountsDisruptions: the result counts disruptions by fault (a
// pause's SIGCONT is no disruption of its own) and those that failed, and
// the text summary names them.
func TestCheckCountsDisruptions(t *testing.T) {
	ev := append(cleanHistory(),
		Event{Kind: Disruption, Fault: Kill, Detail: "SIGKILL pid 41 (n1.pid)", Time: at(200)},
		Event{Kind: Disruption, Fault: Pause, Detail: "SIGSTOP pid 42 (n2.pid)", Time: at(300)},
		Event{Kind: Disruption, Detail: "SIGCONT pid 42 (n2.pid)", Time: at(3300)},
		Event{Kind: Disruption, Detail: "failed", Err: "verify: none of the 3 processes to disrupt is running", Time: at(4000)},
		Event{Kind: Disruption, Fault: Pause, Detail: "SIGSTOP pid 43 (n3.pid)", Time: at(5000)},
		Event{Kind: Disruption, Detail: "SIGCONT pid 43 (n3.pid)", Time: at(8000)})
	res := Check(testSetup(), ev)
	want := map[Fault]int{Kill: 1, Pause: 2, FailedDisruption: 1}
	if !maps.Equal(res.Disruptions, want) {
		t.Fatalf("disruptions %v, want %v", res.Disruptions, want)
	}
	var b strings.Builder
	if err := PrintText(&b, res); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), "disruptions: 1 failed, 1 kill, 2 pause;") {
		t.Fatalf("summary lacks the disruptions:\n%s", b.String())
	}
}
