package store_test

import (
	"context"
	"io"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/amacneil/dbmate/v2/pkg/dbmate"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/objwatch/callback/db"
	"github.com/objwatch/callback/internal/callback"
	"github.com/objwatch/callback/internal/merge"
	"github.com/objwatch/callback/internal/pgtest"
	"github.com/objwatch/callback/internal/store"
)

// migrator is dbmate on the test's database, with the embedded migrations.
func migrator(t *testing.T, dbURL string) *dbmate.DB {
	t.Helper()
	u, err := url.Parse(dbURL)
	require.NoError(t, err)
	m := dbmate.New(u)
	m.FS = db.Migrations
	m.MigrationsDir = []string{db.MigrationsDir}
	m.AutoDumpSchema = false
	m.Log = io.Discard
	return m
}

// Callbacks accepted by a version that wrote one inbox row per callback and not merged
// before the upgrade are carried over by the migration to batches, and merge as before.
func TestMigration_inboxBatchesKeepsUnmergedCallbacks(t *testing.T) {
	t.Parallel()
	pool, dbURL := pgtest.NewPool(t)
	ctx := context.Background()
	m := migrator(t, dbURL)

	// Going back refuses to drop callbacks.
	s := store.New(pool)
	insert(t, s, callback.New(at(0), []int64{1}))
	rollBackNewerThan(t, m, "20261125000005")
	require.ErrorContains(t, m.Rollback(), "not empty")
	_, err := pool.Exec(ctx, "DELETE FROM inbox_batches")
	require.NoError(t, err)
	require.NoError(t, m.Rollback())

	older := callback.New(at(1), []int64{5, 3, 5, -7})
	empty := callback.New(at(2), nil)
	newer := callback.New(at(3), []int64{3})
	for _, cb := range []callback.Callback{older, empty, newer} {
		ids := cb.ObjectIDs
		if ids == nil {
			ids = []int64{}
		}
		_, err := pool.Exec(ctx, "INSERT INTO inbox (callback_id, received_at, object_ids) VALUES ($1, $2, $3)", cb.ID, cb.ReceivedAt, ids)
		require.NoError(t, err)
	}
	require.NoError(t, m.Migrate())

	inbox, err := s.Inbox(ctx)
	require.NoError(t, err)
	require.Equal(t, []callback.Callback{older, empty, newer}, inbox)
	require.Equal(t, merge.Result{Batches: 3, Callbacks: 3, IDs: 3, Changed: 3}, mergeInbox(t, s))
	require.Equal(t, map[int64]time.Time{-7: at(1), 3: at(3), 5: at(1)}, pendingTable(t, pool))
}

// rollBackNewerThan rolls migrations back, newest first, until none newer than version
// is applied.
func rollBackNewerThan(t *testing.T, m *dbmate.DB, version string) {
	t.Helper()
	for {
		ms, err := m.FindMigrations()
		require.NoError(t, err)
		latest := ""
		for _, mg := range ms {
			if mg.Applied && mg.Version > latest {
				latest = mg.Version
			}
		}
		if latest <= version {
			return
		}
		require.NoError(t, m.Rollback())
	}
}

// During a rolling upgrade, replicas of the old version keep inserting into inbox while
// a new one migrates to batches. Every insert that committed must be carried over: the
// others failed, and an old replica spools what it could not commit. A backlog in inbox
// makes the copy take long enough for the writers to commit during it.
func TestMigration_inboxBatchesKeepsCallbacksOfConcurrentOldWriters(t *testing.T) {
	t.Parallel()
	pool, dbURL := pgtest.NewPool(t)
	ctx := context.Background()
	m := migrator(t, dbURL)
	rollBackNewerThan(t, m, "20261125000004")
	_, err := pool.Exec(ctx, `INSERT INTO inbox (callback_id, received_at, object_ids)
		SELECT gen_random_uuid(), now(), ARRAY[g, g + 1]::bigint[] FROM generate_series(1, 50000) g`)
	require.NoError(t, err)

	const writers = 3
	var (
		mu        sync.Mutex
		committed []uuid.UUID
		wg        sync.WaitGroup
		started   sync.WaitGroup
	)
	wctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	started.Add(writers)
	for range writers {
		wg.Go(func() {
			first := true
			defer func() {
				if first {
					started.Done()
				}
			}()
			// Each insert is its own transaction, as an old replica's commit was; the
			// first error (inbox is gone, or was locked and then dropped) ends it.
			for wctx.Err() == nil {
				id := uuid.New()
				if _, err := pool.Exec(wctx, "INSERT INTO inbox (callback_id, received_at, object_ids) VALUES ($1, now(), $2)",
					id, []int64{7}); err != nil {
					return
				}
				mu.Lock()
				committed = append(committed, id)
				mu.Unlock()
				if first {
					first = false
					started.Done()
				}
			}
		})
	}
	started.Wait()
	require.NoError(t, m.Migrate())
	wg.Wait()
	require.NoError(t, ctx.Err())

	batches := map[uuid.UUID]bool{}
	rows, err := pool.Query(ctx, "SELECT batch_id FROM inbox_batches")
	require.NoError(t, err)
	var id uuid.UUID
	_, err = pgx.ForEachRow(rows, []any{&id}, func() error { batches[id] = true; return nil })
	require.NoError(t, err)
	var lost int
	for _, id := range committed {
		if !batches[id] {
			lost++
		}
	}
	t.Logf("%d inserts committed by the old writers, %d batches after the migration", len(committed), len(batches))
	require.Zero(t, lost, "callbacks committed into inbox during the migration and dropped with it")
}
