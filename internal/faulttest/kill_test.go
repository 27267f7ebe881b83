package faulttest

import (
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/objwatch/callback/internal/tester"
	"github.com/objwatch/callback/internal/testhelper"
)

// TestKill9 kills the service binary with SIGKILL twice under load and restarts it
// with the same environment each time: once with Postgres up (its claimed lookups are
// lost with it and must be reclaimed when their lease runs out) and once during a
// Postgres outage, so that it dies holding a spool segment that the next process must
// replay. Nothing acknowledged may be missing at the end.
func TestKill9(t *testing.T) {
	t.Parallel()
	for _, maxID := range []int64{2000, 999_999} {
		t.Run(fmt.Sprintf("ids_0_to_%d", maxID), func(t *testing.T) {
			t.Parallel()
			kill9(t, maxID)
		})
	}
}

func kill9(t *testing.T, maxID int64) {
	tb := setup(t, setupOpts{objects: fastObjects(1), proxy: true})
	e := tb.env
	if maxID > largeSpace {
		e = e.with(largeSpaceSettings...)
	}
	window := e.duration(t, "EXPIRE_AFTER")

	p := startProc(t, e)
	l := sendLoad(t, e.base(), 1, maxID, 300)

	sleep(1500 * time.Millisecond)
	p.Kill()
	t.Logf("killed the first process mid-load: %+v", l.s.Stats())
	p = startProc(t, e)

	sleep(time.Second)
	tb.proxy.Refuse()
	testhelper.Eventually(t, 10*time.Second, "the service spools while Postgres is cut", func() bool {
		return metric(t, p.base, "callback_callbacks_spooled_total") > 0
	})
	sleep(300 * time.Millisecond)
	p.Kill()
	left := spoolSegments(t, e["SPOOL_DIR"])
	if len(left) == 0 {
		t.Fatalf("the process killed during the outage left no spool segment in %s", e["SPOOL_DIR"])
	}
	t.Logf("killed the second process during the outage; it left %d spool segment(s)", len(left))

	if err := tb.proxy.Restore(); err != nil {
		t.Fatal(err)
	}
	p = startProc(t, e)
	sleep(time.Second)
	l.Stop()
	st := l.s.Stats()
	t.Logf("sender: %+v", st)
	if st.Accepted < 150 {
		t.Fatalf("too little load to prove anything: %d callbacks accepted", st.Accepted)
	}

	verifyTable(t, tb.pool, l.s.Records(), tester.OnlineParity, window, verifyWithin(maxID), lateSlack(l.s.Stats()))
	testhelper.Eventually(t, 10*time.Second, "the dead process's spool segments are replayed and removed", func() bool {
		for _, f := range left {
			if _, err := os.Stat(f); err == nil {
				return false
			}
		}
		return len(spoolSegments(t, e["SPOOL_DIR"])) == 0
	})
	if n := metric(t, p.base, "callback_callbacks_replayed_total"); n == 0 {
		t.Errorf("the restarted process replayed no callbacks")
	}
	testhelper.Eventually(t, 10*time.Second, "inbox and pending drain", func() bool { return queued(t, tb.pool) == 0 })
	if n := tb.objects.Stats().Overlapping; n != 0 {
		t.Errorf("the object service saw %d overlapping lookups of one id", n)
	}
}
