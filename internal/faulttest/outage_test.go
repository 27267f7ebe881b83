package faulttest

import (
	"io"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/objwatch/callback/internal/tester"
	"github.com/objwatch/callback/internal/testhelper"
)

// TestPostgresOutage cuts the service off from Postgres under load, through a proxy,
// in the two ways a network fails: connections refused, and a blackhole where
// connections hang. Either way at least 99.9% of the callbacks sent during the outage
// are answered 2xx within the sender's 1 s timeout (they go to the spool), and once
// Postgres is reachable again the spool is replayed and the table is exactly right.
func TestPostgresOutage(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		cut   func(*Proxy)
		maxID int64
	}{
		{"refused", (*Proxy).Refuse, 2000},
		{"blackholed", (*Proxy).Blackhole, 2000},
		{"refused_ids_from_a_million", (*Proxy).Refuse, 999_999},
		{"blackholed_ids_from_a_million", (*Proxy).Blackhole, 999_999},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tb := setup(t, setupOpts{objects: fastObjects(2), proxy: true})
			e := tb.env
			if tc.maxID > largeSpace {
				e = e.with(largeSpaceSettings...)
			}
			s := startInproc(t, e)
			l := sendLoad(t, s.base, 2, tc.maxID, 300)

			sleep(time.Second)
			before := l.s.Stats()
			tc.cut(tb.proxy)
			sleep(3 * time.Second)
			during := l.s.Stats()
			if err := tb.proxy.Restore(); err != nil {
				t.Fatal(err)
			}

			ratio, answered := acceptedRatio(before, during)
			t.Logf("during the outage: %d answered, %.4f accepted, %d timeouts; latency over the run %+v",
				answered, ratio, during.Timeouts-before.Timeouts, during.Latency)
			if answered < 100 {
				t.Fatalf("too little load during the outage: %d callbacks", answered)
			}
			if ratio < 0.999 {
				t.Errorf("only %.4f of the callbacks sent during the outage were accepted (want >= 0.999): %+v", ratio, during)
			}
			if n := metric(t, s.base, "callback_callbacks_spooled_total"); n == 0 {
				t.Errorf("nothing was spooled during the outage")
			}

			sleep(time.Second)
			l.Stop()
			testhelper.Eventually(t, 20*time.Second, "the spool is replayed and emptied", func() bool {
				return len(spoolSegments(t, e["SPOOL_DIR"])) == 0
			})
			verifyTable(t, tb.pool, l.s.Records(), tester.OnlineParity, e.duration(t, "EXPIRE_AFTER"), verifyWithin(tc.maxID), lateSlack(l.s.Stats()))
			testhelper.Eventually(t, 10*time.Second, "inbox and pending drain", func() bool { return queued(t, tb.pool) == 0 })
		})
	}
}

// TestSpoolUnwritableAndDatabaseDown: when a callback can be made durable neither in
// Postgres nor in the spool, the answer is 503, never a 2xx, and readiness says so.
// The spool directory is replaced by a regular file, which stops segment creation
// even for root (permissions would not).
func TestSpoolUnwritableAndDatabaseDown(t *testing.T) {
	t.Parallel()
	tb := setup(t, setupOpts{objects: fastObjects(3), proxy: true})
	e := tb.env
	// The first commit must not go to the spool (see below), and on a loaded machine
	// (-race, packages in parallel) a first commit has taken over 400 ms. A cut database
	// still fails at once here: the proxy refuses and resets.
	e["COMMIT_TIMEOUT"] = "5s"
	s := startInproc(t, e)

	if code := postCallback(t, s.base, `{"object_ids":[1000000]}`); code != http.StatusAccepted {
		t.Fatalf("with Postgres up: %d, want 202", code)
	}
	if n := metric(t, s.base, "callback_callbacks_spooled_total"); n != 0 {
		// An active segment's open file would still take appends after the swap below.
		t.Fatalf("the service spooled with Postgres up (%v callbacks); cannot make its spool unusable", n)
	}

	dir := e["SPOOL_DIR"]
	if err := os.Rename(dir, dir+".moved"); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dir, []byte("not a directory\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tb.proxy.Refuse()

	l := sendLoad(t, s.base, 3, 2000, 200)
	sleep(2 * time.Second)
	l.Stop()
	st := l.s.Stats()
	t.Logf("sender with no durable storage: %+v", st)
	if st.Accepted != 0 {
		t.Errorf("%d callbacks were answered 2xx with neither Postgres nor the spool usable", st.Accepted)
	}
	if st.RefusedBy[http.StatusServiceUnavailable] == 0 || st.RefusedBy[http.StatusServiceUnavailable] != st.Refused {
		t.Errorf("refusals by status %v: want all 503", st.RefusedBy)
	}
	if code := get(t, s.base+"/readyz"); code != http.StatusServiceUnavailable {
		t.Errorf("/readyz answered %d with neither Postgres nor the spool usable, want 503", code)
	}

	// Repair both: intake works again and the refused callbacks left no trace.
	if err := os.Remove(dir); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(dir+".moved", dir); err != nil {
		t.Fatal(err)
	}
	if err := tb.proxy.Restore(); err != nil {
		t.Fatal(err)
	}
	testhelper.Eventually(t, 10*time.Second, "callbacks are accepted again", func() bool {
		return postCallback(t, s.base, `{"object_ids":[1000002]}`) == http.StatusAccepted
	})
	// The accepted callbacks may have gone to the spool (a slow commit): wait for
	// both to be looked up, then check nothing else arrived.
	var ids []int64
	testhelper.Eventually(t, 15*time.Second, "the two accepted ids, and only they, reach objects", func() bool {
		ids = objectIDs(t, tb.pool)
		return len(spoolSegments(t, dir)) == 0 && queued(t, tb.pool) == 0 && len(ids) >= 2
	})
	if len(ids) != 2 || ids[0] != 1000000 || ids[1] != 1000002 {
		t.Errorf("objects holds %v, want exactly the two accepted ids [1000000 1000002]", ids)
	}
}

func objectIDs(t *testing.T, pool *pgxpool.Pool) []int64 {
	t.Helper()
	return column[int64](t, pool, "SELECT id FROM objects ORDER BY id")
}

func postCallback(t *testing.T, base, body string) int {
	t.Helper()
	resp, err := (&http.Client{Timeout: 2 * time.Second}).Post(base+"/callback", "application/json", strings.NewReader(body))
	if err != nil {
		t.Logf("posting a callback: %v", err)
		return 0
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode
}

func get(t *testing.T, url string) int {
	t.Helper()
	resp, err := (&http.Client{Timeout: 2 * time.Second}).Get(url)
	if err != nil {
		t.Logf("GET %s: %v", url, err)
		return 0
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode
}
