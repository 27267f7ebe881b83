// Package limit finds how many lookups the object service takes at once: an adaptive
// concurrency limit between a floor and a ceiling, fed one sample per finished lookup
// and, from its user, the demand (lookups due).
//
// The object service's capacity is unknown and changes, and by Little's law lookups/s
// is the limit divided by the mean latency: a fixed limit is either too low (objects
// never looked up within the window) or too high (a retry storm against a service at
// its limit). The limit moves like TCP's congestion window, with two additions for what
// TCP does not know: the demand, and faults that are not congestion.
//
//   - Demand. While more lookups are due than the limit lets out, and no congestion has
//     been seen for Quiet round trips (or ever), the limit jumps to the demand (Demand).
//     A service with room takes it at once: a fresh replica, or one back from a
//     database outage, looks up what is due within one round trip instead of doubling
//     its way there over a dozen. A service without room says so within that round
//     trip, and the cut below brings the limit to what it served.
//   - Slow start: until the first sign of congestion, each answered lookup adds 1 (the
//     limit doubles per round trip). Then it grows by Growth of itself per round trip
//     (Growth per answered lookup): probing, slowly enough that the overshoot is small.
//   - It grows only while it is used (at least half of it in flight), so that it does
//     not drift to the ceiling without evidence that the service takes more.
//   - On congestion it becomes Backoff times what was in flight (or times the limit, if
//     less), at most once per round trip: only a sample sent after the last cut, and a
//     round trip (the mean latency) after it, can cause the next one. A burst of 503s
//     from requests that were all in flight together is one signal, not a collapse to
//     the floor; and against a service that took C and refused the rest, the limit
//     comes down to about C in one step, whatever it was.
//
// Congestion is a 429 or 503 (Rejected) while the service is answering other lookups,
// or one of two comparisons of cohorts. The object service's latency is random
// (0.3-4.3 s whatever the load), so one slow answer says nothing, and neither does the
// order answers arrive in: after a burst of lookups started together (a fresh start,
// the end of an outage) the fast answers come first and the slow ones last. So lookups
// are grouped by when they STARTED (Cohort), and a cohort is judged once all its
// lookups must have ended (Timeout later): its mean latency against a baseline (the
// mean over about BaselineSamples lookups), congestion above Tolerance times it; its
// share of timeouts against the baseline's share, congestion above it by TimeoutRise.
// A service that hangs 5% of requests whatever the load (one of the fault tests does)
// is not congested; one whose latency or timeouts rise with the load is. Other errors
// (500, a dropped connection, garbage) say nothing about load and move nothing.
//
// Faults that are not congestion move nothing either:
//   - Nothing at all is observed while lookups do not run (a database outage stops the
//     claims): the limit, and what it was learnt from, stay as they were. The baseline
//     forgets by samples, not by time, so the first cohorts after a gap are compared
//     with what the service did before it, not with themselves.
//   - A service that refuses everything (every answer a 503, none answered within a
//     round trip: "come back later") is not at capacity: its rejections still cut the
//     limit while they last (it asked for less), but once it answers again the limit
//     is restored to what it was before, and the refusal counts as no congestion.
//   - A Retry-After holds growth (and the jump to the demand) until it has passed, but
//     never longer than MaxHold: a service that says "come back tomorrow" must not
//     keep the limit down for a day.
//
// Why not failsafe-go's adaptive limiter (a maintained library): it watches latency
// only and moves by about log10(limit) a second, so against a random latency and 503s
// it stayed near its initial 128, far below the Little's-law bound this one reaches
// (BenchmarkAgainstObjectService measures both; the figures, with the end-to-end run
// against `tester -capacity 1000`, are in docs/design.md, "Measurements behind the
// defaults").
//
// The limiter is a pure function of what it is fed (times come with the samples and the
// demand), so that table tests and simulations can drive it exactly. It does not count
// lookups in flight: its user does, and passes the count with each sample.
package limit

import (
	"errors"
	"slices"
	"sync"
	"time"
)

// Config tunes a Limiter. Start from DefaultConfig.
type Config struct {
	Min, Max    int     // the floor and the ceiling; the limit starts at Min
	Backoff     float64 // on congestion the limit becomes Backoff x what was in flight (0 < Backoff < 1)
	Growth      float64 // after slow start: added per answered lookup, so Growth x limit per round trip
	Tolerance   float64 // a cohort's mean latency above Tolerance x the baseline: congestion
	TimeoutRise float64 // a cohort's timeout share above the baseline's + TimeoutRise: congestion
	// Timeout is the lookup timeout: every lookup of a cohort has ended this long (and a
	// second more) after the cohort's last start.
	Timeout time.Duration
	Cohort  time.Duration // lookups started within this span form one cohort
	// CohortSamples: a cohort with fewer lookups is pooled with the next ones until
	// they have this many: the mean of fewer says too little.
	CohortSamples   int
	BaselineSamples int // the baseline forgets with this many samples
	Warmup          int // samples in the baseline before the comparisons count
	Quiet           int // round trips without congestion before the limit jumps to the demand again
	MaxHold         time.Duration
}

// DefaultConfig: the numbers and why.
//
//   - Backoff 0.9 and Growth 0.05: against a service with a hard capacity the limit saws
//     between 0.9 and a little over 1 x capacity, about 0.95 of the capacity on average,
//     and crosses it once every two or three round trips (a handful of 503s each time).
//     Quiet 10 round trips is more than that sawtooth's period, so a service at its
//     capacity never sees the jump to the demand again.
//   - CohortSamples 100 and Tolerance 1.5: with latency uniform in 0.3-4.3 s, a mean of
//     100 samples has a standard deviation of 5% of the mean, so noise alone never
//     reaches 1.5, and the margin covers a client on a busy machine adding latency of
//     its own. TimeoutRise 0.1 is about five standard deviations of a 5% share over 100.
//   - Cohorts of a second: at hundreds of lookups a second a cohort is large enough on
//     its own, and it is judged about Timeout + 2 s after its lookups started.
//   - BaselineSamples 6,000 and Warmup 300: a minute of lookups at 100/s; a service that
//     is simply slower now is accepted as the baseline moves.
//   - MaxHold 5 s: well under the window; the per-object backoff honours Retry-After
//     separately (capped the same way by the fetcher).
func DefaultConfig(min, max int, timeout time.Duration) Config {
	return Config{
		Min: min, Max: max, Backoff: 0.9, Growth: 0.05, Tolerance: 1.5, TimeoutRise: 0.1,
		Timeout: timeout, Cohort: time.Second, CohortSamples: 100, BaselineSamples: 6000, Warmup: 300,
		Quiet: 10, MaxHold: 5 * time.Second,
	}
}

// Validate reports the first nonsensical setting.
func (c Config) Validate() error {
	switch {
	case c.Min < 1:
		return errors.New("the floor must be at least 1")
	case c.Max < c.Min:
		return errors.New("the ceiling must be at least the floor")
	case !(c.Backoff > 0 && c.Backoff < 1):
		return errors.New("backoff must be between 0 and 1")
	case c.Growth <= 0:
		return errors.New("growth must be positive")
	case c.Tolerance <= 1:
		return errors.New("latency tolerance must exceed 1")
	case c.TimeoutRise <= 0:
		return errors.New("timeout rise must be positive")
	case c.Timeout <= 0 || c.Cohort <= 0:
		return errors.New("the timeout and the cohort span must be positive")
	case c.CohortSamples < 1 || c.BaselineSamples < 1 || c.Warmup < 0 || c.Quiet < 0:
		return errors.New("cohort and baseline samples must be at least 1, warmup and quiet not negative")
	case c.MaxHold < 0:
		return errors.New("the longest hold must not be negative")
	}
	return nil
}

// Outcome is what one lookup says about the object service's load.
type Outcome int

const (
	Answered Outcome = iota // an answer, online or offline
	Failed                  // an error that says nothing about load: 500, refused, garbage
	Timeout                 // no answer within the lookup timeout
	Rejected                // 429 or 503: over capacity, or refusing everything for now
)

// Sample is one finished lookup.
type Sample struct {
	Start, End time.Time
	Outcome    Outcome
	RetryAfter time.Duration // for Rejected: what the service asked for, 0 if nothing
	InFlight   int           // lookups in flight as this one ended, itself included
}

// cohort is the lookups that started within one span (or several pooled spans).
type cohort struct {
	key                int64 // start / Cohort
	answered, timeouts int
	latency            float64 // sum of the answered lookups' latencies, seconds
}

func (c *cohort) add(o cohort) {
	c.answered += o.answered
	c.timeouts += o.timeouts
	c.latency += o.latency
}

func (c cohort) samples() int { return c.answered + c.timeouts }

// Limiter is safe for concurrent use.
type Limiter struct {
	cfg   Config
	mu    sync.Mutex
	limit float64
	slow  bool // slow start: no congestion seen yet

	cutAt       time.Time // when the limit was last cut, for any reason
	cutTo       float64   // the limit just before that cut
	congestedAt time.Time // when the service last showed congestion (zero: never)
	holdTo      time.Time // no growth, and no jump, before this (Retry-After, capped)
	lastAnswer  time.Time

	// A refusal in progress: rejections with nothing answered within a round trip. The
	// limit before it is restored by the next answer.
	refusing      bool
	beforeRefusal float64

	open      []cohort // cohorts not judged yet, by key
	closedTo  int64    // cohorts with a key below this are judged; later samples of them are ignored
	pooled    cohort   // judged cohorts too small on their own, waiting for more
	baseN     float64  // samples in the baseline, up to BaselineSamples
	baseLat   float64  // seconds
	baseShare float64  // share of timeouts
}

// New returns a limiter at cfg.Min. cfg must be valid.
func New(cfg Config) *Limiter {
	return &Limiter{cfg: cfg, limit: float64(cfg.Min), slow: true}
}

// Limit is the number of lookups that may be in flight now.
func (l *Limiter) Limit() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return int(l.limit)
}

// rtt is the round trip the once-per-round-trip rules count in: the baseline's mean
// latency, a second until there is one.
func (l *Limiter) rtt() time.Duration {
	if l.baseN == 0 || l.baseLat <= 0 {
		return time.Second
	}
	return max(time.Duration(l.baseLat*float64(time.Second)), 100*time.Millisecond)
}

// Demand tells the limiter that demand lookups are wanted now (due, plus in flight) at
// now; its user calls it when the limit is fully used and more is due. It returns the
// limit after it.
func (l *Limiter) Demand(demand int, now time.Time) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case float64(demand) <= l.limit, l.refusing, now.Before(l.holdTo):
	case !l.congestedAt.IsZero() && now.Sub(l.congestedAt) < time.Duration(l.cfg.Quiet)*l.rtt():
	default:
		l.limit = float64(min(demand, l.cfg.Max))
	}
	return int(l.limit)
}

// Observe feeds one finished lookup and returns the limit after it.
func (l *Limiter) Observe(s Sample) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	congested, refusal := false, false
	switch s.Outcome {
	case Answered:
		l.lastAnswer = later(l.lastAnswer, s.End)
		if l.refusing {
			// The service answers again: what it refused said nothing about capacity.
			l.refusing = false
			l.limit = max(l.limit, l.beforeRefusal)
		}
		l.record(s, false)
	case Timeout:
		l.record(s, true)
	case Rejected:
		if s.RetryAfter > 0 {
			l.holdTo = later(l.holdTo, s.End.Add(min(s.RetryAfter, l.cfg.MaxHold)))
		}
		// Capacity only if the service is answering others at the same time.
		refusal = l.lastAnswer.Before(s.End.Add(-l.rtt()))
		congested = !refusal
	}
	congested = l.judge(s.End) || congested

	switch {
	case (congested || refusal) && !s.Start.Before(l.cutAt) && s.End.Sub(l.cutAt) >= l.rtt():
		// A new cut: at most once per round trip, since a sample sent before the last
		// cut was answered by a service that had not seen it yet.
		if refusal && !l.refusing {
			l.refusing, l.beforeRefusal = true, l.limit
		}
		l.cutTo = l.limit
		l.cutAt = s.End
		l.limit = max(float64(l.cfg.Min), min(l.cutTo, float64(s.InFlight))*l.cfg.Backoff)
		if congested {
			l.slow = false
			l.congestedAt = s.End
		}
	case (congested || refusal) && s.Outcome == Rejected:
		// Within the round trip of a cut, a rejection lowers it no further than to
		// Backoff x the limit before the cut, but follows what is still in flight
		// down: after a burst of requests refused at once, what is in flight once their
		// 503s are back is what the service took.
		l.limit = min(l.limit, max(float64(l.cfg.Min), min(l.cutTo, float64(s.InFlight))*l.cfg.Backoff))
		if congested {
			l.congestedAt = later(l.congestedAt, s.End)
		}
	case congested:
		l.congestedAt = later(l.congestedAt, s.End)
	case s.Outcome == Answered && s.End.After(l.holdTo) && 2*s.InFlight >= int(l.limit):
		if l.slow {
			l.limit++
		} else {
			l.limit += l.cfg.Growth
		}
		l.limit = min(l.limit, float64(l.cfg.Max))
	}
	return int(l.limit)
}

// record adds an answer's latency or a timeout to the cohort of its start.
func (l *Limiter) record(s Sample, timedOut bool) {
	key := s.Start.UnixNano() / int64(l.cfg.Cohort)
	if key < l.closedTo {
		return // its cohort was judged already: a straggler past the timeout
	}
	i, found := slices.BinarySearchFunc(l.open, key, func(c cohort, k int64) int { return cmpInt(c.key, k) })
	if !found {
		l.open = slices.Insert(l.open, i, cohort{key: key})
	}
	c := &l.open[i]
	if timedOut {
		c.timeouts++
	} else {
		c.answered++
		c.latency += max(s.End.Sub(s.Start).Seconds(), 0)
	}
}

// judge closes the cohorts whose lookups have all ended by now, compares them with the
// baseline and folds them into it. It reports congestion.
func (l *Limiter) judge(now time.Time) bool {
	horizon := now.Add(-l.cfg.Timeout - time.Second).UnixNano()
	congested := false
	for len(l.open) > 0 && (l.open[0].key+1)*int64(l.cfg.Cohort) <= horizon {
		c := l.open[0]
		l.open = l.open[1:]
		l.closedTo = max(l.closedTo, c.key+1)
		l.pooled.add(c)
		if l.pooled.samples() < l.cfg.CohortSamples {
			continue
		}
		g := l.pooled
		l.pooled = cohort{}
		n := float64(g.samples())
		share := float64(g.timeouts) / n
		if l.baseN >= float64(l.cfg.Warmup) {
			congested = congested || share > l.baseShare+l.cfg.TimeoutRise ||
				g.answered > 0 && g.latency/float64(g.answered) > l.cfg.Tolerance*l.baseLat
		}
		// The baseline: a mean over about BaselineSamples samples, the plain mean of
		// all of them until it has that many.
		w := n / min(l.baseN+n, float64(l.cfg.BaselineSamples))
		w = min(w, 1)
		l.baseShare += w * (share - l.baseShare)
		if g.answered > 0 {
			l.baseLat += w * (g.latency/float64(g.answered) - l.baseLat)
		}
		l.baseN = min(l.baseN+n, float64(l.cfg.BaselineSamples))
	}
	return congested
}

func cmpInt(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}
