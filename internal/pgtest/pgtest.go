// Package pgtest gives each test its own migrated PostgreSQL database, through
// pgtestdb: the schema is built once per migration hash as a template, and every test
// gets a fresh copy of it in milliseconds. Tests never share rows.
package pgtest

import (
	"context"
	"database/sql"
	"io"
	"net/url"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	_ "github.com/jackc/pgx/v5/stdlib" // pgtestdb opens its admin connections as "pgx"
	"github.com/peterldowns/pgtestdb"
	"github.com/peterldowns/pgtestdb/migrators/common"

	"github.com/objwatch/callback/db"
	"github.com/objwatch/callback/internal/store"
)

// DefaultURL is the server tests use when DATABASE_URL is unset; make test sets it.
const DefaultURL = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"

// New returns the URL of a fresh, migrated database, dropped when the test ends.
func New(t testing.TB) string {
	t.Helper()
	u, err := url.Parse(serverURL())
	if err != nil {
		t.Fatalf("parsing DATABASE_URL: %v", err)
	}
	password, _ := u.User.Password()
	options := u.Query()
	if options.Get("sslmode") == "" {
		options.Set("sslmode", "disable")
	}
	conf := pgtestdb.Config{
		DriverName:                "pgx",
		Host:                      u.Hostname(),
		Port:                      portOr(u.Port(), "5432"),
		User:                      u.User.Username(),
		Password:                  password,
		Database:                  "postgres",
		Options:                   options.Encode(),
		ForceTerminateConnections: true,
	}
	return pgtestdb.Custom(t, conf, migrator{}).URL()
}

// NewPool is New plus a pool on it, closed before the database is dropped.
func NewPool(t testing.TB) (*pgxpool.Pool, string) {
	t.Helper()
	dbURL := New(t)
	pool, err := pgxpool.New(context.Background(), dbURL)
	if err != nil {
		t.Fatalf("connecting to test database: %v", err)
	}
	t.Cleanup(pool.Close)
	return pool, dbURL
}

func serverURL() string {
	if v := os.Getenv("DATABASE_URL"); v != "" {
		return v
	}
	return DefaultURL
}

func portOr(p, def string) string {
	if p == "" {
		return def
	}
	return p
}

// migrator builds the template with the service's own migration code.
type migrator struct{}

func (migrator) Hash() (string, error) {
	return common.HashDirs(db.Migrations, "*.sql", db.MigrationsDir)
}

func (migrator) Migrate(ctx context.Context, _ *sql.DB, conf pgtestdb.Config) error {
	// Migrate takes its lock in the maintenance database of the same server.
	return store.Migrate(ctx, conf.URL(), io.Discard)
}

// Querier is what IDTimes reads through: a pool, a connection or a transaction.
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// IDTimes runs sql, which selects (bigint, timestamptz) pairs such as
// "SELECT id, last_seen FROM objects", and returns them as a map with times in UTC:
// the shape most assertions about the tables want.
func IDTimes(t testing.TB, q Querier, sql string) map[int64]time.Time {
	t.Helper()
	rows, err := q.Query(context.Background(), sql)
	if err != nil {
		t.Fatalf("querying %q: %v", sql, err)
	}
	out := map[int64]time.Time{}
	var (
		id int64
		ts time.Time
	)
	_, err = pgx.ForEachRow(rows, []any{&id, &ts}, func() error {
		out[id] = ts.UTC()
		return nil
	})
	if err != nil {
		t.Fatalf("reading %q: %v", sql, err)
	}
	return out
}

// Objects reads the whole objects table as id -> last_seen (UTC).
func Objects(t testing.TB, q Querier) map[int64]time.Time {
	t.Helper()
	return IDTimes(t, q, "SELECT id, last_seen FROM objects")
}

// Execer is what InsertObjects writes through: a pool, a connection or a transaction.
type Execer interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

// InsertObjects writes objects rows with the given last_seen, as a lookup result would
// have left them.
func InsertObjects(t testing.TB, db Execer, rows map[int64]time.Time) {
	t.Helper()
	ids := make([]int64, 0, len(rows))
	seen := make([]time.Time, 0, len(rows))
	for id, ts := range rows {
		ids = append(ids, id)
		seen = append(seen, ts)
	}
	_, err := db.Exec(context.Background(),
		"INSERT INTO objects (id, last_seen) SELECT * FROM unnest($1::bigint[], $2::timestamptz[])", ids, seen)
	if err != nil {
		t.Fatalf("inserting objects: %v", err)
	}
}
