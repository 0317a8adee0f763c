package verify

import (
	"fmt"
	"html/template"
	"io"
	"os"
	"slices"
	"time"
)

// WriteReport writes a self-contained HTML report of a run to path: a
// timeline (publishes and each subscription's deliveries per slice of
// time, disruptions, violations), the checks, and each violation with its
// evidence.
func WriteReport(path string, r Result, events []Event) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := RenderReport(f, r, events); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// maxReported is how many violations the report shows; -o json has all.
const maxReported = 200

// Timeline geometry, in SVG units.
const (
	tlLeft   = 240
	tlWidth  = 900
	tlLane   = 28
	tlBucket = 60 // buckets across the width
)

// lane is one row of the timeline.
type lane struct {
	Label string
	Y     int
	Bars  []bar
	Ticks []tick
}

type bar struct {
	X, W, H, Y int
	Title      string
}

type tick struct {
	X     int
	Title string
}

type reportData struct {
	Result Result
	Shown  []Violation // the first maxReported violations
	Lanes  []lane
	Height int
	Width  int
	Start  string
	Span   string
	Left   int
}

// RenderReport writes the report's HTML to w.
func RenderReport(w io.Writer, r Result, events []Event) error {
	d := reportData{Result: r, Width: tlLeft + tlWidth + 10, Left: tlLeft, Shown: r.Violations[:min(len(r.Violations), maxReported)]}
	if len(events) > 0 {
		start, end := events[0].Time, events[len(events)-1].Time
		d.Start, d.Span = start.UTC().Format(time.RFC3339Nano), end.Sub(start).Round(time.Millisecond).String()
		d.Lanes = lanes(r, events, start, end)
	}
	d.Height = tlLane*len(d.Lanes) + 20
	return reportTemplate.Execute(w, d)
}

// lanes lays the events out: publishes, deliveries per subscription,
// disruptions and violations.
func lanes(r Result, events []Event, start, end time.Time) []lane {
	span := max(end.Sub(start), time.Millisecond)
	x := func(t time.Time) int { return tlLeft + int(float64(tlWidth)*float64(t.Sub(start))/float64(span)) }
	counts := func(keep func(Event) bool) lane {
		var n [tlBucket]int
		for _, e := range events {
			if keep(e) {
				n[min(tlBucket-1, (x(e.Time)-tlLeft)*tlBucket/tlWidth)]++
			}
		}
		return histogram(n[:], span)
	}
	ls := []lane{counts(func(e Event) bool { return e.Kind == Publish })}
	ls[0].Label = "publishes"
	for _, sub := range sortedKeys(r.Setup.Subs) {
		l := counts(func(e Event) bool { return e.Kind == Deliver && e.Sub == sub })
		l.Label = fmt.Sprintf("%s (%s, %s)", trimPrefix(sub, r.Setup.Topic), r.Setup.Subs[sub].Guarantee, r.Setup.Subs[sub].Type)
		ls = append(ls, l)
	}
	dis := lane{Label: "disruptions"}
	for _, e := range events {
		if e.Kind == Disruption {
			dis.Ticks = append(dis.Ticks, tick{x(e.Time), e.String()})
		}
	}
	vio := lane{Label: "violations"}
	for _, v := range r.Violations[:min(len(r.Violations), maxReported)] {
		for _, e := range v.Evidence {
			if !e.Time.IsZero() {
				vio.Ticks = append(vio.Ticks, tick{x(e.Time), v.Check + ": " + v.Message})
			}
		}
	}
	ls = append(ls, dis, vio)
	for i := range ls {
		ls[i].Y = 10 + i*tlLane
		for j := range ls[i].Bars {
			ls[i].Bars[j].Y = ls[i].Y + tlLane - 4 - ls[i].Bars[j].H
		}
	}
	return ls
}

// histogram draws counts per bucket as bars scaled to the lane.
func histogram(n []int, span time.Duration) lane {
	top := max(1, slices.Max(n))
	w := tlWidth / len(n)
	var l lane
	for i, c := range n {
		if c == 0 {
			continue
		}
		h := max(1, c*(tlLane-8)/top)
		l.Bars = append(l.Bars, bar{X: tlLeft + i*w, W: w - 1, H: h,
			Title: fmt.Sprintf("%d in %v from +%v", c, span/time.Duration(len(n)), (span * time.Duration(i) / time.Duration(len(n))).Round(time.Millisecond))})
	}
	return l
}

// trimPrefix shortens a subscription's name by the run's prefix.
func trimPrefix(sub, topic string) string {
	prefix := topic[:max(0, len(topic)-len("in"))]
	if len(sub) > len(prefix) && sub[:len(prefix)] == prefix {
		return sub[len(prefix):]
	}
	return sub
}

var reportTemplate = template.Must(template.New("report").Parse(`<!doctype html>
<html><head><meta charset="utf-8"><title>ferry verify</title>
<style>
body{font:14px system-ui,sans-serif;margin:24px;color:#222}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}
.fail{color:#b00;font-weight:bold}.ok{color:#070}
pre{background:#f6f6f6;padding:6px;overflow-x:auto;font-size:12px}
</style></head><body>
<h1>ferry verify: {{if .Result.OK}}<span class="ok">no violations</span>{{else}}<span class="fail">{{len .Result.Violations}} violations</span>{{end}}</h1>
<p>Topic {{.Result.Setup.Topic}}, output topic {{.Result.Setup.OutputTopic}}; started {{.Start}}, lasted {{.Span}};
{{if .Result.Setup.Drained}}consumers drained{{else}}consumers did not drain: loss not judged ({{.Result.Setup.Undrained}}){{end}}.</p>
<h2>Timeline</h2>
<svg width="{{.Width}}" height="{{.Height}}" xmlns="http://www.w3.org/2000/svg" font-size="11">
{{range .Lanes}}<text x="4" y="{{.Y}}" dy="18">{{.Label}}</text>
<line x1="{{$.Left}}" x2="{{$.Width}}" y1="{{.Y}}" y2="{{.Y}}" stroke="#eee"/>
{{range .Bars}}<rect x="{{.X}}" y="{{.Y}}" width="{{.W}}" height="{{.H}}" fill="#4a7"><title>{{.Title}}</title></rect>
{{end}}{{$y := .Y}}{{range .Ticks}}<line x1="{{.X}}" x2="{{.X}}" y1="{{$y}}" y2="{{$y}}" stroke="#c00" stroke-width="3" transform="translate(0,2)"><title>{{.Title}}</title></line>
<rect x="{{.X}}" y="{{$y}}" width="3" height="24" fill="#c00"><title>{{.Title}}</title></rect>
{{end}}{{end}}</svg>
<h2>Checks</h2>
<table><tr><th>check</th><th>promise</th><th>checked</th><th>violations</th></tr>
{{range .Result.Checks}}<tr><td>{{.Name}}</td><td>{{.Promise}}</td><td>{{.Checked}}</td><td {{if .Violations}}class="fail"{{end}}>{{.Violations}}</td></tr>
{{end}}</table>
<h2>Counts</h2>
<table>{{range $k, $v := .Result.Counts}}<tr><td>{{$k}}</td><td>{{$v}}</td></tr>{{end}}</table>
{{if .Result.Violations}}<h2>Violations</h2>
{{if gt (len .Result.Violations) (len .Shown)}}<p>The first {{len .Shown}} are shown; <code>-o json</code> lists them all.</p>{{end}}
{{range .Shown}}<p class="fail">{{.Check}}: {{.Message}}</p><pre>{{range .Evidence}}{{.}}
{{end}}</pre>{{end}}{{end}}
</body></html>
`))
