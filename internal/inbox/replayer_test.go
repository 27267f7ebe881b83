package inbox_test

import (
	"context"
	"errors"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/objwatch/callback/internal/callback"
	"github.com/objwatch/callback/internal/component"
	"github.com/objwatch/callback/internal/inbox"
	"github.com/objwatch/callback/internal/merge"
	"github.com/objwatch/callback/internal/metrics"
	"github.com/objwatch/callback/internal/pgtest"
	"github.com/objwatch/callback/internal/spool"
	"github.com/objwatch/callback/internal/store"
	"github.com/objwatch/callback/internal/testhelper"
)

var discard = testhelper.DiscardLogger()

// testBundle is what a test sees around its replayer: a real store on a fresh
// database, a real spool, the metrics, and what the replayer's hook was told.
type testBundle struct {
	pool     *pgxpool.Pool
	store    *store.Store
	dir      string
	spool    *spool.Spool
	metrics  *metrics.Metrics
	replayed *atomic.Int64 // passes that replayed something
	woken    chan struct{} // told of such a pass, unless it still holds one
}

// setup builds a replayer of a real spool into a real store on a fresh database. Its
// interval is an hour: only the first pass, Wake and the retry of a failed pass start
// one within a test.
func setup(t *testing.T) (*inbox.Replayer, *testBundle) {
	t.Helper()
	pool, _ := pgtest.NewPool(t)
	b := &testBundle{pool: pool, store: store.New(pool), dir: t.TempDir(), metrics: metrics.New(),
		replayed: new(atomic.Int64), woken: make(chan struct{}, 1)}
	b.spool = b.openSpool(t)
	return b.replayer(t, b.store, b.spool), b
}

// replayer is another replayer, from sp into db, reporting to the same bundle.
func (b *testBundle) replayer(t *testing.T, db inbox.SegmentStore, sp inbox.Spool) *inbox.Replayer {
	t.Helper()
	replayed := func() {
		b.replayed.Add(1)
		select {
		case b.woken <- struct{}{}:
		default:
		}
	}
	r, err := inbox.NewReplayer(inbox.ReplayerConfig{Interval: time.Hour, Replayed: replayed}, db, sp, component.Deps{Metrics: b.metrics})
	require.NoError(t, err)
	return r
}

// openSpool opens another Spool on the same directory, as another process would.
func (b *testBundle) openSpool(t *testing.T) *spool.Spool {
	t.Helper()
	sp, err := spool.Open(b.dir, discard)
	require.NoError(t, err)
	t.Cleanup(func() { _ = sp.Close() })
	return sp
}

// mergeInbox merges the inbox into pending, as the merger does.
func (b *testBundle) mergeInbox(t *testing.T) merge.Result {
	t.Helper()
	m, err := merge.New(merge.Config{MaxBatches: 100, MaxIDs: 1 << 20, ExpireAfter: time.Hour}, b.store, component.Deps{})
	require.NoError(t, err)
	merged, err := m.Pass(context.Background())
	require.NoError(t, err)
	return merged
}

// inbox reads the inbox table.
func (b *testBundle) inbox(t *testing.T) []callback.Callback {
	t.Helper()
	out, err := store.New(b.pool).Inbox(context.Background())
	require.NoError(t, err)
	for i := range out {
		if out[i].ObjectIDs == nil {
			out[i].ObjectIDs = []int64{} // as the spool decodes an empty callback
		}
	}
	return out
}

func (b *testBundle) segments(t *testing.T) int {
	t.Helper()
	n, _ := b.spool.Stats()
	return n
}

// callbacks makes n callbacks as the inbox would hold them (UTC, microseconds), ordered
// by id like inbox(t).
func callbacks(n int) []callback.Callback {
	out := make([]callback.Callback, n)
	for i := range out {
		ids := make([]int64, i) // 0, 1, 2... ids: the empty callback too
		for j := range ids {
			ids[j] = int64(j * 7)
		}
		out[i] = callback.New(time.Now().UTC().Truncate(time.Microsecond), ids)
	}
	slices.SortFunc(out, func(a, b callback.Callback) int { return slices.Compare(a.ID[:], b.ID[:]) })
	return out
}

// segmentStore is a fake inbox.SegmentStore.
type segmentStore struct {
	PingFunc          func(ctx context.Context) error
	ReplaySegmentFunc func(ctx context.Context, segment uuid.UUID, batches []callback.Batch) (int, error)
}

func (s segmentStore) Ping(ctx context.Context) error { return s.PingFunc(ctx) }

func (s segmentStore) ReplaySegment(ctx context.Context, segment uuid.UUID, batches []callback.Batch) (int, error) {
	return s.ReplaySegmentFunc(ctx, segment, batches)
}

func TestReplayOnce_movesSpooledCallbacksIntoInboxOnce(t *testing.T) {
	t.Parallel()
	r, b := setup(t)
	want := callbacks(5)
	// Two segments: one left by a process that has gone (closed spool), and this
	// process's active one.
	other := b.openSpool(t)
	require.NoError(t, other.Append(want[:2]))
	require.NoError(t, other.Close())
	require.NoError(t, b.spool.Append(want[2:4]))
	require.NoError(t, b.spool.Append(want[4:]))
	require.Equal(t, 2, b.segments(t))

	require.NoError(t, r.ReplayOnce(context.Background()))
	require.Equal(t, want, b.inbox(t))
	require.Zero(t, b.segments(t), "replayed segments are removed")
	require.Equal(t, 5.0, metrics.Sum(b.metrics.CallbacksReplayed))
	require.Equal(t, int64(1), b.replayed.Load(), "the merger is woken after a replay")

	require.NoError(t, r.ReplayOnce(context.Background()))
	require.Equal(t, want, b.inbox(t), "a second pass finds nothing to do")
	require.Equal(t, int64(1), b.replayed.Load())
}

func TestReplayOnce_segmentCommittedBeforeACrashCountsOnce(t *testing.T) {
	t.Parallel()
	r, b := setup(t)
	want := callbacks(3)
	require.NoError(t, b.spool.Append(want))

	// The crash: a replay commits the segment, and the process dies before removing
	// the file (here: apply commits, then fails, so the file stays).
	_, err := b.spool.Replay(context.Background(), func(ctx context.Context, segment uuid.UUID, batches []callback.Batch) error {
		n, err := b.store.ReplaySegment(ctx, segment, batches)
		require.NoError(t, err)
		require.Equal(t, 3, n)
		return errors.New("killed before removing the file")
	})
	require.Error(t, err)
	require.Equal(t, 1, b.segments(t), "the file survived the crash")
	require.Equal(t, want, b.inbox(t))

	// The merger may even have consumed those rows since: replaying the file again
	// must not bring them back.
	_, err = b.pool.Exec(context.Background(), "DELETE FROM inbox_batches")
	require.NoError(t, err)

	require.NoError(t, r.ReplayOnce(context.Background()))
	require.Empty(t, b.inbox(t), "a segment already committed is not replayed again")
	require.Zero(t, b.segments(t), "and its file is removed")
	require.Zero(t, metrics.Sum(b.metrics.CallbacksReplayed))
}

func TestReplayOnce_batchStillInInboxIsNotInsertedAgain(t *testing.T) {
	t.Parallel()
	r, b := setup(t)
	want := callbacks(3)
	// The committer's write committed but its reply was lost, so it spooled the same
	// batch as well, under the same id.
	batchID := uuid.Must(uuid.NewV7())
	require.NoError(t, b.store.InsertBatch(context.Background(), batchID, want))
	require.NoError(t, b.spool.AppendBatch(batchID, want))

	require.NoError(t, r.ReplayOnce(context.Background()))
	require.Equal(t, want, b.inbox(t), "in the inbox once")
	require.Zero(t, b.segments(t))
	require.Zero(t, metrics.Sum(b.metrics.CallbacksReplayed), "nothing was new")

	require.Equal(t, merge.Result{Batches: 1, Callbacks: 3, IDs: 2, Changed: 2}, b.mergeInbox(t))
	require.Equal(t, map[int64]time.Time{0: want[2].ReceivedAt, 7: want[2].ReceivedAt},
		pgtest.IDTimes(t, b.pool, "SELECT object_id, received_at FROM pending"))
}

func TestReplayOnce_databaseDownKeepsSpool(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		db   segmentStore
	}{
		{name: "ping_fails", db: segmentStore{
			PingFunc: func(context.Context) error { return errors.New("connection refused") },
			ReplaySegmentFunc: func(context.Context, uuid.UUID, []callback.Batch) (int, error) {
				return 0, errors.New("replay must not be tried while ping fails")
			},
		}},
		{name: "replay_fails", db: segmentStore{
			PingFunc: func(context.Context) error { return nil },
			ReplaySegmentFunc: func(context.Context, uuid.UUID, []callback.Batch) (int, error) {
				return 0, errors.New("connection reset")
			},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r, b := setup(t)
			want := callbacks(3)
			require.NoError(t, b.spool.Append(want))

			require.Error(t, b.replayer(t, tt.db, b.spool).ReplayOnce(context.Background()))
			require.Equal(t, 1, b.segments(t), "the spool is kept")
			require.Zero(t, b.replayed.Load())

			// Once the database answers, the same callbacks are replayed.
			require.NoError(t, r.ReplayOnce(context.Background()))
			require.Equal(t, want, b.inbox(t))
		})
	}
}

func TestReplayOnce_emptySpoolDoesNotTouchTheDatabase(t *testing.T) {
	t.Parallel()
	_, b := setup(t)
	r := b.replayer(t, segmentStore{
		PingFunc: func(context.Context) error { return errors.New("must not ping") },
	}, b.spool)
	require.NoError(t, r.ReplayOnce(context.Background()))
}

func TestRun_replaysAtStart(t *testing.T) {
	t.Parallel()
	r, b := setup(t)
	want := callbacks(2)
	other := b.openSpool(t) // left by the previous run of this service
	require.NoError(t, other.Append(want))
	require.NoError(t, other.Close())

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	<-b.woken // the first pass runs at once, not after the interval (an hour here)
	cancel()
	require.NoError(t, <-done)
	require.Equal(t, want, b.inbox(t))
}

// runReplayer runs r until the test ends.
func runReplayer(t *testing.T, r *inbox.Replayer) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	t.Cleanup(func() { cancel(); require.NoError(t, <-done) })
}

// waitWoken waits for the replayed hook. The limit is no timing assertion: without the
// behaviour under test the wait is the replayer's interval, an hour here.
func waitWoken(t *testing.T, woken <-chan struct{}) {
	t.Helper()
	select {
	case <-woken:
	case <-time.After(20 * time.Second):
		t.Fatal("nothing was replayed")
	}
}

// While the spool holds work, a failed pass is retried within replayRetry, not after
// the interval or a growing backoff: spooled callbacks reach the inbox soon after the
// database answers again.
func TestRun_retriesSoonWhileTheSpoolHoldsWork(t *testing.T) {
	t.Parallel()
	_, b := setup(t)
	want := callbacks(2)
	require.NoError(t, b.spool.Append(want))

	var pings int
	db := segmentStore{
		PingFunc: func(ctx context.Context) error {
			if pings++; pings <= 3 { // down for three passes, then back
				return errors.New("connection refused")
			}
			return b.store.Ping(ctx)
		},
		ReplaySegmentFunc: b.store.ReplaySegment,
	}
	runReplayer(t, b.replayer(t, db, b.spool))
	waitWoken(t, b.woken)
	require.Equal(t, want, b.inbox(t))
}

// passSpy is the spool, telling when a pass looks at it.
type passSpy struct {
	*spool.Spool
	passes chan struct{}
}

func (s passSpy) Stats() (int, int64) {
	segments, bytes := s.Spool.Stats()
	select {
	case s.passes <- struct{}{}:
	default:
	}
	return segments, bytes
}

// Wake starts a pass at once: the service calls it when a commit works again.
func TestRun_wakeReplaysAtOnce(t *testing.T) {
	t.Parallel()
	_, b := setup(t)
	spy := passSpy{Spool: b.spool, passes: make(chan struct{}, 1)}
	r := b.replayer(t, b.store, spy)
	runReplayer(t, r)
	<-spy.passes // the first pass found the spool empty and sleeps for an hour

	want := callbacks(3)
	require.NoError(t, b.spool.Append(want))
	r.Wake()
	waitWoken(t, b.woken)
	require.Equal(t, want, b.inbox(t))
}

// A replay that hangs (a connection to a server that went away without a word) is
// abandoned after a budget that grows with the segment, not after a minute: the whole
// spool waits behind it.
func TestReplayOnce_aHungReplayIsAbandonedWithinItsBudget(t *testing.T) {
	t.Parallel()
	_, b := setup(t)
	require.NoError(t, b.spool.Append(callbacks(3)))
	var budget time.Duration
	hung := segmentStore{
		PingFunc: func(context.Context) error { return nil },
		ReplaySegmentFunc: func(ctx context.Context, _ uuid.UUID, _ []callback.Batch) (int, error) {
			deadline, ok := ctx.Deadline()
			require.True(t, ok, "a replay without a deadline can hang forever")
			budget = time.Until(deadline)
			return 0, context.DeadlineExceeded // as when the deadline came
		},
	}
	require.Error(t, b.replayer(t, hung, b.spool).ReplayOnce(context.Background()))
	require.Equal(t, 1, b.segments(t), "kept for the next pass")
	require.LessOrEqual(t, budget, 6*time.Second, "a segment of a few ids gets a few seconds")

	big := []callback.Batch{{Callbacks: []callback.Callback{callback.New(time.Now(), make([]int64, 2_000_000))}}}
	require.Greater(t, inbox.ReplayBudget(big), 20*time.Second, "the largest segments get time for their size")
}

// A segment that fails while the database answers (its statement over the deadline, a
// row refused) does not hold back the segments after it; when the database does not
// answer, the pass stops at the first failure instead of spending every segment's
// budget.
func TestReplayOnce_oneFailingSegmentDoesNotHoldBackTheOthers(t *testing.T) {
	t.Parallel()
	for _, dbAnswers := range []bool{true, false} {
		t.Run(map[bool]string{true: "database_answers", false: "database_gone"}[dbAnswers], func(t *testing.T) {
			t.Parallel()
			_, b := setup(t)
			// Two segments: the other process's sealed one first (older), then ours.
			other := b.openSpool(t)
			require.NoError(t, other.Append(callbacks(2)))
			require.NoError(t, other.Close())
			require.NoError(t, b.spool.Append(callbacks(3)))

			var tried []int
			pings := 0
			db := segmentStore{
				PingFunc: func(context.Context) error {
					pings++
					if pings > 1 && !dbAnswers {
						return errors.New("connection refused")
					}
					return nil
				},
				ReplaySegmentFunc: func(ctx context.Context, segment uuid.UUID, batches []callback.Batch) (int, error) {
					tried = append(tried, len(batches[0].Callbacks))
					if len(tried) == 1 {
						return 0, errors.New("statement timeout")
					}
					return b.store.ReplaySegment(ctx, segment, batches)
				},
			}
			require.Error(t, b.replayer(t, db, b.spool).ReplayOnce(context.Background()))
			if dbAnswers {
				require.Equal(t, []int{2, 3}, tried, "the second segment is replayed although the first failed")
				require.Len(t, b.inbox(t), 3)
				require.Equal(t, 1, b.segments(t), "the failed one is kept for the next pass")
			} else {
				require.Equal(t, []int{2}, tried, "the pass stops: the database is gone")
				require.Equal(t, 2, b.segments(t))
			}
		})
	}
}
