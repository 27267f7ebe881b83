package inbox

// In package inbox, not inbox_test: the tests watch the committer's queue and whether
// it takes the database for down, and drive its clock, so that nothing here depends on
// timing.

import (
	"context"
	"errors"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/objwatch/callback/internal/callback"
	"github.com/objwatch/callback/internal/component"
	"github.com/objwatch/callback/internal/metrics"
	"github.com/objwatch/callback/internal/pgtest"
	"github.com/objwatch/callback/internal/spool"
	"github.com/objwatch/callback/internal/store"
	"github.com/objwatch/callback/internal/testhelper"
)

// inserter is a fake Inserter. A nil PingFunc answers every ping.
type inserter struct {
	InsertCallbacksFunc func(ctx context.Context, cbs []callback.Callback) error
	PingFunc            func(ctx context.Context) error
}

func (f inserter) InsertBatch(ctx context.Context, _ uuid.UUID, cbs []callback.Callback) error {
	return f.InsertCallbacksFunc(ctx, cbs)
}

func (f inserter) Ping(ctx context.Context) error {
	if f.PingFunc == nil {
		return nil
	}
	return f.PingFunc(ctx)
}

// appender is a fake Appender.
type appender struct {
	AppendFunc func(cbs []callback.Callback) error
}

func (f appender) AppendBatch(_ uuid.UUID, cbs []callback.Callback) error { return f.AppendFunc(cbs) }

// clock is a settable time source.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

var errFailing = errors.New("database is down")

// testBundle is what a test sees around its committer: its clock and its metrics.
type testBundle struct {
	clock   *clock
	metrics *metrics.Metrics
}

// setup builds a committer with cfg over db and sp (sp may be nil: no spool), driven by
// a fake clock; run starts its flushers until the test ends.
func setup(t *testing.T, cfg CommitterConfig, db Inserter, sp Appender) (*Committer, *testBundle) {
	t.Helper()
	b := &testBundle{clock: &clock{t: time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)}, metrics: metrics.New()}
	c, err := NewCommitter(cfg, db, sp, component.Deps{Metrics: b.metrics, Now: b.clock.Now})
	require.NoError(t, err)
	return c, b
}

func run(t *testing.T, c *Committer) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = c.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
}

func openSpool(t *testing.T) *spool.Spool {
	t.Helper()
	sp, err := spool.Open(t.TempDir(), testhelper.DiscardLogger())
	require.NoError(t, err)
	t.Cleanup(func() { _ = sp.Close() })
	return sp
}

// spooled replays everything in sp into a fake apply and returns it.
func spooled(t *testing.T, sp *spool.Spool) []callback.Callback {
	t.Helper()
	var got []callback.Callback
	_, err := sp.Replay(context.Background(), func(_ context.Context, _ uuid.UUID, batches []callback.Batch) error {
		for _, b := range batches {
			got = append(got, b.Callbacks...)
		}
		return nil
	})
	require.NoError(t, err)
	return got
}

// requireSame compares callbacks by id, receipt instant and ids, in any order.
func requireSame(t *testing.T, want, got []callback.Callback) {
	t.Helper()
	norm := func(cbs []callback.Callback) []callback.Callback {
		out := make([]callback.Callback, len(cbs))
		for i, cb := range cbs {
			ids := cb.ObjectIDs
			if ids == nil {
				ids = []int64{}
			}
			out[i] = callback.Callback{ID: cb.ID, ReceivedAt: cb.ReceivedAt.UTC().Round(0), ObjectIDs: ids}
		}
		slices.SortFunc(out, func(a, b callback.Callback) int { return slices.Compare(a.ID[:], b.ID[:]) })
		return out
	}
	require.Equal(t, norm(want), norm(got))
}

// submit is Submit for goroutines other than the test's: it reports, never stops.
func submit(t *testing.T, c *Committer, cb callback.Callback) {
	if err := c.Submit(context.Background(), cb); err != nil {
		t.Errorf("Submit: %v", err)
	}
}

// newCallback is a callback received now, to the microsecond: the precision the
// inbox and the spool keep.
func newCallback(ids ...int64) callback.Callback {
	return callback.New(time.Now().Truncate(time.Microsecond), ids)
}

func TestSubmit_groupsConcurrentCallbacksIntoOneWrite(t *testing.T) {
	t.Parallel()
	const n = 20
	var (
		mu       sync.Mutex
		batches  []int
		insertAt = map[uuid.UUID]int64{} // when the insert holding each callback returned
		seq      atomic.Int64
		started  = make(chan struct{})
		release  = make(chan struct{})
		first    sync.Once
	)
	db := inserter{InsertCallbacksFunc: func(_ context.Context, cbs []callback.Callback) error {
		first.Do(func() {
			close(started)
			<-release // the first write is slow: everything else queues behind it
		})
		mu.Lock()
		defer mu.Unlock()
		batches = append(batches, len(cbs))
		at := seq.Add(1)
		for _, cb := range cbs {
			insertAt[cb.ID] = at
		}
		return nil
	}}
	cfg := CommitterConfig{}
	cfg.Flushers = 1
	c, bundle := setup(t, cfg, db, nil)
	run(t, c)

	var (
		wg       sync.WaitGroup
		returned atomic.Int64
		returnAt = make([]int64, n)
		cbs      = make([]callback.Callback, n)
		errs     = make([]error, n)
	)
	submit := func(i int) {
		cbs[i] = newCallback(int64(i))
		errs[i] = c.Submit(context.Background(), cbs[i])
		returnAt[i] = seq.Add(1)
		returned.Add(1)
	}
	wg.Go(func() { submit(0) })
	<-started
	for i := 1; i < n; i++ {
		wg.Go(func() { submit(i) })
	}
	for len(c.queue) < n-1 { // wait for the others to queue up
		runtime.Gosched()
	}
	require.Zero(t, returned.Load(), "no Submit returns while its write is in flight")
	close(release)
	wg.Wait()

	for i := range n {
		require.NoError(t, errs[i])
	}
	mu.Lock()
	defer mu.Unlock()
	require.Equal(t, []int{1, n - 1}, batches, "the callbacks queued behind the first write go in one write")
	for i := range n {
		at, ok := insertAt[cbs[i].ID]
		require.True(t, ok, "callback %d was never inserted", i)
		require.Greater(t, returnAt[i], at, "Submit %d returned before its batch's insert returned", i)
	}
	require.Zero(t, metrics.Sum(bundle.metrics.CallbacksSpooled))
}

func TestSubmit_batchesAreCappedAtMaxBatch(t *testing.T) {
	t.Parallel()
	const n = 10
	var (
		mu      sync.Mutex
		batches []int
		started = make(chan struct{})
		release = make(chan struct{})
		first   sync.Once
	)
	db := inserter{InsertCallbacksFunc: func(_ context.Context, cbs []callback.Callback) error {
		first.Do(func() { close(started); <-release })
		mu.Lock()
		defer mu.Unlock()
		batches = append(batches, len(cbs))
		return nil
	}}
	cfg := CommitterConfig{}
	cfg.Flushers, cfg.MaxBatch = 1, 4
	c, _ := setup(t, cfg, db, nil)
	run(t, c)

	var wg sync.WaitGroup
	wg.Go(func() { submit(t, c, newCallback(0)) })
	<-started
	for i := 1; i < n; i++ {
		wg.Go(func() { submit(t, c, newCallback(int64(i))) })
	}
	for len(c.queue) < n-1 {
		runtime.Gosched()
	}
	close(release)
	wg.Wait()

	mu.Lock()
	defer mu.Unlock()
	require.Equal(t, []int{1, 4, 4, 1}, batches)
}

func TestSubmit_databaseFailureSpoolsAndSucceeds(t *testing.T) {
	t.Parallel()
	sp := openSpool(t)
	c, bundle := setup(t, CommitterConfig{}, inserter{InsertCallbacksFunc: func(context.Context, []callback.Callback) error {
		return errFailing
	}}, sp)
	run(t, c)

	want := []callback.Callback{newCallback(1, 2, 3), newCallback(), newCallback(0, 0, 9223372036854775807)}
	for _, cb := range want {
		require.NoError(t, c.Submit(context.Background(), cb), "a spooled callback is durable: Submit succeeds")
	}
	require.True(t, c.dbDown.Load())
	requireSame(t, want, spooled(t, sp))
	require.Equal(t, 3.0, metrics.Sum(bundle.metrics.CallbacksSpooled))
	require.Equal(t, 1.0, metrics.Sum(bundle.metrics.DatabaseErrors), "one failed write; later ones skip the database")
}

func TestSubmit_slowDatabaseWriteIsAbandonedForTheSpool(t *testing.T) {
	t.Parallel()
	sp := openSpool(t)
	cfg := CommitterConfig{}
	cfg.CommitTimeout = 10 * time.Millisecond
	c, _ := setup(t, cfg, inserter{InsertCallbacksFunc: func(ctx context.Context, _ []callback.Callback) error {
		<-ctx.Done() // a hung database: only the commit timeout ends the write
		return ctx.Err()
	}}, sp)
	run(t, c)

	cb := newCallback(42)
	require.NoError(t, c.Submit(context.Background(), cb))
	requireSame(t, []callback.Callback{cb}, spooled(t, sp))
}

func TestSubmit_databaseAndSpoolFailureIsUnavailable(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		spool Appender
	}{
		{name: "spool_fails", spool: appender{AppendFunc: func([]callback.Callback) error { return errors.New("disk full") }}},
		{name: "no_spool", spool: nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c, bundle := setup(t, CommitterConfig{}, inserter{InsertCallbacksFunc: func(context.Context, []callback.Callback) error {
				return errFailing
			}}, tt.spool)
			run(t, c)
			err := c.Submit(context.Background(), newCallback(1))
			require.ErrorIs(t, err, ErrUnavailable)
			require.Zero(t, metrics.Sum(bundle.metrics.CallbacksSpooled))
		})
	}
}

// A blackholed database holds a write for CommitTimeout, and the callbacks queued
// behind it wait as long. So after a failed write the committer does not try the
// database again with callbacks in hand, however long the outage: a probe pings it,
// and writes go back to it only once a ping answers.
func TestSubmit_afterAFailureOnlyAPingThatAnswersSendsWritesBackToTheDatabase(t *testing.T) {
	t.Parallel()
	var (
		inserts, pings atomic.Int64
		down           atomic.Bool
	)
	down.Store(true)
	sp := openSpool(t)
	cfg := CommitterConfig{}
	cfg.RetryDBAfter = time.Millisecond
	cfg.CommitTimeout = 20 * time.Millisecond
	c, bundle := setup(t, cfg, inserter{
		InsertCallbacksFunc: func(ctx context.Context, _ []callback.Callback) error {
			inserts.Add(1)
			if down.Load() {
				<-ctx.Done() // blackholed: no answer until the timeout
				return ctx.Err()
			}
			return nil
		},
		PingFunc: func(ctx context.Context) error {
			pings.Add(1)
			if down.Load() {
				return errFailing
			}
			return nil
		},
	}, sp)
	run(t, c)

	first, second, third := newCallback(1), newCallback(2), newCallback(3)
	require.NoError(t, c.Submit(context.Background(), first))
	require.Equal(t, int64(1), inserts.Load())
	require.True(t, c.dbDown.Load())

	// However much time passes, a failing ping keeps writes on the spool.
	testhelper.Watch(t, 10*time.Second, "condition", func() bool { return pings.Load() >= 5 })
	bundle.clock.Advance(time.Hour)
	require.NoError(t, c.Submit(context.Background(), second))
	require.Equal(t, int64(1), inserts.Load(), "while pings fail, writes skip the database")
	require.True(t, c.dbDown.Load())

	down.Store(false)
	testhelper.Watch(t, 10*time.Second, "condition", func() bool { return !c.dbDown.Load() })
	require.NoError(t, c.Submit(context.Background(), third))
	require.Equal(t, int64(2), inserts.Load(), "once a ping answers, the database is tried again")
	require.False(t, c.dbDown.Load())

	requireSame(t, []callback.Callback{first, second}, spooled(t, sp))
}

func TestSubmit_givingUpBeforeQueuedReturnsContextError(t *testing.T) {
	t.Parallel()
	c, _ := setup(t, CommitterConfig{}, inserter{InsertCallbacksFunc: func(context.Context, []callback.Callback) error {
		t.Error("nothing may be written")
		return nil
	}}, nil)
	c.queue = make(chan *request) // no room, and nobody runs the committer: Submit cannot even queue
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	require.ErrorIs(t, c.Submit(ctx, newCallback(1)), context.Canceled)
}

func TestRun_shutdownWritesWhatIsQueued(t *testing.T) {
	t.Parallel()
	const n = 5
	var (
		mu      sync.Mutex
		written []callback.Callback
	)
	c, _ := setup(t, CommitterConfig{}, inserter{InsertCallbacksFunc: func(_ context.Context, cbs []callback.Callback) error {
		mu.Lock()
		defer mu.Unlock()
		written = append(written, cbs...)
		return nil
	}}, nil)

	want := make([]callback.Callback, n)
	var wg sync.WaitGroup
	for i := range n {
		want[i] = newCallback(int64(i))
		wg.Go(func() { submit(t, c, want[i]) })
	}
	for len(c.queue) < n {
		runtime.Gosched()
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // Run starts already stopped: it only drains
	require.NoError(t, c.Run(ctx))
	wg.Wait()

	mu.Lock()
	defer mu.Unlock()
	requireSame(t, want, written)
}

func TestSubmit_writesAnInboxRowInPostgres(t *testing.T) {
	t.Parallel()
	pool, _ := pgtest.NewPool(t)
	c, bundle := setup(t, CommitterConfig{}, store.New(pool), openSpool(t))
	run(t, c)

	want := []callback.Callback{newCallback(3, 1, 3), newCallback()}
	for _, cb := range want {
		require.NoError(t, c.Submit(context.Background(), cb))
	}

	got, err := store.New(pool).Inbox(context.Background())
	require.NoError(t, err)
	for i := range want { // timestamptz keeps microseconds; pgx truncates
		want[i].ReceivedAt = want[i].ReceivedAt.Truncate(time.Microsecond)
	}
	requireSame(t, want, got)
	require.Zero(t, metrics.Sum(bundle.metrics.CallbacksSpooled))
}

// The first write that works after a failure calls the recovered hook, once: the
// service wakes the stages that back off while the database is away.
func TestSubmit_firstCommitAfterAFailureCallsRecovered(t *testing.T) {
	t.Parallel()
	var down atomic.Bool
	down.Store(true)
	cfg := CommitterConfig{}
	cfg.RetryDBAfter = time.Millisecond
	notDown := func(context.Context) error {
		if down.Load() {
			return errFailing
		}
		return nil
	}
	c, _ := setup(t, cfg, inserter{
		InsertCallbacksFunc: func(ctx context.Context, _ []callback.Callback) error { return notDown(ctx) },
		PingFunc:            notDown,
	}, openSpool(t))
	var recovered atomic.Int64
	c.OnRecovered(func() { recovered.Add(1) })
	run(t, c)

	require.NoError(t, c.Submit(context.Background(), newCallback(1)))
	require.Zero(t, recovered.Load(), "spooled, not committed")
	down.Store(false)
	testhelper.Watch(t, 10*time.Second, "condition", func() bool { return !c.dbDown.Load() })
	require.NoError(t, c.Submit(context.Background(), newCallback(2)))
	require.Equal(t, int64(1), recovered.Load(), "the first commit after the failure")
	require.NoError(t, c.Submit(context.Background(), newCallback(3)))
	require.Equal(t, int64(1), recovered.Load(), "later commits are no recovery")
}

func TestCommitter_loadIsTheShareOfTimeSpentWriting(t *testing.T) {
	t.Parallel()
	var clk *clock
	// Every write takes 30 ms of the (fake) clock.
	db := inserter{InsertCallbacksFunc: func(context.Context, []callback.Callback) error {
		clk.Advance(30 * time.Millisecond)
		return nil
	}}
	c, bundle := setup(t, CommitterConfig{}, db, nil)
	clk = bundle.clock
	run(t, c)
	require.Zero(t, c.Load(), "nothing written yet")

	// Commits back to back, with 10 ms between them: busy 3/4 of the time.
	for range 40 {
		require.NoError(t, c.Submit(context.Background(), callback.New(clk.Now(), []int64{1})))
		clk.Advance(10 * time.Millisecond)
		c.Load()
	}
	busy := c.Load()
	require.InDelta(t, 0.75, busy, 0.1)

	// Idle: it decays towards 0.
	for range 10 {
		clk.Advance(300 * time.Millisecond)
		c.Load()
	}
	require.Less(t, c.Load(), 0.01)
}
