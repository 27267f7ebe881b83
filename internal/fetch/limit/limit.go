// Package limit finds how many lookups the object service takes at once: an adaptive
// concurrency limit between a floor and a ceiling, fed one sample per finished lookup.
//
// The object service's capacity is unknown and changes, and by Little's law lookups/s
// is the limit divided by the mean latency: a fixed limit is either too low (objects
// never looked up within the window) or too high (a retry storm against a service at
// its limit). The limit moves like TCP's congestion window:
//
//   - Slow start: until the first sign of congestion, each answered lookup adds 1 (the
//     limit doubles per round trip), so an unlimited service is driven to thousands in
//     flight within a few round trips.
//   - Then it grows by Growth of itself per round trip (Growth per answered lookup):
//     probing for more capacity, slowly enough that the overshoot is small.
//   - It grows only while it is used (at least half of it in flight), so that it does
//     not drift to the ceiling without evidence that the service takes more.
//   - On congestion it is multiplied by Backoff, at most once per round trip: only a
//     sample sent after the last decrease can cause the next one. A burst of 503s from
//     requests that were all in flight together is one signal, not a collapse to the
//     floor.
//
// Congestion is a 429 or 503 (Rejected), or one of two long-run comparisons. The
// object service's latency is random (0.3-4.3 s whatever the load), so one slow
// answer says nothing: the mean of about the last ShortSamples answers is compared
// with a long-run mean that forgets with time constant LongWindow, and congestion is
// when the short mean exceeds Tolerance times the long one. Timeouts are compared the
// same way, as a share of the lookups: a service that hangs 5% of requests whatever the
// load (one of the fault tests does) is not congested, one whose timeouts suddenly rise
// by TimeoutRise is. Other errors (500, a dropped connection, garbage) say nothing
// about load and move nothing.
//
// A Retry-After holds the limit where it is until it has passed: the service said when
// to come back, so it is no time to probe for more.
//
// Why not failsafe-go's adaptive limiter (a maintained library): it watches latency
// only and moves by about log10(limit) a second, so against a random latency and 503s
// it stayed near its initial 128, far below the Little's-law bound this one reaches
// (BenchmarkAgainstObjectService measures both; the figures, with the end-to-end run
// against `tester -capacity 1000`, are in docs/design.md, "Measurements behind the
// defaults").
//
// The limiter is a pure function of the samples it is fed (times come with them), so
// that table tests can drive it exactly. It does not count lookups in flight: its user
// does, and passes the count with each sample.
package limit

import (
	"errors"
	"math"
	"sync"
	"time"
)

// Config tunes a Limiter. Start from DefaultConfig.
type Config struct {
	Min, Max     int           // the floor and the ceiling; the limit starts at Min
	Backoff      float64       // on congestion the limit is multiplied by this (0 < Backoff < 1)
	Growth       float64       // after slow start: added per answered lookup, so Growth x limit per round trip
	Tolerance    float64       // short-run mean latency above Tolerance x long-run mean: congestion
	TimeoutRise  float64       // short-run timeout share above long-run share + TimeoutRise: congestion
	ShortSamples int           // the short-run means cover about this many samples
	LongWindow   time.Duration // time constant of the long-run means
	Warmup       int           // samples before the long-run comparisons count
}

// DefaultConfig: the numbers and why.
//
//   - Backoff 0.9 and Growth 0.05: against a service with a hard capacity the limit saws
//     between 0.9 and a little over 1 x capacity, about 0.95 of the capacity on average,
//     and crosses it once every two or three round trips (a handful of 503s each time).
//   - ShortSamples 100 and Tolerance 1.5: with latency uniform in 0.3-4.3 s, a mean of
//     100 samples has a standard deviation of 5% of the mean, so noise alone never
//     reaches 1.5. Some margin is needed beyond the noise: while the limit grows, more
//     lookups start every moment than a latency ago, so the answers coming in are
//     biased towards the fast ones, and a client on a busy machine adds latency of its
//     own. TimeoutRise 0.1 is about five standard deviations of a 5% share.
//   - Warmup 100 samples, and the comparisons start only once the samples span ten
//     mean latencies: in the first round trips only the fast answers are in.
//   - LongWindow 60 s: many round trips, so a latency that rises over a few of them is
//     seen, while a service that is simply slower now is accepted after a minute.
func DefaultConfig(min, max int) Config {
	return Config{
		Min: min, Max: max, Backoff: 0.9, Growth: 0.05, Tolerance: 1.5, TimeoutRise: 0.1,
		ShortSamples: 100, LongWindow: time.Minute, Warmup: 100,
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
	case c.ShortSamples < 1 || c.Warmup < 0:
		return errors.New("short samples must be at least 1, warmup not negative")
	case c.LongWindow <= 0:
		return errors.New("long window must be positive")
	}
	return nil
}

// Outcome is what one lookup says about the object service's load.
type Outcome int

const (
	Answered Outcome = iota // an answer, online or offline
	Failed                  // an error that says nothing about load: 500, refused, garbage
	Timeout                 // no answer within the lookup timeout
	Rejected                // 429 or 503: over capacity
)

// Sample is one finished lookup.
type Sample struct {
	Start, End time.Time
	Outcome    Outcome
	RetryAfter time.Duration // for Rejected: what the service asked for, 0 if nothing
	InFlight   int           // lookups in flight as this one ended, itself included
}

// Limiter is safe for concurrent use.
type Limiter struct {
	cfg    Config
	alpha  float64 // weight of a sample in the short-run means
	mu     sync.Mutex
	limit  float64
	slow   bool      // slow start: no congestion seen yet
	cutAt  time.Time // when the limit was last decreased
	holdTo time.Time // no growth before this (Retry-After)

	samples                      int
	firstEnd, lastEnd            time.Time
	shortLatency, longLatency    float64 // seconds, answered lookups only
	shortTimeouts, longTimeouts  float64 // share of answered and timed-out lookups
	latencySamples, shareSamples int
}

// New returns a limiter at cfg.Min. cfg must be valid.
func New(cfg Config) *Limiter {
	return &Limiter{cfg: cfg, alpha: 2 / float64(cfg.ShortSamples+1), limit: float64(cfg.Min), slow: true}
}

// Limit is the number of lookups that may be in flight now.
func (l *Limiter) Limit() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return int(l.limit)
}

// Observe feeds one finished lookup and returns the limit after it.
func (l *Limiter) Observe(s Sample) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	congested := false
	switch s.Outcome {
	case Answered:
		congested = l.record(s.End, s.End.Sub(s.Start).Seconds(), false)
	case Timeout:
		congested = l.record(s.End, 0, true)
	case Rejected:
		congested = true
		if s.RetryAfter > 0 {
			l.holdTo = later(l.holdTo, s.End.Add(s.RetryAfter))
		}
	}

	switch {
	case congested:
		// Once per round trip: a sample sent before the last decrease was answered by a
		// service that had not seen it yet.
		if s.Start.Before(l.cutAt) {
			break
		}
		l.limit = max(float64(l.cfg.Min), l.limit*l.cfg.Backoff)
		l.slow = false
		l.cutAt = s.End
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

// record adds a latency (seconds) or a timeout to the means and reports whether the
// short run has risen past the long run.
func (l *Limiter) record(end time.Time, latency float64, timedOut bool) bool {
	// The long-run means forget with time, not with samples: at 4,000 lookups/s a
	// window of samples would span a single round trip.
	w := 1.0
	if l.samples > 0 {
		w = -math.Expm1(-max(end.Sub(l.lastEnd).Seconds(), 0) / l.cfg.LongWindow.Seconds())
	} else {
		l.firstEnd = end
	}
	l.lastEnd = later(l.lastEnd, end)
	l.samples++

	share := 0.0
	if timedOut {
		share = 1
	}
	l.shortTimeouts = mean(l.shortTimeouts, share, l.shareSamples, l.alpha)
	l.longTimeouts = mean(l.longTimeouts, share, l.shareSamples, w)
	l.shareSamples++
	if !timedOut {
		l.shortLatency = mean(l.shortLatency, latency, l.latencySamples, l.alpha)
		l.longLatency = mean(l.longLatency, latency, l.latencySamples, w)
		l.latencySamples++
	}
	if l.samples <= l.cfg.Warmup || end.Sub(l.firstEnd).Seconds() < 10*l.longLatency {
		return false
	}
	return l.shortTimeouts > l.longTimeouts+l.cfg.TimeoutRise ||
		l.latencySamples > l.cfg.Warmup && l.shortLatency > l.cfg.Tolerance*l.longLatency
}

// mean moves an exponentially weighted mean of n samples towards x by weight w, or by
// 1/(n+1) while that is more: until the weights have covered their span, it is the
// plain mean of the samples so far, so that the first few (a lookup that dialled, a
// fast start) do not stand for the whole history.
func mean(m, x float64, n int, w float64) float64 {
	return m + max(w, 1/float64(n+1))*(x-m)
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}
