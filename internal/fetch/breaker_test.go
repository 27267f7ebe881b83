package fetch_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/objwatch/callback/internal/testhelper"
)

// An object service that is down entirely must see a trickle of probes, not one request
// per pending object per backoff period; when it answers again, everything completes.
func TestBreaker(t *testing.T) {
	t.Parallel()
	ids := make([]int64, 200)
	for i := range ids {
		ids[i] = int64(2 * i) // even: online once the service is back
	}
	cfg := config()
	cfg.TripAfter = 8

	var (
		up           atomic.Bool
		calls        atomic.Int64
		mu           sync.Mutex
		inFlight     int
		maxAfterTrip int
	)
	// Lookups that had started before the breaker tripped may still be finishing:
	// count concurrency only once a full Concurrency's worth of failures has passed.
	settledAfter := int64(cfg.TripAfter + cfg.Concurrency)
	fetcher, bundle := setup(t, cfg, func(ctx context.Context, id int64) (bool, error) {
		n := calls.Add(1)
		mu.Lock()
		inFlight++
		if n > settledAfter && !up.Load() {
			maxAfterTrip = max(maxAfterTrip, inFlight)
		}
		mu.Unlock()
		defer func() { mu.Lock(); inFlight--; mu.Unlock() }()
		time.Sleep(time.Millisecond)
		if !up.Load() {
			return false, errors.New("connection refused")
		}
		return true, nil
	})
	bundle.receive(t, ids, time.Now())
	stop := start(t, fetcher)

	// Let it fail well past the trip point.
	testhelper.Eventually(t, time.Minute, "the fetcher keeps probing", func() bool { return calls.Load() > settledAfter+5 })
	mu.Lock()
	require.Equal(t, 1, maxAfterTrip, "tripped: one probe at a time")
	mu.Unlock()

	up.Store(true)
	bundle.settle(t)
	stop()
	require.Len(t, bundle.objects(t), len(ids))
}
