package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// PoolConfig parses databaseURL for a pool that follows a failover by itself.
//
// The URL may name several hosts ("postgres://u@h1:5432,h2:5433/db?
// target_session_attrs=read-write"): pgx tries them in order on every dial and keeps
// the first that takes writes, so a pool that re-dials finds the new primary. What
// remains is to make it re-dial: a connection to a server that cannot take writes
// must be dropped, never kept and retried forever. How one ends up with such a
// connection:
//   - target_session_attrs is missing (or "any"), and a dial landed on a standby;
//   - the server or the session is read-only (default_transaction_read_only);
//   - a server that was a standby still answers read-only while it is promoted.
//
// (A primary that is demoted was restarted, and that closed its connections: the pool
// drops closed connections already.)
//
// Every write on such a connection fails with SQLSTATE 25006
// (read_only_sql_transaction). A tracer marks the connection when a statement fails
// so, and PrepareConn, which the pool calls before it hands out a connection, destroys
// a marked one and dials anew. PrepareConn also drops a connection whose server
// reported, without being asked, that it is a hot standby or read-only: Postgres 14 and
// later send in_hot_standby and default_transaction_read_only to clients whenever they
// change, so that costs no round trip. PrepareConn rather than AfterRelease: it runs
// on the acquiring goroutine (AfterRelease costs a goroutine per release, on every
// statement), and it also catches a connection that turned bad while idle.
//
// A connection marked by the tracer is replaced at once by a fresh one. One that the
// server reported read-only fails the statement that wanted it (ErrReadOnly) instead:
// a fresh dial may land on the same server (a single-host URL naming a standby) and
// the pool would dial in a loop; the caller retries with its own backoff, as after
// any database error, and that retry dials anew.
//
// A URL that names several hosts and no target_session_attrs gets read-write: every
// user of this pool writes, and "any" would let a dial settle on a standby forever.
func PoolConfig(databaseURL string) (*pgxpool.Config, error) {
	cfg, err := pgxpool.ParseConfig(databaseURL)
	if err != nil {
		return nil, err
	}
	if cfg.ConnConfig.ValidateConnect == nil && hostCount(cfg.ConnConfig) > 1 {
		cfg.ConnConfig.ValidateConnect = pgconn.ValidateConnectTargetSessionAttrsReadWrite
	}
	// Every transaction of the service is a few statements long. One left idle (its
	// process frozen, a SIGSTOP or a long GC pause under swap) would hold row locks on
	// pending rows that other replicas must take over; the server ends it instead. A
	// URL that sets its own value keeps it.
	if _, ok := cfg.ConnConfig.RuntimeParams["idle_in_transaction_session_timeout"]; !ok {
		cfg.ConnConfig.RuntimeParams["idle_in_transaction_session_timeout"] = "10s"
	}
	// pgxpool pings a connection that has been idle for over a second before handing it
	// out, but by default for as long as the caller's deadline allows. After a
	// blackholed failover every idle connection to the old primary hangs its ping,
	// and a caller with a long deadline (a spool replay) would wait on the first of
	// them. Bounded, a dead connection costs a second and is dropped, and the pool
	// takes the next or dials anew. A URL that sets pool_ping_timeout keeps it.
	if cfg.PingTimeout == 0 {
		cfg.PingTimeout = PingTimeout
	}
	cfg.ConnConfig.Tracer = readOnlyTracer{}
	cfg.PrepareConn = func(_ context.Context, conn *pgx.Conn) (bool, error) {
		pc := conn.PgConn()
		if pc.CustomData()[readOnlyKey] != nil {
			return false, nil // a fresh connection carries no mark: no loop
		}
		if readOnlyServer(pc) {
			return false, ErrReadOnly
		}
		return true, nil
	}
	return cfg, nil
}

// PingTimeout bounds the liveness ping of an idle connection (see PoolConfig).
const PingTimeout = time.Second

// ErrReadOnly: the pool dropped a connection to a server or session that cannot take
// writes (a standby, or one being promoted); the next attempt dials anew.
var ErrReadOnly = errors.New("dropped a connection to a read-only server; the next attempt dials anew")

// hostCount counts the distinct host:port pairs cfg may dial (sslmode=prefer lists
// each host twice, with and without TLS).
func hostCount(cfg *pgx.ConnConfig) int {
	seen := map[string]bool{fmt.Sprint(cfg.Host, ":", cfg.Port): true}
	for _, f := range cfg.Fallbacks {
		seen[fmt.Sprint(f.Host, ":", f.Port)] = true
	}
	return len(seen)
}

// readOnlyKey marks, in a connection's CustomData, a connection on which a statement
// failed because the server or the session is read-only.
const readOnlyKey = "store.read-only"

// readOnlyServer tells whether the server said, unasked, that it or this session is
// read-only (Postgres 14 and later report both parameters to clients).
func readOnlyServer(conn *pgconn.PgConn) bool {
	return conn.ParameterStatus("in_hot_standby") == "on" || conn.ParameterStatus("default_transaction_read_only") == "on"
}

// IsReadOnly tells whether err is a write refused by a read-only server or session.
func IsReadOnly(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "25006"
}

// readOnlyTracer marks a connection on which a statement failed with 25006. It sees
// every statement the store runs: queries and Exec (transactions' BEGIN and COMMIT
// included), batches and COPY.
type readOnlyTracer struct{}

func (readOnlyTracer) mark(conn *pgx.Conn, err error) {
	if err != nil && IsReadOnly(err) {
		conn.PgConn().CustomData()[readOnlyKey] = true
	}
}

func (readOnlyTracer) TraceQueryStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceQueryStartData) context.Context {
	return ctx
}

func (t readOnlyTracer) TraceQueryEnd(_ context.Context, conn *pgx.Conn, data pgx.TraceQueryEndData) {
	t.mark(conn, data.Err)
}

func (readOnlyTracer) TraceBatchStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceBatchStartData) context.Context {
	return ctx
}

func (t readOnlyTracer) TraceBatchQuery(_ context.Context, conn *pgx.Conn, data pgx.TraceBatchQueryData) {
	t.mark(conn, data.Err)
}

func (t readOnlyTracer) TraceBatchEnd(_ context.Context, conn *pgx.Conn, data pgx.TraceBatchEndData) {
	t.mark(conn, data.Err)
}

func (readOnlyTracer) TraceCopyFromStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceCopyFromStartData) context.Context {
	return ctx
}

func (t readOnlyTracer) TraceCopyFromEnd(_ context.Context, conn *pgx.Conn, data pgx.TraceCopyFromEndData) {
	t.mark(conn, data.Err)
}

// errNoHost: a URL whose hosts none could be reached; the per-host errors follow.
var errNoHost = errors.New("no host of DATABASE_URL answered as asked")

// connectFirst connects with cfg to the first of its hosts that answers and passes
// cfg's checks (target_session_attrs), trying each host on its own, and returns the
// connection and that host's single-host config: for a client that cannot read a
// multi-host URL.
func connectFirst(ctx context.Context, cfg *pgx.ConnConfig) (*pgx.Conn, *pgx.ConnConfig, error) {
	hosts := append([]*pgconn.FallbackConfig{{Host: cfg.Host, Port: cfg.Port, TLSConfig: cfg.TLSConfig}}, cfg.Fallbacks...)
	var errs []error
	for _, h := range hosts {
		one := cfg.Copy()
		one.Host, one.Port, one.TLSConfig, one.Fallbacks = h.Host, h.Port, h.TLSConfig, nil
		conn, err := pgx.ConnectConfig(ctx, one)
		if err == nil {
			return conn, one, nil
		}
		errs = append(errs, err)
		if ctx.Err() != nil {
			break
		}
	}
	return nil, nil, fmt.Errorf("%w: %w", errNoHost, errors.Join(errs...))
}
