package expiry

// In package expiry, not expiry_test: the tests put a fake store in place of the real
// one, and read spoolReplayMemory.

import (
	"cmp"
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/objwatch/callback/internal/callback"
	"github.com/objwatch/callback/internal/component"
	"github.com/objwatch/callback/internal/merge"
	"github.com/objwatch/callback/internal/metrics"
	"github.com/objwatch/callback/internal/pgtest"
	"github.com/objwatch/callback/internal/store"
	"github.com/objwatch/callback/internal/testhelper"
)

const window = 30 * time.Second

var t0 = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)

// testBundle is what a test sees of its expirer's surroundings: a fresh database, the
// metrics, and the expirer's clock.
type testBundle struct {
	pool    *pgxpool.Pool
	db      *store.Store
	metrics *metrics.Metrics
	cfg     Config
	clock   atomic.Pointer[time.Time]
	// behind: how far the fleet's low watermark is behind the expirer's clock.
	behind atomic.Int64
}

// lowFunc is a fake Watermark.
type lowFunc func(ctx context.Context, now time.Time) (time.Time, error)

func (f lowFunc) Low(ctx context.Context, now time.Time) (time.Time, error) { return f(ctx, now) }

// setup builds an expirer with cfg (the window and an hour's tick unless it says
// otherwise) on a fresh database, its clock at t0 until the test sets it.
func setup(t *testing.T, cfg Config) (*Expirer, *testBundle) {
	t.Helper()
	pool, _ := pgtest.NewPool(t)
	cfg.ExpireAfter = cmp.Or(cfg.ExpireAfter, window)
	cfg.Tick = cmp.Or(cfg.Tick, time.Hour)
	b := &testBundle{pool: pool, db: store.New(pool), metrics: metrics.New(), cfg: cfg}
	b.set(t0)
	return b.replica(t, b.now), b
}

// replica is one more expirer on the bundle's database, as another replica runs it,
// with its own clock.
func (b *testBundle) replica(t *testing.T, now func() time.Time) *Expirer {
	t.Helper()
	low := lowFunc(func(_ context.Context, now time.Time) (time.Time, error) {
		return now.Add(-time.Duration(b.behind.Load())), nil
	})
	e, err := New(b.cfg, b.db, low, component.Deps{Metrics: b.metrics, Now: now})
	require.NoError(t, err)
	return e
}

func (b *testBundle) now() time.Time   { return *b.clock.Load() }
func (b *testBundle) set(ts time.Time) { b.clock.Store(&ts) }

func fixed(t time.Time) func() time.Time { return func() time.Time { return t } }

func objects(t *testing.T, pool *pgxpool.Pool) map[int64]time.Time {
	t.Helper()
	return pgtest.IDTimes(t, pool, "SELECT id, last_seen FROM objects")
}

func TestTick_deletesRowsOlderThanWindowAndKeepsTheRest(t *testing.T) {
	t.Parallel()
	e, b := setup(t, Config{})
	keep := map[int64]time.Time{
		3: t0.Add(-window),                    // exactly at the edge: not older than the window
		4: t0.Add(-window + time.Microsecond), // just inside
		5: t0.Add(-time.Second),
		6: t0,
		7: t0.Add(time.Second), // a receipt from a clock slightly ahead
	}
	gone := map[int64]time.Time{
		1: t0.Add(-time.Hour),
		2: t0.Add(-window - time.Microsecond), // just outside
	}
	pgtest.InsertObjects(t, b.pool, keep)
	pgtest.InsertObjects(t, b.pool, gone)

	ran, deleted := tick(e, context.Background())
	require.True(t, ran)
	require.Equal(t, int64(2), deleted)
	require.Equal(t, keep, objects(t, b.pool))
	require.Equal(t, 2.0, metrics.Sum(b.metrics.RowsExpired))

	ran, deleted = tick(e, context.Background())
	require.True(t, ran)
	require.Zero(t, deleted, "a second tick at the same time finds nothing")
	require.Equal(t, keep, objects(t, b.pool))
}

func TestTick_followsTheClock(t *testing.T) {
	t.Parallel()
	e, b := setup(t, Config{})
	pgtest.InsertObjects(t, b.pool, map[int64]time.Time{1: t0, 2: t0.Add(5 * time.Second)})

	b.set(t0.Add(window))
	_, deleted := tick(e, context.Background())
	require.Zero(t, deleted)

	b.set(t0.Add(window + time.Microsecond))
	_, deleted = tick(e, context.Background())
	require.Equal(t, int64(1), deleted)
	require.Equal(t, map[int64]time.Time{2: t0.Add(5 * time.Second)}, objects(t, b.pool))
}

func TestTick_twoReplicasDeleteEachRowExactlyOnce(t *testing.T) {
	t.Parallel()
	_, b := setup(t, Config{})
	const rows, ticks = 2000, 60
	// last_seen spread over 100 s; each tick moves its replica's clock 2 s on, so
	// both replicas find rows to delete on most ticks, and race for them.
	all := make(map[int64]time.Time, rows)
	for i := range int64(rows) {
		all[i] = t0.Add(time.Duration(i) * 50 * time.Millisecond)
	}
	pgtest.InsertObjects(t, b.pool, all)

	var (
		wg      sync.WaitGroup
		deleted atomic.Int64
		ran     atomic.Int64
	)
	for range 2 {
		var clockTicks atomic.Int64
		e := b.replica(t, func() time.Time {
			return t0.Add(window + time.Duration(clockTicks.Add(1))*2*time.Second)
		})
		wg.Go(func() {
			for range ticks {
				r, d := tick(e, context.Background())
				if r {
					ran.Add(1)
				} else if d != 0 {
					t.Errorf("a replica that did not run deleted %d rows", d)
				}
				deleted.Add(d)
			}
		})
	}
	wg.Wait()
	require.Equal(t, int64(rows), deleted.Load(), "deleted counts summed over both replicas")
	require.Empty(t, objects(t, b.pool))
	require.Positive(t, ran.Load())
}

func TestTick_secondReplicaDoesNotRunWhileFirstHoldsTheLock(t *testing.T) {
	t.Parallel()
	first, b := setup(t, Config{})
	pool := b.pool
	ctx := context.Background()
	pgtest.InsertObjects(t, pool, map[int64]time.Time{1: t0.Add(-time.Hour)})

	// Keep the first replica's tick inside its transaction, holding the expiry lock:
	// it also forgets old spool replay records, and one of them is locked here.
	_, err := pool.Exec(ctx, "INSERT INTO spool_replays (segment_id, replayed_at) VALUES (gen_random_uuid(), $1)",
		t0.Add(-30*24*time.Hour))
	require.NoError(t, err)
	blocker, err := pool.Begin(ctx)
	require.NoError(t, err)
	defer blocker.Rollback(ctx) //nolint:errcheck
	_, err = blocker.Exec(ctx, "SELECT * FROM spool_replays FOR UPDATE")
	require.NoError(t, err)

	type tickResult struct {
		ran     bool
		deleted int64
	}
	firstDone := make(chan tickResult, 1)
	go func() {
		r, d := tick(first, ctx)
		firstDone <- tickResult{r, d}
	}()
	// Wait until the first replica waits on our row lock: it got that far only by
	// taking the expiry lock, which it holds until its transaction ends.
	testhelper.Watch(t, 15*time.Second, "condition", func() bool {
		var waiting bool
		require.NoError(t, pool.QueryRow(ctx,
			"SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock')").Scan(&waiting))
		return waiting
	})

	second := b.replica(t, fixed(t0))
	ran, deleted := tick(second, ctx)
	require.False(t, ran, "the second replica must not run expiry while the first does")
	require.Zero(t, deleted)

	require.NoError(t, blocker.Rollback(ctx))
	got := <-firstDone
	require.Equal(t, tickResult{ran: true, deleted: 1}, got)
	require.Empty(t, objects(t, pool))
}

// tick runs one Tick and returns what the older tests read of it.
func tick(e *Expirer, ctx context.Context) (ran bool, deleted int64) {
	t := e.Tick(ctx)
	return t.Ran, t.Deleted
}

// expireStore is a fake Store.
type expireStore struct {
	ExpireFunc         func(ctx context.Context, p store.ExpireParams) (store.ExpiryTick, error)
	OldestUnmergedFunc func(ctx context.Context, cutoff, now time.Time) (time.Time, error)
}

func (s expireStore) Expire(ctx context.Context, p store.ExpireParams) (store.ExpiryTick, error) {
	return s.ExpireFunc(ctx, p)
}

func (s expireStore) OldestUnmerged(ctx context.Context, cutoff, now time.Time) (time.Time, error) {
	if s.OldestUnmergedFunc == nil {
		return now, nil
	}
	return s.OldestUnmergedFunc(ctx, cutoff, now)
}

func TestTick_passesCutoffsFromItsClock(t *testing.T) {
	t.Parallel()
	var got store.ExpireParams
	e, b := setup(t, Config{Chunk: 7})
	b.behind.Store(int64(time.Second))
	e.store = expireStore{ExpireFunc: func(_ context.Context, p store.ExpireParams) (store.ExpiryTick, error) {
		got = p
		return store.ExpiryTick{Ran: true, Deleted: 3, Swept: 2}, nil
	}}

	ran, deleted := tick(e, context.Background())
	require.True(t, ran)
	require.Equal(t, int64(3), deleted)
	require.Equal(t, store.ExpireParams{
		ObjectsCutoff:       t0.Add(-time.Second - window), // not past the fleet's low watermark
		PendingCutoff:       t0.Add(-window),
		PendingRankSlack:    2 * window,
		ForgetBefore:        t0.Add(-spoolReplayMemory),
		ForgetMergedBefore:  t0.Add(-2 * window),
		ForgetReplicasAfter: ForgetReplicasDefault,
		Chunk:               7,
	}, got)
	require.Equal(t, 2.0, metrics.Sum(b.metrics.Dropped.WithLabelValues("pending", "expired")))
}

func TestTick_databaseErrorIsCountedAndFinishedChunksStillCount(t *testing.T) {
	t.Parallel()
	e, b := setup(t, Config{})
	e.store = expireStore{ExpireFunc: func(context.Context, store.ExpireParams) (store.ExpiryTick, error) {
		return store.ExpiryTick{Ran: true, Deleted: 5}, errors.New("connection refused")
	}}

	tk := e.Tick(context.Background())
	require.Equal(t, int64(5), tk.Deleted)
	require.Equal(t, 1.0, metrics.Sum(b.metrics.DatabaseErrors.WithLabelValues("expiry")))
	require.Equal(t, 5.0, metrics.Sum(b.metrics.RowsExpired), "rows deleted by chunks that committed before the error are gone")
}

func TestRun_ticksAtOnceAndStopsWithContext(t *testing.T) {
	t.Parallel()
	ticked := make(chan struct{}, 1)
	e, _ := setup(t, Config{})
	e.store = expireStore{ExpireFunc: func(context.Context, store.ExpireParams) (store.ExpiryTick, error) {
		select {
		case ticked <- struct{}{}:
		default:
		}
		return store.ExpiryTick{Ran: true}, nil
	}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	<-ticked // the first tick does not wait for the interval (an hour here)
	cancel()
	require.NoError(t, <-done)
}

func TestTick_neverPastCallbacksNotMergedYet(t *testing.T) {
	t.Parallel()
	e, b := setup(t, Config{})
	pool, db := b.pool, b.db
	ctx := context.Background()
	// Object 1 was last named 32 s ago: outside the window, were it not for a callback
	// accepted 3 s ago and not merged yet, which may name it (it does).
	pgtest.InsertObjects(t, pool, map[int64]time.Time{1: t0.Add(-window - 2*time.Second), 2: t0.Add(-2 * window)})
	require.NoError(t, db.InsertCallbacks(ctx, []callback.Callback{callback.New(t0.Add(-3*time.Second), []int64{1})}))

	_, deleted := tick(e, ctx)
	require.Equal(t, int64(1), deleted, "only the row older than the window before the oldest unmerged receipt")
	require.Equal(t, map[int64]time.Time{1: t0.Add(-window - 2*time.Second)}, objects(t, pool))

	// Once merged, the callback has refreshed the row, and the clock is expiry's own again.
	m, err := merge.New(merge.Config{MaxBatches: 10, MaxIDs: 100, ExpireAfter: 100 * 365 * 24 * time.Hour}, db, component.Deps{})
	require.NoError(t, err)
	_, err = m.Pass(ctx)
	require.NoError(t, err)
	_, deleted = tick(e, ctx)
	require.Zero(t, deleted)
	require.Equal(t, map[int64]time.Time{1: t0.Add(-3 * time.Second)}, objects(t, pool))
}

// A callback held outside the inbox (a request in flight, a spool, another replica's
// spool) holds expiry back through the fleet's watermark.
func TestTick_neverPastTheFleetsWatermark(t *testing.T) {
	t.Parallel()
	e, b := setup(t, Config{Chunk: 100})
	pgtest.InsertObjects(t, b.pool, map[int64]time.Time{1: t0.Add(-window - 5*time.Second), 2: t0.Add(-window - 20*time.Second)})
	b.behind.Store(int64(10 * time.Second)) // a replica holds a callback received 10 s ago

	_, deleted := tick(e, context.Background())
	require.Equal(t, int64(1), deleted, "only the row that had expired before the held receipt")
	require.Equal(t, map[int64]time.Time{1: t0.Add(-window - 5*time.Second)}, objects(t, b.pool))
	b.behind.Store(0)
	_, deleted = tick(e, context.Background())
	require.Equal(t, int64(1), deleted)
}

func TestTick_deletesInChunksUntilDone(t *testing.T) {
	t.Parallel()
	e, b := setup(t, Config{Chunk: 10})
	pool := b.pool
	old := make(map[int64]time.Time)
	for i := range int64(95) {
		old[i] = t0.Add(-time.Hour - time.Duration(i)*time.Second)
	}
	pgtest.InsertObjects(t, pool, old)
	pgtest.InsertObjects(t, pool, map[int64]time.Time{1000: t0})

	_, deleted := tick(e, context.Background())
	require.Equal(t, int64(95), deleted, "ten chunks of at most ten rows, in one tick")
	require.Equal(t, map[int64]time.Time{1000: t0}, objects(t, pool))
}

func TestTick_sweepsPendingWorkThatLeftTheWindow(t *testing.T) {
	t.Parallel()
	e, b := setup(t, Config{})
	pool := b.pool
	ctx := context.Background()
	// received_at is on the expirer's clock (t0), due_at (the rank, a lease, a backoff)
	// on the database's.
	_, err := pool.Exec(ctx, `INSERT INTO pending (object_id, received_at, due_at) VALUES
		(1, $1, now() - interval '61 seconds'),
		(2, $2, now() - interval '1 second'),
		(3, $1, now() + interval '1 minute'),
		(4, $1, '-infinity'),
		(5, $2, '-infinity')`,
		t0.Add(-window-time.Second), t0.Add(-time.Second))
	require.NoError(t, err)

	tk := e.Tick(ctx)
	require.Equal(t, int64(1), tk.Swept)
	require.Equal(t, int64(1), tk.Forgot)
	require.Equal(t, map[int64]time.Time{2: t0.Add(-time.Second), 3: t0.Add(-window - time.Second), 5: t0.Add(-time.Second)},
		pgtest.IDTimes(t, pool, "SELECT object_id, received_at FROM pending"),
		"a row whose receipt is in the window stays, so does one under a lease or backoff, and so does a done row within the window")
	require.Equal(t, 1.0, metrics.Sum(b.metrics.Dropped.WithLabelValues("pending", "expired")), "a done row forgotten is no work dropped")
}

func TestTick_dropsInboxBatchesThatLeftTheWindow(t *testing.T) {
	t.Parallel()
	e, b := setup(t, Config{})
	ctx := context.Background()
	db := b.db
	require.NoError(t, db.InsertCallbacks(ctx, []callback.Callback{callback.New(t0.Add(-window-time.Second), []int64{1, 2, 3})}))
	require.NoError(t, db.InsertCallbacks(ctx, []callback.Callback{callback.New(t0.Add(-time.Second), []int64{4})}))

	tk := e.Tick(ctx)
	require.Equal(t, int64(3), tk.StaleIDs)
	cbs, err := db.Inbox(ctx)
	require.NoError(t, err)
	require.Len(t, cbs, 1, "the batch within the window waits for the merger")
	require.Equal(t, 3.0, metrics.Sum(b.metrics.Dropped.WithLabelValues("inbox", "expired")))
}
