package store_test

import (
	"context"
	"io"
	"net/url"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/objwatch/callback/internal/pgtest"
	"github.com/objwatch/callback/internal/store"
	"github.com/objwatch/callback/internal/testnet"
)

// onePool is a pool of one connection from store.PoolConfig, so that the connection a
// statement gets is the one the previous statement released, unless it was dropped.
func onePool(t *testing.T, dbURL string) *pgxpool.Pool {
	t.Helper()
	cfg, err := store.PoolConfig(dbURL)
	require.NoError(t, err)
	cfg.MaxConns, cfg.MinConns = 1, 0
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	return pool
}

func backendPID(t *testing.T, pool *pgxpool.Pool) int32 {
	t.Helper()
	var pid int32
	require.NoError(t, pool.QueryRow(context.Background(), "SELECT pg_backend_pid()").Scan(&pid))
	return pid
}

// A connection that lands on a read-only server or session must be dropped, so that
// the pool dials again and target_session_attrs finds the primary: kept, every write
// through it fails forever.
func TestPoolConfig(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	t.Run("drops_a_connection_whose_write_failed_as_read_only", func(t *testing.T) {
		t.Parallel()
		pool := onePool(t, pgtest.New(t))
		pid := backendPID(t, pool)
		// A read-only transaction fails a write with 25006, as a standby does, without
		// the server announcing anything: only the error tells.
		tx, err := pool.BeginTx(ctx, pgx.TxOptions{AccessMode: pgx.ReadOnly})
		require.NoError(t, err)
		_, err = tx.Exec(ctx, "INSERT INTO objects (id, last_seen) VALUES (1, now())")
		require.True(t, store.IsReadOnly(err), "want SQLSTATE 25006, got %v", err)
		require.NoError(t, tx.Rollback(ctx))

		require.NotEqual(t, pid, backendPID(t, pool), "the connection whose write was refused is still in the pool")
	})

	t.Run("drops_a_connection_the_server_reports_read_only", func(t *testing.T) {
		t.Parallel()
		pool := onePool(t, pgtest.New(t))
		pid := backendPID(t, pool)
		_, err := pool.Exec(ctx, "SET default_transaction_read_only = on")
		require.NoError(t, err)

		// The statement that meets it fails rather than dial in a loop; the next dials.
		_, err = pool.Exec(ctx, "SELECT 1")
		require.ErrorIs(t, err, store.ErrReadOnly)
		require.NotEqual(t, pid, backendPID(t, pool))
		_, err = pool.Exec(ctx, "INSERT INTO objects (id, last_seen) VALUES (1, now())")
		require.NoError(t, err)
	})

	t.Run("keeps_a_connection_after_other_errors", func(t *testing.T) {
		t.Parallel()
		pool := onePool(t, pgtest.New(t))
		pid := backendPID(t, pool)
		_, err := pool.Exec(ctx, "SELECT 1/0")
		require.Error(t, err)
		require.Equal(t, pid, backendPID(t, pool))
	})

	t.Run("multi_host_url_skips_a_dead_host", func(t *testing.T) {
		t.Parallel()
		pool := onePool(t, withDeadHostFirst(t, pgtest.New(t)))
		_, err := pool.Exec(ctx, "INSERT INTO objects (id, last_seen) VALUES (1, now())")
		require.NoError(t, err)
	})
}

// withDeadHostFirst puts a host where nothing listens in front of dbURL's, as a
// multi-host URL whose first server is down.
func withDeadHostFirst(t *testing.T, dbURL string) string {
	t.Helper()
	u, err := url.Parse(dbURL)
	require.NoError(t, err)
	u.Host = testnet.FreeAddr(t) + "," + u.Host
	q := u.Query()
	q.Set("target_session_attrs", "read-write")
	u.RawQuery = q.Encode()
	return u.String()
}

// dbmate's driver cannot read a multi-host URL; Migrate must still apply migrations
// through one (and create the database).
func TestMigrate_multiHostURL(t *testing.T) {
	t.Parallel()
	pool, dbURL := pgtest.NewPool(t)
	ctx := context.Background()
	require.NoError(t, migrator(t, dbURL).Rollback())

	require.NoError(t, store.Migrate(ctx, withDeadHostFirst(t, dbURL), io.Discard))
	var n int
	require.NoError(t, pool.QueryRow(ctx, "SELECT count(*) FROM inbox_batches").Scan(&n))
}

// An idle connection to a server that went silent is pinged for at most PingTimeout
// before the pool drops it, whatever the caller's deadline: pgxpool's default waits
// as long as the caller does.
func TestPoolConfig_boundsThePingOfIdleConnections(t *testing.T) {
	t.Parallel()
	cfg, err := store.PoolConfig("postgres://postgres@127.0.0.1:5432/db")
	require.NoError(t, err)
	require.Equal(t, store.PingTimeout, cfg.PingTimeout)

	cfg, err = store.PoolConfig("postgres://postgres@127.0.0.1:5432/db?pool_ping_timeout=3s")
	require.NoError(t, err)
	require.Equal(t, 3*time.Second, cfg.PingTimeout, "the URL's own value is kept")
}
