package expiry

// In package expiry, not expiry_test: the tests set the Expirer's clock (now).

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/objwatch/callback/internal/callback"
	"github.com/objwatch/callback/internal/metrics"
	"github.com/objwatch/callback/internal/pgtest"
	"github.com/objwatch/callback/internal/store"
	"github.com/objwatch/callback/internal/testhelper"
)

const window = 30 * time.Second

var t0 = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)

// setup gives a fresh database and a constructor of Expirers on it, as replicas.
func setup(t *testing.T) (*pgxpool.Pool, func(now func() time.Time) (*Expirer, *metrics.Metrics)) {
	t.Helper()
	pool, _ := pgtest.NewPool(t)
	return pool, func(now func() time.Time) (*Expirer, *metrics.Metrics) {
		m := metrics.New()
		e := New(Config{Window: window, Tick: time.Hour, Chunk: 10_000}, store.New(pool), testhelper.DiscardLogger(), m)
		e.now = now
		return e, m
	}
}

func fixed(t time.Time) func() time.Time { return func() time.Time { return t } }

func objects(t *testing.T, pool *pgxpool.Pool) map[int64]time.Time {
	t.Helper()
	return pgtest.Objects(t, pool)
}

func TestTick_deletesRowsOlderThanWindowAndKeepsTheRest(t *testing.T) {
	t.Parallel()
	pool, newExpirer := setup(t)
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
	pgtest.InsertObjects(t, pool, keep)
	pgtest.InsertObjects(t, pool, gone)

	e, m := newExpirer(fixed(t0))
	ran, deleted := tick(e, context.Background())
	require.True(t, ran)
	require.Equal(t, int64(2), deleted)
	require.Equal(t, keep, objects(t, pool))
	require.Equal(t, 2.0, metrics.Sum(m.RowsExpired))

	ran, deleted = tick(e, context.Background())
	require.True(t, ran)
	require.Zero(t, deleted, "a second tick at the same time finds nothing")
	require.Equal(t, keep, objects(t, pool))
}

func TestTick_followsTheClock(t *testing.T) {
	t.Parallel()
	pool, newExpirer := setup(t)
	pgtest.InsertObjects(t, pool, map[int64]time.Time{1: t0, 2: t0.Add(5 * time.Second)})
	var now atomic.Pointer[time.Time]
	set := func(ts time.Time) { now.Store(&ts) }
	e, _ := newExpirer(func() time.Time { return *now.Load() })

	set(t0.Add(window))
	_, deleted := tick(e, context.Background())
	require.Zero(t, deleted)

	set(t0.Add(window + time.Microsecond))
	_, deleted = tick(e, context.Background())
	require.Equal(t, int64(1), deleted)
	require.Equal(t, map[int64]time.Time{2: t0.Add(5 * time.Second)}, objects(t, pool))
}

func TestTick_twoReplicasDeleteEachRowExactlyOnce(t *testing.T) {
	t.Parallel()
	pool, newExpirer := setup(t)
	const rows, ticks = 2000, 60
	// last_seen spread over 100 s; each tick moves its replica's clock 2 s on, so
	// both replicas find rows to delete on most ticks, and race for them.
	all := make(map[int64]time.Time, rows)
	for i := range int64(rows) {
		all[i] = t0.Add(time.Duration(i) * 50 * time.Millisecond)
	}
	pgtest.InsertObjects(t, pool, all)

	var (
		wg      sync.WaitGroup
		deleted atomic.Int64
		ran     atomic.Int64
	)
	for range 2 {
		var clockTicks atomic.Int64
		e, _ := newExpirer(func() time.Time {
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
	require.Empty(t, objects(t, pool))
	require.Positive(t, ran.Load())
}

func TestTick_secondReplicaDoesNotRunWhileFirstHoldsTheLock(t *testing.T) {
	t.Parallel()
	pool, newExpirer := setup(t)
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

	first, _ := newExpirer(fixed(t0))
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
	testhelper.Eventually(t, 15*time.Second, "the first replica waits on the row lock", func() bool {
		var waiting bool
		require.NoError(t, pool.QueryRow(ctx,
			"SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock')").Scan(&waiting))
		return waiting
	})

	second, _ := newExpirer(fixed(t0))
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
	m := metrics.New()
	e := New(Config{Window: window, Tick: time.Hour, Grace: time.Second, Chunk: 7}, expireStore{ExpireFunc: func(_ context.Context, p store.ExpireParams) (store.ExpiryTick, error) {
		got = p
		return store.ExpiryTick{Ran: true, Deleted: 3, Swept: 2}, nil
	}}, testhelper.DiscardLogger(), m)
	e.now = fixed(t0)

	ran, deleted := tick(e, context.Background())
	require.True(t, ran)
	require.Equal(t, int64(3), deleted)
	require.Equal(t, store.ExpireParams{
		ObjectsCutoff:      t0.Add(-time.Second - window), // not past callbacks that may not be committed yet
		PendingCutoff:      t0.Add(-window),
		ForgetBefore:       t0.Add(-spoolReplayMemory),
		ForgetMergedBefore: t0.Add(-2 * window),
		Chunk:              7,
	}, got)
	require.Equal(t, 2.0, metrics.Sum(m.Dropped.WithLabelValues("pending", "expired")))
}

func TestTick_databaseErrorIsCountedAndFinishedChunksStillCount(t *testing.T) {
	t.Parallel()
	m := metrics.New()
	e := New(Config{Window: window, Tick: time.Hour}, expireStore{ExpireFunc: func(context.Context, store.ExpireParams) (store.ExpiryTick, error) {
		return store.ExpiryTick{Ran: true, Deleted: 5}, errors.New("connection refused")
	}}, testhelper.DiscardLogger(), m)

	tk := e.Tick(context.Background())
	require.Equal(t, int64(5), tk.Deleted)
	require.Equal(t, 1.0, metrics.Sum(m.DatabaseErrors.WithLabelValues("expiry")))
	require.Equal(t, 5.0, metrics.Sum(m.RowsExpired), "rows deleted by chunks that committed before the error are gone")
}

func TestRun_ticksAtOnceAndStopsWithContext(t *testing.T) {
	t.Parallel()
	ticked := make(chan struct{}, 1)
	e := New(Config{Window: window, Tick: time.Hour}, expireStore{ExpireFunc: func(context.Context, store.ExpireParams) (store.ExpiryTick, error) {
		select {
		case ticked <- struct{}{}:
		default:
		}
		return store.ExpiryTick{Ran: true}, nil
	}}, testhelper.DiscardLogger(), metrics.New())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	<-ticked // the first tick does not wait for the interval (an hour here)
	cancel()
	require.NoError(t, <-done)
}

func TestTick_neverPastCallbacksNotMergedYet(t *testing.T) {
	t.Parallel()
	pool, newExpirer := setup(t)
	ctx := context.Background()
	db := store.New(pool)
	// Object 1 was last named 32 s ago: outside the window, were it not for a callback
	// accepted 3 s ago and not merged yet, which may name it (it does).
	pgtest.InsertObjects(t, pool, map[int64]time.Time{1: t0.Add(-window - 2*time.Second), 2: t0.Add(-2 * window)})
	require.NoError(t, db.InsertCallbacks(ctx, []callback.Callback{callback.New(t0.Add(-3*time.Second), []int64{1})}))
	e, _ := newExpirer(fixed(t0))

	_, deleted := tick(e, ctx)
	require.Equal(t, int64(1), deleted, "only the row older than the window before the oldest unmerged receipt")
	require.Equal(t, map[int64]time.Time{1: t0.Add(-window - 2*time.Second)}, objects(t, pool))

	// Once merged, the callback has refreshed the row, and the clock is expiry's own again.
	_, err := db.Merge(ctx, store.MergeParams{MaxBatches: 10, MaxIDs: 100})
	require.NoError(t, err)
	_, deleted = tick(e, ctx)
	require.Zero(t, deleted)
	require.Equal(t, map[int64]time.Time{1: t0.Add(-3 * time.Second)}, objects(t, pool))
}

func TestTick_deletesNoObjectWhileTheSpoolHoldsCallbacks(t *testing.T) {
	t.Parallel()
	pool, _ := pgtest.NewPool(t)
	pgtest.InsertObjects(t, pool, map[int64]time.Time{1: t0.Add(-time.Hour)})
	var holds atomic.Bool
	holds.Store(true)
	e := New(Config{Window: window, Tick: time.Hour, Chunk: 100, SpoolHolds: holds.Load}, store.New(pool), testhelper.DiscardLogger(), metrics.New())
	e.now = fixed(t0)

	_, deleted := tick(e, context.Background())
	require.Zero(t, deleted, "spooled callbacks may name the row: they are not even in the inbox yet")
	holds.Store(false)
	_, deleted = tick(e, context.Background())
	require.Equal(t, int64(1), deleted)
}

func TestTick_deletesInChunksUntilDone(t *testing.T) {
	t.Parallel()
	pool, _ := pgtest.NewPool(t)
	old := make(map[int64]time.Time)
	for i := range int64(95) {
		old[i] = t0.Add(-time.Hour - time.Duration(i)*time.Second)
	}
	pgtest.InsertObjects(t, pool, old)
	pgtest.InsertObjects(t, pool, map[int64]time.Time{1000: t0})
	e := New(Config{Window: window, Tick: time.Hour, Chunk: 10}, store.New(pool), testhelper.DiscardLogger(), metrics.New())
	e.now = fixed(t0)

	_, deleted := tick(e, context.Background())
	require.Equal(t, int64(95), deleted, "ten chunks of at most ten rows, in one tick")
	require.Equal(t, map[int64]time.Time{1000: t0}, objects(t, pool))
}

func TestTick_sweepsPendingWorkThatLeftTheWindow(t *testing.T) {
	t.Parallel()
	pool, newExpirer := setup(t)
	ctx := context.Background()
	_, err := pool.Exec(ctx, `INSERT INTO pending (object_id, received_at, due_at) VALUES
		(1, $1, $1), (2, $2, $2), (3, $1, $3)`,
		t0.Add(-window-time.Second), t0.Add(-time.Second), t0.Add(time.Minute))
	require.NoError(t, err)
	e, m := newExpirer(fixed(t0))

	tk := e.Tick(ctx)
	require.Equal(t, int64(1), tk.Swept)
	require.Equal(t, map[int64]time.Time{2: t0.Add(-time.Second), 3: t0.Add(-window - time.Second)},
		pgtest.IDTimes(t, pool, "SELECT object_id, received_at FROM pending"),
		"a row whose receipt is in the window stays, and so does one under a lease or backoff")
	require.Equal(t, 1.0, metrics.Sum(m.Dropped.WithLabelValues("pending", "expired")))
}

func TestTick_dropsInboxBatchesThatLeftTheWindow(t *testing.T) {
	t.Parallel()
	pool, newExpirer := setup(t)
	ctx := context.Background()
	db := store.New(pool)
	require.NoError(t, db.InsertCallbacks(ctx, []callback.Callback{callback.New(t0.Add(-window-time.Second), []int64{1, 2, 3})}))
	require.NoError(t, db.InsertCallbacks(ctx, []callback.Callback{callback.New(t0.Add(-time.Second), []int64{4})}))
	e, m := newExpirer(fixed(t0))

	tk := e.Tick(ctx)
	require.Equal(t, int64(3), tk.StaleIDs)
	cbs, err := db.Inbox(ctx)
	require.NoError(t, err)
	require.Len(t, cbs, 1, "the batch within the window waits for the merger")
	require.Equal(t, 3.0, metrics.Sum(m.Dropped.WithLabelValues("inbox", "expired")))
}
