package fetch_test

import (
	"context"
	"errors"
	"math"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/objwatch/callback/internal/callback"
	"github.com/objwatch/callback/internal/fetch"
	"github.com/objwatch/callback/internal/metrics"
	"github.com/objwatch/callback/internal/pgtest"
	"github.com/objwatch/callback/internal/store"
	"github.com/objwatch/callback/internal/testhelper"
)

// fixture is a real store on a fresh database; work reaches pending the way it does in
// the service (inbox rows, then a merge).
type fixture struct {
	pool  *pgxpool.Pool
	store *store.Store
	m     *metrics.Metrics
}

func setup(t *testing.T) *fixture {
	t.Helper()
	pool, _ := pgtest.NewPool(t)
	return &fixture{pool: pool, store: store.New(pool), m: metrics.New()}
}

// config is short enough that retries, polls and timeouts take milliseconds.
func config() fetch.Config {
	return fetch.Config{
		MinConcurrency: 16, Concurrency: 16, MaxClaim: 16, Timeout: 200 * time.Millisecond, Lease: 2 * time.Second,
		ExpireAfter: time.Minute, PollInterval: 5 * time.Millisecond,
		FlushInterval: time.Millisecond, FlushSize: 64,
		BackoffBase: 10 * time.Millisecond, BackoffMax: 50 * time.Millisecond, ShutdownGrace: 20 * time.Millisecond,
	}
}

// receive makes one callback per element of at durable and merges it into pending.
func (f *fixture) receive(t *testing.T, ids []int64, at ...time.Time) {
	t.Helper()
	cbs := make([]callback.Callback, len(at))
	for i, ts := range at {
		cbs[i] = callback.New(ts, ids)
	}
	require.NoError(t, f.store.InsertCallbacks(context.Background(), cbs))
	_, err := f.store.MergeInbox(context.Background(), 1000, 1<<20)
	require.NoError(t, err)
}

// start runs a fetcher until stop (or the end of the test); stop returns once Run has.
func (f *fixture) start(t *testing.T, cfg fetch.Config, lookup fetch.LookupFunc) (stop func()) {
	t.Helper()
	_, stop = f.run(t, cfg, lookup)
	return stop
}

// run is start that also returns the fetcher.
func (f *fixture) run(t *testing.T, cfg fetch.Config, lookup fetch.LookupFunc) (fetcher *fetch.Fetcher, stop func()) {
	t.Helper()
	fetcher, err := fetch.New(cfg, f.store, lookup, testhelper.DiscardLogger(), f.m)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- fetcher.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			require.NoError(t, <-done)
		})
	}
	t.Cleanup(stop)
	return fetcher, stop
}

// objects reads the objects table.
func (f *fixture) objects(t *testing.T) map[int64]time.Time {
	t.Helper()
	return pgtest.Objects(t, f.pool)
}

func (f *fixture) pending(t *testing.T) int {
	t.Helper()
	var n int
	require.NoError(t, f.pool.QueryRow(context.Background(), "SELECT count(*) FROM pending").Scan(&n))
	return n
}

// settle waits until every pending lookup is done and written.
func (f *fixture) settle(t *testing.T) {
	t.Helper()
	testhelper.Eventually(t, time.Minute, "pending work drains", func() bool { return f.pending(t) == 0 })
}

// objectService is a fake object service. LookupFunc gets the 1-based number of this
// lookup of id. It counts lookups per id and fails the test if one id is ever looked
// up twice at once.
type objectService struct {
	t          *testing.T
	LookupFunc func(ctx context.Context, id int64, call int) (bool, error)

	mu       sync.Mutex
	calls    map[int64]int
	inFlight map[int64]bool
}

func newObjectService(t *testing.T, lookup func(ctx context.Context, id int64, call int) (bool, error)) *objectService {
	return &objectService{t: t, LookupFunc: lookup, calls: map[int64]int{}, inFlight: map[int64]bool{}}
}

func (s *objectService) Lookup(ctx context.Context, id int64) (bool, error) {
	s.mu.Lock()
	if s.inFlight[id] {
		s.t.Errorf("two lookups of object %d at once", id)
	}
	s.inFlight[id] = true
	s.calls[id]++
	call := s.calls[id]
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.inFlight[id] = false
		s.mu.Unlock()
	}()
	return s.LookupFunc(ctx, id, call)
}

func (s *objectService) Calls() map[int64]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[int64]int, len(s.calls))
	for id, n := range s.calls {
		out[id] = n
	}
	return out
}

func always(online bool) func(context.Context, int64, int) (bool, error) {
	return func(context.Context, int64, int) (bool, error) { return online, nil }
}

// now is a receipt time the fetcher considers fresh, as Postgres stores it.
func now() time.Time { return time.Now().UTC().Truncate(time.Microsecond) }

func TestFetch_onlineWritesRow(t *testing.T) {
	t.Parallel()
	f := setup(t)
	at := now()
	f.receive(t, []int64{1, 0, 9223372036854775807}, at)
	svc := newObjectService(t, always(true))
	f.start(t, config(), svc.Lookup)

	f.settle(t)
	require.Equal(t, map[int64]time.Time{0: at, 1: at, 9223372036854775807: at}, f.objects(t))
	require.Equal(t, map[int64]int{0: 1, 1: 1, 9223372036854775807: 1}, svc.Calls())
}

func TestFetch_offlineWritesNoRow(t *testing.T) {
	t.Parallel()
	f := setup(t)
	f.receive(t, []int64{2}, now())
	svc := newObjectService(t, always(false))
	f.start(t, config(), svc.Lookup)

	f.settle(t)
	require.Empty(t, f.objects(t))
	require.Equal(t, map[int64]int{2: 1}, svc.Calls())
}

func TestFetch_onlineThenOfflineRemovesRow(t *testing.T) {
	t.Parallel()
	f := setup(t)
	svc := newObjectService(t, func(_ context.Context, _ int64, call int) (bool, error) {
		return call == 1, nil // online the first time, offline after
	})
	f.start(t, config(), svc.Lookup)

	first := now()
	f.receive(t, []int64{3}, first)
	f.settle(t)
	require.Equal(t, map[int64]time.Time{3: first}, f.objects(t))

	f.receive(t, []int64{3}, now())
	f.settle(t)
	require.Empty(t, f.objects(t))
	require.Equal(t, map[int64]int{3: 2}, svc.Calls())
}

func TestFetch_retriesUntilSuccess(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		first func(ctx context.Context) (bool, error) // the first lookup's answer
	}{
		{name: "error_then_success", first: func(context.Context) (bool, error) {
			return false, errors.New("object service answered 503")
		}},
		{name: "timeout_then_success", first: func(ctx context.Context) (bool, error) {
			<-ctx.Done() // hangs until the fetcher's timeout ends it
			return false, ctx.Err()
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := setup(t)
			at := now()
			f.receive(t, []int64{4}, at)
			svc := newObjectService(t, func(ctx context.Context, _ int64, call int) (bool, error) {
				if call == 1 {
					return tt.first(ctx)
				}
				return true, nil
			})
			f.start(t, config(), svc.Lookup)

			f.settle(t)
			require.Equal(t, map[int64]time.Time{4: at}, f.objects(t))
			require.Equal(t, map[int64]int{4: 2}, svc.Calls(), "one failed attempt, one retry")
			require.Equal(t, 1.0, metrics.Sum(f.m.Lookups.WithLabelValues("failed")))
			require.Equal(t, 1.0, metrics.Sum(f.m.Lookups.WithLabelValues("online")))
		})
	}
}

func TestFetch_resultsCompletingOutOfOrder(t *testing.T) {
	t.Parallel()
	f := setup(t)
	const n = 12
	base := now()
	want := map[int64]time.Time{}
	for id := range int64(n) {
		at := base.Add(time.Duration(id) * time.Millisecond)
		f.receive(t, []int64{id}, at)
		if id%2 == 0 {
			want[id] = at
		}
	}
	// The first ids claimed answer last: results arrive in the reverse of claim order.
	svc := newObjectService(t, func(_ context.Context, id int64, _ int) (bool, error) {
		time.Sleep(time.Duration(n-id) * 3 * time.Millisecond)
		return id%2 == 0, nil
	})
	f.start(t, config(), svc.Lookup)

	f.settle(t)
	require.Equal(t, want, f.objects(t))
	for id := range int64(n) {
		require.Equal(t, 1, svc.Calls()[id], "lookups of %d", id)
	}
}

func TestFetch_expiredLeaseIsReclaimedAndStaleResultDiscarded(t *testing.T) {
	t.Parallel()
	f := setup(t)
	at := now()
	f.receive(t, []int64{5}, at)

	// A worker claims the row and dies (or hangs) with it: a 1 ms lease.
	stale, err := f.store.ClaimDue(context.Background(), 10, time.Millisecond, time.Time{})
	require.NoError(t, err)
	require.Len(t, stale, 1)

	started, release := make(chan struct{}), make(chan struct{})
	svc := newObjectService(t, func(context.Context, int64, int) (bool, error) {
		close(started)
		<-release
		return true, nil
	})
	f.start(t, config(), svc.Lookup)
	<-started // the fetcher reclaimed the row after the lease ran out

	// The dead worker's answer arrives while the new lookup is in flight: discarded.
	late := store.Result{ObjectID: 5, Token: stale[0].Token, Outcome: store.Offline}
	done, err := f.store.CompleteLookups(context.Background(), []store.Result{late}, time.Time{})
	require.NoError(t, err)
	require.Equal(t, store.Completed{}, done, "a result under a lost lease changes nothing")
	require.Equal(t, 1, f.pending(t), "the reclaimed row is still there")

	close(release)
	f.settle(t)
	require.Equal(t, map[int64]time.Time{5: at}, f.objects(t))

	// And once more after the new claimer finished.
	late.Outcome = store.Failed
	done, err = f.store.CompleteLookups(context.Background(), []store.Result{late}, time.Time{})
	require.NoError(t, err)
	require.Equal(t, store.Completed{}, done)
	require.Equal(t, map[int64]time.Time{5: at}, f.objects(t))
	require.Zero(t, f.pending(t))
}

func TestFetch_repeatedIDsAreCoalesced(t *testing.T) {
	t.Parallel()
	f := setup(t)
	base := now()
	receipts := make([]time.Time, 50)
	for i := range receipts {
		receipts[i] = base.Add(time.Duration(i) * time.Millisecond)
	}
	f.receive(t, []int64{7, 8, 9, 7}, receipts...) // 50 callbacks, 200 ids, 3 objects
	svc := newObjectService(t, always(true))
	f.start(t, config(), svc.Lookup)

	f.settle(t)
	require.Equal(t, map[int64]int{7: 1, 8: 1, 9: 1}, svc.Calls())
	newest := receipts[len(receipts)-1]
	require.Equal(t, map[int64]time.Time{7: newest, 8: newest, 9: newest}, f.objects(t))
}

func TestFetch_idReceivedDuringLookupIsLookedUpExactlyOnceMore(t *testing.T) {
	t.Parallel()
	f := setup(t)
	started, release := make(chan struct{}), make(chan struct{})
	svc := newObjectService(t, func(_ context.Context, _ int64, call int) (bool, error) {
		if call == 1 {
			close(started)
			<-release
		}
		return true, nil
	})
	first := now()
	f.receive(t, []int64{10}, first)
	f.start(t, config(), svc.Lookup)
	<-started

	// Two more callbacks name it while its lookup is in flight: its status may have
	// changed since the lookup started.
	second := first.Add(time.Millisecond)
	third := first.Add(2 * time.Millisecond)
	f.receive(t, []int64{10}, second)
	f.receive(t, []int64{10}, third)
	close(release)

	f.settle(t)
	require.Equal(t, map[int64]int{10: 2}, svc.Calls())
	require.Equal(t, map[int64]time.Time{10: third}, f.objects(t))
}

func TestFetch_receiptOlderThanWindowIsDroppedWithoutLookup(t *testing.T) {
	t.Parallel()
	f := setup(t)
	cfg := config()
	fresh := now()
	f.receive(t, []int64{11}, fresh.Add(-2*cfg.ExpireAfter))
	f.receive(t, []int64{12}, fresh)
	svc := newObjectService(t, always(true))
	f.start(t, cfg, svc.Lookup)

	testhelper.Eventually(t, time.Minute, "the fresh receipt is looked up", func() bool { return f.pending(t) == 1 })
	require.Equal(t, map[int64]int{12: 1}, svc.Calls(), "no lookup for the expired receipt")
	require.Equal(t, map[int64]time.Time{12: fresh}, f.objects(t))
	var attempts int
	require.NoError(t, f.pool.QueryRow(context.Background(), "SELECT attempts FROM pending WHERE object_id = 11").Scan(&attempts))
	require.Zero(t, attempts, "never even claimed: expiry's sweep deletes it")
}

func TestFetch_shutdownHandsBackClaims(t *testing.T) {
	t.Parallel()
	f := setup(t)
	f.receive(t, []int64{13, 14, 15}, now())
	var (
		mu      sync.Mutex
		blocked int
	)
	svc := newObjectService(t, func(ctx context.Context, _ int64, _ int) (bool, error) {
		mu.Lock()
		blocked++
		mu.Unlock()
		<-ctx.Done() // answers only when the fetcher gives up on it
		return false, ctx.Err()
	})
	cfg := config()
	cfg.Timeout = time.Minute // longer than the test: only shutdown ends the lookups
	cfg.Lease = time.Hour
	stop := f.start(t, cfg, svc.Lookup)
	testhelper.Eventually(t, time.Minute, "the lookups start", func() bool { mu.Lock(); defer mu.Unlock(); return blocked == 3 })

	stop() // returns once Run has

	type row struct {
		id        int64
		unclaimed bool
		due       bool
	}
	rs, err := f.pool.Query(context.Background(),
		"SELECT object_id, claim_token IS NULL, due_at <= now() FROM pending ORDER BY object_id")
	require.NoError(t, err)
	defer rs.Close()
	var got []row
	for rs.Next() {
		var r row
		require.NoError(t, rs.Scan(&r.id, &r.unclaimed, &r.due))
		got = append(got, r)
	}
	require.NoError(t, rs.Err())
	require.Equal(t, []row{{13, true, true}, {14, true, true}, {15, true, true}}, got,
		"claims in flight at shutdown are handed back, due at once for any replica")
	require.Empty(t, f.objects(t))
	require.Equal(t, 3.0, metrics.Sum(f.m.Lookups.WithLabelValues("abandoned")))
}

func TestFetch_yieldsTheLimitToABusyReplyPath(t *testing.T) {
	t.Parallel()
	f := setup(t)
	ids := make([]int64, 40)
	for i := range ids {
		ids[i] = int64(100 + i)
	}
	f.receive(t, ids, now())
	var (
		yield    atomic.Uint64 // math.Float64bits
		inFlight atomic.Int64
		peak     atomic.Int64
	)
	yield.Store(math.Float64bits(1))
	release := make(chan struct{})
	cfg := config()
	cfg.MinConcurrency, cfg.Concurrency = 16, 16
	cfg.Yield = func() float64 { return math.Float64frombits(yield.Load()) }
	f.start(t, cfg, func(ctx context.Context, _ int64) (bool, error) {
		n := inFlight.Add(1)
		defer inFlight.Add(-1)
		for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
		}
		select {
		case <-release:
		case <-ctx.Done():
		}
		return true, nil
	})

	// The reply path wants everything: one lookup at a time, however many are due.
	testhelper.Eventually(t, time.Minute, "a lookup starts", func() bool { return inFlight.Load() == 1 })
	time.Sleep(100 * time.Millisecond) // twenty polls of the claim loop
	require.Equal(t, int64(1), peak.Load(), "a yielding fetcher never exceeds what it leaves itself")

	// Intake is idle again: the whole limit is used.
	yield.Store(math.Float64bits(0))
	testhelper.Eventually(t, time.Minute, "the limit is used again", func() bool { return inFlight.Load() == 16 })
	close(release)
	f.settle(t)
}
