package main

import (
	"fmt"
	"io"
	"os"

	"github.com/HdrHistogram/hdrhistogram-go"
	"github.com/go-echarts/go-echarts/v2/charts"
	"github.com/go-echarts/go-echarts/v2/components"
	"github.com/go-echarts/go-echarts/v2/opts"
)

// benchPoint is one second of a run: rates and latency percentiles of
// what completed in it.
type benchPoint struct {
	Second        float64 `json:"second"`
	PublishPerSec float64 `json:"publish_per_sec"`
	ConsumePerSec float64 `json:"consume_per_sec,omitempty"`
	PublishP50Ms  float64 `json:"publish_p50_ms"`
	PublishP99Ms  float64 `json:"publish_p99_ms"`
	EndToEndP50Ms float64 `json:"end_to_end_p50_ms,omitempty"`
	EndToEndP99Ms float64 `json:"end_to_end_p99_ms,omitempty"`
}

// reportQuantiles are the percentiles the report's distribution chart
// shows.
var reportQuantiles = []float64{50, 75, 90, 95, 99, 99.9, 99.99, 100}

// writeReport writes an HTML report of a run to path: throughput and
// latency over time, and latency by percentile.
func writeReport(path string, res *benchResult, pub, e2e *hdrhistogram.Histogram) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := renderReport(f, res, pub, e2e); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func renderReport(w io.Writer, res *benchResult, pub, e2e *hdrhistogram.Histogram) error {
	title := fmt.Sprintf("ferry bench: %d B, %d producer(s), %d consumer(s), %d partition(s)",
		res.MessageSize, res.Producers, res.Consumers, res.Partitions)
	xs := make([]string, len(res.Series))
	for i, p := range res.Series {
		xs[i] = fmt.Sprintf("%.0f", p.Second)
	}
	line := func(name string, get func(benchPoint) float64) []opts.LineData {
		d := make([]opts.LineData, len(res.Series))
		for i, p := range res.Series {
			d[i] = opts.LineData{Value: get(p), Name: name}
		}
		return d
	}
	newLine := func(t, unit string) *charts.Line {
		l := charts.NewLine()
		l.SetGlobalOptions(
			charts.WithTitleOpts(opts.Title{Title: t}),
			charts.WithTooltipOpts(opts.Tooltip{Show: opts.Bool(true), Trigger: "axis"}),
			charts.WithLegendOpts(opts.Legend{Show: opts.Bool(true), Top: "bottom"}),
			charts.WithXAxisOpts(opts.XAxis{Name: "s"}),
			charts.WithYAxisOpts(opts.YAxis{Name: unit}),
		)
		return l
	}
	rates := newLine(title+" — throughput", "msgs/s").SetXAxis(xs).
		AddSeries("publish", line("publish", func(p benchPoint) float64 { return p.PublishPerSec }))
	lat := newLine("latency over time", "ms").SetXAxis(xs).
		AddSeries("publish p50", line("publish p50", func(p benchPoint) float64 { return p.PublishP50Ms })).
		AddSeries("publish p99", line("publish p99", func(p benchPoint) float64 { return p.PublishP99Ms }))
	if res.Consumers > 0 {
		rates.AddSeries("consume", line("consume", func(p benchPoint) float64 { return p.ConsumePerSec }))
		lat.AddSeries("end-to-end p50", line("end-to-end p50", func(p benchPoint) float64 { return p.EndToEndP50Ms })).
			AddSeries("end-to-end p99", line("end-to-end p99", func(p benchPoint) float64 { return p.EndToEndP99Ms }))
	}
	qs := make([]string, len(reportQuantiles))
	for i, q := range reportQuantiles {
		qs[i] = fmt.Sprintf("p%g", q)
	}
	byQuantile := func(h *hdrhistogram.Histogram) []opts.LineData {
		d := make([]opts.LineData, len(reportQuantiles))
		for i, q := range reportQuantiles {
			d[i] = opts.LineData{Value: float64(h.ValueAtQuantile(q)) / 1000}
		}
		return d
	}
	dist := newLine("latency by percentile", "ms").SetXAxis(qs).AddSeries("publish", byQuantile(pub))
	if res.Consumers > 0 {
		dist.AddSeries("end-to-end", byQuantile(e2e))
	}
	page := components.NewPage()
	page.PageTitle = title
	page.AddCharts(rates, lat, dist)
	return page.Render(w)
}
