package childproc

import (
	"context"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"strings"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Metrics is a process's /metrics page: each series and its value. A series is
// written the way the text format writes it: `name`, or `name{label="value",...}`
// with the labels in the page's order, values escaped (\\, \", \n), and a histogram's
// le or a summary's quantile last. A histogram is its name_bucket, name_sum and
// name_count series, a summary its name{quantile=...}, name_sum and name_count ones,
// as on the page. A sample's timestamp, if it has one, is dropped.
type Metrics map[string]float64

// ReadMetrics reads the page at url (a process's /metrics) in the Prometheus text
// format, with Prometheus's own parser: timestamps, escapes and blanks are its
// business, and a malformed page is an error.
func ReadMetrics(ctx context.Context, url string) (Metrics, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", string(expfmt.FmtText))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s: %s", url, resp.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	families, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", url, err)
	}
	out := Metrics{}
	for _, f := range families {
		out.add(f)
	}
	return out, nil
}

// add puts the series of family f in m.
func (m Metrics) add(f *dto.MetricFamily) {
	name := f.GetName()
	for _, s := range f.GetMetric() {
		labels := s.GetLabel()
		switch {
		case s.Counter != nil:
			m[series(name, labels, "", 0)] = s.GetCounter().GetValue()
		case s.Gauge != nil:
			m[series(name, labels, "", 0)] = s.GetGauge().GetValue()
		case s.Untyped != nil:
			m[series(name, labels, "", 0)] = s.GetUntyped().GetValue()
		case s.Summary != nil:
			sum := s.GetSummary()
			for _, q := range sum.GetQuantile() {
				m[series(name, labels, model.QuantileLabel, q.GetQuantile())] = q.GetValue()
			}
			m[series(name+"_sum", labels, "", 0)] = sum.GetSampleSum()
			m[series(name+"_count", labels, "", 0)] = float64(sum.GetSampleCount())
		case s.Histogram != nil:
			h := s.GetHistogram()
			count := h.GetSampleCountFloat()
			if count == 0 {
				count = float64(h.GetSampleCount())
			}
			for _, b := range h.GetBucket() {
				n := b.GetCumulativeCountFloat()
				if n == 0 {
					n = float64(b.GetCumulativeCount())
				}
				m[series(name+"_bucket", labels, model.BucketLabel, b.GetUpperBound())] = n
			}
			m[series(name+"_sum", labels, "", 0)] = h.GetSampleSum()
			m[series(name+"_count", labels, "", 0)] = count
		}
	}
}

var labelValueEscaper = strings.NewReplacer(`\`, `\\`, "\n", `\n`, `"`, `\"`)

// series writes a series' name and labels as the text format does, with extra (le or
// quantile) last when it is not "".
func series(name string, labels []*dto.LabelPair, extra string, extraValue float64) string {
	if len(labels) == 0 && extra == "" {
		return name
	}
	var b strings.Builder
	b.WriteString(name)
	sep := byte('{')
	for _, l := range labels {
		b.WriteByte(sep)
		sep = ','
		b.WriteString(l.GetName())
		b.WriteString(`="`)
		labelValueEscaper.WriteString(&b, l.GetValue())
		b.WriteByte('"')
	}
	if extra != "" {
		b.WriteByte(sep)
		b.WriteString(extra)
		b.WriteString(`="`)
		b.WriteString(formatFloat(extraValue))
		b.WriteByte('"')
	}
	b.WriteByte('}')
	return b.String()
}

// formatFloat writes a bound as the text format does: +Inf, 0.005, 1e+06.
func formatFloat(f float64) string {
	if math.IsInf(f, 1) {
		return "+Inf"
	}
	return strconv.FormatFloat(f, 'g', -1, 64)
}

// Sum adds up every series of metric name that has all of labels, each written as on
// the page, e.g. `outcome="failed"`: a label matches a whole label of the series, not
// a part of one (`outcome="failed"` is not in `prev_outcome="failed"`).
func (m Metrics) Sum(name string, labels ...string) float64 {
	sum := 0.0
	for s, v := range m {
		seriesName, rest, _ := strings.Cut(s, "{")
		if seriesName != name {
			continue
		}
		// Between the commas of ","+rest+",", every label of the series stands whole:
		// a label value cannot hold a bare quote, so `,l="v",` matches only a label.
		pairs := "," + strings.TrimSuffix(rest, "}") + ","
		match := true
		for _, l := range labels {
			match = match && strings.Contains(pairs, ","+l+",")
		}
		if match {
			sum += v
		}
	}
	return sum
}
