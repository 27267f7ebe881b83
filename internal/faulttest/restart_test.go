package faulttest

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/objwatch/callback/internal/childproc"
	"github.com/objwatch/callback/internal/tester"
	"github.com/objwatch/callback/internal/testhelper"
)

// TestPostgresRestart stops a real Postgres with `pg_ctl stop -m immediate` (what a
// crash looks like to clients: every connection dies, recovery on start) under load,
// starts it again, and checks that nothing accepted is missing.
func TestPostgresRestart(t *testing.T) {
	t.Parallel()
	pg := startCluster(t)
	dbURL := pg.url("callback")
	e := setup(t, setupOpts{objects: fastObjects(4), dbURL: dbURL}).env
	s := startInproc(t, e)
	// The service creates and migrates the database; wait for it before loading.
	testhelper.Eventually(t, 20*time.Second, "the service applies its migrations", func() bool {
		return strings.Contains(childproc.LastLines(s.log.String(), 50), "schema up to date")
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
	testhelper.Eventually(t, 20*time.Second, "the spool is replayed and emptied", func() bool {
		return len(spoolSegments(t, e["SPOOL_DIR"])) == 0
	})
	verifyTable(t, pool, l.s.Records(), tester.OnlineParity, e.duration(t, "EXPIRE_AFTER"), 20*time.Second, lateSlack(l.s.Stats()))
	testhelper.Eventually(t, 10*time.Second, "inbox and pending drain", func() bool { return queued(t, pool) == 0 })
}
