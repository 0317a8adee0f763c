package consumer

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestOptionsValidate(t *testing.T) {
	tests := []struct {
		name   string
		change func(*Options)
		words  string // "" means valid
	}{
		{"defaults", func(o *Options) {}, ""},
		{"dead letters", func(o *Options) { o.MaxDeliveries, o.DeadLetterTopic = 5, "orders.dlq" }, ""},
		{"no guarantee", func(o *Options) { o.Guarantee = 0 }, "guarantee is unspecified"},
		{"no type", func(o *Options) { o.Type = 0 }, "type is unspecified"},
		{"ack timeout too short", func(o *Options) { o.AckTimeout = 500 * time.Millisecond }, "ack timeout"},
		{"ack timeout too long", func(o *Options) { o.AckTimeout = 13 * time.Hour }, "ack timeout"},
		{"backoff min zero", func(o *Options) { o.BackoffMin = 0 }, "backoff min"},
		{"backoff max below min", func(o *Options) { o.BackoffMax = 500 * time.Millisecond }, "backoff max"},
		{"max deliveries without topic", func(o *Options) { o.MaxDeliveries = 3 }, "needs a dead-letter topic"},
		{"topic without max deliveries", func(o *Options) { o.DeadLetterTopic = "dlq" }, "needs max deliveries"},
		{"none cannot dead-letter", func(o *Options) {
			o.Guarantee, o.MaxDeliveries, o.DeadLetterTopic = None, 3, "dlq"
		}, "cannot dead-letter"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			o := DefaultOptions(AtLeastOnce)
			tc.change(&o)
			err := o.Validate()
			if tc.words == "" {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if !errors.Is(err, ErrInvalidOptions) || !strings.Contains(err.Error(), tc.words) {
				t.Fatalf("Validate = %v, want ErrInvalidOptions naming %q", err, tc.words)
			}
		})
	}
}

func TestBackoffDoublesUpToMax(t *testing.T) {
	o := DefaultOptions(AtLeastOnce) // 1s doubling, at most 60s
	want := []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 16 * time.Second, 32 * time.Second, 60 * time.Second, 60 * time.Second}
	for i, w := range want {
		if got := o.Backoff(uint32(i + 1)); got != w {
			t.Errorf("Backoff(%d) = %v, want %v", i+1, got, w)
		}
	}
	if got := o.Backoff(1 << 31); got != 60*time.Second {
		t.Errorf("Backoff(2^31) = %v, want the cap", got)
	}
	o.BackoffMin, o.BackoffMax = 3*time.Second, 5*time.Second
	if got := o.Backoff(2); got != 5*time.Second {
		t.Errorf("Backoff(2) with 3s..5s = %v, want 5s", got)
	}
}

func TestParseNames(t *testing.T) {
	for g := None; g <= EffectivelyOnce; g++ {
		back, err := ParseGuarantee(g.String())
		if err != nil || back != g {
			t.Errorf("ParseGuarantee(%q) = %v, %v", g.String(), back, err)
		}
	}
	for ty := Shared; ty <= Failover; ty++ {
		back, err := ParseType(ty.String())
		if err != nil || back != ty {
			t.Errorf("ParseType(%q) = %v, %v", ty.String(), back, err)
		}
	}
	for _, bad := range []string{"", "exactly-once", "AT_LEAST_ONCE"} {
		if _, err := ParseGuarantee(bad); !errors.Is(err, ErrInvalidOptions) {
			t.Errorf("ParseGuarantee(%q): %v", bad, err)
		}
	}
	if _, err := ParseType("round-robin"); !errors.Is(err, ErrInvalidOptions) {
		t.Errorf("ParseType(round-robin): %v", err)
	}
}

func TestParseStartPosition(t *testing.T) {
	good := map[string]StartPosition{
		"latest":                         {Kind: StartLatest},
		"earliest":                       {Kind: StartEarliest},
		"offset:0":                       {Kind: StartOffset},
		"offset:18446744073709551615":    {Kind: StartOffset, Offset: 1<<64 - 1},
		"time:2026-11-24T18:00:00Z":      {Kind: StartTime, Time: time.Date(2026, 11, 24, 18, 0, 0, 0, time.UTC)},
		"time:2026-11-24T19:00:00+01:00": {Kind: StartTime, Time: time.Date(2026, 11, 24, 18, 0, 0, 0, time.UTC)},
	}
	for s, want := range good {
		got, err := ParseStartPosition(s)
		if err != nil || got != want {
			t.Errorf("ParseStartPosition(%q) = %+v, %v; want %+v", s, got, err, want)
		}
	}
	for _, bad := range []string{"", "head", "offset:", "offset:-1", "offset:1e3", "time:yesterday", "time:2026-11-24"} {
		if _, err := ParseStartPosition(bad); !errors.Is(err, ErrInvalidOptions) {
			t.Errorf("ParseStartPosition(%q): %v, want ErrInvalidOptions", bad, err)
		}
	}
}

func FuzzParseStartPosition(f *testing.F) {
	for _, s := range []string{"latest", "earliest", "offset:42", "time:2026-11-24T18:00:00.5Z", "offset:x", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := ParseStartPosition(s)
		if err != nil {
			if !errors.Is(err, ErrInvalidOptions) {
				t.Fatalf("ParseStartPosition(%q): %v, want ErrInvalidOptions", s, err)
			}
			return
		}
		// What parses prints in a form that parses back to the same place.
		back, err := ParseStartPosition(p.String())
		if err != nil || back.Kind != p.Kind || back.Offset != p.Offset || !back.Time.Equal(p.Time) {
			t.Fatalf("%q parses to %+v, printed %q, which parses to %+v, %v", s, p, p.String(), back, err)
		}
	})
}
