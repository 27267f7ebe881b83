package service_test

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/objwatch/callback/internal/service"
	"github.com/objwatch/callback/internal/testhelper"
	"github.com/objwatch/callback/internal/testnet"
)

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

func TestShutdown(t *testing.T) {
	t.Parallel()

	t.Run("readyz_turns_503_first_while_callbacks_are_still_accepted", func(t *testing.T) {
		t.Parallel()
		// The drain is long so that a loaded machine still polls inside it; the test
		// does not measure it.
		svc := start(t, map[string]string{"SHUTDOWN_DRAIN": "10s"})
		code, _ := get(t, svc.base+"/readyz")
		require.Equal(t, http.StatusOK, code)

		svc.stop()
		testhelper.Eventually(t, 5*time.Second, "condition", func() bool {
			code, body := get(t, svc.base+"/readyz")
			return code == http.StatusServiceUnavailable && strings.Contains(body, "shutting down")
		})
		// Still draining: a sender the load balancer has not moved yet is served.
		svc.post(t, `{"object_ids":[1,2,3]}`)
		code, _ = get(t, svc.base+"/healthz")
		require.Equal(t, http.StatusOK, code)

		require.NoError(t, <-svc.done)
		svc.done <- nil // for the cleanup
		_, err := http.Get(svc.base + "/healthz")
		require.Error(t, err, "the listener is closed after the drain")
	})

	t.Run("wrong_database_url_is_loud_in_the_log_and_the_metrics", func(t *testing.T) {
		t.Parallel()
		nowhere := "postgres://postgres@" + testnet.FreeAddr(t) + "/callback?sslmode=disable&connect_timeout=1"
		addr := testnet.FreeAddr(t)
		spoolDir := t.TempDir()
		vars := map[string]string{
			"DATABASE_URL":    nowhere,
			"LISTEN_ADDR":     addr,
			"OBJECTS_URL":     "http://" + testnet.FreeAddr(t),
			"SPOOL_DIR":       spoolDir,
			"COMMIT_TIMEOUT":  "200ms",
			"STATUS_INTERVAL": "50ms",
			"SHUTDOWN_DRAIN":  "0",
			"LOG_FORMAT":      "json",
		}
		logs := &testhelper.Buffer{}
		ctx, stop := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- service.Run(ctx, nil, testhelper.Getenv(vars), io.Discard, logs) }()
		t.Cleanup(func() {
			stop()
			<-done
		})
		base := "http://" + addr
		testhelper.Eventually(t, 10*time.Second, "condition", func() bool {
			resp, err := http.Get(base + "/healthz")
			if err == nil {
				resp.Body.Close()
			}
			return err == nil
		})

		// Durable in the spool: accepted.
		resp, err := http.Post(base+"/callback", "application/json", strings.NewReader(`{"object_ids":[7]}`))
		require.NoError(t, err)
		resp.Body.Close()
		require.Equal(t, http.StatusAccepted, resp.StatusCode)

		testhelper.Eventually(t, 10*time.Second, "metrics", func() bool {
			_, body := get(t, base+"/metrics")
			return strings.Contains(body, "callback_database_up 0\n") && strings.Contains(body, "callback_spool_segments 1\n")
		})
		testhelper.Eventually(t, 10*time.Second, "the expected log line", func() bool {
			return strings.Contains(logs.String(), "database unreachable ever since the start") &&
				strings.Contains(logs.String(), "check DATABASE_URL; 1 callbacks spooled")
		}, func() string { return "log: " + logs.String() })
		require.NotContains(t, logs.String(), nowhere[:20]+"@", "the log names the database without credentials")

		stop()
		require.NoError(t, <-done)
		done <- nil
		require.Contains(t, logs.String(), "callbacks left in the spool")
		require.Contains(t, logs.String(), `"expire_after":"30s"`, "durations are logged as text")
	})
}
