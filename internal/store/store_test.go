package store_test

import (
	"context"
	"sort"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/objwatch/callback/internal/callback"
	"github.com/objwatch/callback/internal/component"
	"github.com/objwatch/callback/internal/inbox"
	"github.com/objwatch/callback/internal/merge"
	"github.com/objwatch/callback/internal/pgtest"
	"github.com/objwatch/callback/internal/store"
	"github.com/objwatch/callback/internal/testhelper"
)

func setup(t *testing.T) (*store.Store, *pgxpool.Pool) {
	t.Helper()
	pool, _ := pgtest.NewPool(t)
	return store.New(pool), pool
}

var t0 = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)

func at(sec int) time.Time { return t0.Add(time.Duration(sec) * time.Second) }

// rows reads a two-column table as id -> time, for asserting exact contents.
func rows(t *testing.T, pool *pgxpool.Pool, sql string) map[int64]time.Time {
	t.Helper()
	return pgtest.IDTimes(t, pool, sql)
}

func objectsTable(t *testing.T, pool *pgxpool.Pool) map[int64]time.Time {
	return pgtest.Objects(t, pool)
}

// pendingTable reads the pending rows still to look up; doneTable the ones looked up,
// kept as the memory of their newest receipt.
func pendingTable(t *testing.T, pool *pgxpool.Pool) map[int64]time.Time {
	return rows(t, pool, "SELECT object_id, received_at FROM pending WHERE due_at > '-infinity'")
}

func doneTable(t *testing.T, pool *pgxpool.Pool) map[int64]time.Time {
	return rows(t, pool, "SELECT object_id, received_at FROM pending WHERE due_at = '-infinity'")
}

func insert(t *testing.T, s *store.Store, cbs ...callback.Callback) {
	t.Helper()
	require.NoError(t, s.InsertCallbacks(context.Background(), cbs))
}

// mergeInbox merges the whole inbox into pending, as the merger does.
func mergeInbox(t *testing.T, s *store.Store) merge.Result {
	t.Helper()
	m, err := merge.New(merge.Config{MaxBatches: 1000, MaxIDs: 1 << 20, ExpireAfter: forever}, s, component.Deps{})
	require.NoError(t, err)
	merged, err := m.Pass(context.Background())
	require.NoError(t, err)
	return merged
}

// forever is a window wider than the tests' past: their receipts are fixed dates.
const forever = 100 * 365 * 24 * time.Hour

func claim(t *testing.T, s *store.Store, max int, lease time.Duration) map[int64]store.Claim {
	t.Helper()
	cs, err := s.ClaimDue(context.Background(), max, lease, t0.Add(-time.Hour)) // every receipt inside the window
	require.NoError(t, err)
	out := map[int64]store.Claim{}
	for _, c := range cs {
		out[c.ObjectID] = c
	}
	return out
}

func complete(t *testing.T, s *store.Store, rs ...store.Result) store.Completed {
	t.Helper()
	c, err := s.CompleteLookups(context.Background(), rs, store.CompleteParams{Cutoff: t0.Add(-time.Hour), Now: time.Now()}) // every receipt inside the window
	require.NoError(t, err)
	return c
}

func result(c store.Claim, o store.Outcome) store.Result {
	return store.Result{ObjectID: c.ObjectID, Token: c.Token, Outcome: o}
}

func TestLookups(t *testing.T) {
	t.Parallel()

	t.Run("online_then_offline", func(t *testing.T) {
		t.Parallel()
		s, pool := setup(t)
		insert(t, s, callback.New(at(1), []int64{1, 2}))
		mergeInbox(t, s)
		c := claim(t, s, 10, time.Minute)
		require.Len(t, c, 2)
		done := complete(t, s, result(c[1], store.Online), result(c[2], store.Offline))
		require.Equal(t, store.Completed{Owned: 2, Upserted: 1, Finished: 2}, done)
		require.Equal(t, map[int64]time.Time{1: at(1)}, objectsTable(t, pool))
		require.Empty(t, pendingTable(t, pool))
		require.Equal(t, map[int64]time.Time{1: at(1), 2: at(1)}, doneTable(t, pool), "both remembered with their receipt")

		insert(t, s, callback.New(at(2), []int64{1}))
		mergeInbox(t, s)
		c = claim(t, s, 10, time.Minute)
		done = complete(t, s, result(c[1], store.Offline))
		require.Equal(t, int64(1), done.Removed)
		require.Empty(t, objectsTable(t, pool))
	})

	t.Run("claims_the_newest_receipts_first", func(t *testing.T) {
		t.Parallel()
		s, _ := setup(t)
		insert(t, s, callback.New(at(1), []int64{1}), callback.New(at(3), []int64{3}), callback.New(at(2), []int64{2}))
		mergeInbox(t, s)
		var order []int64
		for range 3 {
			for id := range claim(t, s, 1, time.Minute) {
				order = append(order, id)
			}
		}
		require.Equal(t, []int64{3, 2, 1}, order)
	})

	t.Run("a_newer_receipt_moves_a_waiting_row_up", func(t *testing.T) {
		t.Parallel()
		s, _ := setup(t)
		insert(t, s, callback.New(at(1), []int64{1}), callback.New(at(5), []int64{2}))
		mergeInbox(t, s)
		insert(t, s, callback.New(at(9), []int64{1}))
		mergeInbox(t, s)
		first := claim(t, s, 1, time.Minute)
		require.Contains(t, first, int64(1))
		require.Equal(t, at(9), first[1].ReceivedAt.UTC())
	})

	t.Run("never_claims_a_receipt_past_the_window", func(t *testing.T) {
		t.Parallel()
		s, pool := setup(t)
		insert(t, s, callback.New(at(1), []int64{1}), callback.New(at(5), []int64{2}))
		mergeInbox(t, s)
		cs, err := s.ClaimDue(context.Background(), 10, time.Minute, at(3))
		require.NoError(t, err)
		require.Len(t, cs, 1)
		require.Equal(t, int64(2), cs[0].ObjectID)
		require.Len(t, pendingTable(t, pool), 2, "left for the sweep, not claimed")

		tk, err := s.Expire(context.Background(), store.ExpireParams{PendingCutoff: at(3), Chunk: 10})
		require.NoError(t, err)
		require.Equal(t, int64(1), tk.Swept)
		require.Len(t, pendingTable(t, pool), 1, "the claimed row stays: its lease is live")
	})

	t.Run("claimed_rows_are_not_claimed_twice", func(t *testing.T) {
		t.Parallel()
		s, _ := setup(t)
		insert(t, s, callback.New(at(1), []int64{1, 2, 3}))
		mergeInbox(t, s)
		first := claim(t, s, 2, time.Minute)
		second := claim(t, s, 10, time.Minute)
		third := claim(t, s, 10, time.Minute)
		require.Len(t, first, 2)
		require.Len(t, second, 1)
		require.Empty(t, third)
		for id := range second {
			require.NotContains(t, first, id)
		}
	})

	t.Run("newer_receipt_during_lookup_runs_once_more", func(t *testing.T) {
		t.Parallel()
		s, pool := setup(t)
		insert(t, s, callback.New(at(1), []int64{4}))
		mergeInbox(t, s)
		c := claim(t, s, 10, time.Minute)
		insert(t, s, callback.New(at(2), []int64{4}))
		mergeInbox(t, s)
		require.Empty(t, claim(t, s, 10, time.Minute), "in flight: not claimable")

		done := complete(t, s, result(c[4], store.Online))
		require.Equal(t, int64(1), done.Released)
		require.Equal(t, map[int64]time.Time{4: at(2)}, objectsTable(t, pool),
			"online: the row takes the newest receipt known, not the one the lookup was claimed for")

		again := claim(t, s, 10, time.Minute)
		require.Equal(t, at(2), again[4].ReceivedAt.UTC())
		complete(t, s, result(again[4], store.Online))
		require.Equal(t, map[int64]time.Time{4: at(2)}, objectsTable(t, pool))
		require.Empty(t, pendingTable(t, pool))
		require.Empty(t, claim(t, s, 10, time.Minute), "exactly one more lookup")
	})

	t.Run("expired_lease_is_reclaimed_and_stale_result_dropped", func(t *testing.T) {
		t.Parallel()
		s, pool := setup(t)
		insert(t, s, callback.New(at(1), []int64{6}))
		mergeInbox(t, s)
		stale := claim(t, s, 10, time.Millisecond)
		testhelper.Eventually(t, 5*time.Second, "condition", func() bool { return len(claim(t, s, 10, time.Minute)) == 1 })
		// The first worker comes back late: its token no longer owns the row.
		done := complete(t, s, result(stale[6], store.Online))
		require.Equal(t, store.Completed{}, done)
		require.Empty(t, objectsTable(t, pool))
		require.Len(t, pendingTable(t, pool), 1)
	})

	t.Run("failed_lookup_backs_off_then_retries", func(t *testing.T) {
		t.Parallel()
		s, pool := setup(t)
		insert(t, s, callback.New(at(1), []int64{8}))
		mergeInbox(t, s)
		c := claim(t, s, 10, time.Minute)
		require.Equal(t, 1, c[8].Attempts)
		done := complete(t, s, store.Result{ObjectID: 8, Token: c[8].Token, Outcome: store.Failed, RetryAfter: time.Hour})
		require.Equal(t, int64(1), done.Released)
		require.Empty(t, claim(t, s, 10, time.Minute), "backing off")

		_, err := pool.Exec(context.Background(), "UPDATE pending SET due_at = now()")
		require.NoError(t, err)
		c = claim(t, s, 10, time.Minute)
		require.Equal(t, 2, c[8].Attempts)
		complete(t, s, result(c[8], store.Online))
		require.Equal(t, map[int64]time.Time{8: at(1)}, objectsTable(t, pool))
	})

	t.Run("expired_receipt_is_dropped_unless_newer_arrived", func(t *testing.T) {
		t.Parallel()
		s, pool := setup(t)
		insert(t, s, callback.New(at(1), []int64{1, 2}))
		mergeInbox(t, s)
		c := claim(t, s, 10, time.Minute)
		insert(t, s, callback.New(at(50), []int64{2}))
		mergeInbox(t, s)
		done := complete(t, s, result(c[1], store.Expired), result(c[2], store.Expired))
		require.Equal(t, store.Completed{Owned: 2, Finished: 1, Released: 1}, done)
		require.Equal(t, map[int64]time.Time{2: at(50)}, pendingTable(t, pool))
		require.Empty(t, objectsTable(t, pool))
	})

	t.Run("online_result_for_a_receipt_past_the_window_writes_no_row", func(t *testing.T) {
		t.Parallel()
		s, pool := setup(t)
		insert(t, s, callback.New(at(1), []int64{1, 2}))
		mergeInbox(t, s)
		c := claim(t, s, 10, time.Minute)
		// The lookups ended after receipt at(1) left the window (cutoff at(5)).
		done, err := s.CompleteLookups(context.Background(), []store.Result{result(c[1], store.Online), result(c[2], store.Online)}, store.CompleteParams{Cutoff: at(5), Now: time.Now()})
		require.NoError(t, err)
		require.Equal(t, store.Completed{Owned: 2, Finished: 2}, done)
		require.Empty(t, objectsTable(t, pool), "an already expired row must not be written")
		require.Empty(t, pendingTable(t, pool))
	})

	t.Run("online_never_moves_last_seen_back", func(t *testing.T) {
		t.Parallel()
		s, pool := setup(t)
		insert(t, s, callback.New(at(5), []int64{1}))
		mergeInbox(t, s)
		c := claim(t, s, 10, time.Minute)
		_, err := pool.Exec(context.Background(), "INSERT INTO objects VALUES (1, $1)", at(9))
		require.NoError(t, err)
		complete(t, s, result(c[1], store.Online))
		require.Equal(t, map[int64]time.Time{1: at(9)}, objectsTable(t, pool))
	})

	t.Run("results_in_any_order_and_repeated", func(t *testing.T) {
		t.Parallel()
		s, pool := setup(t)
		insert(t, s, callback.New(at(1), []int64{5, 3, 9, 1}))
		mergeInbox(t, s)
		c := claim(t, s, 10, time.Minute)
		done := complete(t, s,
			result(c[9], store.Online), result(c[1], store.Offline),
			result(c[5], store.Online), result(c[9], store.Online), result(c[3], store.Online))
		require.Equal(t, int64(4), done.Owned)
		ids := []int64{}
		for id := range objectsTable(t, pool) {
			ids = append(ids, id)
		}
		sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
		require.Equal(t, []int64{3, 5, 9}, ids)
	})
}

func TestExpire(t *testing.T) {
	t.Parallel()

	t.Run("deletes_rows_outside_the_window_keeps_the_rest", func(t *testing.T) {
		t.Parallel()
		s, pool := setup(t)
		_, err := pool.Exec(context.Background(), "INSERT INTO objects VALUES (1, $1), (2, $2), (3, $3)", at(0), at(10), at(20))
		require.NoError(t, err)
		tk, err := s.Expire(context.Background(), store.ExpireParams{ObjectsCutoff: at(10), ForgetBefore: at(0), Chunk: 100})
		ran, deleted := tk.Ran, tk.Deleted
		require.NoError(t, err)
		require.True(t, ran)
		require.Equal(t, int64(1), deleted)
		require.Equal(t, map[int64]time.Time{2: at(10), 3: at(20)}, objectsTable(t, pool))
	})

	t.Run("two_replicas_never_both_run_it", func(t *testing.T) {
		t.Parallel()
		s, pool := setup(t)
		ctx := context.Background()
		_, err := pool.Exec(ctx, "INSERT INTO objects VALUES (1, $1)", at(0))
		require.NoError(t, err)

		// Another replica is in the middle of its tick: it holds the lock.
		other, err := pool.Begin(ctx)
		require.NoError(t, err)
		defer other.Rollback(ctx) //nolint:errcheck
		var locked bool
		require.NoError(t, other.QueryRow(ctx, "SELECT pg_try_advisory_xact_lock($1)", store.ExpiryLockKey).Scan(&locked))
		require.True(t, locked)

		tk, err := s.Expire(ctx, store.ExpireParams{ObjectsCutoff: at(10), ForgetBefore: at(0), Chunk: 100})
		ran, deleted := tk.Ran, tk.Deleted
		require.NoError(t, err)
		require.False(t, ran)
		require.Zero(t, deleted)
		require.Len(t, objectsTable(t, pool), 1)

		// Its tick ends (or it dies): the next tick here takes over.
		require.NoError(t, other.Rollback(ctx))
		tk, err = s.Expire(ctx, store.ExpireParams{ObjectsCutoff: at(10), ForgetBefore: at(0), Chunk: 100})
		ran, deleted = tk.Ran, tk.Deleted
		require.NoError(t, err)
		require.True(t, ran)
		require.Equal(t, int64(1), deleted)
	})
}

func TestReplaySegment(t *testing.T) {
	t.Parallel()

	// After a long outage with small callbacks a segment holds tens of thousands of
	// batches. Inserted one round trip each, such a segment did not fit its deadline
	// and was tried again and again: the spool never drained.
	t.Run("a_segment_of_100000_small_batches_fits_its_budget", func(t *testing.T) {
		t.Parallel()
		s, pool := setup(t)
		const n = 100_000
		batches := make([]callback.Batch, n)
		for i := range batches {
			batches[i] = callback.Batch{ID: uuid.Must(uuid.NewV7()), Callbacks: []callback.Callback{callback.New(at(i%1000), []int64{int64(i)})}}
		}
		ctx, cancel := context.WithTimeout(context.Background(), inbox.ReplayBudget(batches))
		defer cancel()
		start := time.Now()
		got, err := s.ReplaySegment(ctx, uuid.Must(uuid.NewV7()), batches)
		require.NoError(t, err, "after %v", time.Since(start))
		require.Equal(t, n, got)
		var rows int
		require.NoError(t, pool.QueryRow(context.Background(), "SELECT count(*) FROM inbox_batches").Scan(&rows))
		require.Equal(t, n, rows)
		t.Logf("%d batches replayed in %v (budget %v)", n, time.Since(start).Round(time.Millisecond), inbox.ReplayBudget(batches))
	})

	t.Run("each_segment_once", func(t *testing.T) {
		t.Parallel()
		s, pool := setup(t)
		ctx := context.Background()
		cb := callback.New(at(2), []int64{2})
		segment := callback.New(at(0), nil).ID
		batches := []callback.Batch{{ID: callback.New(at(2), nil).ID, Callbacks: []callback.Callback{cb}}}

		n, err := s.ReplaySegment(ctx, segment, batches)
		require.NoError(t, err)
		require.Equal(t, 1, n)

		n, err = s.ReplaySegment(ctx, segment, batches)
		require.NoError(t, err)
		require.Zero(t, n, "a segment already replayed is skipped")
		inbox, err := s.Inbox(ctx)
		require.NoError(t, err)
		require.Equal(t, []callback.Callback{cb}, inbox)
		require.Equal(t, merge.Result{Batches: 1, Callbacks: 1, IDs: 1, Changed: 1}, mergeInbox(t, s))
		require.Equal(t, map[int64]time.Time{2: at(2)}, pendingTable(t, pool))
	})

	// The committer's write timed out but committed, so the batch was
	// spooled too, under the same id.
	t.Run("a_batch_still_in_the_inbox_is_not_inserted_again", func(t *testing.T) {
		t.Parallel()
		s, _ := setup(t)
		ctx := context.Background()
		committed := callback.Batch{ID: callback.New(at(1), nil).ID, Callbacks: []callback.Callback{callback.New(at(1), []int64{1})}}
		fresh := callback.Batch{ID: callback.New(at(2), nil).ID, Callbacks: []callback.Callback{callback.New(at(2), []int64{2})}}
		require.NoError(t, s.InsertBatch(ctx, committed.ID, committed.Callbacks))

		n, err := s.ReplaySegment(ctx, callback.New(at(3), nil).ID, []callback.Batch{committed, fresh})
		require.NoError(t, err)
		require.Equal(t, 1, n, "only the batch that was not in the inbox")
		inbox, err := s.Inbox(ctx)
		require.NoError(t, err)
		require.Equal(t, append(committed.Callbacks, fresh.Callbacks...), inbox)
	})

	t.Run("a_batch_merged_and_looked_up_is_not_merged_again", func(t *testing.T) {
		t.Parallel()
		s, pool := setup(t)
		ctx := context.Background()
		b := callback.Batch{ID: callback.New(at(1), nil).ID, Callbacks: []callback.Callback{callback.New(at(1), []int64{1, 2})}}
		require.NoError(t, s.InsertBatch(ctx, b.ID, b.Callbacks))
		require.Equal(t, int64(2), mergeInbox(t, s).IDs)
		cs := claim(t, s, 10, time.Minute)
		complete(t, s, result(cs[1], store.Online), result(cs[2], store.Offline))
		require.Empty(t, pendingTable(t, pool))
		require.Equal(t, map[int64]time.Time{1: at(1)}, objectsTable(t, pool))

		// The spooled copy, replayed late, and once more from a second segment (a
		// replica that spooled it as well would do that).
		for range 2 {
			n, err := s.ReplaySegment(ctx, callback.New(at(5), nil).ID, []callback.Batch{b})
			require.NoError(t, err)
			require.Zero(t, n)
			require.Equal(t, merge.Result{}, mergeInbox(t, s))
			require.Empty(t, pendingTable(t, pool), "no lookup again")
			require.Equal(t, map[int64]time.Time{1: at(1)}, objectsTable(t, pool))
		}
	})

	// The merger has taken the inbox copy but not committed yet when the replay
	// inserts: the insert waits for it on the primary key and then succeeds, and
	// the replay must still drop the copy once it sees the merge committed.
	t.Run("a_batch_being_merged_while_replayed_is_not_merged_again", func(t *testing.T) {
		t.Parallel()
		s, pool := setup(t)
		ctx := context.Background()
		b := callback.Batch{ID: callback.New(at(1), nil).ID, Callbacks: []callback.Callback{callback.New(at(1), []int64{1})}}
		require.NoError(t, s.InsertBatch(ctx, b.ID, b.Callbacks))

		// A merge pass in progress, as ClaimBatches and RememberMergedBatches leave it.
		tx, err := pool.Begin(ctx)
		require.NoError(t, err)
		defer tx.Rollback(ctx)
		_, err = tx.Exec(ctx, "DELETE FROM inbox_batches WHERE batch_id = $1", b.ID)
		require.NoError(t, err)
		_, err = tx.Exec(ctx, "INSERT INTO merged_batches (batch_id) VALUES ($1)", b.ID)
		require.NoError(t, err)

		done := make(chan error, 1)
		go func() {
			_, err := s.ReplaySegment(ctx, callback.New(at(5), nil).ID, []callback.Batch{b})
			done <- err
		}()
		// Wait until the replay is blocked on the merge's row lock, then commit it.
		testhelper.Eventually(t, 10*time.Second, "condition", func() bool {
			var waiting bool
			err := pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_stat_activity
				WHERE datname = current_database() AND wait_event_type = 'Lock')`).Scan(&waiting)
			return err == nil && waiting
		})
		require.NoError(t, tx.Commit(ctx))
		require.NoError(t, <-done)

		inbox, err := s.Inbox(ctx)
		require.NoError(t, err)
		require.Empty(t, inbox, "the replayed copy was dropped")
	})

	t.Run("forgotten_batches_are_replayed_again", func(t *testing.T) {
		t.Parallel()
		s, pool := setup(t)
		ctx := context.Background()
		now := time.Now()
		old := callback.Batch{ID: uuidV7At(now.Add(-2 * time.Hour)), Callbacks: []callback.Callback{callback.New(at(1), []int64{1})}}
		recent := callback.Batch{ID: uuidV7At(now.Add(-time.Minute)), Callbacks: []callback.Callback{callback.New(at(2), []int64{2})}}
		for _, b := range []callback.Batch{old, recent} {
			require.NoError(t, s.InsertBatch(ctx, b.ID, b.Callbacks))
		}
		mergeInbox(t, s)
		_, err := pool.Exec(ctx, "DELETE FROM pending")
		require.NoError(t, err)

		n, err := s.ForgetMergedBatches(ctx, now.Add(-time.Hour))
		require.NoError(t, err)
		require.Equal(t, int64(1), n)
		n2, err := s.ReplaySegment(ctx, callback.New(at(5), nil).ID, []callback.Batch{old, recent})
		require.NoError(t, err)
		require.Equal(t, 1, n2, "only the forgotten batch")
		require.Equal(t, map[int64]time.Time{1: at(1)}, rows(t, pool, "SELECT 1::bigint, received_at FROM inbox_batches"))
	})

	t.Run("a_big_segment_becomes_bounded_batches", func(t *testing.T) {
		t.Parallel()
		s, pool := setup(t)
		ctx := context.Background()
		cbs := make([]callback.Callback, store.MaxBatchCallbacks+10)
		for i := range cbs {
			cbs[i] = callback.New(at(i), []int64{int64(i)})
		}
		big := make([]int64, store.MaxBatchIDs)
		for i := range big {
			big[i] = int64(1_000_000 + i)
		}
		// Past the id bound: a callback alone over it is a batch of its own.
		cbs = append(cbs, callback.New(at(5000), big), callback.New(at(5001), big[:10]), callback.New(at(5002), []int64{7}))

		// A segment written before batches had ids: one batch without an id, cut to
		// the bounds with new ids.
		n, err := s.ReplaySegment(ctx, callback.New(at(0), nil).ID, []callback.Batch{{Callbacks: cbs}})
		require.NoError(t, err)
		require.Equal(t, len(cbs), n)
		rs, err := pool.Query(ctx, "SELECT callbacks FROM inbox_batches ORDER BY received_at")
		require.NoError(t, err)
		sizes, err := pgx.CollectRows(rs, pgx.RowTo[int32])
		require.NoError(t, err)
		require.Equal(t, []int32{store.MaxBatchCallbacks, 10, 1, 2}, sizes)
		inbox, err := s.Inbox(ctx)
		require.NoError(t, err)
		require.Equal(t, cbs, inbox)
	})
}

// uuidV7At is a UUIDv7 minted at t.
func uuidV7At(t time.Time) uuid.UUID {
	u := uuid.Must(uuid.NewV7())
	ms := uint64(t.UnixMilli())
	for i := range 6 {
		u[i] = byte(ms >> (40 - 8*i))
	}
	return u
}
