package console

import (
	"math"
	"time"

	dto "github.com/prometheus/client_model/go"
)

// sampler turns successive gathers of a registry into samples: one number per series,
// computed as Prometheus would over the interval between two gathers (a rate from the
// counter's increase, a quantile from the histogram's bucket increases). It keeps the
// previous gather's raw values, and is used by one goroutine at a time.
type sampler struct {
	gather   func() ([]*dto.MetricFamily, error)
	series   []series
	byMetric map[string][]int // family name -> indexes into series
	prev     []raw
	cur      []raw
	prevAt   time.Time
}

// raw is what one gather read for one series: the sum over its matching children.
type raw struct {
	seen    bool
	value   float64   // a counter's or a gauge's value
	count   float64   // a histogram's observations
	bounds  []float64 // a histogram's bucket upper bounds (without +Inf)
	buckets []float64 // its cumulative counts, one per bound
}

func newSampler(gather func() ([]*dto.MetricFamily, error), ss []series) *sampler {
	s := &sampler{gather: gather, series: ss, byMetric: map[string][]int{},
		prev: make([]raw, len(ss)), cur: make([]raw, len(ss))}
	for i, sr := range ss {
		s.byMetric[sr.Metric] = append(s.byMetric[sr.Metric], i)
	}
	return s
}

// sample gathers once and writes one value per series into out: NaN where there is
// none yet (a rate or a quantile needs a previous gather; a quantile needs
// observations within the interval). A gather error still leaves what was gathered.
func (s *sampler) sample(now time.Time, out []float64) error {
	families, err := s.gather()
	for i := range s.cur {
		s.cur[i].reset()
	}
	for _, f := range families {
		for _, i := range s.byMetric[f.GetName()] {
			for _, m := range f.GetMetric() {
				if matches(m.GetLabel(), s.series[i].Labels) {
					s.cur[i].add(m)
				}
			}
		}
	}
	dt := now.Sub(s.prevAt).Seconds()
	for i, sr := range s.series {
		cur, prev := &s.cur[i], &s.prev[i]
		out[i] = math.NaN()
		switch {
		case !cur.seen:
		case sr.Kind == value:
			out[i] = cur.value
		case !prev.seen || dt <= 0:
		case sr.Kind == rate:
			if d := cur.value - prev.value; d >= 0 { // a reset would be a new registry: never here
				out[i] = d / dt
			}
		case sr.Kind == quantile:
			out[i] = bucketQuantile(sr.Q, cur, prev)
		}
	}
	s.prev, s.cur = s.cur, s.prev
	s.prevAt = now
	return err
}

func (r *raw) reset() {
	r.seen, r.value, r.count = false, 0, 0
	clear(r.buckets)
}

// add sums one child of a family into r.
func (r *raw) add(m *dto.Metric) {
	r.seen = true
	switch {
	case m.Counter != nil:
		r.value += m.Counter.GetValue()
	case m.Gauge != nil:
		r.value += m.Gauge.GetValue()
	case m.Histogram != nil:
		h := m.Histogram
		r.count += float64(h.GetSampleCount())
		if len(r.bounds) != len(h.Bucket) {
			r.bounds, r.buckets = make([]float64, len(h.Bucket)), make([]float64, len(h.Bucket))
		}
		for j, b := range h.Bucket {
			r.bounds[j] = b.GetUpperBound()
			r.buckets[j] += float64(b.GetCumulativeCount())
		}
	}
}

// matches: every wanted label has the wanted value.
func matches(labels []*dto.LabelPair, want map[string]string) bool {
	found := 0
	for _, l := range labels {
		if v, ok := want[l.GetName()]; ok {
			if v != l.GetValue() {
				return false
			}
			found++
		}
	}
	return found == len(want)
}

// bucketQuantile is Prometheus's histogram_quantile over what was observed between
// prev and cur: linear interpolation within the bucket that holds the rank, the first
// bucket starting at 0, and the highest finite bound for a rank in +Inf. NaN when
// nothing was observed.
func bucketQuantile(q float64, cur, prev *raw) float64 {
	total := cur.count - prev.count
	if total <= 0 || len(cur.bounds) == 0 || len(cur.buckets) != len(prev.buckets) {
		return math.NaN()
	}
	rank := q * total
	var lower, below float64 // the previous bucket's bound, and its cumulative count
	for j, upper := range cur.bounds {
		n := cur.buckets[j] - prev.buckets[j]
		if n >= rank && n > below {
			return lower + (upper-lower)*(rank-below)/(n-below)
		}
		lower, below = upper, n
	}
	return lower
}
