// Package backoff says how long to wait before trying again, and waits: capped
// exponential delays, with jitter where many waiters must not come back together, and
// a wait that ends early when its context does or when it is woken.
package backoff

import (
	"context"
	"math/rand/v2"
	"time"
)

// Policy is a capped exponential backoff: Base after the first failure, twice the wait
// before after each further one, and never more than Max.
type Policy struct {
	Base, Max time.Duration
}

// Delay is the wait after the nth failure in a row, counted from 1 (n below 1 counts
// as 1).
func (p Policy) Delay(n int) time.Duration {
	d := p.Base
	for i := 1; i < n && d < p.Max; i++ {
		d *= 2
	}
	return min(d, p.Max)
}

// Jittered is Delay(n) spread evenly over [Delay(n)/2, Delay(n)], so that waiters that
// failed together (lookups of a dead service) do not come back together.
func (p Policy) Jittered(n int) time.Duration {
	d := p.Delay(n)
	return d/2 + rand.N(d/2+1)
}

// Retry is a Policy and the failures in a row so far. The zero Retry of a Policy has
// none.
type Retry struct {
	Policy
	failures int
}

// Next counts one more failure and returns the wait before the next try.
func (r *Retry) Next() time.Duration {
	r.failures++
	return r.Delay(r.failures)
}

// Reset ends a run of failures, and reports whether there was one: the caller may say
// that what failed works again.
func (r *Retry) Reset() bool {
	failed := r.failures > 0
	r.failures = 0
	return failed
}

// Sleep waits d, or less if ctx ends first, and reports whether ctx is still live.
func Sleep(ctx context.Context, d time.Duration) bool {
	return Wait(ctx, d, nil)
}

// Wait is Sleep that also ends when wake receives (a nil wake never does): the waiter
// was told there is work, or that what it waits for is back.
func Wait(ctx context.Context, d time.Duration, wake <-chan struct{}) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-wake:
	case <-t.C:
	}
	return ctx.Err() == nil
}
