package server

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/objwatch/callback/internal/callback"
	"github.com/objwatch/callback/internal/intake"
	"github.com/objwatch/callback/internal/metrics"
	"github.com/objwatch/callback/internal/testhelper"
)

// panicking is a Submitter that panics with value on every call.
type panicking struct {
	value any
	calls atomic.Int64
}

func (p *panicking) Submit(context.Context, callback.Callback) error {
	p.calls.Add(1)
	panic(p.value)
}

// setup serves every route, with POST /callback's durable write replaced by sub.
func setup(t *testing.T, sub intake.Submitter) (*httptest.Server, *metrics.Metrics, *testhelper.Buffer) {
	t.Helper()
	logs := &testhelper.Buffer{}
	log := slog.New(slog.NewJSONHandler(logs, nil))
	m := metrics.New()
	h := New(Deps{
		Log:      log,
		Metrics:  m,
		Callback: intake.NewHandler(intake.Config{MaxBodyBytes: 1 << 20, MaxIDs: 100}, sub, log, m),
		Objects:  NewObjects(nil, time.Minute), // the read API is not called here
		Ready:    func(context.Context) error { return nil },
	})
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv, m, logs
}

func panics(t *testing.T, m *metrics.Metrics, where string) float64 {
	t.Helper()
	var out dto.Metric
	if err := m.PanicsRecovered.WithLabelValues(where).Write(&out); err != nil {
		t.Fatal(err)
	}
	return out.GetCounter().GetValue()
}

func post(t *testing.T, url string) (*http.Response, []byte, error) {
	t.Helper()
	resp, err := http.Post(url+"/callback", "application/json", strings.NewReader(`{"object_ids":[1,2]}`))
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp, body, err
}

func TestRecovery(t *testing.T) {
	t.Parallel()

	t.Run("handler_panic_answers_500_json_is_counted_logged_and_the_server_keeps_serving", func(t *testing.T) {
		t.Parallel()
		sub := &panicking{value: "boom"}
		srv, m, logs := setup(t, sub)

		for i := 1; i <= 3; i++ {
			resp, body, err := post(t, srv.URL)
			if err != nil {
				t.Fatalf("request %d: %v", i, err)
			}
			if resp.StatusCode != http.StatusInternalServerError {
				t.Fatalf("request %d: status %d, want 500 (body %s)", i, resp.StatusCode, body)
			}
			if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
				t.Errorf("Content-Type %q, want JSON", ct)
			}
			var reply struct{ Error string }
			if err := json.Unmarshal(body, &reply); err != nil || reply.Error == "" {
				t.Errorf("body %q: want {\"error\": ...} (%v)", body, err)
			}
			if got := panics(t, m, "http"); got != float64(i) {
				t.Errorf("after %d panics PanicsRecovered{http} = %v", i, got)
			}
		}
		if sub.calls.Load() != 3 {
			t.Errorf("the panicking handler ran %d times, want 3", sub.calls.Load())
		}
		resp, err := http.Get(srv.URL + "/healthz")
		if err != nil {
			t.Fatalf("healthz after panics: %v", err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("healthz after panics: %d", resp.StatusCode)
		}
		log := logs.String()
		if !strings.Contains(log, "panic in handler") || !strings.Contains(log, "boom") || !strings.Contains(log, "goroutine ") {
			t.Errorf("the panic was not logged with its value and stack:\n%s", log)
		}
	})

	t.Run("abort_handler_panic_closes_the_connection_without_counting", func(t *testing.T) {
		t.Parallel()
		srv, m, _ := setup(t, &panicking{value: http.ErrAbortHandler})
		if resp, _, err := post(t, srv.URL); err == nil {
			t.Errorf("got status %d, want the connection aborted", resp.StatusCode)
		}
		if got := panics(t, m, "http"); got != 0 {
			t.Errorf("PanicsRecovered{http} = %v for http.ErrAbortHandler, want 0", got)
		}
		resp, err := http.Get(srv.URL + "/healthz")
		if err != nil {
			t.Fatalf("healthz after an aborted request: %v", err)
		}
		resp.Body.Close()
	})
}
