package faulttest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/objwatch/callback/internal/devpg"
	"github.com/objwatch/callback/internal/testhelper"
	"github.com/objwatch/callback/internal/testnet"
)

// cluster is a throwaway Postgres of the test's own, started from the installed server
// binaries with internal/devpg, as the postgres user when the test runs as root.
type cluster struct {
	devpg.Cluster
	port     int
	settings []string // name=value, passed as -c at every start
}

// newCluster finds the binaries and makes an empty data directory, or skips the test.
func newCluster(t *testing.T, settings ...string) *cluster {
	t.Helper()
	bin, err := devpg.DiscoverBinDir(context.Background(), "")
	if err != nil {
		t.Skip(err)
	}
	as, err := devpg.CurrentRunner()
	if err != nil {
		t.Skip(err)
	}
	// Not t.TempDir: its parents are private to root, and the server runs as postgres.
	base, err := os.MkdirTemp("", "faulttest-pg-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	if err := os.Chmod(base, 0o755); err != nil {
		t.Fatal(err)
	}
	data := filepath.Join(base, "data")
	c := &cluster{
		Cluster:  devpg.Cluster{Bin: bin, Data: data, Log: filepath.Join(data, "server.log"), As: as},
		port:     testnet.FreePort(t),
		settings: settings,
	}
	if err := as.TakeDir(context.Background(), c.Data); err != nil {
		t.Fatal(err)
	}
	// Registered before the start: cleanups run last first, so the server is stopped
	// before its directory is removed.
	t.Cleanup(func() { _ = c.Stop(context.Background(), "immediate") })
	return c
}

// startCluster initialises a cluster with settings and starts it.
func startCluster(t *testing.T, settings ...string) *cluster {
	t.Helper()
	c := newCluster(t, settings...)
	if err := c.Init(context.Background(), "postgres"); err != nil {
		t.Fatal(err)
	}
	c.start(t)
	return c
}

// start starts the server and waits until it accepts connections. fsync is off: the
// tests crash Postgres, not the machine, so the page cache keeps what was committed.
// synchronous_commit stays on: a synchronous standby's guarantee depends on it.
func (c *cluster) start(t *testing.T) {
	t.Helper()
	settings := append([]string{"max_connections=50", "fsync=off", "full_page_writes=off"}, c.settings...)
	if err := c.Start(context.Background(), devpg.ServerOptions(c.port, c.Data, "127.0.0.1", settings...)); err != nil {
		t.Fatal(err)
	}
}

// ctl runs pg_ctl with args (its command last) and fails the test if that fails.
func (c *cluster) ctl(t *testing.T, args ...string) {
	t.Helper()
	if err := c.Ctl(context.Background(), args...); err != nil {
		t.Fatal(err)
	}
}

// addr is host:port, for a DATABASE_URL.
func (c *cluster) addr() string { return fmt.Sprintf("127.0.0.1:%d", c.port) }

// standby copies c with pg_basebackup (-R: it follows c by streaming replication) into
// a cluster of its own and starts it with settings.
func (c *cluster) standby(t *testing.T, settings ...string) *cluster {
	t.Helper()
	s := newCluster(t, settings...)
	if out, err := s.Run(context.Background(), "pg_basebackup", "-h", "127.0.0.1", "-p", strconv.Itoa(c.port), "-U", "postgres",
		"-D", s.Data, "-R", "-X", "stream", "--no-sync"); err != nil {
		t.Fatalf("pg_basebackup: %v\n%s", err, out)
	}
	// The copy holds c's log; start writes the standby's own.
	os.Remove(s.Log)
	s.start(t)
	return s
}

// kill crashes the server as a dying host would: SIGKILL to the postmaster and to
// every process it started, at once. No shutdown checkpoint, no goodbye to clients or
// standbys. Killing the postmaster alone is not that: its backends and its WAL sender
// live on until they notice, and the sender streams what the standby lacked (with an
// asynchronous standby, nothing was ever lost that way).
func (c *cluster) kill(t *testing.T) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(c.Data, "postmaster.pid"))
	if err != nil {
		t.Fatalf("reading postmaster.pid: %v", err)
	}
	first, _, _ := strings.Cut(string(b), "\n")
	pid, err := strconv.Atoi(strings.TrimSpace(first))
	if err != nil {
		t.Fatalf("postmaster.pid: %v", err)
	}
	// Stopped, the postmaster starts no process between the listing and the kill.
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatalf("kill -STOP %d: %v", pid, err)
	}
	children := childProcesses(t, pid)
	for _, p := range append([]int{pid}, children...) {
		_ = syscall.Kill(p, syscall.SIGKILL) // a child may have exited meanwhile
	}
	// Gone once its port refuses connections.
	testhelper.Eventually(t, 10*time.Second, "the killed postmaster stops listening", func() bool {
		conn, err := pgx.Connect(context.Background(), c.url("postgres")+"&connect_timeout=1")
		if err == nil {
			conn.Close(context.Background())
			return false
		}
		return true
	})
}

// childProcesses lists the processes whose parent is pid, from /proc.
func childProcesses(t *testing.T, pid int) []int {
	t.Helper()
	stats, err := filepath.Glob("/proc/[0-9]*/stat")
	if err != nil {
		t.Fatal(err)
	}
	var out []int
	for _, path := range stats {
		b, err := os.ReadFile(path)
		if err != nil {
			continue // exited
		}
		// pid (comm) state ppid ...: comm may hold spaces and parentheses.
		i := strings.LastIndexByte(string(b), ')')
		fields := strings.Fields(string(b[i+1:]))
		if len(fields) < 2 || fields[1] != strconv.Itoa(pid) {
			continue
		}
		child, err := strconv.Atoi(filepath.Base(filepath.Dir(path)))
		if err == nil {
			out = append(out, child)
		}
	}
	return out
}

// url is a single-host URL of database db on c.
func (c *cluster) url(db string) string {
	return fmt.Sprintf("postgres://postgres@%s/%s?sslmode=disable", c.addr(), db)
}

// query runs sql on c's postgres database and scans its one row into dst.
func (c *cluster) query(ctx context.Context, sql string, dst ...any) error {
	conn, err := pgx.Connect(ctx, c.url("postgres"))
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	err = conn.QueryRow(ctx, sql).Scan(dst...)
	if errors.Is(err, pgx.ErrNoRows) {
		return fmt.Errorf("%q: no row", sql)
	}
	return err
}
