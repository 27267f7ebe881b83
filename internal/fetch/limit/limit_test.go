package limit_test

import (
	"container/heap"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/objwatch/callback/internal/fetch/limit"
)

var t0 = time.Date(2026, 12, 2, 0, 0, 0, 0, time.UTC)

// at is a time s seconds after t0.
func at(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }

// answered is an answered lookup sent at start and answered after latency seconds, with
// inFlight lookups in flight.
func answered(start, latency float64, inFlight int) limit.Sample {
	return limit.Sample{Start: at(start), End: at(start + latency), Outcome: limit.Answered, InFlight: inFlight}
}

func rejected(start float64, retryAfter time.Duration) limit.Sample {
	return limit.Sample{Start: at(start), End: at(start + 0.001), Outcome: limit.Rejected, RetryAfter: retryAfter, InFlight: 1000}
}

func config() limit.Config {
	c := limit.DefaultConfig(10, 1000)
	c.Warmup = 20
	c.ShortSamples = 20
	return c
}

func TestDefaultConfigIsValid(t *testing.T) {
	t.Parallel()
	require.NoError(t, limit.DefaultConfig(128, 10000).Validate())
	require.Error(t, limit.DefaultConfig(0, 10).Validate())
	require.Error(t, limit.DefaultConfig(10, 9).Validate())
}

func TestLimiter(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		samples func() []limit.Sample
		want    int
	}{
		{
			name:    "starts_at_the_floor",
			samples: func() []limit.Sample { return nil },
			want:    10,
		},
		{
			name: "slow_start_adds_one_per_answer_while_used",
			samples: func() []limit.Sample {
				var s []limit.Sample
				for i := range 30 {
					s = append(s, answered(float64(i)*0.01, 1, 10+i))
				}
				return s
			},
			want: 40,
		},
		{
			name: "does_not_grow_while_less_than_half_is_used",
			samples: func() []limit.Sample {
				var s []limit.Sample
				for i := range 30 {
					s = append(s, answered(float64(i)*0.01, 1, 4))
				}
				return s
			},
			want: 10,
		},
		{
			name: "never_above_the_ceiling",
			samples: func() []limit.Sample {
				var s []limit.Sample
				for i := range 5000 {
					s = append(s, answered(float64(i)*0.001, 1, 1000))
				}
				return s
			},
			want: 1000,
		},
		{
			name: "rejection_cuts_by_backoff",
			samples: func() []limit.Sample {
				s := growTo(100)
				return append(s, rejected(100, 0))
			},
			want: 90,
		},
		{
			name: "burst_of_rejections_sent_together_cuts_once",
			samples: func() []limit.Sample {
				s := growTo(100)
				for range 50 {
					s = append(s, rejected(100, 0)) // all sent before the first was answered
				}
				return s
			},
			want: 90,
		},
		{
			name: "rejection_sent_after_the_cut_cuts_again",
			samples: func() []limit.Sample {
				s := growTo(100)
				return append(s, rejected(100, 0), rejected(100.5, 0))
			},
			want: 81,
		},
		{
			name: "never_below_the_floor",
			samples: func() []limit.Sample {
				var s []limit.Sample
				for i := range 100 {
					s = append(s, rejected(float64(i), 0))
				}
				return s
			},
			want: 10,
		},
		{
			name: "after_a_cut_grows_by_growth_per_answer",
			samples: func() []limit.Sample {
				s := append(growTo(100), rejected(100, 0)) // 90, out of slow start
				for i := range 50 {
					s = append(s, answered(101+float64(i)*0.01, 1, 90))
				}
				return s
			},
			want: 92, // 90 + 50 x 0.05
		},
		{
			name: "retry_after_holds_growth_until_it_passed",
			samples: func() []limit.Sample {
				s := append(growTo(100), rejected(100, 10*time.Second)) // 90 until 110
				for i := range 50 {
					s = append(s, answered(101+float64(i)*0.01, 1, 90)) // answered before 110
				}
				return s
			},
			want: 90,
		},
		{
			name: "retry_after_passed_growth_resumes",
			samples: func() []limit.Sample {
				s := append(growTo(100), rejected(100, time.Second)) // 90 until 101
				for i := range 50 {
					s = append(s, answered(102+float64(i)*0.01, 1, 90))
				}
				return s
			},
			want: 92,
		},
		{
			name: "other_errors_move_nothing",
			samples: func() []limit.Sample {
				s := growTo(100)
				for i := range 50 {
					s = append(s, limit.Sample{Start: at(100 + float64(i)), End: at(100.001 + float64(i)), Outcome: limit.Failed, InFlight: 100})
				}
				return s
			},
			want: 100,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			l := limit.New(config())
			for _, s := range tt.samples() {
				l.Observe(s)
			}
			require.Equal(t, tt.want, l.Limit())
		})
	}
}

// growTo drives a limiter from the floor (10) to n in slow start: answers of 1 s, sent
// before t = 100 s, the limit always full.
func growTo(n int) []limit.Sample {
	var s []limit.Sample
	for i := range n - 10 {
		s = append(s, answered(float64(i)*0.01, 1, 10+i))
	}
	return s
}

// The object service's latency is uniform in 0.3-4.3 s whatever the load: that noise
// alone must never cut the limit, while the same service getting slower, or timing out
// more, must.
func TestLimiter_latency(t *testing.T) {
	t.Parallel()
	normal := func(rng *rand.Rand) draw { return draw{limit.Answered, uniform(rng, 0.3, 4.3)} }
	timingOut := func(share float64) func(rng *rand.Rand) draw {
		return func(rng *rand.Rand) draw {
			if rng.Float64() < share {
				return draw{limit.Timeout, 5}
			}
			return normal(rng)
		}
	}
	tests := []struct {
		name          string
		before, after func(rng *rand.Rand) draw
		wantCut       bool
	}{
		{name: "random_latency_is_not_congestion", before: normal, after: normal},
		{name: "steady_share_of_timeouts_is_not_congestion", before: timingOut(0.05), after: timingOut(0.05)},
		{name: "latency_doubled_is_congestion", before: normal, wantCut: true, after: func(rng *rand.Rand) draw {
			return draw{limit.Answered, 2 * uniform(rng, 0.3, 4.3)}
		}},
		{name: "timeouts_rising_to_a_quarter_is_congestion", before: normal, after: timingOut(0.25), wantCut: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			rng := rand.New(rand.NewPCG(1, 2))
			const ceiling = 500
			l := limit.New(limit.DefaultConfig(10, ceiling))
			clock := 0.0
			feed := func(d draw) int {
				clock += 0.005 // 200 lookups/s, the limit always full
				return l.Observe(limit.Sample{Start: at(clock - d.latency), End: at(clock), Outcome: d.outcome, InFlight: l.Limit()})
			}
			for range 120_000 { // 10 minutes: slow start to the ceiling, then steady
				feed(tt.before(rng))
			}
			require.Equal(t, ceiling, l.Limit(), "the steady phase cut the limit")
			lowest := ceiling
			for range 6_000 { // 30 s
				lowest = min(lowest, feed(tt.after(rng)))
			}
			if tt.wantCut {
				require.Less(t, lowest, ceiling)
			} else {
				require.Equal(t, ceiling, lowest)
			}
		})
	}
}

// draw is one lookup of the latency test: its outcome and latency in seconds.
type draw struct {
	outcome limit.Outcome
	latency float64
}

func uniform(rng *rand.Rand, lo, hi float64) float64 { return lo + rng.Float64()*(hi-lo) }

// simulate runs a limiter against a simulated object service for d of simulated time:
// latency uniform in 0.3-4.3 s, at most capacity requests at once (0: no limit), any
// more answered 503 with Retry-After: 1 s after a millisecond. The limit is always
// filled (a backlog). It returns lookups answered and rejected over the second half,
// the lowest limit after the first, and whether the limit ever came down.
func simulate(l *limit.Limiter, capacity int, d time.Duration, seed uint64) (answered, rejected int, everCut bool) {
	rng := rand.New(rand.NewPCG(seed, seed))
	var (
		clock    time.Time = t0
		queue    events
		inFlight int
		serving  int // lookups the service is working on (not rejections on their way back)
		last     = l.Limit()
	)
	for clock.Before(t0.Add(d)) {
		for inFlight < l.Limit() {
			inFlight++
			e := event{start: clock, outcome: limit.Answered}
			if capacity > 0 && serving >= capacity {
				e.end, e.outcome = clock.Add(time.Millisecond), limit.Rejected
			} else {
				serving++
				e.end = clock.Add(300*time.Millisecond + time.Duration(rng.Int64N(int64(4*time.Second)+1)))
			}
			heap.Push(&queue, e)
		}
		e := heap.Pop(&queue).(event)
		clock = e.end
		if e.outcome == limit.Answered {
			serving--
		}
		s := limit.Sample{Start: e.start, End: e.end, Outcome: e.outcome, InFlight: inFlight}
		if e.outcome == limit.Rejected {
			s.RetryAfter = time.Second
		}
		now := l.Observe(s)
		everCut = everCut || now < last
		last = now
		inFlight--
		if clock.After(t0.Add(d / 2)) {
			if e.outcome == limit.Answered {
				answered++
			} else {
				rejected++
			}
		}
	}
	return answered, rejected, everCut
}

type event struct {
	start, end time.Time
	outcome    limit.Outcome
}

// events is a min-heap of lookups in flight by end time.
type events []event

func (q events) Len() int           { return len(q) }
func (q events) Less(i, j int) bool { return q[i].end.Before(q[j].end) }
func (q events) Swap(i, j int)      { q[i], q[j] = q[j], q[i] }
func (q *events) Push(x any)        { *q = append(*q, x.(event)) }
func (q *events) Pop() any {
	old := *q
	e := old[len(old)-1]
	*q = old[:len(old)-1]
	return e
}

// The limiter's targets, on a simulated object service: no timing involved.
func TestLimiter_simulated(t *testing.T) {
	t.Parallel()
	const mean = 2.3 // seconds
	t.Run("unlimited_service_slow_start_to_the_ceiling_without_a_cut", func(t *testing.T) {
		t.Parallel()
		l := limit.New(limit.DefaultConfig(128, 10000))
		answered, _, cut := simulate(l, 0, 2*time.Minute, 1)
		require.False(t, cut, "random latency and the end of slow start cut the limit")
		require.Equal(t, 10000, l.Limit())
		rate := float64(answered) / 60
		require.GreaterOrEqual(t, rate, 0.9*10000/mean, "lookups/s at 0.9 of the Little's-law bound of the ceiling")
	})
	t.Run("capacity_1000_rate_and_rejections", func(t *testing.T) {
		t.Parallel()
		l := limit.New(limit.DefaultConfig(128, 10000))
		answered, rejected, _ := simulate(l, 1000, 5*time.Minute, 2)
		rate := float64(answered) / 150
		require.GreaterOrEqual(t, rate, 0.8*1000/mean, "lookups/s at 0.8 of capacity / mean latency")
		require.LessOrEqual(t, float64(rejected)/float64(answered+rejected), 0.05, "at most 5% rejected")
		t.Logf("%.0f lookups/s (%.2f of the bound), %.2f%% rejected, limit %d",
			rate, rate/(1000/mean), 100*float64(rejected)/float64(answered+rejected), l.Limit())
	})
}
