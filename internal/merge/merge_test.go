package merge_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/objwatch/callback/internal/callback"
	"github.com/objwatch/callback/internal/merge"
	"github.com/objwatch/callback/internal/metrics"
	"github.com/objwatch/callback/internal/pgtest"
	"github.com/objwatch/callback/internal/store"
	"github.com/objwatch/callback/internal/testhelper"
)

// mergeStore is a fake merge.Store.
type mergeStore struct {
	MergeFunc func(ctx context.Context, p store.MergeParams) (store.Merged, error)
}

func (s mergeStore) Merge(ctx context.Context, p store.MergeParams) (store.Merged, error) {
	return s.MergeFunc(ctx, p)
}

// fixture is a real store on a fresh database, seen through a fake that reports every
// pass on passes, so that tests wait for passes instead of for time.
type fixture struct {
	pool   *pgxpool.Pool
	store  *store.Store
	passes chan store.Merged
	m      *metrics.Metrics
}

func setup(t *testing.T) *fixture {
	t.Helper()
	pool, _ := pgtest.NewPool(t)
	return &fixture{pool: pool, store: store.New(pool), passes: make(chan store.Merged, 100), m: metrics.New()}
}

func (f *fixture) reporting() merge.Store {
	return mergeStore{MergeFunc: func(ctx context.Context, p store.MergeParams) (store.Merged, error) {
		n, err := f.store.Merge(ctx, p)
		if err == nil {
			f.passes <- n
		}
		return n, err
	}}
}

// run runs m until the test ends.
func run(t *testing.T, m *merge.Merger) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		require.NoError(t, <-done)
	})
}

var t0 = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)

func at(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }

func (f *fixture) insert(t *testing.T, cbs ...callback.Callback) {
	t.Helper()
	require.NoError(t, f.store.InsertCallbacks(context.Background(), cbs))
}

func (f *fixture) count(t *testing.T, table string) int {
	t.Helper()
	var n int
	require.NoError(t, f.pool.QueryRow(context.Background(), "SELECT count(*) FROM "+table).Scan(&n))
	return n
}

func (f *fixture) pending(t *testing.T) map[int64]time.Time {
	t.Helper()
	return pgtest.IDTimes(t, f.pool, "SELECT object_id, received_at FROM pending")
}

// idle: an interval longer than any test, so only Wake or a full pass starts a pass.
const idle = time.Hour

func TestPass_drainsInboxIntoPending(t *testing.T) {
	t.Parallel()
	f := setup(t)
	f.insert(t,
		callback.New(at(0), []int64{1, 2, 2}),
		callback.New(at(5), []int64{2, 3}),
		callback.New(at(3), []int64{1}),
		callback.New(at(9), nil),
	)
	var woken atomic.Int64
	m := merge.New(merge.Config{MaxBatches: 1000, MaxIDs: 1 << 20, Interval: idle}, f.store, testhelper.DiscardLogger(), f.m, func() { woken.Add(1) })

	n, err := m.Pass(context.Background())
	require.NoError(t, err)
	require.Equal(t, store.Merged{Batches: 1, Callbacks: 4, Ids: 3, Changed: 3}, n)
	require.Equal(t, map[int64]time.Time{1: at(3), 2: at(5), 3: at(5)}, f.pending(t), "one row per object, newest receipt")
	require.Zero(t, f.count(t, "inbox_batches"))
	require.Equal(t, int64(1), woken.Load(), "the fetcher is woken when work changed")
	require.Equal(t, 4.0, metrics.Sum(f.m.MergedCallbacks))
	require.Equal(t, 3.0, metrics.Sum(f.m.MergedIDs))

	// An older receipt for a pending object changes nothing and wakes nobody.
	f.insert(t, callback.New(at(1), []int64{2}))
	n, err = m.Pass(context.Background())
	require.NoError(t, err)
	require.Equal(t, store.Merged{Batches: 1, Callbacks: 1, Ids: 1}, n)
	require.Equal(t, map[int64]time.Time{1: at(3), 2: at(5), 3: at(5)}, f.pending(t))
	require.Equal(t, int64(1), woken.Load())
}

func TestRun_wakeStartsAPass(t *testing.T) {
	t.Parallel()
	f := setup(t)
	m := merge.New(merge.Config{MaxBatches: 1000, MaxIDs: 1 << 20, Interval: idle}, f.reporting(), testhelper.DiscardLogger(), f.m, nil)
	run(t, m)
	require.Equal(t, store.Merged{}, <-f.passes, "the first pass runs at once and finds nothing")

	f.insert(t, callback.New(at(0), []int64{7, 8}))
	m.Wake()
	require.Equal(t, store.Merged{Batches: 1, Callbacks: 1, Ids: 2, Changed: 2}, <-f.passes)
	require.Equal(t, map[int64]time.Time{7: at(0), 8: at(0)}, f.pending(t))
	require.Zero(t, f.count(t, "inbox_batches"))
}

func TestRun_fullPassLoopsAgainAtOnce(t *testing.T) {
	t.Parallel()
	f := setup(t)
	for i := range 5 {
		f.insert(t, callback.New(at(i), []int64{int64(i)}))
	}
	m := merge.New(merge.Config{MaxBatches: 2, MaxIDs: 1 << 20, Interval: idle}, f.reporting(), testhelper.DiscardLogger(), f.m, nil)
	run(t, m)

	// No Wake and an hour's interval: only "a full pass means more is waiting" can
	// start the second and third passes.
	var sizes []int64
	for range 3 {
		sizes = append(sizes, (<-f.passes).Batches)
	}
	require.Equal(t, []int64{2, 2, 1}, sizes)
	require.Zero(t, f.count(t, "inbox_batches"))
	require.Equal(t, 5, f.count(t, "pending"))
}

func TestRun_exactMultipleOfMaxEndsWithAnEmptyPass(t *testing.T) {
	t.Parallel()
	f := setup(t)
	for i := range 4 {
		f.insert(t, callback.New(at(i), []int64{int64(i)}))
	}
	m := merge.New(merge.Config{MaxBatches: 2, MaxIDs: 1 << 20, Interval: idle}, f.reporting(), testhelper.DiscardLogger(), f.m, nil)
	run(t, m)

	var sizes []int64
	for range 3 {
		sizes = append(sizes, (<-f.passes).Batches)
	}
	require.Equal(t, []int64{2, 2, 0}, sizes)
	require.Zero(t, f.count(t, "inbox_batches"))
}

func TestRun_idBoundEndsAPassEarly(t *testing.T) {
	t.Parallel()
	f := setup(t)
	for i := range 3 {
		f.insert(t, callback.New(at(i), []int64{int64(10 * i), int64(10*i + 1), int64(10*i + 2)}))
	}
	// 4 ids at most: the first batch (3 ids) is under the bound, so the second is taken
	// too and crosses it; that pass is full, and the third batch waits for the next.
	m := merge.New(merge.Config{MaxBatches: 100, MaxIDs: 4, Interval: idle}, f.reporting(), testhelper.DiscardLogger(), f.m, nil)
	run(t, m)

	first, second := <-f.passes, <-f.passes
	require.Equal(t, store.Merged{Batches: 2, Callbacks: 2, Ids: 6, Changed: 6, Full: true}, first)
	require.Equal(t, store.Merged{Batches: 1, Callbacks: 1, Ids: 3, Changed: 3}, second)
	require.Zero(t, f.count(t, "inbox_batches"))
	require.Len(t, f.pending(t), 9)
}

func TestPass_quarantineIsCountedAndLogged(t *testing.T) {
	t.Parallel()
	f := setup(t)
	_, err := f.pool.Exec(context.Background(),
		"INSERT INTO inbox_batches (batch_id, received_at, callbacks, ids, data) VALUES ($1, $2, 1, 1, '\\x09')", callback.New(at(0), nil).ID, at(0))
	require.NoError(t, err)
	f.insert(t, callback.New(at(1), []int64{4}))
	var logs bytes.Buffer
	m := merge.New(merge.Config{MaxBatches: 10, MaxIDs: 1 << 20, Interval: idle}, f.store, slog.New(slog.NewTextHandler(&logs, nil)), f.m, nil)

	n, err := m.Pass(context.Background())
	require.NoError(t, err)
	require.Equal(t, int64(1), n.Callbacks)
	require.Equal(t, 1.0, metrics.Sum(f.m.Quarantined))
	require.Contains(t, logs.String(), "unknown version 9")
	require.Equal(t, 1, f.count(t, "inbox_quarantine"))
	require.Equal(t, map[int64]time.Time{4: at(1)}, f.pending(t))
}

func TestRun_retriesAfterDatabaseError(t *testing.T) {
	t.Parallel()
	var calls atomic.Int64
	retried := make(chan struct{})
	s := mergeStore{MergeFunc: func(context.Context, store.MergeParams) (store.Merged, error) {
		switch calls.Add(1) {
		case 1:
			return store.Merged{}, errors.New("connection refused")
		case 2:
			close(retried)
		}
		return store.Merged{}, nil
	}}
	f := &fixture{m: metrics.New()}
	m := merge.New(merge.Config{MaxBatches: 10, MaxIDs: 1 << 20, Interval: idle}, s, testhelper.DiscardLogger(), f.m, nil)
	run(t, m)
	<-retried // without a Wake or the interval: the failure's own backoff retried
	require.Equal(t, 1.0, metrics.Sum(f.m.DatabaseErrors.WithLabelValues("merge")))
}

func TestPass_takesTheNewestBatchesFirst(t *testing.T) {
	t.Parallel()
	f := setup(t)
	for i := range 3 {
		f.insert(t, callback.New(at(1000*i), []int64{int64(i)}))
	}
	m := merge.New(merge.Config{MaxBatches: 1, MaxIDs: 1 << 20, Interval: idle}, f.store, testhelper.DiscardLogger(), f.m, nil)
	var order []int64
	for range 3 {
		_, err := m.Pass(context.Background())
		require.NoError(t, err)
		for id := range f.pending(t) {
			if !slices.Contains(order, id) {
				order = append(order, id)
			}
		}
	}
	require.Equal(t, []int64{2, 1, 0}, order, "under a backlog, the newest receipts are merged first")
}

func TestPass_dropsWorkThatLeftTheWindow(t *testing.T) {
	t.Parallel()
	f := setup(t)
	now := time.Now()
	const window = time.Minute
	old, fresh := now.Add(-2*window), now.Add(-time.Second)
	f.insert(t, callback.New(old, []int64{1, 2}), callback.New(old.Add(time.Millisecond), []int64{3})) // a whole stale batch
	f.insert(t, callback.New(old, []int64{4, 5}), callback.New(fresh, []int64{6}))                     // stale and fresh
	m := merge.New(merge.Config{MaxBatches: 100, MaxIDs: 1 << 20, ExpireAfter: window, Interval: idle}, f.store, testhelper.DiscardLogger(), f.m, nil)

	n, err := m.Pass(context.Background())
	require.NoError(t, err)
	require.Equal(t, int64(1), n.StaleBatches)
	require.Equal(t, int64(2), n.StaleIDs)
	require.Equal(t, map[int64]time.Time{6: fresh.Truncate(time.Microsecond).UTC()}, f.pending(t), "only the receipt within the window costs a pending row")
	require.Zero(t, f.count(t, "inbox_batches"))
	require.Equal(t, 3.0, metrics.Sum(f.m.Dropped.WithLabelValues("inbox", "expired")), "ids of the batch deleted unread")
	require.Equal(t, 2.0, metrics.Sum(f.m.Dropped.WithLabelValues("merge", "expired")), "ids of the stale callback in a batch taken")
}

func TestPass_boundsPendingKeepingTheNewest(t *testing.T) {
	t.Parallel()
	f := setup(t)
	f.insert(t, callback.New(at(0), []int64{1}))
	m := merge.New(merge.Config{MaxBatches: 100, MaxIDs: 1 << 20, MaxPending: 3, Interval: idle}, f.store, testhelper.DiscardLogger(), f.m, nil)
	_, err := m.Pass(context.Background())
	require.NoError(t, err)

	// Two places left, four new ids: the two newest get them. Id 1, already pending,
	// still takes its newer receipt although the bound is reached.
	f.insert(t,
		callback.New(at(10), []int64{10}),
		callback.New(at(40), []int64{40}),
		callback.New(at(20), []int64{20}),
		callback.New(at(30), []int64{30, 1}),
	)
	n, err := m.Pass(context.Background())
	require.NoError(t, err)
	require.Equal(t, int64(2), n.NoRoom)
	require.Equal(t, map[int64]time.Time{1: at(30), 30: at(30), 40: at(40)}, f.pending(t))
	require.Equal(t, 2.0, metrics.Sum(f.m.Dropped.WithLabelValues("merge", "capacity")))
}

func TestPass_refreshesOnlineObjectsEvenWithoutRoom(t *testing.T) {
	t.Parallel()
	f := setup(t)
	pgtest.InsertObjects(t, f.pool, map[int64]time.Time{7: at(0), 8: at(50)})
	m := merge.New(merge.Config{MaxBatches: 100, MaxIDs: 1 << 20, MaxPending: 1, Interval: idle}, f.store, testhelper.DiscardLogger(), f.m, nil)
	f.insert(t, callback.New(at(5), []int64{1}), callback.New(at(20), []int64{7, 8}))

	n, err := m.Pass(context.Background())
	require.NoError(t, err)
	require.Equal(t, int64(1), n.Refreshed)
	require.Equal(t, map[int64]time.Time{7: at(20), 8: at(50)}, pgtest.Objects(t, f.pool),
		"an online object named again takes the newer receipt at once, lookup or not; last_seen never goes back")
	require.Len(t, f.pending(t), 1)
}

func TestPass_pastTheDistinctBoundOnlyRefreshes(t *testing.T) {
	t.Parallel()
	f := setup(t)
	pgtest.InsertObjects(t, f.pool, map[int64]time.Time{2: at(0)})
	// One distinct id per pass may go to pending: the newest batch's. Of the ids named
	// after it, the online one is refreshed anyway, the other dropped for capacity.
	f.insert(t, callback.New(at(10), []int64{2, 3}))
	f.insert(t, callback.New(at(20), []int64{1}))
	m := merge.New(merge.Config{MaxBatches: 100, MaxIDs: 1 << 20, MaxDistinct: 1, Interval: idle}, f.store, testhelper.DiscardLogger(), f.m, nil)

	n, err := m.Pass(context.Background())
	require.NoError(t, err)
	require.Equal(t, int64(2), n.Batches, "every batch read is consumed")
	require.Equal(t, map[int64]time.Time{1: at(20)}, f.pending(t))
	require.Equal(t, map[int64]time.Time{2: at(10)}, pgtest.Objects(t, f.pool))
	require.Equal(t, 1.0, metrics.Sum(f.m.Dropped.WithLabelValues("merge", "capacity")))
	require.Zero(t, f.count(t, "inbox_batches"))
}

func TestPass_fullPendingMakesRoomForNewerWork(t *testing.T) {
	t.Parallel()
	f := setup(t)
	f.insert(t, callback.New(at(0), []int64{1}), callback.New(at(1), []int64{2}), callback.New(at(50), []int64{3}))
	_, err := f.store.MergeInbox(context.Background(), 100, 1<<20)
	require.NoError(t, err)
	m := merge.New(merge.Config{MaxBatches: 100, MaxIDs: 1 << 20, MaxPending: 3, MaxNew: 2, Interval: idle}, f.store, testhelper.DiscardLogger(), f.m, nil)

	// Pending is full. A pass of newer receipts evicts the oldest waiting rows older
	// than its own receipts, two at most (MaxNew); id 3, named after the pass's oldest
	// receipt, stays.
	f.insert(t, callback.New(at(10), []int64{5}), callback.New(at(11), []int64{6}), callback.New(at(12), []int64{7}))
	n, err := m.Pass(context.Background())
	require.NoError(t, err)
	require.Equal(t, int64(2), n.Evicted)
	require.Equal(t, map[int64]time.Time{3: at(50), 7: at(12), 6: at(11)}, f.pending(t))
	require.Equal(t, 2.0, metrics.Sum(f.m.Dropped.WithLabelValues("pending", "capacity")))
	require.Equal(t, 1.0, metrics.Sum(f.m.Dropped.WithLabelValues("merge", "capacity")))
}
