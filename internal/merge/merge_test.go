package merge

// In package merge, not merge_test: the tests of the loop run it around their own
// pass (run), to see every pass it makes.

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"log/slog"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/objwatch/callback/internal/callback"
	"github.com/objwatch/callback/internal/component"
	"github.com/objwatch/callback/internal/metrics"
	"github.com/objwatch/callback/internal/pgtest"
	"github.com/objwatch/callback/internal/store"
	"github.com/objwatch/callback/internal/testhelper"
)

// testBundle is what a test sees of its merger's surroundings: a real store on a fresh
// database, the metrics, the log, and how often the fetcher was woken.
type testBundle struct {
	pool    *pgxpool.Pool
	store   *store.Store
	metrics *metrics.Metrics
	logs    *bytes.Buffer // read only once the merger stopped writing
	woken   *atomic.Int64
}

// setup builds a merger with cfg on a fresh database. Unless cfg says otherwise, the
// window takes in every receipt: the tests' receipts are fixed dates in the past.
func setup(t *testing.T, cfg Config) (*Merger, *testBundle) {
	t.Helper()
	pool, _ := pgtest.NewPool(t)
	b := &testBundle{pool: pool, store: store.New(pool), metrics: metrics.New(), logs: new(bytes.Buffer), woken: new(atomic.Int64)}
	cfg.ExpireAfter = cmp.Or(cfg.ExpireAfter, forever)
	cfg.Changed = func() { b.woken.Add(1) }
	m, err := New(cfg, b.store, component.Deps{Log: slog.New(slog.NewTextHandler(b.logs, nil)), Metrics: b.metrics})
	require.NoError(t, err)
	return m, b
}

// forever is a window wider than the tests' past.
const forever = 100 * 365 * 24 * time.Hour

// start runs m until the test ends, around a pass that reports each pass that worked.
func start(t *testing.T, m *Merger) (passes <-chan Result) {
	t.Helper()
	return startWith(t, m, m.Pass)
}

// startWith runs m around pass until the test ends, and reports each pass that worked.
func startWith(t *testing.T, m *Merger, pass func(context.Context) (Result, error)) <-chan Result {
	t.Helper()
	passes := make(chan Result, 100)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- m.run(ctx, func(ctx context.Context) (Result, error) {
			merged, err := pass(ctx)
			if err == nil {
				passes <- merged
			}
			return merged, err
		})
	}()
	t.Cleanup(func() {
		cancel()
		require.NoError(t, <-done)
	})
	return passes
}

var t0 = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)

func at(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }

func (b *testBundle) insert(t *testing.T, cbs ...callback.Callback) {
	t.Helper()
	require.NoError(t, b.store.InsertCallbacks(context.Background(), cbs))
}

func (b *testBundle) count(t *testing.T, table string) int {
	t.Helper()
	var n int
	require.NoError(t, b.pool.QueryRow(context.Background(), "SELECT count(*) FROM "+table).Scan(&n))
	return n
}

func (b *testBundle) pending(t *testing.T) map[int64]time.Time {
	t.Helper()
	return pgtest.IDTimes(t, b.pool, "SELECT object_id, received_at FROM pending")
}

func (b *testBundle) objects(t *testing.T) map[int64]time.Time {
	t.Helper()
	return pgtest.IDTimes(t, b.pool, "SELECT id, last_seen FROM objects")
}

// pass runs one pass and requires it to work.
func pass(t *testing.T, m *Merger) Result {
	t.Helper()
	merged, err := m.Pass(context.Background())
	require.NoError(t, err)
	return merged
}

// idle: an interval longer than any test, so only Wake or a full pass starts a pass.
const idle = time.Hour

// plenty is a pass with room for everything the tests insert.
var plenty = Config{MaxBatches: 1000, MaxIDs: 1 << 20, Interval: idle}

func TestPass_drainsInboxIntoPending(t *testing.T) {
	t.Parallel()
	m, b := setup(t, plenty)
	b.insert(t,
		callback.New(at(0), []int64{1, 2, 2}),
		callback.New(at(5), []int64{2, 3}),
		callback.New(at(3), []int64{1}),
		callback.New(at(9), nil),
	)

	require.Equal(t, Result{Batches: 1, Callbacks: 4, IDs: 3, Changed: 3}, pass(t, m))
	require.Equal(t, map[int64]time.Time{1: at(3), 2: at(5), 3: at(5)}, b.pending(t), "one row per object, newest receipt")
	require.Zero(t, b.count(t, "inbox_batches"))
	require.Equal(t, int64(1), b.woken.Load(), "the fetcher is woken when work changed")
	require.Equal(t, 4.0, metrics.Sum(b.metrics.MergedCallbacks))
	require.Equal(t, 3.0, metrics.Sum(b.metrics.MergedIDs))

	// An older receipt for a pending object changes nothing and wakes nobody.
	b.insert(t, callback.New(at(1), []int64{2}))
	require.Equal(t, Result{Batches: 1, Callbacks: 1, IDs: 1}, pass(t, m))
	require.Equal(t, map[int64]time.Time{1: at(3), 2: at(5), 3: at(5)}, b.pending(t))
	require.Equal(t, int64(1), b.woken.Load())
}

func TestPass_coalescesIDsKeepingTheNewestReceipt(t *testing.T) {
	t.Parallel()
	m, b := setup(t, plenty)
	b.insert(t,
		callback.New(at(1000), []int64{3, 1, 3, 0}),
		callback.New(at(2000), []int64{1}),
		callback.New(at(0), []int64{0, 9}),
		callback.New(at(3000), nil),
	)
	require.Equal(t, Result{Batches: 1, Callbacks: 4, IDs: 4, Changed: 4}, pass(t, m))
	require.Equal(t, map[int64]time.Time{0: at(1000), 1: at(2000), 3: at(1000), 9: at(0)}, b.pending(t))
	require.Zero(t, b.count(t, "inbox_batches"))
}

func TestPass_olderReceiptDoesNotMovePendingBack(t *testing.T) {
	t.Parallel()
	m, b := setup(t, plenty)
	b.insert(t, callback.New(at(5000), []int64{7}))
	pass(t, m)
	b.insert(t, callback.New(at(4000), []int64{7}))
	require.Equal(t, int64(0), pass(t, m).Changed)
	require.Equal(t, map[int64]time.Time{7: at(5000)}, b.pending(t))
}

func TestPass_pendingRowFinishedDuringThePassIsMadeAgain(t *testing.T) {
	t.Parallel()
	m, b := setup(t, Config{MaxBatches: 10, MaxIDs: 100, Interval: idle})
	ctx := context.Background()
	b.insert(t, callback.New(at(1000), []int64{4}))
	pass(t, m)
	b.insert(t, callback.New(at(2000), []int64{4}))

	// A lookup result for the first receipt is being written: it holds the pending
	// row, and will delete it (finished). The merge of the newer receipt, which saw
	// the row in its snapshot, waits for it.
	result, err := b.pool.Begin(ctx)
	require.NoError(t, err)
	defer result.Rollback(ctx) //nolint:errcheck
	_, err = result.Exec(ctx, "SELECT 1 FROM pending WHERE object_id = 4 FOR UPDATE")
	require.NoError(t, err)
	passed := make(chan Result, 1)
	go func() {
		merged, err := m.Pass(ctx)
		assert.NoError(t, err)
		passed <- merged
	}()
	testhelper.Eventually(t, 15*time.Second, "condition", func() bool {
		var waiting bool
		require.NoError(t, b.pool.QueryRow(ctx,
			"SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock')").Scan(&waiting))
		return waiting
	})
	_, err = result.Exec(ctx, "DELETE FROM pending WHERE object_id = 4")
	require.NoError(t, err)
	require.NoError(t, result.Commit(ctx))

	require.Equal(t, int64(1), (<-passed).Changed)
	require.Equal(t, map[int64]time.Time{4: at(2000)}, b.pending(t), "the newer receipt still gets its lookup")
}

func TestPass_anUndecodableBatchIsQuarantinedAndTheRestMerged(t *testing.T) {
	t.Parallel()
	m, b := setup(t, plenty)
	ctx := context.Background()
	b.insert(t, callback.New(at(1000), []int64{1}))
	bad := callback.New(at(2000), nil).ID
	// Version 1, then a callback id cut short.
	_, err := b.pool.Exec(ctx, "INSERT INTO inbox_batches (batch_id, received_at, callbacks, ids, data) VALUES ($1, $2, 1, 1, '\\x0102')", bad, at(2000))
	require.NoError(t, err)
	b.insert(t, callback.New(at(3000), []int64{3}))

	merged := pass(t, m)
	require.Len(t, merged.Quarantined, 1)
	require.Equal(t, bad, merged.Quarantined[0].BatchID)
	require.ErrorContains(t, merged.Quarantined[0].Err, "truncated callback id")
	merged.Quarantined = nil
	require.Equal(t, Result{Batches: 3, Callbacks: 2, IDs: 2, Changed: 2}, merged)
	require.Equal(t, map[int64]time.Time{1: at(1000), 3: at(3000)}, b.pending(t))
	require.Zero(t, b.count(t, "inbox_batches"))
	var data []byte
	var reason string
	require.NoError(t, b.pool.QueryRow(ctx, "SELECT data, error FROM inbox_quarantine WHERE batch_id = $1", bad).Scan(&data, &reason))
	require.Equal(t, []byte{1, 2}, data, "kept as it was")
	require.Contains(t, reason, "truncated callback id")
}

func TestPass_quarantineIsCountedAndLogged(t *testing.T) {
	t.Parallel()
	m, b := setup(t, Config{MaxBatches: 10, MaxIDs: 1 << 20, Interval: idle})
	_, err := b.pool.Exec(context.Background(),
		"INSERT INTO inbox_batches (batch_id, received_at, callbacks, ids, data) VALUES ($1, $2, 1, 1, '\\x09')", callback.New(at(0), nil).ID, at(0))
	require.NoError(t, err)
	b.insert(t, callback.New(at(1), []int64{4}))

	require.Equal(t, int64(1), pass(t, m).Callbacks)
	require.Equal(t, 1.0, metrics.Sum(b.metrics.Quarantined))
	require.Contains(t, b.logs.String(), "unknown version 9")
	require.Equal(t, 1, b.count(t, "inbox_quarantine"))
	require.Equal(t, map[int64]time.Time{4: at(1)}, b.pending(t))
}

func TestPass_refreshesLastSeenOfOnlineObjects(t *testing.T) {
	t.Parallel()
	m, b := setup(t, plenty)
	ctx := context.Background()
	b.insert(t, callback.New(at(1000), []int64{2}))
	pass(t, m)
	claims, err := b.store.ClaimDue(ctx, 10, time.Minute, t0.Add(-time.Hour))
	require.NoError(t, err)
	require.Len(t, claims, 1)
	_, err = b.store.CompleteLookups(ctx, []store.Result{{ObjectID: 2, Token: claims[0].Token, Outcome: store.Online}}, store.CompleteParams{Cutoff: t0.Add(-time.Hour), Now: time.Now()})
	require.NoError(t, err)
	require.Equal(t, map[int64]time.Time{2: at(1000)}, b.objects(t))

	b.insert(t, callback.New(at(9000), []int64{2, 5}))
	require.Equal(t, int64(1), pass(t, m).Refreshed)
	require.Equal(t, map[int64]time.Time{2: at(9000)}, b.objects(t), "5 is not online yet: no row until its lookup")
}

func TestPass_takesTheNewestBatchesFirst(t *testing.T) {
	t.Parallel()
	m, b := setup(t, Config{MaxBatches: 1, MaxIDs: 1 << 20, Interval: idle})
	for i := range 3 {
		b.insert(t, callback.New(at(1000*i), []int64{int64(i)}))
	}
	var order []int64
	for range 3 {
		pass(t, m)
		for id := range b.pending(t) {
			if !slices.Contains(order, id) {
				order = append(order, id)
			}
		}
	}
	require.Equal(t, []int64{2, 1, 0}, order, "under a backlog, the newest receipts are merged first")
}

func TestPass_dropsWorkThatLeftTheWindow(t *testing.T) {
	t.Parallel()
	const window = time.Minute
	m, b := setup(t, Config{MaxBatches: 100, MaxIDs: 1 << 20, ExpireAfter: window, Interval: idle})
	now := time.Now()
	old, fresh := now.Add(-2*window), now.Add(-time.Second)
	b.insert(t, callback.New(old, []int64{1, 2}), callback.New(old.Add(time.Millisecond), []int64{3})) // a whole stale batch
	b.insert(t, callback.New(old, []int64{4, 5}), callback.New(fresh, []int64{6}))                     // stale and fresh

	merged := pass(t, m)
	require.Equal(t, int64(1), merged.StaleBatches)
	require.Equal(t, int64(2), merged.StaleIDs)
	require.Equal(t, map[int64]time.Time{6: fresh.Truncate(time.Microsecond).UTC()}, b.pending(t), "only the receipt within the window costs a pending row")
	require.Zero(t, b.count(t, "inbox_batches"))
	require.Equal(t, 3.0, metrics.Sum(b.metrics.Dropped.WithLabelValues("inbox", "expired")), "ids of the batch deleted unread")
	require.Equal(t, 2.0, metrics.Sum(b.metrics.Dropped.WithLabelValues("merge", "expired")), "ids of the stale callback in a batch taken")
}

func TestPass_boundsPendingKeepingTheNewest(t *testing.T) {
	t.Parallel()
	m, b := setup(t, Config{MaxBatches: 100, MaxIDs: 1 << 20, MaxPending: 3, Interval: idle})
	b.insert(t, callback.New(at(0), []int64{1}))
	pass(t, m)

	// Two places left, four new ids, one callback each (so each is its callback's first
	// turn): the two newest get them. Id 1, already pending, still takes its newer
	// receipt although the bound is reached, and is not evicted although it ranked
	// below them: the pass names it.
	b.insert(t,
		callback.New(at(10), []int64{10}),
		callback.New(at(40), []int64{40}),
		callback.New(at(20), []int64{20}),
		callback.New(at(30), []int64{30}),
		callback.New(at(30), []int64{1}),
	)
	require.Equal(t, int64(2), pass(t, m).NoRoom)
	require.Equal(t, map[int64]time.Time{1: at(30), 30: at(30), 40: at(40)}, b.pending(t))
	require.Equal(t, 2.0, metrics.Sum(b.metrics.Dropped.WithLabelValues("merge", "capacity")))
}

func TestPass_refreshesOnlineObjectsEvenWithoutRoom(t *testing.T) {
	t.Parallel()
	m, b := setup(t, Config{MaxBatches: 100, MaxIDs: 1 << 20, MaxPending: 1, Interval: idle})
	pgtest.InsertObjects(t, b.pool, map[int64]time.Time{7: at(0), 8: at(50)})
	b.insert(t, callback.New(at(5), []int64{1}), callback.New(at(20), []int64{7, 8}))

	require.Equal(t, int64(1), pass(t, m).Refreshed)
	require.Equal(t, map[int64]time.Time{7: at(20), 8: at(50)}, b.objects(t),
		"an online object named again takes the newer receipt at once, lookup or not; last_seen never goes back")
	require.Len(t, b.pending(t), 1)
}

func TestPass_leavesBatchesPastTheDistinctBoundInTheInbox(t *testing.T) {
	t.Parallel()
	m, b := setup(t, Config{MaxBatches: 100, MaxIDs: 1 << 20, MaxDistinct: 1, Interval: idle})
	pgtest.InsertObjects(t, b.pool, map[int64]time.Time{2: at(0)})
	// The newest batch holds the one distinct id a pass may take; the older one stays
	// in the inbox, unread and not dropped, for the next pass.
	b.insert(t, callback.New(at(10), []int64{2, 3}))
	b.insert(t, callback.New(at(20), []int64{1}))

	first := pass(t, m)
	require.Equal(t, int64(1), first.Batches)
	require.True(t, first.Full, "a pass that left batches says more is waiting")
	require.Equal(t, map[int64]time.Time{1: at(20)}, b.pending(t))
	require.Equal(t, 1, b.count(t, "inbox_batches"))

	require.Equal(t, int64(1), pass(t, m).Batches)
	require.Equal(t, map[int64]time.Time{1: at(20), 2: at(10), 3: at(10)}, b.pending(t))
	require.Equal(t, map[int64]time.Time{2: at(10)}, b.objects(t), "the online object is refreshed by the pass that takes its batch")
	require.Zero(t, b.count(t, "inbox_batches"))
	require.Zero(t, metrics.Sum(b.metrics.Dropped), "nothing dropped: there was room")
}

// A pass used to make at most 8,192 ids pending and drop the rest of the batches it
// read "for capacity", with pending nearly empty: a spool replayed after an outage lost
// most of its ids that way. Only a full pending may drop work.
func TestPass_dropsNothingWhilePendingHasRoom(t *testing.T) {
	t.Parallel()
	m, b := setup(t, Config{Interval: idle}) // the defaults
	const n = 20_000
	var cbs []callback.Callback
	for i := range n / 200 {
		ids := make([]int64, 200)
		for j := range ids {
			ids[j] = int64(1_000_000 + i*200 + j) // fresh ids from a large space
		}
		cbs = append(cbs, callback.New(at(i), ids))
	}
	b.insert(t, cbs...)

	merged := pass(t, m)
	require.Equal(t, int64(n), merged.IDs)
	require.Zero(t, merged.NoRoom)
	require.Len(t, b.pending(t), n, "every fresh id is pending")
	require.Zero(t, metrics.Sum(b.metrics.Dropped))
}

func TestPass_fullPendingMakesRoomForNewerWork(t *testing.T) {
	t.Parallel()
	m, b := setup(t, plenty)
	b.insert(t, callback.New(at(0), []int64{1}), callback.New(at(1), []int64{2}), callback.New(at(50), []int64{3}))
	pass(t, m)
	m.cfg.MaxPending = 3

	// Pending is full. A pass of three newer receipts evicts the waiting rows ranked
	// below all of its own (ids 1 and 2); id 3, named after the pass's oldest receipt,
	// stays; the oldest of the three finds no room.
	b.insert(t, callback.New(at(10), []int64{5}), callback.New(at(11), []int64{6}), callback.New(at(12), []int64{7}))
	require.Equal(t, int64(2), pass(t, m).Evicted)
	require.Equal(t, map[int64]time.Time{3: at(50), 7: at(12), 6: at(11)}, b.pending(t))
	require.Equal(t, 2.0, metrics.Sum(b.metrics.Dropped.WithLabelValues("pending", "capacity")))
	require.Equal(t, 1.0, metrics.Sum(b.metrics.Dropped.WithLabelValues("merge", "capacity")))
}

// With a small bound, eviction used to take MaxNew - room rows whatever the pass
// needed: every waiting row, every pass.
func TestPass_evictsOnlyWhatThePassNeeds(t *testing.T) {
	t.Parallel()
	m, b := setup(t, plenty)
	for i := range 8 {
		b.insert(t, callback.New(at(i), []int64{int64(100 + i)}))
	}
	pass(t, m)
	m.cfg.MaxPending = 10

	// Room for 2; three newer fresh ids: one eviction, the oldest waiting row.
	b.insert(t, callback.New(at(20), []int64{1, 2, 3}))
	merged := pass(t, m)
	require.Equal(t, int64(1), merged.Evicted)
	require.Zero(t, merged.NoRoom)
	pending := b.pending(t)
	require.Len(t, pending, 10)
	require.NotContains(t, pending, int64(100))
	require.Contains(t, pending, int64(101))
}

// A done row remembers the newest receipt: an older one merged after its lookup (a
// second merger, a late replay, newest-first order) changes nothing, so the table never
// takes the older receipt as last_seen.
func TestPass_anOlderReceiptMergedAfterTheLookupChangesNothing(t *testing.T) {
	t.Parallel()
	for _, online := range []bool{false, true} {
		t.Run(map[bool]string{false: "after_offline", true: "after_online"}[online], func(t *testing.T) {
			t.Parallel()
			m, b := setup(t, plenty)
			ctx := context.Background()
			b.insert(t, callback.New(at(20), []int64{7}))
			pass(t, m)
			claims, err := b.store.ClaimDue(ctx, 10, time.Minute, t0.Add(-time.Hour))
			require.NoError(t, err)
			require.Len(t, claims, 1)
			outcome := map[bool]store.Outcome{false: store.Offline, true: store.Online}[online]
			_, err = b.store.CompleteLookups(ctx, []store.Result{{ObjectID: 7, Token: claims[0].Token, Outcome: outcome}},
				store.CompleteParams{Cutoff: t0.Add(-time.Hour), Now: time.Now()})
			require.NoError(t, err)

			b.insert(t, callback.New(at(10), []int64{7})) // older than the one looked up
			pass(t, m)
			due, err := b.store.CountDue(ctx, 10, t0.Add(-time.Hour))
			require.NoError(t, err)
			require.Zero(t, due, "no lookup for an older receipt")
			require.Equal(t, map[int64]time.Time{7: at(20)}, b.pending(t), "the newest receipt is remembered")
			if online {
				require.Equal(t, map[int64]time.Time{7: at(20)}, b.objects(t))
			} else {
				require.Empty(t, b.objects(t))
			}
		})
	}
}

// A newer receipt for an object already looked up re-arms its row: one more lookup,
// ranked below objects not looked up yet (a re-check).
func TestPass_aNewerReceiptReArmsALookedUpObjectAsARecheck(t *testing.T) {
	t.Parallel()
	m, b := setup(t, plenty)
	ctx := context.Background()
	b.insert(t, callback.New(at(0), []int64{7}))
	pass(t, m)
	claims, err := b.store.ClaimDue(ctx, 10, time.Minute, t0.Add(-time.Hour))
	require.NoError(t, err)
	_, err = b.store.CompleteLookups(ctx, []store.Result{{ObjectID: 7, Token: claims[0].Token, Outcome: store.Offline}},
		store.CompleteParams{Cutoff: t0.Add(-time.Hour), Now: time.Now()})
	require.NoError(t, err)

	b.insert(t, callback.New(at(30), []int64{7}), callback.New(at(20), []int64{8}))
	pass(t, m)
	first, err := b.store.ClaimDue(ctx, 1, time.Minute, t0.Add(-time.Hour))
	require.NoError(t, err)
	require.Equal(t, int64(8), first[0].ObjectID, "the object never looked up goes first, although its receipt is older")
	second, err := b.store.ClaimDue(ctx, 1, time.Minute, t0.Add(-time.Hour))
	require.NoError(t, err)
	require.Equal(t, int64(7), second[0].ObjectID)
	require.Equal(t, at(30), second[0].ReceivedAt.UTC())
}

// Ranks are on the database's clock: a merger whose clock runs an hour ahead of the
// database still makes its receipts due at once (they used to be due an hour later,
// past the window: never looked up).
func TestPass_aMergerWhoseClockRunsAheadDelaysNothing(t *testing.T) {
	t.Parallel()
	m, b := setup(t, plenty)
	ahead := time.Now().Add(time.Hour)
	m.Now = func() time.Time { return ahead }
	b.insert(t, callback.New(ahead.Add(-time.Second), []int64{7}))
	pass(t, m)
	claims, err := b.store.ClaimDue(context.Background(), 10, time.Minute, ahead.Add(-time.Minute))
	require.NoError(t, err)
	require.Len(t, claims, 1, "due now on the database's clock")
}

func TestRun_wakeStartsAPass(t *testing.T) {
	t.Parallel()
	m, b := setup(t, plenty)
	passes := start(t, m)
	require.Equal(t, Result{}, <-passes, "the first pass runs at once and finds nothing")

	b.insert(t, callback.New(at(0), []int64{7, 8}))
	m.Wake()
	require.Equal(t, Result{Batches: 1, Callbacks: 1, IDs: 2, Changed: 2}, <-passes)
	require.Equal(t, map[int64]time.Time{7: at(0), 8: at(0)}, b.pending(t))
	require.Zero(t, b.count(t, "inbox_batches"))
}

func TestRun_fullPassLoopsAgainAtOnce(t *testing.T) {
	t.Parallel()
	m, b := setup(t, Config{MaxBatches: 2, MaxIDs: 1 << 20, Interval: idle})
	for i := range 5 {
		b.insert(t, callback.New(at(i), []int64{int64(i)}))
	}
	passes := start(t, m)

	// No Wake and an hour's interval: only "a full pass means more is waiting" can
	// start the second and third passes.
	var sizes []int64
	for range 3 {
		sizes = append(sizes, (<-passes).Batches)
	}
	require.Equal(t, []int64{2, 2, 1}, sizes)
	require.Zero(t, b.count(t, "inbox_batches"))
	require.Equal(t, 5, b.count(t, "pending"))
}

func TestRun_exactMultipleOfMaxEndsWithAnEmptyPass(t *testing.T) {
	t.Parallel()
	m, b := setup(t, Config{MaxBatches: 2, MaxIDs: 1 << 20, Interval: idle})
	for i := range 4 {
		b.insert(t, callback.New(at(i), []int64{int64(i)}))
	}
	passes := start(t, m)

	var sizes []int64
	for range 3 {
		sizes = append(sizes, (<-passes).Batches)
	}
	require.Equal(t, []int64{2, 2, 0}, sizes)
	require.Zero(t, b.count(t, "inbox_batches"))
}

func TestRun_idBoundEndsAPassEarly(t *testing.T) {
	t.Parallel()
	// 4 ids at most: the first batch (3 ids) is under the bound, so the second is taken
	// too and crosses it; that pass is full, and the third batch waits for the next.
	m, b := setup(t, Config{MaxBatches: 100, MaxIDs: 4, Interval: idle})
	for i := range 3 {
		b.insert(t, callback.New(at(i), []int64{int64(10 * i), int64(10*i + 1), int64(10*i + 2)}))
	}
	passes := start(t, m)

	first, second := <-passes, <-passes
	require.Equal(t, Result{Batches: 2, Callbacks: 2, IDs: 6, Changed: 6, Full: true}, first)
	require.Equal(t, Result{Batches: 1, Callbacks: 1, IDs: 3, Changed: 3}, second)
	require.Zero(t, b.count(t, "inbox_batches"))
	require.Len(t, b.pending(t), 9)
}

func TestNew_appliesDefaultsAndRejectsNonsense(t *testing.T) {
	t.Parallel()
	m, err := New(Config{ExpireAfter: time.Minute}, nil, component.Deps{})
	require.NoError(t, err)
	require.Equal(t, MaxPendingDefault, m.cfg.MaxPending)
	require.Equal(t, RestDefault, m.cfg.Rest)

	_, err = New(Config{}, nil, component.Deps{})
	require.ErrorContains(t, err, "window")
	_, err = New(Config{ExpireAfter: time.Minute, MaxPending: -1}, nil, component.Deps{})
	require.Error(t, err)
}

func TestRun_retriesAfterDatabaseError(t *testing.T) {
	t.Parallel()
	m, b := setup(t, Config{MaxBatches: 10, MaxIDs: 1 << 20, Interval: idle})
	var calls atomic.Int64
	passes := startWith(t, m, func(context.Context) (Result, error) {
		if calls.Add(1) == 1 {
			return Result{}, errors.New("connection refused")
		}
		return Result{}, nil
	})
	<-passes // without a Wake or the interval: the failure's own backoff retried
	require.Equal(t, int64(2), calls.Load())
	require.Equal(t, 1.0, metrics.Sum(b.metrics.DatabaseErrors.WithLabelValues("merge")))
}

// When pending is full, fresh ids take turns callback by callback: a small callback of
// new objects gets its share beside a big one that floods.
func TestPass_freshIDsTakeTurnsByCallbackWhenPendingIsFull(t *testing.T) {
	t.Parallel()
	m, b := setup(t, Config{MaxBatches: 100, MaxIDs: 1 << 20, MaxPending: 10, Interval: idle})
	flood := make([]int64, 200)
	for i := range flood {
		flood[i] = int64(1_000_000 + i)
	}
	// The flood is newer than the small callback: newest first alone would give it all
	// the room.
	b.insert(t, callback.New(at(0), []int64{1, 2, 3}), callback.New(at(10), flood))
	merged := pass(t, m)
	require.Equal(t, int64(193), merged.NoRoom)
	pending := b.pending(t)
	for _, id := range []int64{1, 2, 3} {
		require.Contains(t, pending, id, "the small callback's objects get their turns")
	}
	require.Len(t, pending, 10)
}

// The merger tells the pacer which ids have a row, and when work is dropped for
// capacity.
func TestPass_tellsThePacer(t *testing.T) {
	t.Parallel()
	p := &pacerSpy{}
	m, b := setup(t, Config{MaxBatches: 100, MaxIDs: 1 << 20, MaxPending: 4, Interval: idle, Pacer: p})
	now := time.Now().Truncate(time.Microsecond)
	b.insert(t, callback.New(at(0), []int64{7}), callback.New(now, []int64{1, 2}))
	pass(t, m)
	require.ElementsMatch(t, []int64{7, 1, 2}, p.tracked, "the ids merged, a backlog's too (the pacer's probation takes those)")
	require.Zero(t, p.overloaded, "room for everything: not overloaded")

	b.insert(t, callback.New(now, []int64{3, 4}))
	pass(t, m)
	require.Equal(t, 1, p.overloaded, "a fresh id found no room")
}

type pacerSpy struct {
	tracked    []int64
	overloaded int
	flooding   func(ids []int64) bool
}

func (p *pacerSpy) Flooding(ids []int64, _ time.Time) bool {
	return p.flooding != nil && p.flooding(ids)
}

func (p *pacerSpy) Track(ids []int64)    { p.tracked = append(p.tracked, ids...) }
func (p *pacerSpy) Overloaded(time.Time) { p.overloaded++ }

// While the service is overloaded, a flood's fresh ids get the room last and are looked
// up after those of senders with a steady set of objects.
func TestPass_aFloodsFreshIDsGoLast(t *testing.T) {
	t.Parallel()
	p := &pacerSpy{flooding: func(ids []int64) bool { return ids[0] >= 1_000_000 }}
	m, b := setup(t, Config{MaxBatches: 100, MaxIDs: 1 << 20, MaxPending: 4, Interval: idle, Pacer: p})
	flood := []int64{1_000_000, 1_000_001, 1_000_002, 1_000_003, 1_000_004}
	b.insert(t, callback.New(at(0), []int64{1, 2}), callback.New(at(10), flood)) // the flood is newer
	pass(t, m)
	pending := b.pending(t)
	require.Contains(t, pending, int64(1))
	require.Contains(t, pending, int64(2))
	require.Len(t, pending, 4, "the flood gets what is left")
	claims, err := b.store.ClaimDue(context.Background(), 2, time.Minute, t0.Add(-time.Hour))
	require.NoError(t, err)
	require.ElementsMatch(t, []int64{1, 2}, []int64{claims[0].ObjectID, claims[1].ObjectID},
		"the steady sender's objects are looked up first, although the flood's receipts are newer")
}

// Past MaxDistinct a pass reads on through the batches it locked for the callbacks
// that are not a flood's: they reach pending now, although older batches hold them,
// and the flood's callbacks stay in the inbox, under their batch, with their receipts,
// for a later pass. Nothing is dropped.
func TestPass_theSteadyLaneTakesSteadyCallbacksOutOfTheFloodsBatches(t *testing.T) {
	t.Parallel()
	p := &pacerSpy{flooding: func(ids []int64) bool { return ids[0] >= 1_000_000 }}
	m, b := setup(t, Config{MaxBatches: 100, MaxIDs: 1 << 20, MaxDistinct: 8, Interval: idle, Pacer: p})
	pgtest.InsertObjects(t, b.pool, map[int64]time.Time{1: at(0)})
	// Oldest first: a group commit of a steady callback beside a flood's, one of the
	// flood alone, one of a steady callback alone, and the newest, the flood's, which
	// fills the pass's distinct ids.
	mixedFlood := callback.New(at(20), []int64{1_000_010, 1_000_011})
	b.insert(t, callback.New(at(10), []int64{1, 2}), mixedFlood)
	b.insert(t, callback.New(at(30), []int64{1_000_020}))
	b.insert(t, callback.New(at(40), []int64{3}))
	newest := make([]int64, 8)
	for i := range newest {
		newest[i] = int64(1_000_000 + i)
	}
	b.insert(t, callback.New(at(50), newest))

	first := pass(t, m)
	require.Equal(t, int64(1), first.SteadyTaken)
	require.Equal(t, int64(2), first.Batches, "the newest, whole, and the steady callback's own")
	require.Equal(t, int64(3), first.Callbacks, "the newest, the steady one alone, the steady one beside the flood")
	require.True(t, first.Full)
	want := map[int64]time.Time{1: at(10), 2: at(10), 3: at(40)}
	for _, id := range newest {
		want[id] = at(50)
	}
	require.Equal(t, want, b.pending(t))
	require.Equal(t, map[int64]time.Time{1: at(10)}, b.objects(t), "the steady sender's online object is refreshed")

	// What is left of the mixed batch is the flood's callback, as it was received.
	var (
		received, last time.Time
		callbacks, ids int
		data           []byte
	)
	require.NoError(t, b.pool.QueryRow(context.Background(),
		"SELECT received_at, last_received_at, callbacks, ids, data FROM inbox_batches ORDER BY received_at LIMIT 1").
		Scan(&received, &last, &callbacks, &ids, &data))
	require.Equal(t, 2, b.count(t, "inbox_batches"))
	require.True(t, received.Equal(at(20)) && last.Equal(at(20)), "received %v, last %v", received, last)
	require.Equal(t, 1, callbacks)
	require.Equal(t, 2, ids)
	rest, err := callback.Decode(data)
	require.NoError(t, err)
	require.Len(t, rest, 1)
	require.Equal(t, mixedFlood.ID, rest[0].ID)
	require.True(t, rest[0].ReceivedAt.Equal(at(20)))
	require.Equal(t, []int64{1_000_010, 1_000_011}, rest[0].ObjectIDs)

	second := pass(t, m)
	require.Equal(t, int64(2), second.Batches)
	require.Zero(t, b.count(t, "inbox_batches"))
	require.Equal(t, at(20), b.pending(t)[1_000_011].UTC())
	require.Len(t, b.pending(t), 14)
	require.Zero(t, metrics.Sum(b.metrics.Dropped), "nothing dropped")
}

// The steady lane has a bound of its own: when nothing is a flood's (the service is not
// overloaded, or every callback is familiar), a pass takes whole batches up to twice
// MaxDistinct distinct ids, not the whole inbox.
func TestPass_theSteadyLaneIsBounded(t *testing.T) {
	t.Parallel()
	p := &pacerSpy{}
	m, b := setup(t, Config{MaxBatches: 100, MaxIDs: 1 << 20, MaxDistinct: 8, Interval: idle, Pacer: p})
	for i := range 20 {
		b.insert(t, callback.New(at(i), []int64{int64(i)}))
	}
	first := pass(t, m)
	require.Equal(t, int64(16), first.Batches, "8 distinct ids, then 8 more in the lane")
	require.Len(t, b.pending(t), 16)
	require.Equal(t, 4, b.count(t, "inbox_batches"))
}

// While passes are far apart, the early refresh moves last_seen of online objects named
// by steady callbacks in batches committed since its last look, without taking them:
// the passes still merge them. A flood's callbacks are left to the passes.
func TestRefreshEarly_refreshesOnlineObjectsOfSteadyCallbacksAndTakesNothing(t *testing.T) {
	t.Parallel()
	p := &pacerSpy{flooding: func(ids []int64) bool { return ids[0] >= 1_000_000 }}
	m, b := setup(t, Config{MaxBatches: 100, MaxIDs: 1 << 20, Interval: idle, Pacer: p})
	now := time.Now().Truncate(time.Microsecond)
	pgtest.InsertObjects(t, b.pool, map[int64]time.Time{1: now.Add(-time.Minute), 2: now.Add(-time.Minute), 1_000_000: now.Add(-time.Minute)})
	before := time.Now()
	b.insert(t, callback.New(now.Add(-2*time.Second), []int64{1, 5}), callback.New(now.Add(-time.Second), []int64{1_000_000}))
	b.insert(t, callback.New(now, []int64{1}))

	n, err := m.RefreshEarly(context.Background(), before)
	require.NoError(t, err)
	require.Equal(t, int64(1), n)
	objects := b.objects(t)
	require.True(t, objects[1].Equal(now), "the newest receipt: %v", objects[1])
	require.True(t, objects[2].Equal(now.Add(-time.Minute)), "not named")
	require.True(t, objects[1_000_000].Equal(now.Add(-time.Minute)), "the flood's: left to the passes")
	require.NotContains(t, objects, int64(5), "no row is made early: that takes a lookup")
	require.Equal(t, 2, b.count(t, "inbox_batches"), "nothing taken")
	require.Equal(t, 1.0, metrics.Sum(b.metrics.Refreshed.WithLabelValues("early")))

	// The next look starts after what this one read.
	b.insert(t, callback.New(now.Add(time.Second), []int64{2}))
	n, err = m.RefreshEarly(context.Background(), before)
	require.NoError(t, err)
	require.Equal(t, int64(1), n)
	require.True(t, b.objects(t)[2].Equal(now.Add(time.Second)))

	merged := pass(t, m)
	require.Equal(t, int64(3), merged.Batches, "the passes take the batches as ever")
	require.Contains(t, b.pending(t), int64(5))
}
