package expiry

// In package expiry, not expiry_test: the tests set the Expirer's clock (now).

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/objwatch/callback/internal/metrics"
	"github.com/objwatch/callback/internal/pgtest"
	"github.com/objwatch/callback/internal/store"
)

const window = 30 * time.Second

var t0 = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)

// setup gives a fresh database and a constructor of Expirers on it, as replicas.
func setup(t *testing.T) (*pgxpool.Pool, func(now func() time.Time) (*Expirer, *metrics.Metrics)) {
	t.Helper()
	pool, _ := pgtest.NewPool(t)
	return pool, func(now func() time.Time) (*Expirer, *metrics.Metrics) {
		m := metrics.New()
		e := New(store.New(pool), window, time.Hour, slog.New(slog.DiscardHandler), m)
		e.now = now
		return e, m
	}
}

func fixed(t time.Time) func() time.Time { return func() time.Time { return t } }

// insertObjects writes objects rows with explicit last_seen.
func insertObjects(t *testing.T, pool *pgxpool.Pool, rows map[int64]time.Time) {
	t.Helper()
	ids := make([]int64, 0, len(rows))
	seen := make([]time.Time, 0, len(rows))
	for id, ts := range rows {
		ids = append(ids, id)
		seen = append(seen, ts)
	}
	_, err := pool.Exec(context.Background(),
		"INSERT INTO objects (id, last_seen) SELECT * FROM unnest($1::bigint[], $2::timestamptz[])", ids, seen)
	require.NoError(t, err)
}

func objects(t *testing.T, pool *pgxpool.Pool) map[int64]time.Time {
	t.Helper()
	return pgtest.IDTimes(t, pool, "SELECT id, last_seen FROM objects")
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
	insertObjects(t, pool, keep)
	insertObjects(t, pool, gone)

	e, m := newExpirer(fixed(t0))
	ran, deleted := e.Tick(context.Background())
	require.True(t, ran)
	require.Equal(t, int64(2), deleted)
	require.Equal(t, keep, objects(t, pool))
	require.Equal(t, 2.0, metrics.Sum(m.RowsExpired))

	ran, deleted = e.Tick(context.Background())
	require.True(t, ran)
	require.Zero(t, deleted, "a second tick at the same time finds nothing")
	require.Equal(t, keep, objects(t, pool))
}

func TestTick_followsTheClock(t *testing.T) {
	t.Parallel()
	pool, newExpirer := setup(t)
	insertObjects(t, pool, map[int64]time.Time{1: t0, 2: t0.Add(5 * time.Second)})
	var now atomic.Pointer[time.Time]
	set := func(ts time.Time) { now.Store(&ts) }
	e, _ := newExpirer(func() time.Time { return *now.Load() })

	set(t0.Add(window))
	_, deleted := e.Tick(context.Background())
	require.Zero(t, deleted)

	set(t0.Add(window + time.Microsecond))
	_, deleted = e.Tick(context.Background())
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
	insertObjects(t, pool, all)

	var (
		wg      sync.WaitGroup
		deleted atomic.Int64
		ran     atomic.Int64
	)
	for range 2 {
		var tick atomic.Int64
		e, _ := newExpirer(func() time.Time {
			return t0.Add(window + time.Duration(tick.Add(1))*2*time.Second)
		})
		wg.Go(func() {
			for range ticks {
				r, d := e.Tick(context.Background())
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
	insertObjects(t, pool, map[int64]time.Time{1: t0.Add(-time.Hour)})

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
	type tick struct {
		ran     bool
		deleted int64
	}
	firstDone := make(chan tick, 1)
	go func() {
		r, d := first.Tick(ctx)
		firstDone <- tick{r, d}
	}()
	// Wait until the first replica waits on our row lock: it got that far only by
	// taking the expiry lock, which it holds until its transaction ends.
	eventually(t, func() bool {
		var waiting bool
		require.NoError(t, pool.QueryRow(ctx,
			"SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock')").Scan(&waiting))
		return waiting
	})

	second, _ := newExpirer(fixed(t0))
	ran, deleted := second.Tick(ctx)
	require.False(t, ran, "the second replica must not run expiry while the first does")
	require.Zero(t, deleted)

	require.NoError(t, blocker.Rollback(ctx))
	got := <-firstDone
	require.Equal(t, tick{ran: true, deleted: 1}, got)
	require.Empty(t, objects(t, pool))
}

func eventually(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition never held")
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// expireStore is a fake Store.
type expireStore struct {
	ExpireFunc func(ctx context.Context, cutoff, forgetBefore time.Time) (bool, int64, error)
}

func (s expireStore) Expire(ctx context.Context, cutoff, forgetBefore time.Time) (bool, int64, error) {
	return s.ExpireFunc(ctx, cutoff, forgetBefore)
}

func TestTick_passesCutoffsFromItsClock(t *testing.T) {
	t.Parallel()
	var gotCutoff, gotForget time.Time
	m := metrics.New()
	e := New(expireStore{ExpireFunc: func(_ context.Context, cutoff, forgetBefore time.Time) (bool, int64, error) {
		gotCutoff, gotForget = cutoff, forgetBefore
		return true, 3, nil
	}}, window, time.Hour, slog.New(slog.DiscardHandler), m)
	e.now = fixed(t0)

	ran, deleted := e.Tick(context.Background())
	require.True(t, ran)
	require.Equal(t, int64(3), deleted)
	require.Equal(t, t0.Add(-window), gotCutoff)
	require.Equal(t, t0.Add(-spoolReplayMemory), gotForget)
}

func TestTick_databaseErrorIsCountedAndReportsNothing(t *testing.T) {
	t.Parallel()
	m := metrics.New()
	e := New(expireStore{ExpireFunc: func(context.Context, time.Time, time.Time) (bool, int64, error) {
		return true, 5, errors.New("connection refused")
	}}, window, time.Hour, slog.New(slog.DiscardHandler), m)

	ran, deleted := e.Tick(context.Background())
	require.False(t, ran)
	require.Zero(t, deleted)
	require.Equal(t, 1.0, metrics.Sum(m.DatabaseErrors.WithLabelValues("expiry")))
	require.Zero(t, metrics.Sum(m.RowsExpired))
}

func TestRun_ticksAtOnceAndStopsWithContext(t *testing.T) {
	t.Parallel()
	ticked := make(chan struct{}, 1)
	e := New(expireStore{ExpireFunc: func(context.Context, time.Time, time.Time) (bool, int64, error) {
		select {
		case ticked <- struct{}{}:
		default:
		}
		return true, 0, nil
	}}, window, time.Hour, slog.New(slog.DiscardHandler), metrics.New())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	<-ticked // the first tick does not wait for the interval (an hour here)
	cancel()
	require.NoError(t, <-done)
}
