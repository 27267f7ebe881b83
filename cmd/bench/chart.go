package main

import (
	"fmt"
	"html"
	"math"
	"os"
	"path/filepath"
	"strings"
)

// series is one panel of a chart: a value of each point (NaN: none). A ratio is drawn
// from 0 to at least 1, so that a share of 0.9 looks like one.
type series struct {
	name, unit string
	value      func(point) float64
}

// mark is a vertical line across every panel, at seconds since the watch started.
type mark struct {
	at    float64
	label string
}

// svgChart draws each series in its own panel, one above the other, over a shared time
// axis: the quantities have different units and scales, and stacked panels keep each
// readable without a legend. Plain SVG, no dependencies.
func svgChart(title string, ps []point, ss []series, marks []mark) string {
	const (
		width, left, right = 960.0, 90.0, 20.0
		top0, panelH, gap  = 40.0, 90.0, 28.0
	)
	plotW := width - left - right
	titleLines := wrap(title, 95)
	top := top0 + 18*float64(len(titleLines)-1)
	height := top + float64(len(ss))*(panelH+gap) + 30
	tMax := 1.0
	for _, p := range ps {
		tMax = math.Max(tMax, p.at)
	}
	x := func(t float64) float64 { return left + plotW*t/tMax }

	var s strings.Builder
	fmt.Fprintf(&s, `<svg xmlns="http://www.w3.org/2000/svg" width="%.0f" height="%.0f" viewBox="0 0 %.0f %.0f" font-family="sans-serif" font-size="12">`+"\n",
		width, height, width, height)
	fmt.Fprintf(&s, `<rect width="100%%" height="100%%" fill="white"/>`+"\n")
	for i, l := range titleLines {
		fmt.Fprintf(&s, `<text x="%.0f" y="%.0f" font-size="15" font-weight="bold">%s</text>`+"\n", left, 22+18*float64(i), html.EscapeString(l))
	}
	for i, se := range ss {
		y0 := top + float64(i)*(panelH+gap) + 14
		vMax := 0.0
		for _, p := range ps {
			if v := se.value(p); !math.IsNaN(v) {
				vMax = math.Max(vMax, v)
			}
		}
		if se.unit == "ratio" {
			vMax = math.Max(vMax, 1)
		}
		scale := vMax
		if scale == 0 {
			scale = 1
		}
		y := func(v float64) float64 { return y0 + panelH - panelH*v/scale }
		fmt.Fprintf(&s, `<text x="%.0f" y="%.0f" font-weight="bold">%s</text>`+"\n", left, y0-4, html.EscapeString(se.name+" ("+se.unit+")"))
		fmt.Fprintf(&s, `<rect x="%.0f" y="%.0f" width="%.0f" height="%.0f" fill="none" stroke="#ccc"/>`+"\n", left, y0, plotW, panelH)
		fmt.Fprintf(&s, `<text x="%.0f" y="%.0f" text-anchor="end">%s</text>`+"\n", left-6, y0+10, format(vMax, se.unit))
		fmt.Fprintf(&s, `<text x="%.0f" y="%.0f" text-anchor="end">0</text>`+"\n", left-6, y0+panelH)
		var pts []string
		for _, p := range ps {
			v := se.value(p)
			if math.IsNaN(v) {
				continue
			}
			pts = append(pts, fmt.Sprintf("%.1f,%.1f", x(p.at), y(v)))
		}
		if len(pts) > 0 {
			fmt.Fprintf(&s, `<polyline fill="none" stroke="#1f77b4" stroke-width="1.5" points="%s"/>`+"\n", strings.Join(pts, " "))
		}
		for j, m := range marks {
			fmt.Fprintf(&s, `<line x1="%.1f" y1="%.0f" x2="%.1f" y2="%.0f" stroke="#d62728" stroke-dasharray="4,3"/>`+"\n", x(m.at), y0, x(m.at), y0+panelH)
			if i == 0 {
				// Every other label a line lower: marks a second apart stay readable.
				fmt.Fprintf(&s, `<text x="%.1f" y="%.0f" fill="#d62728">%s</text>`+"\n", x(m.at)+3, y0+12+14*float64(j%2), html.EscapeString(m.label))
			}
		}
	}
	// The time axis, under the last panel.
	axisY := top + float64(len(ss))*(panelH+gap) - gap + 14 + 16
	step := niceStep(tMax / 10)
	for t := 0.0; t <= tMax+1e-9; t += step {
		fmt.Fprintf(&s, `<text x="%.1f" y="%.0f" text-anchor="middle">%s</text>`+"\n", x(t), axisY, trimFloat(t))
	}
	fmt.Fprintf(&s, `<text x="%.0f" y="%.0f" text-anchor="end">seconds</text>`+"\n", width-right, axisY+16)
	s.WriteString("</svg>\n")
	return s.String()
}

// perSecond turns a cumulative counter of the points into a rate per sample: the
// change since the previous point over the time between them (NaN for the first).
func perSecond(ps []point, get func(point) float64) func(point) float64 {
	rates := map[float64]float64{}
	for i, p := range ps {
		if i > 0 {
			rates[p.at] = (get(p) - get(ps[i-1])) / (p.at - ps[i-1].at)
		}
	}
	return func(p point) float64 {
		if v, ok := rates[p.at]; ok {
			return v
		}
		return math.NaN()
	}
}

// wrap breaks s into lines of at most n bytes at spaces (a longer word stays whole).
func wrap(s string, n int) []string {
	var lines []string
	line := ""
	for _, w := range strings.Fields(s) {
		if line != "" && len(line)+1+len(w) > n {
			lines = append(lines, line)
			line = ""
		}
		if line != "" {
			line += " "
		}
		line += w
	}
	return append(lines, line)
}

// niceStep rounds a raw tick step up to 1, 2 or 5 times a power of ten.
func niceStep(raw float64) float64 {
	if raw <= 0 {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(raw)))
	for _, m := range []float64{1, 2, 5, 10} {
		if m*p >= raw {
			return m * p
		}
	}
	return 10 * p
}

func trimFloat(v float64) string {
	return strings.TrimSuffix(strings.TrimRight(fmt.Sprintf("%.1f", v), "0"), ".")
}

// writeChart writes the chart beside the table and remembers it for the report.
func (b *bench) writeChart(name, caption string, svg string) {
	if b.outDir == "" {
		return
	}
	path := filepath.Join(b.outDir, name)
	if err := os.WriteFile(path, []byte(svg), 0o644); err != nil {
		b.progress("cannot write %s: %v", path, err)
		return
	}
	b.charts = append(b.charts, fmt.Sprintf("- %s: [%s](%s)\n\n  ![%s](%s)\n", caption, name, name, caption, name))
	b.progress("chart written to %s", path)
}

func (b *bench) chartBlock() string {
	if len(b.charts) == 0 {
		return ""
	}
	return "\nCharts (beside this file):\n\n" + strings.Join(b.charts, "\n")
}
