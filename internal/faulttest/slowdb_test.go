package faulttest

import (
	"testing"
	"time"

	"github.com/objwatch/callback/internal/tester"
	"github.com/objwatch/callback/internal/testhelper"
)

// TestSlowPostgres puts a Postgres that answers, but slowly, behind the service under
// load: every round trip takes 2 s longer (Proxy.Delay). Commits slower than
// COMMIT_TIMEOUT go to the spool, so at least 99.9% of the callbacks sent meanwhile are
// still answered 2xx within the sender's 1 s timeout. Commits that timed out may have
// committed all the same, so some batches are both in the inbox and in the spool. Once
// the delay ends, the spool is replayed and the table is exact: nothing lost.
func TestSlowPostgres(t *testing.T) {
	t.Parallel()
	tb := setup(t, setupOpts{objects: fastObjects(15), proxy: true})
	e := tb.env
	s := startInproc(t, e)
	l := sendLoad(t, s.base, 15, 2000, 300)

	sleep(time.Second)
	before := l.s.Stats()
	tb.proxy.Delay(2 * time.Second)
	sleep(4 * time.Second)
	during := l.s.Stats()
	tb.proxy.Delay(0)

	ratio, answered := acceptedRatio(before, during)
	t.Logf("with Postgres 2 s slower per round trip: %d answered, %.4f accepted, %d timeouts; latency over the run %+v",
		answered, ratio, during.Timeouts-before.Timeouts, during.Latency)
	if answered < 100 {
		t.Fatalf("too little load while Postgres was slow: %d callbacks", answered)
	}
	if ratio < 0.999 {
		t.Errorf("only %.4f of the callbacks sent while Postgres was slow were accepted within 1 s (want >= 0.999): %+v", ratio, during)
	}
	if n := metric(t, s.base, "callback_callbacks_spooled_total"); n == 0 {
		t.Errorf("nothing was spooled while every commit took over 2 s")
	}

	sleep(time.Second)
	l.Stop()
	t.Logf("sender: %+v", l.s.Stats())
	testhelper.Eventually(t, 25*time.Second, "the spool is replayed and emptied", func() bool {
		return len(spoolSegments(t, e["SPOOL_DIR"])) == 0
	})
	verifyTable(t, tb.pool, l.s.Records(), tester.OnlineParity, e.duration(t, "EXPIRE_AFTER"), 20*time.Second, lateSlack(l.s.Stats()))
	testhelper.Eventually(t, 10*time.Second, "inbox and pending drain", func() bool { return queued(t, tb.pool) == 0 })
}
