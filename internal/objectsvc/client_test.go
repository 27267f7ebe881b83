package objectsvc_test

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/objwatch/callback/internal/objectsvc"
)

// setup serves handler as the object service and returns a client for it.
func setup(t *testing.T, handler http.HandlerFunc) *objectsvc.Client {
	t.Helper()
	srv := httptest.NewServer(handler)
	t.Cleanup(srv.Close)
	c := objectsvc.New(srv.URL, 4)
	t.Cleanup(c.CloseIdle)
	return c
}

// answer replies status and body to every request.
func answer(status int, body string) http.HandlerFunc {
	return func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_, _ = io.WriteString(w, body)
	}
}

func TestLookup(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		handler http.HandlerFunc
		want    bool
		wantErr string // empty: no error
	}{
		{name: "online", handler: answer(200, `{"id":7,"online":true}`), want: true},
		{name: "offline", handler: answer(200, `{"id":7,"online":false}`), want: false},
		{name: "unknown_fields_ignored", handler: answer(200, `{"id":7,"online":true,"name":"x"}`), want: true},
		{name: "server_error_is_an_error", handler: answer(500, `{"id":7,"online":true}`), wantErr: "answered 500"},
		{name: "not_found_is_an_error", handler: answer(404, `no such object`), wantErr: "answered 404"},
		{name: "too_many_requests_is_an_error", handler: answer(429, ``), wantErr: "answered 429"},
		{name: "malformed_json_is_an_error", handler: answer(200, `{"id":7,"online":tru`), wantErr: "malformed answer"},
		{name: "empty_body_is_an_error", handler: answer(200, ``), wantErr: "malformed answer"},
		{name: "not_an_object_is_an_error", handler: answer(200, `[7,true]`), wantErr: "malformed answer"},
		{name: "missing_online_is_an_error", handler: answer(200, `{"id":7}`), wantErr: "missing id or online"},
		{name: "missing_id_is_an_error", handler: answer(200, `{"online":true}`), wantErr: "missing id or online"},
		{name: "null_online_is_an_error", handler: answer(200, `{"id":7,"online":null}`), wantErr: "missing id or online"},
		{name: "online_of_wrong_type_is_an_error", handler: answer(200, `{"id":7,"online":"yes"}`), wantErr: "malformed answer"},
		{name: "wrong_id_is_an_error", handler: answer(200, `{"id":8,"online":true}`), wantErr: "asked for 7"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := setup(t, tt.handler)
			got, err := c.Lookup(context.Background(), 7)
			if tt.wantErr != "" {
				require.ErrorContains(t, err, tt.wantErr)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tt.want, got)
		})
	}
}

// The connection buffers are small (see New): a header line longer than them must still
// be read whole.
func TestLookup_headerLongerThanTheBuffers(t *testing.T) {
	t.Parallel()
	c := setup(t, func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("X-Padding", strings.Repeat("x", 8<<10))
		_, _ = io.WriteString(w, `{"id":7,"online":true}`)
	})
	online, err := c.Lookup(context.Background(), 7)
	require.NoError(t, err)
	require.True(t, online)
}

func TestLookup_asksForTheObjectByPath(t *testing.T) {
	t.Parallel()
	paths := make(chan string, 1)
	c := setup(t, func(w http.ResponseWriter, r *http.Request) {
		paths <- r.Method + " " + r.URL.Path
		_, _ = io.WriteString(w, `{"id":9223372036854775807,"online":true}`)
	})
	online, err := c.Lookup(context.Background(), 9223372036854775807)
	require.NoError(t, err)
	require.True(t, online)
	require.Equal(t, "GET /objects/9223372036854775807", <-paths)
}

func TestLookup_contextDeadlineIsAnError(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	c := setup(t, func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-release:
		}
	})
	t.Cleanup(func() { close(release) }) // runs before the server's Close, which waits for handlers
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	_, err := c.Lookup(ctx, 7)
	require.Error(t, err)
	require.True(t, errors.Is(err, context.DeadlineExceeded), "error %v should be a deadline", err)
}

func TestLookup_unreachableServiceIsAnError(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.NotFoundHandler())
	url := srv.URL
	srv.Close() // nothing listens there any more
	_, err := objectsvc.New(url, 1).Lookup(context.Background(), 7)
	require.Error(t, err)
}

func TestLookup_statusErrorSaysRejectedAndRetryAfter(t *testing.T) {
	t.Parallel()
	date := time.Now().Add(90 * time.Second).UTC().Format(http.TimeFormat)
	tests := []struct {
		name         string
		status       int
		retryAfter   string
		wantRejected bool
		wantMin      time.Duration // RetryAfter within [wantMin, wantMax]
		wantMax      time.Duration
	}{
		{name: "503_with_seconds", status: 503, retryAfter: "3", wantRejected: true, wantMin: 3 * time.Second, wantMax: 3 * time.Second},
		{name: "429_with_http_date", status: 429, retryAfter: date, wantRejected: true, wantMin: 80 * time.Second, wantMax: 90 * time.Second},
		{name: "503_without_retry_after", status: 503, wantRejected: true},
		{name: "503_with_garbage_retry_after", status: 503, retryAfter: "soon", wantRejected: true},
		{name: "503_with_past_date", status: 503, retryAfter: "Wed, 21 Oct 2015 07:28:00 GMT", wantRejected: true},
		{name: "503_with_negative_seconds", status: 503, retryAfter: "-5", wantRejected: true},
		{name: "500_is_a_failure_not_a_rejection", status: 500, retryAfter: "3", wantMin: 3 * time.Second, wantMax: 3 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := setup(t, func(w http.ResponseWriter, _ *http.Request) {
				if tt.retryAfter != "" {
					w.Header().Set("Retry-After", tt.retryAfter)
				}
				w.WriteHeader(tt.status)
			})
			_, err := c.Lookup(context.Background(), 7)
			var se *objectsvc.StatusError
			require.ErrorAs(t, err, &se)
			require.Equal(t, tt.status, se.Code)
			require.Equal(t, tt.wantRejected, se.Rejected())
			require.GreaterOrEqual(t, se.Wait(), tt.wantMin)
			require.LessOrEqual(t, se.Wait(), tt.wantMax)
		})
	}
}

// counting serves handler and counts the connections clients opened to it.
func counting(t *testing.T, handler http.HandlerFunc) (*objectsvc.Client, *httptest.Server, *atomic.Int64) {
	t.Helper()
	var conns atomic.Int64
	srv := httptest.NewUnstartedServer(handler)
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Start()
	t.Cleanup(srv.Close)
	c := objectsvc.New(srv.URL, 4)
	t.Cleanup(c.CloseIdle)
	return c, srv, &conns
}

func TestLookup_reusesKeepAliveConnections(t *testing.T) {
	t.Parallel()
	c, _, conns := counting(t, answer(http.StatusOK, `{"id":1,"online":true}`))
	for range 20 {
		online, err := c.Lookup(context.Background(), 1)
		require.NoError(t, err)
		require.True(t, online)
	}
	require.Equal(t, int64(1), conns.Load(), "one connection for lookups one after another")
}

func TestLookup_connectionClosedWhileIdleIsRedialled(t *testing.T) {
	t.Parallel()
	c, srv, conns := counting(t, answer(http.StatusOK, `{"id":1,"online":true}`))
	_, err := c.Lookup(context.Background(), 1)
	require.NoError(t, err)
	srv.CloseClientConnections() // the server drops its idle keep-alive connection
	online, err := c.Lookup(context.Background(), 1)
	require.NoError(t, err, "a GET on a connection the server closed is sent again on a new one")
	require.True(t, online)
	require.Equal(t, int64(2), conns.Load())
}

func TestLookup_connectionCloseIsHonoured(t *testing.T) {
	t.Parallel()
	c, _, conns := counting(t, func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Connection", "close")
		_, _ = io.WriteString(w, `{"id":1,"online":false}`)
	})
	for range 3 {
		online, err := c.Lookup(context.Background(), 1)
		require.NoError(t, err)
		require.False(t, online)
	}
	require.Equal(t, int64(3), conns.Load())
}

func TestLookup_cancellationEndsAWaitingLookup(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	defer close(release)
	c := setup(t, func(http.ResponseWriter, *http.Request) { <-release })
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { _, err := c.Lookup(ctx, 1); done <- err }()
	cancel()
	err := <-done
	require.ErrorIs(t, err, context.Canceled)
}
