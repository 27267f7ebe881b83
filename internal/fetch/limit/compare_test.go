package limit_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/objwatch/callback/internal/fetch/limit"
	"github.com/objwatch/callback/internal/objectsvc"
)

// BenchmarkAgainstObjectService drives limiters against an httptest object service:
// with a capacity (more than capacity requests at once are answered 503 with
// Retry-After: 1 at once) and without one. Against the capacity the latency is the
// real one's (0.3-4.3 s) at half scale, 150-2150 ms, so that a run covers dozens of
// round trips in under a minute. Each run is one iteration; run with -benchtime=1x:
//
//	go test -run '^$' -bench AgainstObjectService -benchtime=1x ./internal/fetch/limit
//
// Measured 2026-12-02 on this project's 2-core machine (shared; one run each):
//
//	                         lookups/s  of the bound  rejected  mean limit  1,000 / 4,000 in flight after
//	capacity_1000/aimd             798    0.92 (870)      0.1%         939  3.8 s / -
//	capacity_1000/failsafe         109    0.13            0            128  never
//	capacity_1000/failsafe_tuned   118    0.14            0            140  never
//	unlimited/aimd                1708    0.98 (1739)     0           4000  7.1 s / 12.9 s (the ceiling)
//	unlimited/failsafe              56    0.99 (56)       0            130  never
//	unlimited/failsafe_tuned        58    0.99 (58)       0            134  never
//
// (rejected: over the second half; over the whole run, slow start included, the AIMD
// had 0.8% rejected.) failsafe-go's limiter is built for a latency that rises with
// load: it compares a recent latency quantile with a baseline and moves by about
// log10(limit) per window of a second or more. Against a latency that is random
// whatever the load it holds near its initial limit, and a 503 (dropped, as its
// documentation says for an execution that ended early) tells it nothing. So it is
// not used, and not kept in go.mod; its contenders (Record for an answer, Drop for
// anything else) are in commit 327eb4d of this file.
//
// Reported: lookups/s (answered) over the second half of the run, that over the
// Little's-law bound (capacity, or the mean limit over that half, divided by the mean
// latency), the share of requests rejected (over that half, and over the whole run),
// and the seconds it took to have 1,000 and 4,000 lookups in flight (0: never).
func BenchmarkAgainstObjectService(b *testing.B) {
	const floor = 128
	scenarios := []struct {
		name     string
		capacity int
		ceiling  int
		lo, hi   time.Duration
		run      time.Duration
	}{
		{name: "capacity_1000", capacity: 1000, ceiling: 10000, lo: 150 * time.Millisecond, hi: 2150 * time.Millisecond, run: 45 * time.Second},
		// At full latency: thousands in flight at half scale would be more requests
		// per second than this 2-core machine serves to itself (timeouts, not limits).
		{name: "unlimited", ceiling: 4000, lo: 300 * time.Millisecond, hi: 4300 * time.Millisecond, run: 40 * time.Second},
	}
	contenders := []struct {
		name string
		make func(ceiling int) contender
	}{
		{name: "aimd", make: func(ceiling int) contender { return newAIMD(limit.DefaultConfig(floor, ceiling, 5*time.Second)) }},
		// failsafe-go's contenders were here (commit 327eb4d: "failsafe" with its
		// defaults, "failsafe_tuned" with the median of 500 samples instead of the
		// p90 of 50); see the table above.
	}
	for _, sc := range scenarios {
		for _, ct := range contenders {
			b.Run(sc.name+"/"+ct.name, func(b *testing.B) {
				for range b.N {
					r := drive(b, ct.make(sc.ceiling), sc.capacity, sc.lo, sc.hi, sc.run)
					mean := (sc.lo + sc.hi).Seconds() / 2
					bound := r.meanLimit / mean // of the limit reached
					if sc.capacity > 0 {
						bound = float64(sc.capacity) / mean
					}
					b.ReportMetric(r.rate, "lookups/s")
					b.ReportMetric(r.rate/bound, "of_bound")
					b.ReportMetric(r.rejectedShare, "rejected_share")
					b.ReportMetric(r.rejectedShareAll, "rejected_share_all")
					b.ReportMetric(r.meanLimit, "mean_limit")
					b.ReportMetric(r.to1000.Seconds(), "s_to_1000")
					b.ReportMetric(r.to4000.Seconds(), "s_to_4000")
					fmt.Printf("%-24s %7.0f lookups/s  %.2f of the bound (%.0f/s)  %.1f%% rejected (%.1f%% whole run)  mean limit %.0f  1,000 in flight after %v, 4,000 after %v\n",
						sc.name+"/"+ct.name, r.rate, r.rate/bound, bound, 100*r.rejectedShare, 100*r.rejectedShareAll, r.meanLimit,
						r.to1000.Round(100*time.Millisecond), r.to4000.Round(100*time.Millisecond))
				}
			})
		}
	}
}

// contender is a limiter under test: acquire takes a slot if there is room, and its
// release reports how the lookup ended.
type contender interface {
	acquire() (release func(o limit.Outcome, retryAfter time.Duration), ok bool)
	limit() int
}

type aimd struct {
	l        *limit.Limiter
	inFlight atomic.Int64
}

func newAIMD(cfg limit.Config) *aimd { return &aimd{l: limit.New(cfg)} }

func (a *aimd) limit() int { return a.l.Limit() }

func (a *aimd) acquire() (func(limit.Outcome, time.Duration), bool) {
	// A backlog of fresh ids: with the limit fully used, the demand is more than it.
	if n := int(a.inFlight.Load()); n >= a.l.Limit() && n >= a.l.Demand(n+1_000_000, time.Now()) {
		return nil, false
	}
	a.inFlight.Add(1)
	start := time.Now()
	return func(o limit.Outcome, retryAfter time.Duration) {
		a.l.Observe(limit.Sample{Start: start, End: time.Now(), Outcome: o, RetryAfter: retryAfter, InFlight: int(a.inFlight.Load())})
		a.inFlight.Add(-1)
	}, true
}

type result struct {
	rate, rejectedShare, meanLimit float64
	rejectedShareAll               float64 // over the whole run, slow start included
	to1000, to4000                 time.Duration
}

// drive sends lookups of fresh ids as fast as c allows for run, against a service of
// the given capacity (0: none) and latency.
func drive(b *testing.B, c contender, capacity int, lo, hi, run time.Duration) result {
	var inService atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := inService.Add(1)
		defer inService.Add(-1)
		if capacity > 0 && n > int64(capacity) {
			w.Header().Set("Retry-After", "1")
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		t := time.NewTimer(lo + rand.N(hi-lo+1))
		defer t.Stop()
		select {
		case <-t.C:
		case <-r.Context().Done():
			return
		}
		id := r.URL.Path[len("/objects/"):]
		_, _ = w.Write([]byte(`{"id":` + id + `,"online":true}`))
	}))
	defer srv.Close()
	client := objectsvc.New(srv.URL, 10000)
	defer client.CloseIdle()

	var (
		answered, rejected, failed atomic.Int64
		inFlight                   atomic.Int64
		room                       = make(chan struct{}, 1)
		wg                         sync.WaitGroup
		next                       int64
	)
	start := time.Now()
	half, end := start.Add(run/2), start.Add(run)
	var (
		res                        result
		answeredAtHalf, rejAtHalf  int64
		limitSum, limitSamples     float64
		sampleTick                 = time.NewTicker(100 * time.Millisecond)
		halfPassed                 bool
		answeredHalf, rejectedHalf int64
	)
	defer sampleTick.Stop()
	for time.Now().Before(end) {
		for {
			release, ok := c.acquire()
			if !ok {
				break
			}
			next++
			id := next
			n := inFlight.Add(1)
			if n >= 1000 && res.to1000 == 0 {
				res.to1000 = time.Since(start)
			}
			if n >= 4000 && res.to4000 == 0 {
				res.to4000 = time.Since(start)
			}
			wg.Go(func() {
				ctx, cancel := context.WithTimeout(context.Background(), hi+time.Second)
				defer cancel()
				_, err := client.Lookup(ctx, id)
				var se *objectsvc.StatusError
				switch {
				case err == nil:
					answered.Add(1)
					release(limit.Answered, 0)
				case errors.As(err, &se) && se.Rejected():
					rejected.Add(1)
					release(limit.Rejected, se.Wait())
				case errors.Is(err, context.DeadlineExceeded):
					failed.Add(1)
					release(limit.Timeout, 0)
				default:
					failed.Add(1)
					release(limit.Failed, 0)
				}
				inFlight.Add(-1)
				select {
				case room <- struct{}{}:
				default:
				}
			})
		}
		select {
		case <-room:
		case <-sampleTick.C:
			if time.Now().After(half) {
				if !halfPassed {
					halfPassed = true
					answeredAtHalf, rejAtHalf = answered.Load(), rejected.Load()
				}
				limitSum += float64(c.limit())
				limitSamples++
			}
		}
	}
	answeredHalf, rejectedHalf = answered.Load()-answeredAtHalf, rejected.Load()-rejAtHalf
	res.rate = float64(answeredHalf) / (run / 2).Seconds()
	if total := answeredHalf + rejectedHalf; total > 0 {
		res.rejectedShare = float64(rejectedHalf) / float64(total)
	}
	if total := answered.Load() + rejected.Load(); total > 0 {
		res.rejectedShareAll = float64(rejected.Load()) / float64(total)
	}
	if limitSamples > 0 {
		res.meanLimit = limitSum / limitSamples
	}
	if f := failed.Load(); f > 0 {
		b.Logf("%d lookups failed or timed out (client overload?)", f)
	}
	srv.CloseClientConnections()
	wg.Wait()
	return res
}
