package console

import (
	"context"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

// BenchmarkSample is the sampler's cost per tick, paid once a second whether or not
// anybody looks: one gather of the service's own registry (every series, histograms
// included, with values in them) and the arithmetic over it.
func BenchmarkSample(b *testing.B) {
	_, tb := setup(b, Config{})
	busy(tb)
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		tb.clock.add(time.Second)
		tb.console.sample(ctx)
	}
}

// BenchmarkSeries is what a page costs the service once a second: its poll for the
// newest sample, and (once, when it opens) the whole ring.
func BenchmarkSeries(b *testing.B) {
	_, tb := setup(b, Config{})
	busy(tb)
	for range int(HistoryDefault / IntervalDefault) {
		tb.tick(time.Second)
	}
	for _, bm := range []struct {
		name, query string
	}{
		{"newest", "?after=" + itoa(tb.clock.millis(-time.Second))},
		{"whole_ring", ""},
	} {
		b.Run(bm.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				w := httptest.NewRecorder()
				tb.console.Series(w, httptest.NewRequest(http.MethodGet, "/console/series"+bm.query, nil))
			}
		})
	}
}

// busy puts values in every series, as a service under load has them.
func busy(tb *testBundle) {
	m, rng := tb.metrics, rand.New(rand.NewPCG(1, 2))
	m.CallbacksAccepted.Add(1e6)
	m.MergedIDs.Add(1e8)
	for _, o := range []string{"online", "offline", "failed", "rejected"} {
		m.Lookups.WithLabelValues(o).Add(1e6)
	}
	m.LookupsInFlight.Set(3000)
	m.LookupLimit.Set(3500)
	for range 10000 {
		m.ReplySeconds.Observe(rng.ExpFloat64() * 0.003)
		m.LookupSeconds.Observe(0.3 + rng.Float64()*4)
		m.CommitSeconds.WithLabelValues("inbox").Observe(rng.ExpFloat64() * 0.002)
		m.CommitBatchSize.Observe(float64(rng.IntN(64)))
		m.MergeSeconds.Observe(rng.ExpFloat64() * 0.05)
	}
}
