package store

import (
	"context"
	"fmt"
	"hash/fnv"
	"io"
	"net"
	"net/url"
	"strconv"
	"strings"

	"github.com/amacneil/dbmate/v2/pkg/dbmate"
	_ "github.com/amacneil/dbmate/v2/pkg/driver/postgres" // dbmate's postgres driver
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/objwatch/callback/db"
)

// Migrate creates the database named by databaseURL if it is missing and applies the
// embedded migrations. Several replicas may start at once: each first takes a session
// advisory lock in the server's maintenance database (the target may not exist yet,
// and advisory locks are per database), so exactly one runs dbmate at a time and the
// others find nothing left to do.
//
// databaseURL may name several hosts (postgres://u@h1:p1,h2:p2/db?
// target_session_attrs=read-write). dbmate's driver (lib/pq) reads such a URL wrongly
// (each host with the default port appended), so pgx finds the host first, the
// primary when the URL names several (see PoolConfig), and dbmate gets a URL of that
// host alone. The lock is taken on that host, so it still guards what dbmate does.
func Migrate(ctx context.Context, databaseURL string, log io.Writer) error {
	target, err := url.Parse(databaseURL)
	if err != nil {
		return fmt.Errorf("parsing database url: %w", err)
	}
	dbName := strings.TrimPrefix(target.Path, "/")
	if dbName == "" {
		return fmt.Errorf("database url names no database")
	}
	cfg, err := pgx.ParseConfig(databaseURL)
	if err != nil {
		return fmt.Errorf("parsing database url: %w", err)
	}
	maint := cfg.Copy()
	maint.Database = "postgres"
	if maint.ValidateConnect == nil && hostCount(maint) > 1 {
		maint.ValidateConnect = pgconn.ValidateConnectTargetSessionAttrsReadWrite
	}
	conn, host, err := connectFirst(ctx, maint)
	if err != nil {
		return fmt.Errorf("connecting to maintenance database: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))

	key := lockKey("callback-migrate:" + dbName)
	if _, err := conn.Exec(ctx, "SELECT pg_advisory_lock($1)", key); err != nil {
		return fmt.Errorf("taking migration lock: %w", err)
	}
	defer conn.Exec(context.WithoutCancel(ctx), "SELECT pg_advisory_unlock($1)", key) //nolint:errcheck // released with the connection anyway

	m := dbmate.New(libpqURL(singleHost(target, host.Host, host.Port)))
	m.FS = db.Migrations
	m.MigrationsDir = []string{db.MigrationsDir}
	m.AutoDumpSchema = false
	m.Log = log
	if err := createAndMigrate(m); err != nil {
		return fmt.Errorf("applying migrations: %w", err)
	}
	return nil
}

// singleHost is u with its hosts replaced by host:port (a Unix socket directory goes
// into the host parameter, as libpq spells it).
func singleHost(u *url.URL, host string, port uint16) *url.URL {
	c := *u
	if strings.HasPrefix(host, "/") {
		q := c.Query()
		q.Set("host", host)
		q.Set("port", strconv.Itoa(int(port)))
		c.RawQuery = q.Encode()
		c.Host = ""
		return &c
	}
	c.Host = net.JoinHostPort(host, strconv.Itoa(int(port)))
	return &c
}

// createAndMigrate runs dbmate, turning its panics into errors: some of its helpers
// (dbutil.MustClose) panic when a connection breaks mid-query, which an outage at
// start-up does. The caller retries; a panic would have ended the whole service.
func createAndMigrate(m *dbmate.DB) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("dbmate panicked (connection lost?): %v", r)
		}
	}()
	return m.CreateAndMigrate()
}

// libpqURL adapts a pgx URL for dbmate, whose driver is lib/pq: lib/pq insists on TLS
// unless told otherwise, which a local server does not offer.
func libpqURL(u *url.URL) *url.URL {
	c := *u
	q := c.Query()
	if q.Get("sslmode") == "" && isLocal(c.Hostname()) {
		q.Set("sslmode", "disable")
		c.RawQuery = q.Encode()
	}
	return &c
}

func isLocal(host string) bool {
	if host == "" || host == "localhost" || strings.HasPrefix(host, "/") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// lockKey turns a name into an advisory lock key, so that keys are readable in code.
func lockKey(name string) int64 {
	h := fnv.New64a()
	h.Write([]byte(name))
	return int64(h.Sum64())
}
