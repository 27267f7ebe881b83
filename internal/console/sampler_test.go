package console

import (
	"context"
	"encoding/json"
	"math"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/objwatch/callback/internal/component"
	"github.com/objwatch/callback/internal/metrics"
	"github.com/objwatch/callback/internal/testhelper"
)

// clock is a time a test moves by hand.
type clock struct{ t time.Time }

func (c *clock) now() time.Time               { return c.t }
func (c *clock) add(d time.Duration)          { c.t = c.t.Add(d) }
func (c *clock) millis(d time.Duration) int64 { return c.t.Add(d).UnixMilli() }

// setup builds a console over fresh metrics and a clock the test moves; it samples
// only when the test calls tick.
func setup(t testing.TB, cfg Config) (*Console, *testBundle) {
	t.Helper()
	tb := &testBundle{metrics: metrics.New(), clock: &clock{t: time.Unix(1_800_000_000, 0)}}
	c, err := New(cfg, component.Deps{Log: testhelper.DiscardLogger(), Metrics: tb.metrics, Now: tb.clock.now})
	require.NoError(t, err)
	tb.console = c
	return c, tb
}

type testBundle struct {
	console *Console
	metrics *metrics.Metrics
	clock   *clock
}

// tick moves the clock by d and takes a sample.
func (tb *testBundle) tick(d time.Duration) {
	tb.clock.add(d)
	tb.console.sample(context.Background())
}

// reply is GET /console/series, decoded.
type reply struct {
	Interval float64 `json:"interval_seconds"`
	History  float64 `json:"history_seconds"`
	Series   []struct {
		Name, Metric, Source string
	} `json:"series"`
	Samples [][]*float64 `json:"samples"`
}

func (tb *testBundle) get(t testing.TB, query string) (int, reply, string) {
	t.Helper()
	w := httptest.NewRecorder()
	tb.console.Series(w, httptest.NewRequest(http.MethodGet, "/console/series"+query, nil))
	var r reply
	if w.Code == http.StatusOK {
		require.NoError(t, json.Unmarshal(w.Body.Bytes(), &r), w.Body.String())
	}
	return w.Code, r, w.Body.String()
}

// column is one series of the reply, by name; nil where the value is null.
func (r reply) column(t *testing.T, name string) []*float64 {
	t.Helper()
	for i, s := range r.Series {
		if s.Name == name {
			col := make([]*float64, len(r.Samples))
			for j, row := range r.Samples {
				col[j] = row[i+1]
			}
			return col
		}
	}
	t.Fatalf("no series %q", name)
	return nil
}

func latest(t *testing.T, r reply, name string) *float64 {
	t.Helper()
	col := r.column(t, name)
	require.NotEmpty(t, col)
	return col[len(col)-1]
}

func TestSampler(t *testing.T) {
	t.Parallel()

	t.Run("a_rate_is_the_counters_increase_per_second_over_the_interval", func(t *testing.T) {
		t.Parallel()
		_, tb := setup(t, Config{})
		tb.metrics.CallbacksAccepted.Add(7)
		tb.tick(0)
		tb.metrics.CallbacksAccepted.Add(10)
		tb.tick(2 * time.Second)

		_, r, _ := tb.get(t, "")
		require.Len(t, r.Samples, 2)
		require.Equal(t, []*float64{nil, ptr(5)}, r.column(t, "accepted_per_s"), "none before a previous sample; 10 in 2 s after")
		require.Equal(t, []*float64{ptr(7), ptr(17)}, r.column(t, "accepted_total"))
	})

	t.Run("gauges_are_read_as_they_are", func(t *testing.T) {
		t.Parallel()
		_, tb := setup(t, Config{})
		tb.metrics.LookupsInFlight.Set(42)
		tb.metrics.LookupLimit.Set(128)
		tb.metrics.DatabaseUp.Set(1)
		tb.metrics.SpoolBytes.Set(4096)
		tb.tick(0)
		_, r, _ := tb.get(t, "")
		require.Equal(t, ptr(42), latest(t, r, "lookups_in_flight"))
		require.Equal(t, ptr(128), latest(t, r, "lookup_limit"))
		require.Equal(t, ptr(1), latest(t, r, "database_up"))
		require.Equal(t, ptr(4096), latest(t, r, "spool_bytes"))
	})

	t.Run("labelled_series_take_their_label_and_unlabelled_ones_the_sum", func(t *testing.T) {
		t.Parallel()
		_, tb := setup(t, Config{})
		tb.tick(0)
		tb.metrics.Lookups.WithLabelValues("online").Add(30)
		tb.metrics.Lookups.WithLabelValues("rejected").Add(10)
		tb.metrics.Dropped.WithLabelValues("claim", "capacity").Add(4)
		tb.tick(time.Second)
		_, r, _ := tb.get(t, "")
		require.Equal(t, ptr(30), latest(t, r, "lookups_online_per_s"))
		require.Equal(t, ptr(10), latest(t, r, "lookups_rejected_per_s"))
		require.Equal(t, ptr(0), latest(t, r, "lookups_failed_per_s"))
		require.Equal(t, ptr(40), latest(t, r, "lookups_total"))
		require.Equal(t, ptr(4), latest(t, r, "dropped_claim_capacity_per_s"))
		require.Equal(t, ptr(0), latest(t, r, "dropped_claim_expired_per_s"))
		require.Equal(t, ptr(4), latest(t, r, "dropped_per_s"))
	})

	t.Run("latency_quantiles_come_from_the_observations_of_the_interval_alone", func(t *testing.T) {
		t.Parallel()
		_, tb := setup(t, Config{})
		for range 1000 {
			tb.metrics.ReplySeconds.Observe(3) // slow, before the interval: must not count
		}
		tb.tick(0)
		// Buckets are 0.25 ms doubling: (0.5 ms, 1 ms] holds 0.6 ms, (1 ms, 2 ms] holds 1.5 ms.
		for range 90 {
			tb.metrics.ReplySeconds.Observe(0.0006)
		}
		for range 10 {
			tb.metrics.ReplySeconds.Observe(0.0015)
		}
		tb.tick(time.Second)
		_, r, _ := tb.get(t, "")
		// Rank 50 of 90 in (0.5, 1]: 0.5 + 0.5*50/90 ms; rank 99 is 9 of 10 into (1, 2]: 1.9 ms.
		require.InDelta(t, 0.0005+0.0005*50/90, *latest(t, r, "reply_p50_s"), 1e-8)
		require.InDelta(t, 0.0019, *latest(t, r, "reply_p99_s"), 1e-8)

		tb.tick(time.Second)
		_, r, _ = tb.get(t, "")
		require.Nil(t, latest(t, r, "reply_p50_s"), "no replies in the interval: no latency, not zero")
	})
}

func TestBucketQuantile(t *testing.T) {
	t.Parallel()
	bounds := []float64{1, 2, 4}
	hist := func(count float64, cumulative ...float64) *raw {
		return &raw{seen: true, count: count, bounds: bounds, buckets: cumulative}
	}
	zero := hist(0, 0, 0, 0)
	tests := []struct {
		name      string
		q         float64
		cur, prev *raw
		want      float64 // NaN: none
	}{
		{name: "nothing_observed", q: 0.5, cur: zero, prev: zero, want: math.NaN()},
		{name: "first_bucket_starts_at_zero", q: 0.5, cur: hist(10, 10, 10, 10), prev: zero, want: 0.5},
		{name: "interpolated_within_its_bucket", q: 0.75, cur: hist(8, 4, 8, 8), prev: zero, want: 1.5},
		{name: "empty_buckets_are_skipped", q: 0.5, cur: hist(2, 0, 0, 2), prev: zero, want: 3},
		{name: "rank_in_plus_inf_is_the_highest_bound", q: 0.99, cur: hist(10, 1, 1, 1), prev: zero, want: 4},
		{name: "only_the_increase_counts", q: 0.5, cur: hist(110, 100, 110, 110), prev: hist(100, 100, 100, 100), want: 1.5},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got := bucketQuantile(tt.q, tt.cur, tt.prev)
			if math.IsNaN(tt.want) {
				require.True(t, math.IsNaN(got), "got %v", got)
				return
			}
			require.InDelta(t, tt.want, got, 1e-12)
		})
	}
}

func TestRing(t *testing.T) {
	t.Parallel()

	t.Run("keeps_the_newest_samples_oldest_first", func(t *testing.T) {
		t.Parallel()
		_, tb := setup(t, Config{Interval: time.Second, History: 3 * time.Second})
		start := tb.clock.millis(0)
		for i := range 5 {
			tb.metrics.ObjectsOnline.Set(float64(i))
			tb.tick(time.Second)
		}
		_, r, _ := tb.get(t, "")
		require.Len(t, r.Samples, 3, "History/Interval samples")
		require.Equal(t, []*float64{ptr(2), ptr(3), ptr(4)}, r.column(t, "objects_online"))
		require.Equal(t, float64(start+3000), *r.Samples[0][0], "times in unix milliseconds")
	})

	t.Run("after_returns_only_the_samples_taken_later", func(t *testing.T) {
		t.Parallel()
		_, tb := setup(t, Config{})
		tb.tick(time.Second)
		seen := tb.clock.millis(0)
		tb.tick(time.Second)
		tb.tick(time.Second)

		status, r, _ := tb.get(t, "?after="+itoa(seen))
		require.Equal(t, http.StatusOK, status)
		require.Len(t, r.Samples, 2)
		require.Equal(t, float64(seen+1000), *r.Samples[0][0])

		_, r, _ = tb.get(t, "?after="+itoa(tb.clock.millis(0)))
		require.Empty(t, r.Samples, "nothing new")
		require.NotEmpty(t, r.Series, "the series are named in every reply")
	})

	t.Run("an_after_that_is_no_time_is_refused", func(t *testing.T) {
		t.Parallel()
		_, tb := setup(t, Config{})
		status, _, body := tb.get(t, "?after=yesterday")
		require.Equal(t, http.StatusBadRequest, status)
		require.JSONEq(t, `{"error":"after must be a time in unix milliseconds"}`, body)
	})
}

func TestAppendNumber(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		in   float64
		want string
	}{
		{0, "0"}, {12345678, "12345678"}, {-3, "-3"}, {0.000123456789, "0.000123457"}, {2.5, "2.5"},
		{1e300, "1e+300"}, {math.NaN(), "null"}, {math.Inf(1), "null"},
	} {
		require.Equal(t, tt.want, string(appendNumber(nil, tt.in)), "%v", tt.in)
	}
}

// Every series the page draws names a family the service exports, and the label
// values it filters on exist from the start: a renamed metric fails here, not as an
// empty chart.
func TestPageSeries_nameExportedSeries(t *testing.T) {
	t.Parallel()
	families, err := metrics.New().Own.Gather()
	require.NoError(t, err)
	labels := map[string][]map[string]string{}
	for _, f := range families {
		for _, m := range f.GetMetric() {
			set := map[string]string{}
			for _, l := range m.GetLabel() {
				set[l.GetName()] = l.GetValue()
			}
			labels[f.GetName()] = append(labels[f.GetName()], set)
		}
	}
	names := map[string]bool{}
	for _, s := range pageSeries() {
		require.False(t, names[s.Name], "series %q twice", s.Name)
		names[s.Name] = true
		children, ok := labels[s.Metric]
		require.True(t, ok, "series %q reads %s, which the service does not export", s.Name, s.Metric)
		found := false
		for _, set := range children {
			match := true
			for k, v := range s.Labels {
				match = match && set[k] == v
			}
			found = found || match
		}
		require.True(t, found, "series %q: no child of %s has labels %v", s.Name, s.Metric, s.Labels)
		require.Equal(t, len(children) > 1 && len(s.Labels) == 0, s.Summed, "series %q: Summed says whether it adds up several children", s.Name)
	}
}

func TestSeriesSource(t *testing.T) {
	t.Parallel()
	got := map[string]string{}
	for _, s := range pageSeries() {
		got[s.Name] = s.Source(time.Second)
	}
	require.Equal(t, "callback_objects_online", got["objects_online"])
	require.Equal(t, "rate(callback_callbacks_accepted_total[1s])", got["accepted_per_s"])
	require.Equal(t, "sum(rate(callback_callbacks_rejected_total[1s]))", got["refused_per_s"])
	require.Equal(t, `rate(callback_lookups_total{outcome="online"}[1s])`, got["lookups_online_per_s"])
	require.Equal(t, `rate(callback_work_dropped_total{reason="capacity",stage="claim"}[1s])`, got["dropped_claim_capacity_per_s"])
	require.Equal(t, "histogram_quantile(0.99, rate(callback_reply_seconds_bucket[1s]))", got["reply_p99_s"])
}

func TestNew_refusesAHistoryShorterThanTwoIntervals(t *testing.T) {
	t.Parallel()
	_, err := New(Config{Interval: time.Second, History: time.Second}, component.Deps{})
	require.ErrorContains(t, err, "history")
	_, err = New(Config{Interval: -time.Second}, component.Deps{})
	require.Error(t, err)
}

func TestStatic(t *testing.T) {
	t.Parallel()
	c, _ := setup(t, Config{})
	get := func(h http.HandlerFunc, path string) *httptest.ResponseRecorder {
		w := httptest.NewRecorder()
		h(w, httptest.NewRequest(http.MethodGet, path, nil))
		return w
	}

	page := get(c.Page, "/")
	require.Equal(t, http.StatusOK, page.Code)
	require.Contains(t, page.Header().Get("Content-Type"), "text/html")
	require.Contains(t, page.Header().Get("Content-Security-Policy"), "default-src 'none'")
	require.Contains(t, page.Body.String(), `src="console/static/console.js"`)

	for file, kind := range map[string]string{"console.js": "javascript", "console.css": "text/css"} {
		w := get(c.Static, "/console/static/"+file)
		require.Equal(t, http.StatusOK, w.Code, file)
		require.Contains(t, w.Header().Get("Content-Type"), kind)
		require.NotEmpty(t, w.Header().Get("ETag"))
	}
	for _, missing := range []string{"/console/static/nope.js", "/console/static/index.html"} {
		w := get(c.Static, missing)
		require.Equal(t, http.StatusNotFound, w.Code, missing)
		require.True(t, strings.HasPrefix(w.Body.String(), `{"error":`), w.Body.String())
	}

	etag := get(c.Static, "/console/static/console.js").Header().Get("ETag")
	w := httptest.NewRecorder()
	r := httptest.NewRequest(http.MethodGet, "/console/static/console.js", nil)
	r.Header.Set("If-None-Match", etag)
	c.Static(w, r)
	require.Equal(t, http.StatusNotModified, w.Code, "an unchanged file is not sent again")
}

func ptr(v float64) *float64 { return &v }

func itoa(n int64) string { return strconv.FormatInt(n, 10) }
