package faulttest

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/objwatch/callback/internal/tester"
	"github.com/objwatch/callback/internal/testhelper"
	"github.com/objwatch/callback/internal/testnet"
)

// TestObjectServiceFaults: the object service answers 500, hangs past the lookup
// timeout, sends truncated JSON, drops the connection, or answers about another id,
// each on about one request in sixteen (about a quarter fail in all). Every failure is
// retried, and the table ends up exactly right; no two lookups of one id are ever in
// flight at once.
//
// Not more: with backoff doubling to 10 s an id gets ~10 attempts in the 50 s the
// test waits, and at 47% failures (a tenth each) some id of ~150 failed all of them in
// about one run in twenty: 0.47^10 × 150. At 27%, 0.27^10 × 150 ≈ 3e-4.
func TestObjectServiceFaults(t *testing.T) {
	t.Parallel()
	var wrongID atomic.Int64
	cfg := fastObjects(5)
	cfg.FailPct, cfg.HangPct, cfg.MalformedPct, cfg.DropPct = 6, 6, 6, 6
	tb := setup(t, setupOpts{objects: cfg, wrap: func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			id, err := strconv.ParseInt(strings.TrimPrefix(r.URL.Path, "/objects/"), 10, 64)
			if err == nil && rand.IntN(16) == 0 {
				wrongID.Add(1)
				w.Header().Set("Content-Type", "application/json")
				_, _ = w.Write([]byte(`{"id":` + strconv.FormatInt(id+1, 10) + `,"online":true}`))
				return
			}
			h.ServeHTTP(w, r)
		})
	}})
	e := tb.env
	s := startInproc(t, e)
	l := sendLoad(t, s.base, 5, 300, 150)
	sleep(3 * time.Second)
	l.Stop()
	t.Logf("sender: %+v", l.s.Stats())

	verifyTable(t, tb.pool, l.s.Records(), tester.OnlineParity, e.duration(t, "EXPIRE_AFTER"), 50*time.Second, lateSlack(l.s.Stats()))
	// Offline ids may still be retrying (backoff up to 10 s) when the table matches.
	testhelper.Eventually(t, 40*time.Second, "inbox and pending drain", func() bool { return queued(t, tb.pool) == 0 })
	st := tb.objects.Stats()
	t.Logf("object service: %+v, wrong id answers: %d", st, wrongID.Load())
	if st.Fail == 0 || st.Hang == 0 || st.Malformed == 0 || st.Drop == 0 || wrongID.Load() == 0 {
		t.Errorf("not every fault was injected: %+v, wrong id %d", st, wrongID.Load())
	}
	if st.Overlapping != 0 {
		t.Errorf("%d lookups of an id overlapped another lookup of the same id", st.Overlapping)
	}
	if n := metric(t, s.base, "callback_work_dropped_total"); n != 0 {
		t.Errorf("%v lookups were dropped although every id was looked up well inside the window", n)
	}
}

// TestObjectServiceDown: the object service is unreachable for longer than the
// window. Lookups are retried with backoff (a trickle, no busy loop), then dropped
// and counted once their receipt leaves the window; nothing is written to objects.
func TestObjectServiceDown(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		// listen returns the object service URL and a count of the attempts it saw
		// (nil: count the service's own failed lookups instead).
		listen func(t *testing.T) (string, *atomic.Int64)
	}{
		{"connection_refused", func(t *testing.T) (string, *atomic.Int64) {
			return "http://" + testnet.FreeAddr(t), nil // nothing listens there
		}},
		{"connection_reset", func(t *testing.T) (string, *atomic.Int64) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { ln.Close() })
			var accepted atomic.Int64
			go func() {
				for {
					c, err := ln.Accept()
					if err != nil {
						return
					}
					accepted.Add(1)
					if tc, ok := c.(*net.TCPConn); ok {
						_ = tc.SetLinger(0)
					}
					c.Close()
				}
			}()
			return "http://" + ln.Addr().String(), &accepted
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			objectsURL, seen := tc.listen(t)
			tb := setup(t, setupOpts{objectsURL: objectsURL})
			e := tb.env.with("EXPIRE_AFTER", "4s")
			s := startInproc(t, e)
			l := sendLoad(t, s.base, 6, 49, 50)
			sleep(time.Second)
			l.Stop()
			ids := len(l.s.Records())

			accepted := float64(l.s.Stats().Accepted)
			// Merged (spooled ones replayed first), then each lookup failed until dropped.
			testhelper.Eventually(t, 30*time.Second, "every lookup is dropped once its receipt leaves the window", func() bool {
				return len(spoolSegments(t, e["SPOOL_DIR"])) == 0 && queued(t, tb.pool) == 0 &&
					metric(t, s.base, "callback_merged_callbacks_total") >= accepted
			}, func() string {
				var st string
				_ = tb.pool.QueryRow(context.Background(), `SELECT string_agg(format('%s(attempts %s, due %ss ago, age %ss)',
					object_id, attempts, round(extract(epoch FROM now() - due_at)::numeric, 1),
					round(extract(epoch FROM now() - received_at)::numeric, 1)), ' ')
					FROM (SELECT * FROM pending ORDER BY object_id LIMIT 5) p`).Scan(&st)
				return fmt.Sprintf("accepted %v, merged %v, queued %d, spool %v, pending %s, dropped %v, failed %v", accepted,
					metric(t, s.base, "callback_merged_callbacks_total"), queued(t, tb.pool), spoolSegments(t, e["SPOOL_DIR"]), st,
					metric(t, s.base, "callback_work_dropped_total"), metric(t, s.base, "callback_lookups_total"))
			})
			dropped := metric(t, s.base, "callback_work_dropped_total")
			failed := metric(t, s.base, "callback_lookups_total", `outcome="failed"`)
			attempts := failed
			if seen != nil {
				attempts = float64(seen.Load())
			}
			t.Logf("%d ids: %v lookups failed, %v attempts seen, %v dropped", ids, failed, attempts, dropped)
			if dropped == 0 {
				t.Errorf("no lookup was counted as dropped")
			}
			// A window of 4 s and backoff from 250 ms doubling gives each id a handful
			// of attempts; a busy loop would make thousands.
			if limit := float64(15 * ids); attempts > limit || failed > limit {
				t.Errorf("%v attempts and %v failed lookups for %d ids: a retry storm (limit %v)", attempts, failed, ids, limit)
			}
			if attempts == 0 {
				t.Errorf("no lookup was attempted")
			}
			var rows int
			if err := tb.pool.QueryRow(context.Background(), "SELECT count(*) FROM objects").Scan(&rows); err != nil {
				t.Fatal(err)
			}
			if rows != 0 {
				t.Errorf("objects holds %d rows although no lookup succeeded", rows)
			}
		})
	}
}
