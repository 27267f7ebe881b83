package objectsvc_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
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
