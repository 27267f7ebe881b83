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
	"github.com/objwatch/callback/internal/component"
	"github.com/objwatch/callback/internal/fetch"
	"github.com/objwatch/callback/internal/merge"
	"github.com/objwatch/callback/internal/metrics"
	"github.com/objwatch/callback/internal/pgtest"
	"github.com/objwatch/callback/internal/store"
	"github.com/objwatch/callback/internal/testhelper"
)

// testBundle is what a test sees around its fetcher: a real store on a fresh database,
// where work reaches pending the way it does in the service (inbox rows, then a
// merge), and the fetcher's metrics.
type testBundle struct {
	pool    *pgxpool.Pool
	store   *store.Store
	metrics *metrics.Metrics
}

// setup builds a fetcher with cfg that asks lookup, over a fresh database; start runs
// it.
func setup(t *testing.T, cfg fetch.Config, lookup fetch.LookupFunc) (*fetch.Fetcher, *testBundle) {
	t.Helper()
	pool, _ := pgtest.NewPool(t)
	b := &testBundle{pool: pool, store: store.New(pool), metrics: metrics.New()}
	f, err := fetch.New(cfg, b.store, lookup, component.Deps{Metrics: b.metrics})
	require.NoError(t, err)
	return f, b
}

// start runs f until stop (or the end of the test); stop returns once Run has.
func start(t *testing.T, f *fetch.Fetcher) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			require.NoError(t, <-done)
		})
	}
	t.Cleanup(stop)
	return stop
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
func (b *testBundle) receive(t *testing.T, ids []int64, at ...time.Time) {
	t.Helper()
	cbs := make([]callback.Callback, len(at))
	for i, ts := range at {
		cbs[i] = callback.New(ts, ids)
	}
	require.NoError(t, b.store.InsertCallbacks(context.Background(), cbs))
	m, err := merge.New(merge.Config{MaxBatches: 1000, MaxIDs: 1 << 20, ExpireAfter: time.Hour}, b.store, component.Deps{})
	require.NoError(t, err)
	_, err = m.Pass(context.Background())
	require.NoError(t, err)
}

// objects reads the objects table.
func (b *testBundle) objects(t *testing.T) map[int64]time.Time {
	t.Helper()
	return pgtest.IDTimes(t, b.pool, "SELECT id, last_seen FROM objects")
}

func (b *testBundle) pending(t *testing.T) int {
	t.Helper()
	var n int
	require.NoError(t, b.pool.QueryRow(context.Background(), "SELECT count(*) FROM pending WHERE due_at > '-infinity'").Scan(&n))
	return n
}

// settle waits until every pending lookup is done and written.
func (b *testBundle) settle(t *testing.T) {
	t.Helper()
	testhelper.Watch(t, time.Minute, "pending work never drained", func() bool { return b.pending(t) == 0 })
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
	svc := newObjectService(t, always(true))
	fetcher, bundle := setup(t, config(), svc.Lookup)
	at := now()
	bundle.receive(t, []int64{1, 0, 9223372036854775807}, at)
	start(t, fetcher)

	bundle.settle(t)
	require.Equal(t, map[int64]time.Time{0: at, 1: at, 9223372036854775807: at}, bundle.objects(t))
	require.Equal(t, map[int64]int{0: 1, 1: 1, 9223372036854775807: 1}, svc.Calls())
}

func TestFetch_offlineWritesNoRow(t *testing.T) {
	t.Parallel()
	svc := newObjectService(t, always(false))
	fetcher, bundle := setup(t, config(), svc.Lookup)
	bundle.receive(t, []int64{2}, now())
	start(t, fetcher)

	bundle.settle(t)
	require.Empty(t, bundle.objects(t))
	require.Equal(t, map[int64]int{2: 1}, svc.Calls())
}

func TestFetch_onlineThenOfflineRemovesRow(t *testing.T) {
	t.Parallel()
	svc := newObjectService(t, func(_ context.Context, _ int64, call int) (bool, error) {
		return call == 1, nil // online the first time, offline after
	})
	fetcher, bundle := setup(t, config(), svc.Lookup)
	start(t, fetcher)

	first := now()
	bundle.receive(t, []int64{3}, first)
	bundle.settle(t)
	require.Equal(t, map[int64]time.Time{3: first}, bundle.objects(t))

	bundle.receive(t, []int64{3}, now())
	bundle.settle(t)
	require.Empty(t, bundle.objects(t))
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
			svc := newObjectService(t, func(ctx context.Context, _ int64, call int) (bool, error) {
				if call == 1 {
					return tt.first(ctx)
				}
				return true, nil
			})
			fetcher, bundle := setup(t, config(), svc.Lookup)
			at := now()
			bundle.receive(t, []int64{4}, at)
			start(t, fetcher)

			bundle.settle(t)
			require.Equal(t, map[int64]time.Time{4: at}, bundle.objects(t))
			require.Equal(t, map[int64]int{4: 2}, svc.Calls(), "one failed attempt, one retry")
			require.Equal(t, 1.0, metrics.Sum(bundle.metrics.Lookups.WithLabelValues("failed")))
			require.Equal(t, 1.0, metrics.Sum(bundle.metrics.Lookups.WithLabelValues("online")))
		})
	}
}

func TestFetch_resultsCompletingOutOfOrder(t *testing.T) {
	t.Parallel()
	const n = 12
	// The first ids claimed answer last: results arrive in the reverse of claim order.
	svc := newObjectService(t, func(_ context.Context, id int64, _ int) (bool, error) {
		time.Sleep(time.Duration(n-id) * 3 * time.Millisecond)
		return id%2 == 0, nil
	})
	fetcher, bundle := setup(t, config(), svc.Lookup)
	base := now()
	want := map[int64]time.Time{}
	for id := range int64(n) {
		at := base.Add(time.Duration(id) * time.Millisecond)
		bundle.receive(t, []int64{id}, at)
		if id%2 == 0 {
			want[id] = at
		}
	}
	start(t, fetcher)

	bundle.settle(t)
	require.Equal(t, want, bundle.objects(t))
	for id := range int64(n) {
		require.Equal(t, 1, svc.Calls()[id], "lookups of %d", id)
	}
}

func TestFetch_expiredLeaseIsReclaimedAndStaleResultDiscarded(t *testing.T) {
	t.Parallel()
	started, release := make(chan struct{}), make(chan struct{})
	svc := newObjectService(t, func(context.Context, int64, int) (bool, error) {
		close(started)
		<-release
		return true, nil
	})
	fetcher, bundle := setup(t, config(), svc.Lookup)
	at := now()
	bundle.receive(t, []int64{5}, at)

	// A worker claims the row and dies (or hangs) with it: a 1 ms lease.
	stale, err := bundle.store.ClaimDue(context.Background(), 10, time.Millisecond, time.Time{})
	require.NoError(t, err)
	require.Len(t, stale, 1)

	start(t, fetcher)
	<-started // the fetcher reclaimed the row after the lease ran out

	// The dead worker's answer arrives while the new lookup is in flight: discarded.
	late := store.Result{ObjectID: 5, Token: stale[0].Token, Outcome: store.Offline}
	completed, err := bundle.store.CompleteLookups(context.Background(), []store.Result{late}, store.CompleteParams{Now: time.Now()})
	require.NoError(t, err)
	require.Equal(t, store.Completed{}, completed, "a result under a lost lease changes nothing")
	require.Equal(t, 1, bundle.pending(t), "the reclaimed row is still there")

	close(release)
	bundle.settle(t)
	require.Equal(t, map[int64]time.Time{5: at}, bundle.objects(t))

	// And once more after the new claimer finished.
	late.Outcome = store.Failed
	completed, err = bundle.store.CompleteLookups(context.Background(), []store.Result{late}, store.CompleteParams{Now: time.Now()})
	require.NoError(t, err)
	require.Equal(t, store.Completed{}, completed)
	require.Equal(t, map[int64]time.Time{5: at}, bundle.objects(t))
	require.Zero(t, bundle.pending(t))
}

func TestFetch_repeatedIDsAreCoalesced(t *testing.T) {
	t.Parallel()
	svc := newObjectService(t, always(true))
	fetcher, bundle := setup(t, config(), svc.Lookup)
	base := now()
	receipts := make([]time.Time, 50)
	for i := range receipts {
		receipts[i] = base.Add(time.Duration(i) * time.Millisecond)
	}
	bundle.receive(t, []int64{7, 8, 9, 7}, receipts...) // 50 callbacks, 200 ids, 3 objects
	start(t, fetcher)

	bundle.settle(t)
	require.Equal(t, map[int64]int{7: 1, 8: 1, 9: 1}, svc.Calls())
	newest := receipts[len(receipts)-1]
	require.Equal(t, map[int64]time.Time{7: newest, 8: newest, 9: newest}, bundle.objects(t))
}

func TestFetch_idReceivedDuringLookupIsLookedUpExactlyOnceMore(t *testing.T) {
	t.Parallel()
	started, release := make(chan struct{}), make(chan struct{})
	svc := newObjectService(t, func(_ context.Context, _ int64, call int) (bool, error) {
		if call == 1 {
			close(started)
			<-release
		}
		return true, nil
	})
	fetcher, bundle := setup(t, config(), svc.Lookup)
	first := now()
	bundle.receive(t, []int64{10}, first)
	start(t, fetcher)
	<-started

	// Two more callbacks name it while its lookup is in flight: its status may have
	// changed since the lookup started.
	second := first.Add(time.Millisecond)
	third := first.Add(2 * time.Millisecond)
	bundle.receive(t, []int64{10}, second)
	bundle.receive(t, []int64{10}, third)
	close(release)

	bundle.settle(t)
	require.Equal(t, map[int64]int{10: 2}, svc.Calls())
	require.Equal(t, map[int64]time.Time{10: third}, bundle.objects(t))
}

func TestFetch_receiptOlderThanWindowIsDroppedWithoutLookup(t *testing.T) {
	t.Parallel()
	cfg := config()
	svc := newObjectService(t, always(true))
	fetcher, bundle := setup(t, cfg, svc.Lookup)
	fresh := now()
	bundle.receive(t, []int64{11}, fresh.Add(-2*cfg.ExpireAfter))
	bundle.receive(t, []int64{12}, fresh)
	start(t, fetcher)

	testhelper.Watch(t, time.Minute, "the fresh receipt was never looked up", func() bool { return bundle.pending(t) == 1 })
	require.Equal(t, map[int64]int{12: 1}, svc.Calls(), "no lookup for the expired receipt")
	require.Equal(t, map[int64]time.Time{12: fresh}, bundle.objects(t))
	var attempts int
	require.NoError(t, bundle.pool.QueryRow(context.Background(), "SELECT attempts FROM pending WHERE object_id = 11").Scan(&attempts))
	require.Zero(t, attempts, "never even claimed: expiry's sweep deletes it")
}

func TestFetch_shutdownHandsBackClaims(t *testing.T) {
	t.Parallel()
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
	fetcher, bundle := setup(t, cfg, svc.Lookup)
	bundle.receive(t, []int64{13, 14, 15}, now())
	stop := start(t, fetcher)
	testhelper.Watch(t, time.Minute, "lookups never started", func() bool { mu.Lock(); defer mu.Unlock(); return blocked == 3 })

	stop() // returns once Run has

	type row struct {
		id        int64
		unclaimed bool
		due       bool
	}
	rs, err := bundle.pool.Query(context.Background(),
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
	require.Empty(t, bundle.objects(t))
	require.Equal(t, 3.0, metrics.Sum(bundle.metrics.Lookups.WithLabelValues("abandoned")))
}

func TestFetch_yieldsTheLimitToABusyReplyPath(t *testing.T) {
	t.Parallel()
	ids := make([]int64, 40)
	for i := range ids {
		ids[i] = int64(100 + i)
	}
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
	fetcher, bundle := setup(t, cfg, func(ctx context.Context, _ int64) (bool, error) {
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
	bundle.receive(t, ids, now())
	start(t, fetcher)

	// The reply path wants everything: one lookup at a time, however many are due.
	testhelper.Watch(t, time.Minute, "no lookup started", func() bool { return inFlight.Load() == 1 })
	time.Sleep(100 * time.Millisecond) // twenty polls of the claim loop
	require.Equal(t, int64(1), peak.Load(), "a yielding fetcher never exceeds what it leaves itself")

	// Intake is idle again: the whole limit is used.
	yield.Store(math.Float64bits(0))
	testhelper.Watch(t, time.Minute, "the limit was not used again", func() bool { return inFlight.Load() == 16 })
	close(release)
	bundle.settle(t)
}
