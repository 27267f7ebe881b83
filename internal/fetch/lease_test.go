package fetch_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/objwatch/callback/internal/component"
	"github.com/objwatch/callback/internal/fetch"
	"github.com/objwatch/callback/internal/metrics"
	"github.com/objwatch/callback/internal/store"
	"github.com/objwatch/callback/internal/testhelper"
)

// stuckStore has endless due work and a writer that hangs (a database that takes
// claims but whose result writes never finish) until release is closed. It fails the
// test if anything is claimed while more than maxHeld claimed rows are unwritten.
type stuckStore struct {
	t       *testing.T
	maxHeld int64
	release chan struct{}

	claimed, written atomic.Int64
	writing          atomic.Bool
	onClaim          func() // run inside ClaimDue, after the claims are made
}

func (s *stuckStore) ClaimDue(_ context.Context, max int, _ time.Duration, _ time.Time) ([]store.Claim, error) {
	if held := s.claimed.Load() - s.written.Load(); held >= s.maxHeld {
		s.t.Errorf("claimed again with %d rows claimed and not written (at most %d)", held, s.maxHeld)
	}
	out := make([]store.Claim, max)
	for i := range out {
		out[i] = store.Claim{ObjectID: s.claimed.Add(1), ReceivedAt: time.Now(), Attempts: 1, Token: uuid.New()}
	}
	if s.onClaim != nil {
		s.onClaim()
	}
	return out, nil
}

func (s *stuckStore) CountDue(context.Context, int, time.Time) (int64, error) { return 0, nil }

func (s *stuckStore) CompleteLookups(ctx context.Context, results []store.Result, _ store.CompleteParams) (store.Completed, error) {
	s.writing.Store(true)
	<-s.release
	s.written.Add(int64(len(results)))
	return store.Completed{Owned: int64(len(results))}, nil
}

func leaseConfig() fetch.Config {
	return fetch.Config{
		MinConcurrency: 4, Concurrency: 4, MaxClaim: 4, Timeout: time.Second, Lease: 3 * time.Second, ExpireAfter: time.Minute,
		PollInterval: time.Millisecond, FlushInterval: time.Millisecond, FlushSize: 4,
		BackoffBase: 10 * time.Millisecond, BackoffMax: 50 * time.Millisecond, ShutdownGrace: 100 * time.Millisecond,
	}
}

// While results cannot be written, the fetcher
// stops claiming. (Before, the bound was implicit: the results channel's capacity,
// plus lookups blocked sending to it and the claim loop blocked sending expired
// results, all holding leases that ran out meanwhile. With thousands in flight it
// must be explicit.)
func TestClaimingStopsWhileResultsWaitToBeWritten(t *testing.T) {
	t.Parallel()
	cfg := leaseConfig()
	// In flight (Concurrency) plus waiting for the writer (two batches), plus one
	// claim's worth that may still be arriving.
	st := &stuckStore{t: t, maxHeld: int64(cfg.Concurrency + 2*cfg.FlushSize + cfg.MaxClaim), release: make(chan struct{})}
	var lookups atomic.Int64
	f, err := fetch.New(cfg, st, func(context.Context, int64) (bool, error) { lookups.Add(1); return true, nil }, component.Deps{})
	if err != nil {
		t.Fatal(err)
	}
	stop := start(t, f)

	testhelper.Watch(t, time.Minute, "the writer never got stuck", func() bool { return st.writing.Load() && lookups.Load() == st.claimed.Load() })
	// The fetcher has nothing left to do but wait for the writer. Give it every chance
	// to claim more (it must not): this waits, it asserts nothing about time.
	before := st.claimed.Load()
	for range 50 {
		time.Sleep(time.Millisecond)
	}
	if after := st.claimed.Load(); after != before {
		t.Errorf("claimed %d more rows while the writer was stuck", after-before)
	}
	close(st.release)
	stop()
}

// A lookup must not start when its lease may run out before
// its result is written. Here the claim itself took longer than the lease allows (a
// database that answers slowly); the claims are handed back unasked.
func TestLookupNeverStartsLateInItsLease(t *testing.T) {
	t.Parallel()
	cfg := leaseConfig()
	st := &stuckStore{t: t, maxHeld: 1 << 30, release: make(chan struct{})}
	close(st.release)
	var (
		mu    sync.Mutex
		clock = time.Now()
		late  atomic.Bool // the next claim's round trip eats the lease
	)
	now := func() time.Time { mu.Lock(); defer mu.Unlock(); return clock }
	st.onClaim = func() {
		if late.Load() {
			mu.Lock()
			clock = clock.Add(cfg.Lease - cfg.Timeout)
			mu.Unlock()
		}
	}
	late.Store(true)
	var lookups atomic.Int64
	m := metrics.New()
	f, err := fetch.New(cfg, st, func(context.Context, int64) (bool, error) { lookups.Add(1); return true, nil },
		component.Deps{Metrics: m, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	stop := start(t, f)
	testhelper.Watch(t, time.Minute, "claims were never handed back", func() bool { return st.written.Load() >= 8 })
	stop()
	if n := lookups.Load(); n != 0 {
		t.Errorf("%d lookups started although their lease could run out before they were written", n)
	}
	if got := metrics.Sum(m.Lookups.WithLabelValues("abandoned")); got < 8 {
		t.Errorf("lookups_total{outcome=abandoned} = %v, want every claim handed back (at least 8)", got)
	}
}
