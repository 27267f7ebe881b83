package faulttest

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/objwatch/callback/internal/tester"
	"github.com/objwatch/callback/internal/testhelper"
	"github.com/objwatch/callback/internal/testnet"
)

// TestTwoReplicas runs two service processes on one database and one spool
// directory, each under its own load. No id is ever looked up by both at once (the
// object service counts overlaps), the table is right, and when one replica is killed
// with SIGKILL the other reclaims its leased lookups after the lease and keeps
// expiring rows.
func TestTwoReplicas(t *testing.T) {
	t.Parallel()
	cfg := fastObjects(7)
	// Slow enough that lookups are in flight when a replica dies.
	cfg.LatencyMin, cfg.LatencyMax = 100*time.Millisecond, 400*time.Millisecond
	tb := setup(t, setupOpts{objects: cfg})
	ea := tb.env.with("EXPIRE_AFTER", "8s")
	eb := ea.with("LISTEN_ADDR", testnet.FreeAddr(t)) // same database, same SPOOL_DIR
	window := ea.duration(t, "EXPIRE_AFTER")

	a := startProc(t, ea)
	b := startProc(t, eb)
	la := sendLoad(t, a.base, 7, 1000, 150)
	lb := sendLoad(t, b.base, 8, 1000, 150)

	sleep(2500 * time.Millisecond)
	var claimedByA int64
	_ = tb.pool.QueryRow(context.Background(), "SELECT count(*) FROM pending WHERE claim_token IS NOT NULL").Scan(&claimedByA)
	a.Kill()
	la.Stop()
	t.Logf("killed replica A with %d lookups claimed across both replicas", claimedByA)
	sleep(2500 * time.Millisecond)
	lb.Stop()
	t.Logf("sender A: %+v", la.s.Stats())
	t.Logf("sender B: %+v", lb.s.Stats())

	records := mergeRecords(la.s.Records(), lb.s.Records())
	verifyTable(t, tb.pool, records, tester.OnlineParity, window, 15*time.Second, lateSlack(la.s.Stats(), lb.s.Stats()))
	testhelper.Eventually(t, 15*time.Second, "inbox and pending drain, A's claims included", func() bool { return queued(t, tb.pool) == 0 })
	if n := tb.objects.Stats().Overlapping; n != 0 {
		t.Errorf("the object service saw %d overlapping lookups of one id across the replicas", n)
	}

	// Expiry goes on with A dead: every row leaves once the window has passed since
	// the last callback that may have named it.
	var last time.Time
	for _, r := range records {
		if r.Maybe.After(last) {
			last = r.Maybe
		}
	}
	gone := last.Add(tester.LastSeenTolerance + window + tester.ExpiryGrace)
	testhelper.Eventually(t, time.Until(gone)+5*time.Second, "replica B expires every row", func() bool {
		var n int64
		err := tb.pool.QueryRow(context.Background(), "SELECT count(*) FROM objects").Scan(&n)
		return err == nil && n == 0
	})
	if n := metric(t, b.base, "callback_objects_rows_expired_total"); n == 0 {
		t.Errorf("replica B expired no rows")
	}
	if segs := spoolSegments(t, ea["SPOOL_DIR"]); len(segs) != 0 {
		t.Errorf("spool segments left in the shared directory: %v", segs)
	}
}

// TestSIGTERM stops the service binary with SIGTERM under load, with lookups in
// flight: it exits 0 within SHUTDOWN_TIMEOUT, and every callback it accepted is
// durable: after a restart the table matches.
func TestSIGTERM(t *testing.T) {
	t.Parallel()
	cfg := fastObjects(9)
	cfg.LatencyMin, cfg.LatencyMax = 200*time.Millisecond, 800*time.Millisecond
	tb := setup(t, setupOpts{objects: cfg})
	e := tb.env.with("SHUTDOWN_TIMEOUT", "4s")
	limit := e.duration(t, "SHUTDOWN_TIMEOUT")

	p := startProc(t, e)
	l := sendLoad(t, p.base, 9, 800, 300)
	sleep(2 * time.Second)
	took, code := p.terminate(limit + 5*time.Second)
	t.Logf("exited with %d after %v", code, took)
	if code != 0 {
		t.Errorf("exit code %d after SIGTERM, want 0", code)
	}
	if took > limit+time.Second {
		t.Errorf("took %v to exit after SIGTERM, SHUTDOWN_TIMEOUT is %v", took, limit)
	}
	if log, err := os.ReadFile(p.Log); err == nil && strings.Contains(string(log), "committer did not finish") {
		t.Errorf("the committer did not finish writing accepted callbacks before the deadline")
	}

	sleep(300 * time.Millisecond)
	p = startProc(t, e)
	sleep(time.Second)
	l.Stop()
	t.Logf("sender: %+v", l.s.Stats())
	verifyTable(t, tb.pool, l.s.Records(), tester.OnlineParity, e.duration(t, "EXPIRE_AFTER"), 20*time.Second, lateSlack(l.s.Stats()))
	testhelper.Eventually(t, 10*time.Second, "inbox and pending drain", func() bool { return queued(t, tb.pool) == 0 })
}
