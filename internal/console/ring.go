package console

import (
	"math"
	"strconv"
	"sync"
	"time"
)

// ring holds the latest samples, a fixed number of them, in one allocation made at
// the start. The sampler puts, the series handler reads: its mutex is shared by those
// two and nothing else (the request path of POST /callback never sees it).
type ring struct {
	mu     sync.Mutex
	width  int       // values per sample
	at     []int64   // each slot's time, unix milliseconds
	values []float64 // slot i's values are values[i*width : (i+1)*width]
	next   int       // the slot the next sample goes to
	n      int       // slots filled
}

func newRing(slots, width int) *ring {
	return &ring{width: width, at: make([]int64, slots), values: make([]float64, slots*width)}
}

// put copies vals (width of them) as the sample taken at t, over the oldest one.
func (r *ring) put(t time.Time, vals []float64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.at[r.next] = t.UnixMilli()
	copy(r.values[r.next*r.width:(r.next+1)*r.width], vals)
	r.next = (r.next + 1) % len(r.at)
	r.n = min(r.n+1, len(r.at))
}

// appendJSON appends the samples taken after the unix millisecond after, oldest
// first, as a JSON array of arrays: [[t, v0, v1, ...], ...], null for NaN.
func (r *ring) appendJSON(b []byte, after int64) []byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	b = append(b, '[')
	first := true
	for k := range r.n {
		i := (r.next - r.n + k + len(r.at)) % len(r.at)
		if r.at[i] <= after {
			continue
		}
		if !first {
			b = append(b, ',')
		}
		first = false
		b = append(b, '[')
		b = strconv.AppendInt(b, r.at[i], 10)
		for _, v := range r.values[i*r.width : (i+1)*r.width] {
			b = append(b, ',')
			b = appendNumber(b, v)
		}
		b = append(b, ']')
	}
	return append(b, ']')
}

// appendNumber writes v as JSON: whole numbers exactly (totals are read as counts),
// others to 6 significant digits (enough for a chart), NaN and infinities as null.
func appendNumber(b []byte, v float64) []byte {
	switch {
	case math.IsNaN(v) || math.IsInf(v, 0):
		return append(b, "null"...)
	case v == math.Trunc(v) && math.Abs(v) < 1<<53:
		return strconv.AppendInt(b, int64(v), 10)
	}
	return strconv.AppendFloat(b, v, 'g', 6, 64)
}
