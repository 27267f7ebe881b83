package store_test

import (
	"context"
	"io"
	"net/url"
	"testing"
	"time"

	"github.com/amacneil/dbmate/v2/pkg/dbmate"
	"github.com/stretchr/testify/require"

	"github.com/objwatch/callback/db"
	"github.com/objwatch/callback/internal/callback"
	"github.com/objwatch/callback/internal/pgtest"
	"github.com/objwatch/callback/internal/store"
)

// Callbacks accepted by a version that wrote one inbox row per callback and not merged
// before the upgrade are carried over by the migration to batches, and merge as before.
func TestMigration_inboxBatchesKeepsUnmergedCallbacks(t *testing.T) {
	t.Parallel()
	pool, dbURL := pgtest.NewPool(t)
	ctx := context.Background()
	u, err := url.Parse(dbURL)
	require.NoError(t, err)
	m := dbmate.New(u)
	m.FS = db.Migrations
	m.MigrationsDir = []string{db.MigrationsDir}
	m.AutoDumpSchema = false
	m.Log = io.Discard

	// Going back refuses to drop callbacks.
	s := store.New(pool)
	insert(t, s, callback.New(at(0), []int64{1}))
	rollBackNewerThan(t, m, "20261125000005")
	require.ErrorContains(t, m.Rollback(), "not empty")
	_, err = pool.Exec(ctx, "DELETE FROM inbox_batches")
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
	require.Equal(t, store.Merged{Batches: 3, Callbacks: 3, Ids: 3, Changed: 3}, merge(t, s))
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
