package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/objwatch/callback/internal/pgtest"
	"github.com/objwatch/callback/internal/testhelper"
)

// testBundle is what a test of run reads besides its error.
type testBundle struct {
	target string             // POST /callback of the fake callback service
	out    *testhelper.Buffer // where run writes, stdout and stderr alike
}

// setup serves a fake callback service, where handle (if not nil) sees each
// callback's ids at receipt, and gives run a buffer to write to.
func setup(t *testing.T, handle func(ctx context.Context, received time.Time, ids []int64) error) *testBundle {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		received := time.Now()
		var body struct {
			ObjectIDs []int64 `json:"object_ids"`
		}
		if err := json.NewDecoder(r.Body).Decode(&body); err != nil {
			http.Error(w, `{"error":"bad json"}`, http.StatusBadRequest)
			return
		}
		if handle != nil {
			if err := handle(r.Context(), received, body.ObjectIDs); err != nil {
				t.Errorf("fake service: %v", err)
				http.Error(w, `{"error":"not durable"}`, http.StatusServiceUnavailable)
				return
			}
		}
		w.WriteHeader(http.StatusAccepted)
		fmt.Fprintf(w, `{"accepted":%d}`, len(body.ObjectIDs))
	}))
	t.Cleanup(srv.Close)
	return &testBundle{target: srv.URL + "/callback", out: &testhelper.Buffer{}}
}

func fastArgs(target string, extra ...string) []string {
	return append([]string{
		"-objects-addr", "127.0.0.1:0", "-target", target, "-interval", "0",
		"-latency-min", "1ms", "-latency-max", "2ms", "-progress", "20ms",
	}, extra...)
}

func TestRun(t *testing.T) {
	t.Parallel()

	t.Run("runs_both_parties_and_prints_a_summary", func(t *testing.T) {
		t.Parallel()
		tb := setup(t, nil)
		err := run(t.Context(), fastArgs(tb.target, "-count", "5", "-senders", "2"), testhelper.Getenv(nil), tb.out, tb.out)
		require.NoError(t, err)
		s := tb.out.String()
		require.Contains(t, s, "objects: serving GET /objects/{id} on 127.0.0.1:")
		require.Contains(t, s, "callbacks: 5 sent")
		require.Contains(t, s, "5 accepted")
		require.Contains(t, s, "lookups: 0 served")
	})

	t.Run("objects_alone_until_interrupted", func(t *testing.T) {
		t.Parallel()
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		tb := setup(t, nil)
		require.NoError(t, run(ctx, []string{"objects", "-objects-addr", "127.0.0.1:0"}, testhelper.Getenv(nil), tb.out, tb.out))
		require.Contains(t, tb.out.String(), "lookups: 0 served")
		require.NotContains(t, tb.out.String(), "callbacks:")
	})

	t.Run("objects_with_a_capacity_answer_503_beyond_it_and_count_it", func(t *testing.T) {
		t.Parallel()
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		tb := setup(t, nil)
		done := make(chan error, 1)
		go func() {
			done <- run(ctx, []string{"objects", "-objects-addr", "127.0.0.1:0", "-capacity", "1",
				"-latency-min", "1h", "-latency-max", "1h", "-progress", "5ms"}, testhelper.Getenv(nil), tb.out, tb.out)
		}()
		var addr string
		testhelper.Eventually(t, 10*time.Second, "the object service says where it serves", func() bool {
			_, rest, ok := strings.Cut(tb.out.String(), "objects: serving GET /objects/{id} on ")
			addr, _, _ = strings.Cut(rest, ",")
			return ok && strings.Contains(rest, "capacity 1 at once")
		})

		// The first lookup holds the only slot (its latency is an hour) until its client
		// gives up; the progress line shows when it is in.
		holdCtx, release := context.WithCancel(t.Context())
		held := make(chan struct{})
		go func() {
			defer close(held)
			req, _ := http.NewRequestWithContext(holdCtx, http.MethodGet, "http://"+addr+"/objects/2", nil)
			if resp, err := http.DefaultClient.Do(req); err == nil {
				resp.Body.Close()
			}
		}()
		testhelper.Eventually(t, 10*time.Second, "the first lookup holds the slot", func() bool { return strings.Contains(tb.out.String(), "inflight=1") })
		resp, err := http.Get("http://" + addr + "/objects/4")
		require.NoError(t, err)
		resp.Body.Close()
		require.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
		require.Equal(t, "1", resp.Header.Get("Retry-After"))

		release()
		<-held
		cancel()
		require.NoError(t, <-done)
		require.Contains(t, tb.out.String(), "rejected for capacity 1 (50.0% of 2 requests)")
	})

	t.Run("reports_a_busy_port", func(t *testing.T) {
		t.Parallel()
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		t.Cleanup(func() { _ = ln.Close() })
		tb := setup(t, nil)
		err = run(t.Context(), []string{"objects", "-objects-addr", ln.Addr().String()}, testhelper.Getenv(nil), tb.out, tb.out)
		require.ErrorContains(t, err, "address already in use")
	})

	t.Run("rejects_bad_arguments", func(t *testing.T) {
		t.Parallel()
		tb := setup(t, nil)
		for _, args := range [][]string{
			{"-online", "odd"},
			{"-senders", "x"},
			{"frobnicate"},
			{"-ids-min", "5", "-ids-max", "4"},
			{"-fail-pct", "101"},
			{"-capacity", "-1"},
			{"-verify", "-duration", "1s"},                       // no DATABASE_URL
			{"objects", "-verify"},                               // nothing sent to verify
			{"send", "-verify", "-target", "http://127.0.0.1:1"}, // no end to sending
		} {
			err := run(t.Context(), args, testhelper.Getenv(map[string]string{}), tb.out, tb.out)
			require.Error(t, err, args)
		}
		err := run(t.Context(), []string{"send", "-verify"}, testhelper.Getenv(map[string]string{"DATABASE_URL": "x", "EXPIRE_AFTER": "soon"}), tb.out, tb.out)
		require.ErrorContains(t, err, "EXPIRE_AFTER")
	})
}

// TestVerify runs the tester against a fake service that writes the objects table
// itself at receipt (no lookups), correctly or, for one id, wrongly.
func TestVerify(t *testing.T) {
	t.Parallel()
	pool, url := pgtest.NewPool(t)
	var broken sync.Mutex
	breakIt := false
	tb := setup(t, func(ctx context.Context, received time.Time, ids []int64) error {
		for _, id := range ids {
			if id%2 == 0 {
				_, err := pool.Exec(ctx, `INSERT INTO objects (id, last_seen) VALUES ($1, $2)
					ON CONFLICT (id) DO UPDATE SET last_seen = greatest(objects.last_seen, excluded.last_seen)`, id, received)
				if err != nil {
					return err
				}
			}
		}
		broken.Lock()
		defer broken.Unlock()
		if breakIt {
			_, err := pool.Exec(ctx, "INSERT INTO objects (id, last_seen) VALUES (1, now()) ON CONFLICT DO NOTHING")
			return err
		}
		return nil
	})
	vars := testhelper.Getenv(map[string]string{"DATABASE_URL": url})
	args := fastArgs(tb.target, "-count", "20", "-ids-min", "1", "-ids-max", "5", "-id-max", "9",
		"-verify", "-verify-expiry=false", "-catch-up", "200ms")

	require.NoError(t, run(t.Context(), args, vars, tb.out, tb.out), tb.out.String())
	require.Contains(t, tb.out.String(), "verify: OK")

	// The same run against a table broken by hand: id 1 is offline under the parity rule.
	// The first run's rows go first: an id it sent that this run's random draw does not
	// would be a second difference ("row for an id never sent").
	_, err := pool.Exec(t.Context(), "TRUNCATE objects")
	require.NoError(t, err)
	broken.Lock()
	breakIt = true
	broken.Unlock()
	tb.out = &testhelper.Buffer{}
	err = run(t.Context(), args, vars, tb.out, tb.out)
	t.Log(tb.out.String())
	require.ErrorContains(t, err, "verify: 1 differences")
	require.Contains(t, tb.out.String(), "verify: offline: id 1")
}
