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
	c := limit.DefaultConfig(10, 1000, 5*time.Second)
	c.Warmup = 20
	c.CohortSamples = 20
	return c
}

func TestDefaultConfigIsValid(t *testing.T) {
	t.Parallel()
	require.NoError(t, limit.DefaultConfig(128, 10000, 5*time.Second).Validate())
	require.Error(t, limit.DefaultConfig(0, 10, 5*time.Second).Validate())
	require.Error(t, limit.DefaultConfig(10, 9, 5*time.Second).Validate())
	require.Error(t, limit.DefaultConfig(10, 20, 0).Validate())
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
			name: "rejection_while_others_are_answered_cuts_by_backoff",
			samples: func() []limit.Sample {
				return append(growTo(100), rejected(2, 0))
			},
			want: 90,
		},
		{
			name: "the_cut_is_from_what_was_in_flight_when_less_than_the_limit",
			samples: func() []limit.Sample {
				r := rejected(2, 0)
				r.InFlight = 50
				return append(growTo(100), r)
			},
			want: 45,
		},
		{
			name: "burst_of_rejections_sent_together_cuts_once",
			samples: func() []limit.Sample {
				s := growTo(100)
				for range 50 {
					s = append(s, rejected(2, 0)) // all sent before the first was answered
				}
				return s
			},
			want: 90,
		},
		{
			name: "rejection_sent_after_the_cut_cuts_again_a_round_trip_later",
			samples: func() []limit.Sample {
				s := append(growTo(100), rejected(2, 0))                // 90
				s = append(s, answered(2.2, 0.5, 10), rejected(2.5, 0)) // within a second of the cut: not again
				s = append(s, answered(2.5, 0.5, 10), rejected(3.1, 0)) // a second after it: 81
				return s
			},
			want: 81,
		},
		{
			name: "rejections_with_nothing_answered_cut_while_they_last",
			samples: func() []limit.Sample {
				s := growTo(100)
				for i := range 25 {
					s = append(s, rejected(10+float64(i)*1.1, 0)) // a refusal: nothing answered for seconds
				}
				return s
			},
			want: 10,
		},
		{
			name: "after_a_refusal_the_first_answer_restores_the_limit",
			samples: func() []limit.Sample {
				s := growTo(100)
				for i := range 25 {
					s = append(s, rejected(10+float64(i)*1.1, 0))
				}
				return append(s, answered(40, 0.5, 5))
			},
			want: 100,
		},
		{
			name: "never_below_the_floor",
			samples: func() []limit.Sample {
				var s []limit.Sample
				for i := range 100 {
					s = append(s, answered(float64(i)-0.5, 0.4, 1), rejected(float64(i), 0))
				}
				return s
			},
			want: 10,
		},
		{
			name: "after_a_cut_grows_by_growth_per_answer",
			samples: func() []limit.Sample {
				s := append(growTo(100), rejected(2, 0)) // 90, out of slow start
				for i := range 50 {
					s = append(s, answered(3+float64(i)*0.01, 1, 90))
				}
				return s
			},
			want: 92, // 90 + 50 x 0.05
		},
		{
			name: "retry_after_holds_growth_until_it_passed",
			samples: func() []limit.Sample {
				s := append(growTo(100), rejected(2, 3*time.Second)) // 90 until 5
				for i := range 50 {
					s = append(s, answered(3+float64(i)*0.01, 1, 90)) // answered before 5
				}
				return s
			},
			want: 90,
		},
		{
			name: "retry_after_passed_growth_resumes",
			samples: func() []limit.Sample {
				s := append(growTo(100), rejected(2, time.Second)) // 90 until 3
				for i := range 50 {
					s = append(s, answered(3+float64(i)*0.01, 1, 90))
				}
				return s
			},
			want: 92,
		},
		{
			name: "a_retry_after_of_a_day_holds_growth_only_max_hold",
			samples: func() []limit.Sample {
				s := append(growTo(100), rejected(2, 24*time.Hour)) // 90, held 5 s at most
				for i := range 50 {
					s = append(s, answered(7.1+float64(i)*0.01, 1, 90))
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

// The demand: a limiter jumps to it unless the service said recently that it is full,
// or is refusing, or asked to wait.
func TestLimiter_demand(t *testing.T) {
	t.Parallel()
	t.Run("jumps_to_the_demand_when_never_congested", func(t *testing.T) {
		t.Parallel()
		l := limit.New(config())
		require.Equal(t, 600, l.Demand(600, at(0)))
		require.Equal(t, 1000, l.Demand(5000, at(0)), "never above the ceiling")
		require.Equal(t, 1000, l.Demand(10, at(0)), "a lower demand does not lower it")
	})
	t.Run("not_within_quiet_round_trips_of_congestion", func(t *testing.T) {
		t.Parallel()
		l := limit.New(config())
		for _, s := range append(growTo(100), rejected(2, 0)) {
			l.Observe(s)
		}
		require.Equal(t, 90, l.Demand(600, at(5)), "3 s after the congestion: the service is at its capacity")
		require.Equal(t, 600, l.Demand(600, at(2+11)), "11 round trips (of 1 s) later")
	})
	t.Run("not_while_refusing_nor_held", func(t *testing.T) {
		t.Parallel()
		l := limit.New(config())
		l.Observe(rejected(0, 0)) // nothing answered: a refusal
		require.Equal(t, 10, l.Demand(600, at(1)))
		l.Observe(answered(1, 0.5, 1))
		l.Observe(rejected(3, 4*time.Second)) // a refusal again, asking for 4 s
		l.Observe(answered(3.5, 0.5, 1))      // answered: no longer refusing, but held until 7
		require.Equal(t, 10, l.Demand(600, at(5)))
		require.Equal(t, 600, l.Demand(600, at(7.1)))
	})
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
// alone must never cut the limit, nor must the order answers arrive in after a burst
// of lookups started together, nor a gap with no lookups at all (a database outage);
// the same service getting slower, or timing out more, must.
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
		gap           time.Duration // no lookups between the two phases
		burst         bool          // the second phase starts with 5,000 lookups sent at once
		wantCut       bool
	}{
		{name: "random_latency_is_not_congestion", before: normal, after: normal},
		{name: "steady_share_of_timeouts_is_not_congestion", before: timingOut(0.05), after: timingOut(0.05)},
		{name: "a_burst_sent_together_is_not_congestion", before: normal, after: normal, burst: true},
		{name: "a_burst_after_minutes_without_lookups_is_not_congestion", before: timingOut(0.05), after: timingOut(0.05),
			gap: 3 * time.Minute, burst: true},
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
			l := limit.New(limit.DefaultConfig(10, ceiling, 5*time.Second))
			// Lookups start at 200/s, the limit always full, and are observed in the
			// order they end.
			var queue events
			lowest := ceiling
			observeUntil := func(t time.Time) {
				for queue.Len() > 0 && !queue[0].end.After(t) {
					e := heap.Pop(&queue).(event)
					lowest = min(lowest, l.Observe(limit.Sample{Start: e.start, End: e.end, Outcome: e.outcome, InFlight: l.Limit()}))
				}
			}
			start := func(at time.Time, d draw) {
				heap.Push(&queue, event{start: at, end: at.Add(time.Duration(d.latency * float64(time.Second))), outcome: d.outcome})
			}
			clock := t0
			for range 120_000 { // 10 minutes: slow start to the ceiling, then steady
				clock = clock.Add(5 * time.Millisecond)
				observeUntil(clock)
				start(clock, tt.before(rng))
			}
			observeUntil(clock.Add(10 * time.Second))
			require.Equal(t, ceiling, l.Limit(), "the steady phase cut the limit")
			lowest = ceiling
			clock = clock.Add(tt.gap)
			if tt.burst {
				for range 5000 {
					start(clock, tt.after(rng))
				}
			}
			for range 6_000 { // 30 s
				clock = clock.Add(5 * time.Millisecond)
				observeUntil(clock)
				start(clock, tt.after(rng))
			}
			observeUntil(clock.Add(10 * time.Second))
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

// service is a simulated object service: latency uniform in 0.3-4.3 s, at most capacity
// requests at once (0: no limit), any more answered 503 with Retry-After: 1 s after a
// millisecond; until refuseUntil (after the start) it answers every request 503 with
// Retry-After: a day after 100 ms ("come back tomorrow").
type service struct {
	capacity    int
	refuseUntil time.Duration
}

// run is what simulate measured.
type run struct {
	answered, rejected int  // over the measured span
	everCut            bool // the limit came down at some point, anywhere in the run
}

// simulate runs a limiter against svc for d of simulated time, with a backlog: the
// limit is always filled, and the demand is reported as its user does (the limit fully
// used and more due). No lookup starts during pause (a database outage: nothing is
// claimed). It counts lookups answered and rejected from measureFrom on.
func simulate(l *limit.Limiter, svc service, d time.Duration, pause [2]time.Duration, measureFrom time.Duration, seed uint64) run {
	rng := rand.New(rand.NewPCG(seed, seed))
	var (
		r        run
		clock    time.Time = t0
		queue    events
		inFlight int
		serving  int // lookups the service is working on (not rejections on their way back)
		last     = l.Limit()
	)
	paused := func(c time.Time) bool { return !c.Before(t0.Add(pause[0])) && c.Before(t0.Add(pause[1])) }
	for clock.Before(t0.Add(d)) {
		if !paused(clock) {
			// Fill the limit; with it full and more due, report the demand as the
			// fetcher does, and fill whatever that added.
			for filled := false; !filled; {
				for inFlight < l.Limit() {
					inFlight++
					e := event{start: clock, outcome: limit.Answered}
					switch {
					case clock.Before(t0.Add(svc.refuseUntil)):
						e.end, e.outcome, e.retryAfter = clock.Add(100*time.Millisecond), limit.Rejected, 24*time.Hour
					case svc.capacity > 0 && serving >= svc.capacity:
						e.end, e.outcome, e.retryAfter = clock.Add(time.Millisecond), limit.Rejected, time.Second
					default:
						serving++
						e.end = clock.Add(300*time.Millisecond + time.Duration(rng.Int64N(int64(4*time.Second)+1)))
					}
					heap.Push(&queue, e)
				}
				filled = l.Demand(inFlight+1_000_000, clock) <= inFlight
			}
		}
		if queue.Len() == 0 {
			clock = t0.Add(pause[1]) // idle through the pause
			continue
		}
		e := heap.Pop(&queue).(event)
		clock = e.end
		if e.outcome == limit.Answered {
			serving--
		}
		now := l.Observe(limit.Sample{Start: e.start, End: e.end, Outcome: e.outcome, RetryAfter: e.retryAfter, InFlight: inFlight})
		r.everCut = r.everCut || now < last
		last = now
		inFlight--
		if !clock.Before(t0.Add(measureFrom)) {
			if e.outcome == limit.Answered {
				r.answered++
			} else {
				r.rejected++
			}
		}
	}
	return r
}

type event struct {
	start, end time.Time
	outcome    limit.Outcome
	retryAfter time.Duration
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
	never := [2]time.Duration{}
	t.Run("unlimited_service_the_ceiling_at_once_without_a_cut", func(t *testing.T) {
		t.Parallel()
		l := limit.New(limit.DefaultConfig(128, 10000, 5*time.Second))
		r := simulate(l, service{}, 40*time.Second, never, 5*time.Second, 1)
		require.False(t, r.everCut, "random latency cut the limit")
		require.Equal(t, 10000, l.Limit())
		rate := float64(r.answered) / 35
		require.GreaterOrEqual(t, rate, 0.9*10000/mean, "lookups/s from the 5th second on at 0.9 of the Little's-law bound of the ceiling")
	})
	t.Run("capacity_1000_rate_and_rejections", func(t *testing.T) {
		t.Parallel()
		l := limit.New(limit.DefaultConfig(128, 10000, 5*time.Second))
		r := simulate(l, service{capacity: 1000}, 5*time.Minute, never, 150*time.Second, 2)
		rate := float64(r.answered) / 150
		require.GreaterOrEqual(t, rate, 0.8*1000/mean, "lookups/s at 0.8 of capacity / mean latency")
		require.LessOrEqual(t, float64(r.rejected)/float64(r.answered+r.rejected), 0.05, "at most 5% rejected")
		t.Logf("%.0f lookups/s (%.2f of the bound), %.2f%% rejected, limit %d",
			rate, rate/(1000/mean), 100*float64(r.rejected)/float64(r.answered+r.rejected), l.Limit())
	})
	t.Run("a_database_outage_of_three_minutes_leaves_the_limit_where_it_was", func(t *testing.T) {
		t.Parallel()
		l := limit.New(limit.DefaultConfig(128, 10000, 5*time.Second))
		// Lookups stop at 20 s and start again at 200 s; measured from 205 s.
		r := simulate(l, service{}, 230*time.Second, [2]time.Duration{20 * time.Second, 200 * time.Second}, 205*time.Second, 3)
		require.False(t, r.everCut, "the outage or the burst after it cut the limit")
		rate := float64(r.answered) / 25
		require.GreaterOrEqual(t, rate, 0.9*10000/mean, "lookups/s from 5 s after the outage")
	})
	t.Run("come_back_tomorrow_for_8_s_then_full_speed_within_seconds", func(t *testing.T) {
		t.Parallel()
		l := limit.New(limit.DefaultConfig(128, 10000, 5*time.Second))
		r := simulate(l, service{refuseUntil: 8 * time.Second}, time.Minute, never, 20*time.Second, 4)
		rate := float64(r.answered) / 40
		require.GreaterOrEqual(t, rate, 0.9*10000/mean, "lookups/s from 12 s after the refusals ended")
		require.Equal(t, 10000, l.Limit())
	})
	t.Run("capacity_1000_after_minutes_of_refusals", func(t *testing.T) {
		t.Parallel()
		l := limit.New(limit.DefaultConfig(128, 10000, 5*time.Second))
		r := simulate(l, service{capacity: 1000, refuseUntil: 2 * time.Minute}, 5*time.Minute, never, 150*time.Second, 5)
		rate := float64(r.answered) / 150
		require.GreaterOrEqual(t, rate, 0.8*1000/mean, "lookups/s at 0.8 of capacity / mean latency after the refusals")
		require.LessOrEqual(t, float64(r.rejected)/float64(r.answered+r.rejected), 0.05, "at most 5% rejected")
	})
}
