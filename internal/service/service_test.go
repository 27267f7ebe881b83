package service_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/objwatch/callback/internal/pgtest"
	"github.com/objwatch/callback/internal/service"
	"github.com/objwatch/callback/internal/tester"
	"github.com/objwatch/callback/internal/testhelper"
	"github.com/objwatch/callback/internal/testnet"
)

// instance is one running service with its own database, spool and object service.
type instance struct {
	base string // http://127.0.0.1:port
	pool *pgxpool.Pool
	done chan error
	stop context.CancelFunc
}

// start runs the whole service through service.Run, exactly as main does, against a
// fresh database and the tester's object service (parity rule, fast answers).
func start(t *testing.T, env map[string]string) *instance {
	t.Helper()
	dbURL := pgtest.New(t)
	pool, err := pgxpool.New(context.Background(), dbURL)
	require.NoError(t, err)
	t.Cleanup(pool.Close)

	objects, err := tester.NewObjectService(tester.ObjectConfig{LatencyMin: time.Millisecond, LatencyMax: 20 * time.Millisecond, Seed: 1})
	require.NoError(t, err)
	objLn, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	objCtx, stopObjects := context.WithCancel(context.Background())
	go objects.Serve(objCtx, objLn, time.Second) //nolint:errcheck
	t.Cleanup(stopObjects)

	addr := testnet.FreeAddr(t)
	vars := map[string]string{
		"DATABASE_URL":    dbURL,
		"LISTEN_ADDR":     addr,
		"OBJECTS_URL":     "http://" + objLn.Addr().String(),
		"SPOOL_DIR":       t.TempDir(),
		"FETCH_TIMEOUT":   "1s",
		"LEASE":           "3s",
		"STATUS_INTERVAL": "0",
		"SHUTDOWN_DRAIN":  "0",
		"LOG_FORMAT":      "json",
	}
	for k, v := range env {
		vars[k] = v
	}
	ctx, stop := context.WithCancel(context.Background())
	inst := &instance{base: "http://" + addr, pool: pool, done: make(chan error, 1), stop: stop}
	go func() {
		inst.done <- service.Run(ctx, nil, testhelper.Getenv(vars), io.Discard, io.Discard)
	}()
	t.Cleanup(func() {
		stop()
		<-inst.done
	})
	testhelper.Eventually(t, 10*time.Second, "condition", func() bool {
		resp, err := http.Get(inst.base + "/healthz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	return inst
}

// post sends one callback and returns the interval in which the service received it.
func (in *instance) post(t *testing.T, body string) (from, to time.Time) {
	t.Helper()
	from = time.Now()
	resp, err := http.Post(in.base+"/callback", "application/json", strings.NewReader(body))
	require.NoError(t, err)
	defer resp.Body.Close()
	reply, _ := io.ReadAll(resp.Body)
	require.Equal(t, http.StatusAccepted, resp.StatusCode, string(reply))
	return from, time.Now()
}

func (in *instance) objects(t *testing.T) map[int64]time.Time {
	t.Helper()
	return pgtest.Objects(t, in.pool)
}

// settled: nothing left to merge or look up.
func (in *instance) settled(t *testing.T) bool {
	var n int64
	err := in.pool.QueryRow(context.Background(), "SELECT (SELECT count(*) FROM inbox_batches) + (SELECT count(*) FROM pending WHERE due_at > '-infinity')").Scan(&n)
	return err == nil && n == 0
}

func TestService(t *testing.T) {
	t.Parallel()

	t.Run("objects_table_holds_exactly_the_online_ids_with_their_latest_receipt", func(t *testing.T) {
		t.Parallel()
		svc := start(t, map[string]string{"EXPIRE_AFTER": "5m"})

		aFrom, aTo := svc.post(t, `{"object_ids":[1,2,3,4,0]}`)
		svc.post(t, `{"object_ids":[]}`)
		bFrom, bTo := svc.post(t, `{"object_ids":[2,2,5],"extra":{"ignored":[1,2]}}`)
		testhelper.Eventually(t, 15*time.Second, "condition", func() bool { return svc.settled(t) && len(svc.objects(t)) == 3 })

		got := svc.objects(t)
		require.ElementsMatch(t, []int64{0, 2, 4}, keys(got), "even ids are online (tester's parity rule)")
		within(t, got[0], aFrom, aTo)
		within(t, got[4], aFrom, aTo)
		within(t, got[2], bFrom, bTo) // the latest callback naming 2

		// A newer callback naming an online object moves its last_seen forward.
		cFrom, cTo := svc.post(t, `{"object_ids":[4]}`)
		testhelper.Eventually(t, 15*time.Second, "condition", func() bool {
			o := svc.objects(t)
			return svc.settled(t) && !o[4].Before(cFrom.Truncate(time.Microsecond))
		})
		within(t, svc.objects(t)[4], cFrom, cTo)
	})

	t.Run("rows_expire_after_the_window", func(t *testing.T) {
		t.Parallel()
		svc := start(t, map[string]string{"EXPIRE_AFTER": "2s"})
		svc.post(t, `{"object_ids":[10,11,12]}`)
		testhelper.Eventually(t, 10*time.Second, "condition", func() bool { return len(svc.objects(t)) == 2 })
		testhelper.Eventually(t, 15*time.Second, "condition", func() bool { return len(svc.objects(t)) == 0 })
		require.True(t, svc.settled(t))
	})

	t.Run("read_api_serves_the_table", func(t *testing.T) {
		t.Parallel()
		svc := start(t, map[string]string{"EXPIRE_AFTER": "5m"})
		svc.post(t, `{"object_ids":[6,8,9]}`)
		testhelper.Eventually(t, 15*time.Second, "condition", func() bool { return svc.settled(t) && len(svc.objects(t)) == 2 })

		resp, err := http.Get(svc.base + "/objects/8")
		require.NoError(t, err)
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		require.Equal(t, http.StatusOK, resp.StatusCode)
		require.Contains(t, string(body), `"id":8`)

		resp, err = http.Get(svc.base + "/objects/9")
		require.NoError(t, err)
		body, _ = io.ReadAll(resp.Body)
		resp.Body.Close()
		require.Equal(t, http.StatusNotFound, resp.StatusCode)
		require.Contains(t, string(body), `"error"`)
	})

	t.Run("metrics_and_readiness", func(t *testing.T) {
		t.Parallel()
		svc := start(t, nil)
		svc.post(t, `{"object_ids":[1]}`)
		resp, err := http.Post(svc.base+"/callback", "application/json", strings.NewReader(`{"object_ids":[-1]}`))
		require.NoError(t, err)
		resp.Body.Close()
		require.Equal(t, http.StatusBadRequest, resp.StatusCode)

		resp, err = http.Get(svc.base + "/readyz")
		require.NoError(t, err)
		resp.Body.Close()
		require.Equal(t, http.StatusOK, resp.StatusCode)

		resp, err = http.Get(svc.base + "/metrics")
		require.NoError(t, err)
		var buf bytes.Buffer
		_, _ = buf.ReadFrom(resp.Body)
		resp.Body.Close()
		require.Contains(t, buf.String(), "callback_callbacks_accepted_total 1\n")
		require.Contains(t, buf.String(), `callback_callbacks_rejected_total{reason="invalid_body"} 1`)
	})

	t.Run("the_console_is_served_at_the_root_unless_CONSOLE_is_off", func(t *testing.T) {
		t.Parallel()
		for env, want := range map[string]int{"on": http.StatusOK, "off": http.StatusNotFound} {
			svc := start(t, map[string]string{"CONSOLE": env})
			for _, path := range []string{"/", "/console/series"} {
				resp, err := http.Get(svc.base + path)
				require.NoError(t, err)
				resp.Body.Close()
				require.Equal(t, want, resp.StatusCode, "CONSOLE=%s: GET %s", env, path)
			}
		}
	})

	t.Run("shuts_down_cleanly_on_cancel", func(t *testing.T) {
		t.Parallel()
		svc := start(t, nil)
		svc.post(t, `{"object_ids":[1,2]}`)
		svc.stop()
		select {
		case err := <-svc.done:
			require.NoError(t, err)
			svc.done <- err // for the cleanup
		case <-time.After(30 * time.Second):
			t.Fatal("Run did not return after cancel")
		}
	})
}

func keys(m map[int64]time.Time) []int64 {
	out := make([]int64, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}

// within: Postgres keeps microseconds, so compare at that precision.
func within(t *testing.T, got, from, to time.Time) {
	t.Helper()
	from, to = from.Truncate(time.Microsecond), to.Add(time.Microsecond)
	require.False(t, got.Before(from) || got.After(to), fmt.Sprintf("last_seen %v not within [%v, %v]", got, from, to))
}
