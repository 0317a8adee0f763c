package broker

import (
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ferrymq/ferry/internal/clock"
	"github.com/ferrymq/ferry/internal/echo"
)

// otherPrincipal is the principal label of the principals without their
// own.
const otherPrincipal = "_other"

// principalSeriesIdle is how long a labelled principal may stay idle
// before its label (and its series) may go to a new principal.
const principalSeriesIdle = 10 * time.Minute

// maxPrincipalLabel caps a principal label's length, in bytes.
const maxPrincipalLabel = 128

// principalSeries are the ferry_client_* metrics, labelled by principal
// for at most max principals at once: the first max principals seen get
// their own label; later ones are summed under "_other" until a labelled
// principal has been idle for principalSeriesIdle, when its series are
// deleted (a scrape sees them end) and its place goes to the next new
// principal. So there are at most max+1 principal values per metric,
// whatever the number of principals.
type principalSeries struct {
	max int
	clk clock.Clock

	labelsMu  sync.Mutex // guards labelled, lastSweep
	labelled  map[string]time.Time
	lastSweep time.Time

	calls, refusals, pubMsgs, pubBytes, delMsgs, delBytes *prometheus.CounterVec
}

func newPrincipalSeries(max int, clk clock.Clock, reg prometheus.Registerer) *principalSeries {
	if max == 0 {
		max = 100
	}
	vec := func(name, help string, labels ...string) *prometheus.CounterVec {
		v := prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, append([]string{"principal"}, labels...))
		reg.MustRegister(v)
		return v
	}
	return &principalSeries{max: max, clk: clk, labelled: make(map[string]time.Time),
		calls:    vec("ferry_client_calls_total", "Calls (unary and streams) on the public port by principal, counted when they end."),
		refusals: vec("ferry_client_refusals_total", "Calls refused by principal and reason: unauthenticated, permission_denied, resource_exhausted.", "reason"),
		pubMsgs:  vec("ferry_client_published_messages_total", "Messages in publish requests (answered unary ones, stream frames as received, a Commit's outputs) by principal."),
		pubBytes: vec("ferry_client_published_bytes_total", "Payload bytes of ferry_client_published_messages_total."),
		delMsgs:  vec("ferry_client_delivered_messages_total", "Messages delivered to Subscribe streams by principal."),
		delBytes: vec("ferry_client_delivered_bytes_total", "Payload bytes of ferry_client_delivered_messages_total."),
	}
}

// label is principal's label value: itself (valid UTF-8, cut to
// maxPrincipalLabel bytes), or "_other".
func (ps *principalSeries) label(principal string) string {
	principal = echo.Cut(strings.ToValidUTF8(principal, "?"), maxPrincipalLabel)
	now := ps.clk.Now()
	ps.labelsMu.Lock()
	defer ps.labelsMu.Unlock()
	if _, ok := ps.labelled[principal]; ok {
		ps.labelled[principal] = now
		return principal
	}
	if len(ps.labelled) >= ps.max && now.Sub(ps.lastSweep) >= principalSeriesIdle/10 {
		ps.sweep(now)
	}
	if len(ps.labelled) >= ps.max || principal == otherPrincipal {
		return otherPrincipal
	}
	ps.labelled[principal] = now
	return principal
}

// sweep deletes the series of the principals idle for
// principalSeriesIdle.
func (ps *principalSeries) sweep(now time.Time) {
	ps.lastSweep = now
	for p, last := range ps.labelled {
		if now.Sub(last) < principalSeriesIdle {
			continue
		}
		delete(ps.labelled, p)
		l := prometheus.Labels{"principal": p}
		for _, v := range []*prometheus.CounterVec{ps.calls, ps.refusals, ps.pubMsgs, ps.pubBytes, ps.delMsgs, ps.delBytes} {
			v.DeletePartialMatch(l)
		}
	}
}

// call counts a call that ended with err.
func (ps *principalSeries) call(principal string, err error) {
	l := ps.label(principal)
	ps.calls.WithLabelValues(l).Inc()
	if r := refusalReason(err); r != "" {
		ps.refusals.WithLabelValues(l, r).Inc()
	}
}

func (ps *principalSeries) published(principal string, n, b int) {
	l := ps.label(principal)
	ps.pubMsgs.WithLabelValues(l).Add(float64(n))
	ps.pubBytes.WithLabelValues(l).Add(float64(b))
}

func (ps *principalSeries) delivered(principal string, n, b int) {
	l := ps.label(principal)
	ps.delMsgs.WithLabelValues(l).Add(float64(n))
	ps.delBytes.WithLabelValues(l).Add(float64(b))
}
