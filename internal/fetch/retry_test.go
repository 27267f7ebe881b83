package fetch_test

import (
	"testing"
	"time"

	"github.com/objwatch/callback/internal/backoff"
	"github.com/objwatch/callback/internal/fetch"
)

// TestRetry_aFaultyServiceLeavesTheWindowToTheLookups: against an object service that
// fails one lookup in five whatever the load (500s, hangs, garbage: the fault runs),
// an object's lookups fail several times in a row often enough to matter at a million
// objects (0.2^6 a lookup is a few objects a minute at 2,000 ids/s). The retries must
// leave the window to the lookups themselves: with the default backoff, seven failures
// in a row at the original service's mean latency (2.3 s), their waits, and the eighth
// lookup still fit in the default 30 s window. With a backoff doubling to 5 s, six
// did not (the waits alone were 17.75 s). The dead-service case is the breaker's
// (TripAfter), not per-object backoff's.
func TestRetry_aFaultyServiceLeavesTheWindowToTheLookups(t *testing.T) {
	const (
		window   = 30 * time.Second
		latency  = 2300 * time.Millisecond
		failures = 7
	)
	p := backoff.Policy{Base: fetch.BackoffBaseDefault, Max: fetch.BackoffMaxDefault}
	total := time.Duration(failures+1) * latency
	for n := 1; n <= failures; n++ {
		total += p.Delay(n) // the longest of Jittered's spread
	}
	if total > window {
		t.Errorf("%d failed lookups, their backoffs and one more lookup take %v, beyond the %v window", failures, total, window)
	}
}
