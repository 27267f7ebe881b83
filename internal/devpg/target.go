package devpg

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Target is the server that DATABASE_URL points at.
type Target struct {
	Host string // a host name or IP address; a path means a Unix socket directory
	Port uint16
	User string
	// Others are the further hosts of a multi-host URL (host:port), in order.
	Others []string
	// admin connects to the same server as the same user, but to the database
	// "postgres": the app database may not exist yet (dbmate creates it).
	admin *pgx.ConnConfig
}

// Addr is host:port, for messages.
func (t Target) Addr() string {
	return net.JoinHostPort(t.Host, strconv.Itoa(int(t.Port)))
}

// ParseTarget reads a DATABASE_URL (a postgres:// URL or a key=value string) the way
// pgx and libpq do, defaults included: a URL without a user means the OS user.
func ParseTarget(databaseURL string) (Target, error) {
	cfg, err := pgx.ParseConfig(databaseURL)
	if err != nil {
		// pgx's message can include the password; the URL itself is not repeated.
		return Target{}, fmt.Errorf("parsing DATABASE_URL: %w", err)
	}
	cfg.Database = "postgres"
	if cfg.ConnectTimeout == 0 || cfg.ConnectTimeout > 3*time.Second {
		cfg.ConnectTimeout = 3 * time.Second
	}
	t := Target{Host: cfg.Host, Port: cfg.Port, User: cfg.User, admin: cfg}
	for _, f := range cfg.Fallbacks {
		// sslmode=prefer lists each host twice, with and without TLS.
		addr := net.JoinHostPort(f.Host, strconv.Itoa(int(f.Port)))
		if addr != t.Addr() && !slices.Contains(t.Others, addr) {
			t.Others = append(t.Others, addr)
		}
	}
	return t, nil
}

// Addrs is every host:port of the URL, for messages.
func (t Target) Addrs() string {
	return strings.Join(append([]string{t.Addr()}, t.Others...), ",")
}

// ErrNotAnswering means nothing speaks the Postgres protocol at the target: the
// connection was refused or timed out. Any answer from a server, even a refusal
// (bad password, unknown role), is a different error: then the port is taken and
// starting a cluster there would only fail.
var ErrNotAnswering = errors.New("no PostgreSQL server answers")

// Probe connects to the target's "postgres" database and runs a trivial query.
func Probe(ctx context.Context, t Target) error {
	conn, err := pgx.ConnectConfig(ctx, t.admin)
	if err != nil {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) {
			return fmt.Errorf("a server answers at %s but refuses user %q: %w", t.Addrs(), t.User, err)
		}
		return fmt.Errorf("%w at %s: %w", ErrNotAnswering, t.Addrs(), err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var one int
	if err := conn.QueryRow(ctx, "select 1").Scan(&one); err != nil {
		return fmt.Errorf("querying %s: %w", t.Addrs(), err)
	}
	return nil
}

// isLocal tells whether host names this machine, where a cluster can be started.
func isLocal(ctx context.Context, host string) (bool, error) {
	if host == "localhost" {
		return true, nil
	}
	ips, err := net.DefaultResolver.LookupIPAddr(ctx, host)
	if err != nil {
		return false, fmt.Errorf("resolving %s: %w", host, err)
	}
	ifaceAddrs, err := net.InterfaceAddrs()
	if err != nil {
		return false, fmt.Errorf("listing local addresses: %w", err)
	}
	for _, ip := range ips {
		if ip.IP.IsLoopback() || ip.IP.IsUnspecified() {
			return true, nil
		}
		for _, a := range ifaceAddrs {
			if n, ok := a.(*net.IPNet); ok && n.IP.Equal(ip.IP) {
				return true, nil
			}
		}
	}
	return false, nil
}

// IsSocketDir tells whether a libpq host is a Unix socket directory.
func IsSocketDir(host string) bool {
	return strings.HasPrefix(host, "/")
}
