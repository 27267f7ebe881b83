package faulttest

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/objwatch/callback/internal/tester"
)

// TestPostgresRestart stops a real Postgres with `pg_ctl stop -m immediate` (what a
// crash looks like to clients: every connection dies, recovery on start) under load,
// starts it again, and checks that nothing accepted is missing.
func TestPostgresRestart(t *testing.T) {
	t.Parallel()
	pg := startCluster(t)
	_, objectsURL := objectService(t, fastObjects(4), nil)
	dbURL := fmt.Sprintf("postgres://postgres@127.0.0.1:%d/callback?sslmode=disable", pg.port)
	e := baseEnv(t, dbURL, objectsURL)
	s := startInproc(t, e)
	// The service creates and migrates the database; wait for it before loading.
	eventually(t, 20*time.Second, "the service applies its migrations", func() bool {
		return strings.Contains(s.log.tail(50), "schema up to date")
	})
	l := sendLoad(t, s.base, 4, 2000, 300)

	sleep(1500 * time.Millisecond)
	before := l.s.Stats()
	pg.ctl(t, "-m", "immediate", "-w", "stop")
	sleep(2 * time.Second)
	pg.start(t)
	during := l.s.Stats()
	ratio, answered := acceptedRatio(before, during)
	t.Logf("while Postgres was down: %d answered, %.4f accepted", answered, ratio)
	if ratio < 0.999 {
		t.Errorf("only %.4f of the callbacks sent while Postgres was down were accepted: %+v", ratio, during)
	}
	sleep(time.Second)
	l.Stop()
	if n := metric(t, s.base, "callback_callbacks_spooled_total"); n == 0 {
		t.Errorf("nothing was spooled while Postgres was down")
	}

	pool, err := pgxpool.New(context.Background(), dbURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	eventually(t, 20*time.Second, "the spool is replayed and emptied", func() bool {
		return len(spoolSegments(t, e["SPOOL_DIR"])) == 0
	})
	verifyTable(t, pool, l.s.Records(), tester.OnlineParity, e.duration(t, "EXPIRE_AFTER"), 20*time.Second, lateSlack(l.s.Stats()))
	eventually(t, 10*time.Second, "inbox and pending drain", func() bool { return queued(t, pool) == 0 })
}

// cluster is a throwaway Postgres of the test's own (the logic of cmd/devpg, reduced).
type cluster struct {
	bin, data string
	port      int
	cred      *syscall.Credential // run as postgres when we are root: initdb and pg_ctl refuse root
}

func startCluster(t *testing.T) *cluster {
	t.Helper()
	bin := serverBinDir()
	if bin == "" {
		t.Skip("no PostgreSQL server binaries (initdb, pg_ctl, postgres) found")
	}
	c := &cluster{bin: bin}
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			t.Skipf("running as root without a postgres user to run the server as: %v", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		c.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
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
	c.data = filepath.Join(base, "data")
	if err := os.Mkdir(c.data, 0o700); err != nil {
		t.Fatal(err)
	}
	if c.cred != nil {
		if err := os.Chown(c.data, int(c.cred.Uid), int(c.cred.Gid)); err != nil {
			t.Fatal(err)
		}
	}
	if out, err := c.run("initdb", "-D", c.data, "-U", "postgres", "--auth=trust", "--no-sync",
		"--encoding=UTF8", "--locale=C"); err != nil {
		t.Fatalf("initdb: %v\n%s", err, out)
	}
	port, _ := strconv.Atoi(strings.TrimPrefix(freeAddr(t), "127.0.0.1:"))
	c.port = port
	c.start(t)
	t.Cleanup(func() { _, _ = c.run("pg_ctl", "-D", c.data, "-m", "immediate", "-w", "stop") })
	return c
}

// start starts the server and waits until it accepts connections. fsync is off: the
// test crashes Postgres, not the machine, so the page cache keeps what was committed.
func (c *cluster) start(t *testing.T) {
	t.Helper()
	opts := fmt.Sprintf("-p %d -k %s -c listen_addresses=127.0.0.1 -c max_connections=50 -c fsync=off -c full_page_writes=off",
		c.port, c.data)
	c.ctl(t, "-w", "-t", "60", "-l", filepath.Join(c.data, "server.log"), "-o", opts, "start")
}

func (c *cluster) ctl(t *testing.T, args ...string) {
	t.Helper()
	if out, err := c.run("pg_ctl", append([]string{"-D", c.data}, args...)...); err != nil {
		t.Fatalf("pg_ctl %s: %v\n%s\n%s", strings.Join(args, " "), err, out, tail(filepath.Join(c.data, "server.log"), 20))
	}
}

func (c *cluster) run(name string, args ...string) ([]byte, error) {
	cmd := exec.Command(filepath.Join(c.bin, name), args...)
	cmd.Dir = "/"
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PG") { // libpq variables would steer pg_ctl elsewhere
			cmd.Env = append(cmd.Env, kv)
		}
	}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.WaitDelay = 5 * time.Second
	if c.cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: c.cred}
	}
	err := cmd.Run()
	return out.Bytes(), err
}

// serverBinDir finds a directory holding initdb, pg_ctl and postgres: pg_config's,
// then Debian's (newest first), then PATH's.
func serverBinDir() string {
	var candidates []string
	if out, err := exec.Command("pg_config", "--bindir").Output(); err == nil {
		candidates = append(candidates, strings.TrimSpace(string(out)))
	}
	debian, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	for i := len(debian) - 1; i >= 0; i-- { // Glob sorts; good enough for 13..17
		candidates = append(candidates, debian[i])
	}
	if p, err := exec.LookPath("initdb"); err == nil {
		if real, err := filepath.EvalSymlinks(p); err == nil {
			p = real
		}
		candidates = append(candidates, filepath.Dir(p))
	}
	for _, dir := range candidates {
		ok := true
		for _, b := range []string{"initdb", "pg_ctl", "postgres"} {
			fi, err := os.Stat(filepath.Join(dir, b))
			ok = ok && err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0
		}
		if ok {
			return dir
		}
	}
	return ""
}
