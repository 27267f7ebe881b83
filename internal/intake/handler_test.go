package intake_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/require"

	"github.com/objwatch/callback/internal/callback"
	"github.com/objwatch/callback/internal/component"
	"github.com/objwatch/callback/internal/inbox"
	"github.com/objwatch/callback/internal/intake"
	"github.com/objwatch/callback/internal/metrics"
	"github.com/objwatch/callback/internal/pgtest"
	"github.com/objwatch/callback/internal/server"
	"github.com/objwatch/callback/internal/spool"
	"github.com/objwatch/callback/internal/store"
	"github.com/objwatch/callback/internal/testhelper"
)

// backend is what the routes write to: a fresh database, a real spool, and the real
// group committer writing into both. Cases that must write nothing share one backend
// (each with its own server and metrics): a case that wrote anything would show up.
type backend struct {
	pool      *pgxpool.Pool
	spool     *spool.Spool
	committer *inbox.Committer
}

// env is the whole HTTP surface on a real server, with its own metrics. It records
// the ids of the callbacks the committer accepted through it, so that cases sharing a
// backend each find their own inbox rows.
type env struct {
	*backend
	url string
	m   *metrics.Metrics

	mu       sync.Mutex
	accepted []uuid.UUID
}

// defaults are the service's limits, except the body timeout, which is short so
// that the 408 case is quick.
func defaults() intake.Config {
	return intake.Config{MaxBodyBytes: 1 << 20, MaxIDs: 10000, BodyTimeout: 200 * time.Millisecond}
}

var discard = testhelper.DiscardLogger()

func setup(t *testing.T) *backend {
	t.Helper()
	pool, _ := pgtest.NewPool(t)
	sp, err := spool.Open(t.TempDir(), discard)
	require.NoError(t, err)
	t.Cleanup(func() { _ = sp.Close() })

	// These tests read what reached the inbox: a write slower than the default 400 ms
	// goes to the spool instead, and on a machine with a CPU hog beside make test one
	// did (TestCallback_accepts found no inbox row). The spool path has tests of its own.
	committer, err := inbox.NewCommitter(inbox.CommitterConfig{CommitTimeout: 30 * time.Second}, store.New(pool), sp, component.Deps{})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = committer.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return &backend{pool: pool, spool: sp, committer: committer}
}

// serve starts the service's routes with cfg; sub replaces the committer when not nil.
func (b *backend) serve(t *testing.T, cfg intake.Config, sub intake.Submitter) *env {
	t.Helper()
	e := &env{backend: b, m: metrics.New()}
	if sub == nil {
		sub = submitter{SubmitFunc: func(ctx context.Context, cb callback.Callback) error {
			err := b.committer.Submit(ctx, cb)
			if err == nil {
				e.mu.Lock()
				e.accepted = append(e.accepted, cb.ID)
				e.mu.Unlock()
			}
			return err
		}}
	}
	m := e.m
	h := server.New(server.Deps{
		Log:      discard,
		Metrics:  m,
		Callback: intake.NewHandler(cfg, intake.Deps{Submitter: sub, Log: discard, Metrics: m}),
		Objects:  server.NewObjects(store.New(b.pool), 30*time.Second),
		Ready:    func(context.Context) error { return nil },
	})
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	e.url = srv.URL
	return e
}

type reply struct {
	status      int
	contentType string
	body        map[string]any
	raw         string
}

// do sends one request to /callback. headers are name, value pairs.
func (e *env) do(t *testing.T, method, body string, headers ...string) reply {
	t.Helper()
	req, err := http.NewRequest(method, e.url+"/callback", strings.NewReader(body))
	require.NoError(t, err)
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	client := &http.Client{Timeout: 10 * time.Second}
	resp, err := client.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	return readReply(t, resp)
}

func readReply(t *testing.T, resp *http.Response) reply {
	t.Helper()
	raw, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	r := reply{status: resp.StatusCode, contentType: resp.Header.Get("Content-Type"), raw: string(raw)}
	require.NoError(t, json.Unmarshal(raw, &r.body), "reply body %q is not a JSON object", raw)
	return r
}

// requireError asserts a JSON {"error": "..."} reply with status.
func requireError(t *testing.T, r reply, status int) {
	t.Helper()
	require.Equal(t, status, r.status, "reply %s", r.raw)
	require.Contains(t, r.contentType, "application/json")
	msg, ok := r.body["error"].(string)
	require.True(t, ok, "reply %s has no error string", r.raw)
	require.NotEmpty(t, msg)
}

type inboxRow struct {
	id         uuid.UUID
	receivedAt time.Time
	ids        []int64
}

// inbox reads the inbox callbacks accepted through e.
func (e *env) inbox(t *testing.T) []inboxRow {
	t.Helper()
	e.mu.Lock()
	accepted := append([]uuid.UUID(nil), e.accepted...)
	e.mu.Unlock()
	var out []inboxRow
	for _, r := range e.rows(t) {
		if slices.Contains(accepted, r.id) {
			out = append(out, r)
		}
	}
	return out
}

// rows reads every callback in the inbox, oldest first.
func (b *backend) rows(t *testing.T) []inboxRow {
	t.Helper()
	cbs, err := store.New(b.pool).Inbox(context.Background())
	require.NoError(t, err)
	out := make([]inboxRow, len(cbs))
	for i, cb := range cbs {
		out[i] = inboxRow{id: cb.ID, receivedAt: cb.ReceivedAt, ids: cb.ObjectIDs}
		if out[i].ids == nil {
			out[i].ids = []int64{}
		}
	}
	return out
}

// requireNothingWritten: no inbox row and no spool segment.
func (e *env) requireNothingWritten(t *testing.T) {
	t.Helper()
	require.Empty(t, e.rows(t), "inbox rows")
	segments, _ := e.spool.Stats()
	require.Zero(t, segments, "spool segments")
	require.Zero(t, metrics.Sum(e.m.CallbacksAccepted), "accepted counter")
}

// requireRejected: exactly one rejection, for reason.
func (e *env) requireRejected(t *testing.T, reason string) {
	t.Helper()
	require.Equal(t, 1, series(t, e.m.CallbacksRejected), "rejection reasons counted")
	require.Equal(t, 1.0, metrics.Sum(e.m.CallbacksRejected.WithLabelValues(reason)), "rejections for %q", reason)
}

// series counts the series of c that have counted anything (every known label value
// is exported at 0 from the start).
func series(t *testing.T, c prometheus.Collector) int {
	t.Helper()
	ch := make(chan prometheus.Metric, 64)
	c.Collect(ch)
	close(ch)
	n := 0
	for m := range ch {
		var d dto.Metric
		require.NoError(t, m.Write(&d))
		if d.GetCounter().GetValue() != 0 {
			n++
		}
	}
	return n
}

// idList is {"object_ids":[0,1,...,n-1]}.
func idList(n int) string {
	var b strings.Builder
	b.WriteString(`{"object_ids":[`)
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(strconv.Itoa(i))
	}
	b.WriteString("]}")
	return b.String()
}

func seq(n int) []int64 {
	out := make([]int64, n)
	for i := range out {
		out[i] = int64(i)
	}
	return out
}

func TestCallback_accepts(t *testing.T) {
	t.Parallel()
	// want is what the inbox row holds: the distinct ids, sorted (repeats in one
	// callback share its receipt time, so they carry nothing). sent is the count the
	// reply and the ids counter report: every id as sent.
	tests := []struct {
		name    string
		body    string
		headers []string
		want    []int64
		sent    int
	}{
		{name: "ids", body: `{"object_ids":[1,2,3]}`, want: []int64{1, 2, 3}, sent: 3},
		{name: "empty_list", body: `{"object_ids":[]}`, want: []int64{}, sent: 0},
		{name: "duplicates_stored_once", body: `{"object_ids":[5,5,1,5]}`, want: []int64{1, 5}, sent: 4},
		{name: "zero", body: `{"object_ids":[0]}`, want: []int64{0}, sent: 1},
		{name: "max_int64", body: `{"object_ids":[9223372036854775807,0]}`, want: []int64{0, 9223372036854775807}, sent: 2},
		{name: "unknown_fields_ignored", body: `{"sender":"x","object_ids":[7],"extra":{"a":[1,-2.5]}}`, want: []int64{7}, sent: 1},
		{name: "whitespace_around", body: " \n{ \"object_ids\" : [ 1 , 2 ] }\r\n", want: []int64{1, 2}, sent: 2},
		{name: "any_content_type", body: `{"object_ids":[4]}`, headers: []string{"Content-Type", "text/plain"}, want: []int64{4}, sent: 1},
		{name: "exactly_max_ids", body: idList(10000), want: seq(10000), sent: 10000},
	}
	b := setup(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := b.serve(t, defaults(), nil)
			// Postgres keeps microseconds: widen the window by one on each side.
			before := time.Now().Add(-time.Microsecond)
			r := e.do(t, http.MethodPost, tt.body, tt.headers...)
			after := time.Now().Add(time.Microsecond)

			require.Equal(t, http.StatusAccepted, r.status, "reply %s", r.raw)
			require.Contains(t, r.contentType, "application/json")
			require.Equal(t, map[string]any{"accepted": float64(tt.sent)}, r.body)

			rows := e.inbox(t)
			require.Len(t, rows, 1, "the callback is in the inbox once, whatever its size")
			require.Equal(t, tt.want, rows[0].ids)
			require.False(t, rows[0].receivedAt.Before(before), "received_at %v before the request (%v)", rows[0].receivedAt, before)
			require.False(t, rows[0].receivedAt.After(after), "received_at %v after the reply (%v)", rows[0].receivedAt, after)

			require.Equal(t, 1.0, metrics.Sum(e.m.CallbacksAccepted))
			require.Equal(t, float64(tt.sent), metrics.Sum(e.m.IDsReceived))
			require.Zero(t, series(t, e.m.CallbacksRejected), "no rejection counted")
		})
	}
}

func TestCallback_rejectsBadInputAndWritesNothing(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		body   string
		status int
		reason string
	}{
		{"malformed_json", `{"object_ids":[1,2,}`, 400, "invalid_body"},
		{"empty_body", ``, 400, "invalid_body"},
		{"not_json_at_all", `object_ids=1,2`, 400, "invalid_body"},
		{"array_not_object", `[1,2,3]`, 400, "invalid_body"},
		{"string_not_object", `"object_ids"`, 400, "invalid_body"},
		{"null_not_object", `null`, 400, "invalid_body"},
		{"number_not_object", `42`, 400, "invalid_body"},
		{"missing_object_ids", `{"ids":[1]}`, 400, "invalid_body"},
		{"empty_object", `{}`, 400, "invalid_body"},
		{"null_object_ids", `{"object_ids":null}`, 400, "invalid_body"},
		{"object_ids_not_array", `{"object_ids":1}`, 400, "invalid_body"},
		{"string_ids", `{"object_ids":["1","2"]}`, 400, "invalid_body"},
		{"float_id", `{"object_ids":[1,2.5]}`, 400, "invalid_body"},
		{"integral_float_id", `{"object_ids":[1.0]}`, 400, "invalid_body"},
		{"exponent_id", `{"object_ids":[1e3]}`, 400, "invalid_body"},
		{"negative_id", `{"object_ids":[3,-1]}`, 400, "invalid_body"},
		{"id_over_int64", `{"object_ids":[9223372036854775808]}`, 400, "invalid_body"},
		{"id_over_uint64", `{"object_ids":[99999999999999999999999]}`, 400, "invalid_body"},
		{"null_id", `{"object_ids":[null]}`, 400, "invalid_body"},
		{"truncated_in_array", `{"object_ids":[1,2`, 400, "invalid_body"},
		{"truncated_after_array", `{"object_ids":[1,2]`, 400, "invalid_body"},
		{"truncated_in_key", `{"object_`, 400, "invalid_body"},
		{"two_values", `{"object_ids":[1]}{"object_ids":[2]}`, 400, "invalid_body"},
		{"trailing_garbage", `{"object_ids":[1]}x`, 400, "invalid_body"},
		{"invalid_utf8_in_string", "{\"note\":\"\xff\xfe\",\"object_ids\":[1]}", 400, "invalid_body"},
		{"invalid_utf8_outside_string", "{\"object_ids\":[1]}\xc3", 400, "invalid_body"},
		{"body_over_max_bytes", `{"object_ids":[1],"pad":"` + strings.Repeat("a", 1<<20) + `"}`, 413, "body_too_large"},
		{"more_ids_than_max", idList(10001), 413, "too_many_ids"},
	}
	b := setup(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := b.serve(t, defaults(), nil)
			r := e.do(t, http.MethodPost, tt.body)
			requireError(t, r, tt.status)
			e.requireNothingWritten(t)
			e.requireRejected(t, tt.reason)
		})
	}
}

func TestCallback_bodyLimitIsExact(t *testing.T) {
	t.Parallel()
	cfg := defaults()
	body := `{"object_ids":[1,2,3]}`
	cfg.MaxBodyBytes = int64(len(body))
	e := setup(t).serve(t, cfg, nil)

	r := e.do(t, http.MethodPost, body)
	require.Equal(t, http.StatusAccepted, r.status, "a body of exactly the limit is accepted: %s", r.raw)

	// Declared too large: refused from the header alone.
	r = e.do(t, http.MethodPost, body+" ")
	requireError(t, r, http.StatusRequestEntityTooLarge)

	// No length declared (chunked): refused once the limit is passed while reading.
	req, err := http.NewRequest(http.MethodPost, e.url+"/callback", io.MultiReader(strings.NewReader(body), strings.NewReader(" ")))
	require.NoError(t, err)
	req.ContentLength = -1 // unknown: the client sends it chunked
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	requireError(t, readReply(t, resp), http.StatusRequestEntityTooLarge)

	require.Len(t, e.inbox(t), 1, "only the first callback was written")
}

func TestCallback_otherMethodsNotAllowed(t *testing.T) {
	t.Parallel()
	b := setup(t)
	for _, method := range []string{http.MethodGet, http.MethodPut, http.MethodPatch, http.MethodDelete} {
		t.Run(method, func(t *testing.T) {
			t.Parallel()
			e := b.serve(t, defaults(), nil)
			r := e.do(t, method, `{"object_ids":[1]}`)
			requireError(t, r, http.StatusMethodNotAllowed)
			e.requireNothingWritten(t)
			e.requireRejected(t, "method_not_allowed")
		})
	}
}

func TestCallback_tokenRequired(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		headers []string
	}{
		{name: "missing_token_unauthorized"},
		{name: "wrong_token_unauthorized", headers: []string{"Authorization", "Bearer s3cre7"}},
		{name: "token_prefix_unauthorized", headers: []string{"Authorization", "Bearer s3cr"}},
		{name: "longer_token_unauthorized", headers: []string{"Authorization", "Bearer s3crets"}},
		{name: "other_scheme_unauthorized", headers: []string{"Authorization", "Basic s3cret"}},
		{name: "bare_token_unauthorized", headers: []string{"Authorization", "s3cret"}},
	}
	cfg := defaults()
	cfg.Token = "s3cret"
	b := setup(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := b.serve(t, cfg, nil)
			r := e.do(t, http.MethodPost, `{"object_ids":[1]}`, tt.headers...)
			requireError(t, r, http.StatusUnauthorized)
			e.requireNothingWritten(t)
			e.requireRejected(t, "unauthorized")
		})
	}
}

func TestCallback_rightTokenAccepted(t *testing.T) {
	t.Parallel()
	cfg := defaults()
	cfg.Token = "s3cret"
	e := setup(t).serve(t, cfg, nil)
	r := e.do(t, http.MethodPost, `{"object_ids":[1]}`, "Authorization", "Bearer s3cret")
	require.Equal(t, http.StatusAccepted, r.status, "reply %s", r.raw)
	rows := e.inbox(t)
	require.Len(t, rows, 1)
	require.Equal(t, []int64{1}, rows[0].ids)
}

// rawRequest writes a request head with a Content-Length of declared and then partial
// as the body, calls then (which may half-close or just wait), and reads the reply.
func rawRequest(t *testing.T, e *env, declared int, partial string, then func(*net.TCPConn)) reply {
	t.Helper()
	conn, err := net.Dial("tcp", strings.TrimPrefix(e.url, "http://"))
	require.NoError(t, err)
	defer conn.Close()
	require.NoError(t, conn.SetDeadline(time.Now().Add(10*time.Second)))
	_, err = io.WriteString(conn, "POST /callback HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"+
		"Content-Length: "+strconv.Itoa(declared)+"\r\n\r\n"+partial)
	require.NoError(t, err)
	then(conn.(*net.TCPConn))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	require.NoError(t, err)
	defer resp.Body.Close()
	return readReply(t, resp)
}

func TestCallback_bodyNotArrivingInTimeIsRequestTimeout(t *testing.T) {
	t.Parallel()
	e := setup(t).serve(t, defaults(), nil)
	// The body stops half way and the connection stays open: the handler's read
	// deadline (BodyTimeout) ends the wait.
	r := rawRequest(t, e, 100, `{"object_ids":[1,2,`, func(*net.TCPConn) {})
	requireError(t, r, http.StatusRequestTimeout)
	e.requireNothingWritten(t)
	e.requireRejected(t, "body_timeout")
}

func TestCallback_bodyCutShortIsBadRequest(t *testing.T) {
	t.Parallel()
	e := setup(t).serve(t, defaults(), nil)
	// The client promises 100 bytes, sends a complete-looking JSON body, and closes its
	// side: the body is truncated even though what arrived parses.
	r := rawRequest(t, e, 100, `{"object_ids":[1,2]}`, func(c *net.TCPConn) { require.NoError(t, c.CloseWrite()) })
	requireError(t, r, http.StatusBadRequest)
	e.requireNothingWritten(t)
	e.requireRejected(t, "unreadable_body")
}

// submitter is a fake intake.Submitter.
type submitter struct {
	SubmitFunc func(ctx context.Context, cb callback.Callback) error
}

func (s submitter) Submit(ctx context.Context, cb callback.Callback) error {
	return s.SubmitFunc(ctx, cb)
}

func TestCallback_notDurableIsServiceUnavailable(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		err  error
	}{
		{name: "database_and_spool_down", err: inbox.ErrUnavailable},
		{name: "caller_gave_up", err: context.Canceled},
		{name: "any_other_error", err: errors.New("boom")},
	}
	b := setup(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var (
				mu   sync.Mutex
				seen []callback.Callback
			)
			e := b.serve(t, defaults(), submitter{SubmitFunc: func(_ context.Context, cb callback.Callback) error {
				mu.Lock()
				defer mu.Unlock()
				// ObjectIDs belongs to the handler once Submit returns: copy it.
				cb.ObjectIDs = append([]int64(nil), cb.ObjectIDs...)
				seen = append(seen, cb)
				return tt.err
			}})
			r := e.do(t, http.MethodPost, `{"object_ids":[4,2]}`)
			requireError(t, r, http.StatusServiceUnavailable)
			e.requireNothingWritten(t)
			e.requireRejected(t, "unavailable")

			mu.Lock()
			defer mu.Unlock()
			require.Len(t, seen, 1)
			require.Equal(t, []int64{2, 4}, seen[0].ObjectIDs)
		})
	}
}

type pacerFunc func(receipt time.Time, ids []int64, now time.Time) time.Duration

func (f pacerFunc) Until(receipt time.Time, ids []int64, now time.Time) time.Duration {
	return f(receipt, ids, now)
}

// A callback the pacer holds is durable before the wait, and answered 2xx after it.
func TestCallback_pacedCallbackIsDurableFirstAndAnsweredAfterTheWait(t *testing.T) {
	t.Parallel()
	var durableAt time.Time
	var gotIDs []int64
	sub := submitter{SubmitFunc: func(_ context.Context, cb callback.Callback) error {
		durableAt = time.Now()
		return nil
	}}
	m := metrics.New()
	pacer := pacerFunc(func(_ time.Time, ids []int64, _ time.Time) time.Duration {
		gotIDs = append([]int64(nil), ids...)
		return 300 * time.Millisecond
	})
	h := server.New(server.Deps{
		Log: discard, Metrics: m,
		Callback: intake.NewHandler(defaults(), intake.Deps{Submitter: sub, Pacer: pacer, Log: discard, Metrics: m}),
		Ready:    func(context.Context) error { return nil },
	})
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)

	resp, err := http.Post(srv.URL+"/callback", "application/json", strings.NewReader(`{"object_ids":[3,1,2,3]}`))
	require.NoError(t, err)
	resp.Body.Close()
	answered := time.Now()
	require.Equal(t, http.StatusAccepted, resp.StatusCode)
	require.Equal(t, []int64{1, 2, 3}, gotIDs, "the pacer sees the callback's distinct ids")
	require.GreaterOrEqual(t, answered.Sub(durableAt), 300*time.Millisecond, "answered after the wait, durable before it")
	require.Equal(t, 1.0, metrics.Sum(m.CallbacksPaced))
}
