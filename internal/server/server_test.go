package server_test

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

	"github.com/jackc/pgx/v5/pgxpool"
	dto "github.com/prometheus/client_model/go"

	"github.com/objwatch/callback/internal/callback"
	"github.com/objwatch/callback/internal/component"
	"github.com/objwatch/callback/internal/console"
	"github.com/objwatch/callback/internal/intake"
	"github.com/objwatch/callback/internal/metrics"
	"github.com/objwatch/callback/internal/server"
	"github.com/objwatch/callback/internal/store"
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

// objectsWindow is how long after its last lookup an object is served, here.
const objectsWindow = 30 * time.Second

// serverOpts is how a test wants the routes served.
type serverOpts struct {
	intake intake.Config    // POST /callback's limits
	submit intake.Submitter // where POST /callback's callbacks go
	ready  server.Readiness // nil: always ready
	pool   *pgxpool.Pool    // the database behind GET /objects; nil: no test reads it
	// console serves the console over the server's metrics, sampling them (CONSOLE=on);
	// false: CONSOLE=off.
	console bool
}

// testBundle is a served set of routes and what a test reads besides them.
type testBundle struct {
	url     string             // the server's base URL
	metrics *metrics.Metrics   // the server's
	logs    *testhelper.Buffer // the server's log, JSON lines
	pool    *pgxpool.Pool      // serverOpts.pool
}

// setup serves every route, wired as the service wires them, as opts says. Each test
// file has its own setup on top of it (setupObjects, setupAPI).
func setup(t *testing.T, opts serverOpts) *testBundle {
	t.Helper()
	tb := &testBundle{metrics: metrics.New(), logs: &testhelper.Buffer{}, pool: opts.pool}
	log := slog.New(slog.NewJSONHandler(tb.logs, nil))
	objects := server.NewObjects(nil, objectsWindow) // the read API is not called
	if opts.pool != nil {
		objects = server.NewObjects(store.New(opts.pool), objectsWindow)
	}
	ready := opts.ready
	if ready == nil {
		ready = func(context.Context) error { return nil }
	}
	var page server.Console
	if opts.console {
		c, err := console.New(console.Config{}, component.Deps{Log: log, Metrics: tb.metrics})
		if err != nil {
			t.Fatal(err)
		}
		ctx, stop := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { _ = c.Run(ctx); close(done) }()
		t.Cleanup(func() { stop(); <-done })
		page = c
	}
	srv := httptest.NewServer(server.New(server.Deps{
		Log:      log,
		Metrics:  tb.metrics,
		Callback: intake.NewHandler(opts.intake, intake.Deps{Submitter: opts.submit, Log: log, Metrics: tb.metrics}),
		Objects:  objects,
		Ready:    ready,
		Console:  page,
	}))
	t.Cleanup(srv.Close)
	tb.url = srv.URL
	return tb
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
		tb := setup(t, serverOpts{intake: intake.Config{MaxBodyBytes: 1 << 20, MaxIDs: 100}, submit: sub})

		for i := 1; i <= 3; i++ {
			resp, body, err := post(t, tb.url)
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
			if got := panics(t, tb.metrics, "http"); got != float64(i) {
				t.Errorf("after %d panics PanicsRecovered{http} = %v", i, got)
			}
		}
		if sub.calls.Load() != 3 {
			t.Errorf("the panicking handler ran %d times, want 3", sub.calls.Load())
		}
		resp, err := http.Get(tb.url + "/healthz")
		if err != nil {
			t.Fatalf("healthz after panics: %v", err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("healthz after panics: %d", resp.StatusCode)
		}
		log := tb.logs.String()
		if !strings.Contains(log, "panic in handler") || !strings.Contains(log, "boom") || !strings.Contains(log, "goroutine ") {
			t.Errorf("the panic was not logged with its value and stack:\n%s", log)
		}
	})

	t.Run("abort_handler_panic_closes_the_connection_without_counting", func(t *testing.T) {
		t.Parallel()
		tb := setup(t, serverOpts{intake: intake.Config{MaxBodyBytes: 1 << 20, MaxIDs: 100}, submit: &panicking{value: http.ErrAbortHandler}})
		if resp, _, err := post(t, tb.url); err == nil {
			t.Errorf("got status %d, want the connection aborted", resp.StatusCode)
		}
		if got := panics(t, tb.metrics, "http"); got != 0 {
			t.Errorf("PanicsRecovered{http} = %v for http.ErrAbortHandler, want 0", got)
		}
		resp, err := http.Get(tb.url + "/healthz")
		if err != nil {
			t.Fatalf("healthz after an aborted request: %v", err)
		}
		resp.Body.Close()
	})
}
