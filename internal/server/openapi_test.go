package server_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/pb33f/libopenapi"
	validator "github.com/pb33f/libopenapi-validator"
	"github.com/stretchr/testify/require"

	"github.com/objwatch/callback/api"
	"github.com/objwatch/callback/internal/callback"
	"github.com/objwatch/callback/internal/component"
	"github.com/objwatch/callback/internal/inbox"
	"github.com/objwatch/callback/internal/intake"
	"github.com/objwatch/callback/internal/pgtest"
	"github.com/objwatch/callback/internal/store"
	"github.com/objwatch/callback/internal/testhelper"
)

// The API document (api/openapi.yaml) against the real handlers: every route, valid
// and invalid requests. A request the document calls invalid must be one the service
// refuses, and every response, errors included, must be one the document describes.

func openAPIValidator(t *testing.T) validator.Validator {
	t.Helper()
	doc, err := libopenapi.NewDocument(api.OpenAPI)
	require.NoError(t, err)
	v, errs := validator.NewValidator(doc)
	require.Empty(t, errs)
	ok, verrs := v.ValidateDocument()
	require.True(t, ok, "api/openapi.yaml is not a valid OpenAPI 3.1 document: %v", verrs)
	return v
}

type apiCase struct {
	name        string
	method      string
	path        string
	header      http.Header
	body        string
	validByDoc  bool // the document accepts the request
	wantStatus  int
	undocRoute  bool // a method the route does not have: only the error shape is checked
	serverIndex int  // which server of the setup answers
}

// setupAPI serves the real routes over a fresh database with the real group
// committer and the console (index 0), one whose durable write fails, which is not
// ready and has no console (1), and one that requires a token, with small limits, and
// has the console (2).
func setupAPI(t *testing.T) []*testBundle {
	t.Helper()
	pool, _ := pgtest.NewPool(t)
	// No spool: a write slower than the default 400 ms would be a 503 where the document
	// promises a 202. Generous, for a loaded machine.
	committer, err := inbox.NewCommitter(inbox.CommitterConfig{CommitTimeout: 30 * time.Second}, store.New(pool), nil, component.Deps{Log: testhelper.DiscardLogger()})
	require.NoError(t, err)
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = committer.Run(ctx); close(done) }()
	t.Cleanup(func() { stop(); <-done })

	failing := submitter{SubmitFunc: func(context.Context, callback.Callback) error { return inbox.ErrUnavailable }}
	return []*testBundle{
		setup(t, serverOpts{intake: intake.Config{MaxBodyBytes: 1 << 20, MaxIDs: 10000, BodyTimeout: time.Second}, submit: committer, pool: pool, console: true}),
		setup(t, serverOpts{intake: intake.Config{MaxBodyBytes: 1 << 20, MaxIDs: 10000}, submit: failing, pool: pool,
			ready: func(context.Context) error { return errors.New("database unreachable and spool not writable") }}),
		setup(t, serverOpts{intake: intake.Config{MaxBodyBytes: 256, MaxIDs: 5, Token: "s3cret", BodyTimeout: 200 * time.Millisecond}, submit: committer, pool: pool, console: true}),
	}
}

func TestOpenAPI(t *testing.T) {
	t.Parallel()
	v := openAPIValidator(t)
	servers := setupAPI(t)
	servers[0].insert(t, []object{{ID: 1, LastSeen: fresh(-3 * time.Second)}, {ID: 2, LastSeen: fresh(-2 * time.Second)}, {ID: 3, LastSeen: fresh(-time.Second)}})

	// A cursor the service handed out, for the case that follows one.
	var firstPage page
	status, _ := servers[0].get(t, "/objects?order=newest&limit=2", &firstPage)
	require.Equal(t, http.StatusOK, status)
	require.NotNil(t, firstPage.Next)

	// A sample in the console's ring, for its reply to have one.
	testhelper.Eventually(t, 10*time.Second, "the console's first sample", func() bool {
		var r struct{ Samples []json.RawMessage }
		status, _ := servers[0].get(t, "/console/series", &r)
		return status == http.StatusOK && len(r.Samples) > 0
	})

	bearer := http.Header{"Authorization": {"Bearer s3cret"}}
	cases := []apiCase{
		{name: "callback", method: "POST", path: "/callback", body: `{"object_ids":[1,2,3]}`, validByDoc: true, wantStatus: 202},
		{name: "callback_empty", method: "POST", path: "/callback", body: `{"object_ids":[]}`, validByDoc: true, wantStatus: 202},
		{name: "callback_unknown_members_and_duplicates", method: "POST", path: "/callback", body: `{"object_ids":[5,5,9223372036854775807],"from":{"x":1}}`, validByDoc: true, wantStatus: 202},
		{name: "callback_with_request_id", method: "POST", path: "/callback", header: http.Header{"X-Request-Id": {"abc-1"}}, body: `{"object_ids":[4]}`, validByDoc: true, wantStatus: 202},
		{name: "callback_negative_id", method: "POST", path: "/callback", body: `{"object_ids":[-1]}`, wantStatus: 400},
		{name: "callback_string_id", method: "POST", path: "/callback", body: `{"object_ids":["7"]}`, wantStatus: 400},
		{name: "callback_without_ids", method: "POST", path: "/callback", body: `{}`, wantStatus: 400},
		{name: "callback_not_json", method: "POST", path: "/callback", body: `object_ids=1`, wantStatus: 400},
		{name: "callback_not_stored", method: "POST", path: "/callback", body: `{"object_ids":[1]}`, validByDoc: true, wantStatus: 503, serverIndex: 1},
		{name: "callback_without_token", method: "POST", path: "/callback", body: `{"object_ids":[1]}`, validByDoc: true, wantStatus: 401, serverIndex: 2},
		{name: "callback_with_token", method: "POST", path: "/callback", header: bearer, body: `{"object_ids":[1]}`, validByDoc: true, wantStatus: 202, serverIndex: 2},
		{name: "callback_too_many_ids", method: "POST", path: "/callback", header: bearer, body: `{"object_ids":[1,2,3,4,5,6]}`, validByDoc: true, wantStatus: 413, serverIndex: 2},
		{name: "callback_body_too_large", method: "POST", path: "/callback", header: bearer, body: `{"object_ids":[1],"pad":"` + strings.Repeat("x", 300) + `"}`, validByDoc: true, wantStatus: 413, serverIndex: 2},
		{name: "callback_wrong_method", method: "GET", path: "/callback", wantStatus: 405, undocRoute: true},

		{name: "list", method: "GET", path: "/objects", validByDoc: true, wantStatus: 200},
		{name: "list_newest_page", method: "GET", path: "/objects?order=newest&limit=2", validByDoc: true, wantStatus: 200},
		{name: "list_next_page", method: "GET", path: "/objects?order=newest&limit=2&after=" + *firstPage.Next, validByDoc: true, wantStatus: 200},
		{name: "list_by_id_after", method: "GET", path: "/objects?order=id&after=1&limit=1000", validByDoc: true, wantStatus: 200},
		{name: "list_bad_cursor", method: "GET", path: "/objects?after=yesterday", validByDoc: true, wantStatus: 400},
		{name: "list_limit_zero", method: "GET", path: "/objects?limit=0", wantStatus: 400},
		{name: "list_limit_too_large", method: "GET", path: "/objects?limit=1001", wantStatus: 400},
		{name: "list_unknown_order", method: "GET", path: "/objects?order=oldest", wantStatus: 400},
		{name: "list_wrong_method", method: "DELETE", path: "/objects", wantStatus: 405, undocRoute: true},

		{name: "get_online", method: "GET", path: "/objects/2", validByDoc: true, wantStatus: 200},
		{name: "get_not_online", method: "GET", path: "/objects/77", validByDoc: true, wantStatus: 404},
		{name: "get_not_an_id", method: "GET", path: "/objects/abc", wantStatus: 400},
		{name: "get_negative_id", method: "GET", path: "/objects/-5", wantStatus: 400},

		{name: "healthz", method: "GET", path: "/healthz", validByDoc: true, wantStatus: 200},
		{name: "readyz", method: "GET", path: "/readyz", validByDoc: true, wantStatus: 200},
		{name: "readyz_not_ready", method: "GET", path: "/readyz", validByDoc: true, wantStatus: 503, serverIndex: 1},
		{name: "metrics", method: "GET", path: "/metrics", validByDoc: true, wantStatus: 200},
		{name: "metrics_open_when_a_token_is_set", method: "GET", path: "/metrics", validByDoc: true, wantStatus: 200, serverIndex: 2},
		{name: "metrics_wrong_method", method: "POST", path: "/metrics", body: `{}`, wantStatus: 405, undocRoute: true},

		{name: "console_page", method: "GET", path: "/", validByDoc: true, wantStatus: 200},
		{name: "console_page_open_when_a_token_is_set", method: "GET", path: "/", validByDoc: true, wantStatus: 200, serverIndex: 2},
		{name: "console_off", method: "GET", path: "/", validByDoc: true, wantStatus: 404, serverIndex: 1},
		{name: "console_series", method: "GET", path: "/console/series", validByDoc: true, wantStatus: 200},
		{name: "console_series_after", method: "GET", path: "/console/series?after=0", validByDoc: true, wantStatus: 200},
		{name: "console_series_after_not_a_time", method: "GET", path: "/console/series?after=yesterday", wantStatus: 400},
		{name: "console_series_off", method: "GET", path: "/console/series", validByDoc: true, wantStatus: 404, serverIndex: 1},
		{name: "console_script", method: "GET", path: "/console/static/console.js", validByDoc: true, wantStatus: 200},
		{name: "console_style", method: "GET", path: "/console/static/console.css", validByDoc: true, wantStatus: 200},
		{name: "console_no_such_file", method: "GET", path: "/console/static/nope.js", validByDoc: true, wantStatus: 404},
		{name: "console_read_only", method: "POST", path: "/", body: `{}`, wantStatus: 405, undocRoute: true},
	}
	seen := map[string]bool{}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			req, resp, body := do(t, servers[tc.serverIndex].url, tc)
			require.Equal(t, tc.wantStatus, resp.StatusCode, "reply %s", body)
			require.NotEmpty(t, resp.Header.Get("X-Request-ID"))
			if id := tc.header.Get("X-Request-ID"); id != "" {
				require.Equal(t, id, resp.Header.Get("X-Request-ID"))
			}
			if tc.undocRoute {
				// Not an operation of the document: the reply is still its Error.
				require.JSONEq(t, fmt.Sprintf(`{"error":"method %s not allowed on %s"}`, tc.method, tc.path), string(body))
				return
			}
			ok, errs := v.ValidateHttpRequest(req)
			if tc.validByDoc {
				require.True(t, ok, "the document refuses a request the service takes: %v", errs)
			} else {
				require.False(t, ok, "the document accepts a request the service refuses (%d %s)", resp.StatusCode, body)
			}
			ok, errs = v.ValidateHttpResponse(req, resp)
			require.True(t, ok, "response %d %s does not match the document: %v", resp.StatusCode, body, errs)
			seen[tc.method+" "+route(tc.path)] = true
		})
	}
	for _, op := range []string{"POST /callback", "GET /objects", "GET /objects/{id}", "GET /healthz", "GET /readyz",
		"GET /metrics", "GET /", "GET /console/series", "GET /console/static/{file}"} {
		require.True(t, seen[op], "no case exercises %s", op)
	}
}

// TestOpenAPI_bodyTimeout: a body that stops arriving is answered 408, as documented.
func TestOpenAPI_bodyTimeout(t *testing.T) {
	t.Parallel()
	v := openAPIValidator(t)
	servers := setupAPI(t)
	pr, pw := io.Pipe()
	defer pw.Close()
	go func() { _, _ = pw.Write([]byte(`{"object_ids":[1,`)) }() // and nothing more
	req, err := http.NewRequest("POST", servers[2].url+"/callback", pr)
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer s3cret")
	req.Header.Set("Content-Type", "application/json")
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	require.Equal(t, http.StatusRequestTimeout, resp.StatusCode, "reply %s", body)
	resp.Body = io.NopCloser(bytes.NewReader(body))
	vreq, _ := http.NewRequest("POST", servers[2].url+"/callback", strings.NewReader(`{"object_ids":[1]}`))
	vreq.Header = req.Header
	ok, errs := v.ValidateHttpResponse(vreq, resp)
	require.True(t, ok, "response %d %s does not match the document: %v", resp.StatusCode, body, errs)
}

func route(path string) string {
	path, _, _ = strings.Cut(path, "?")
	switch {
	case strings.HasPrefix(path, "/objects/"):
		return "/objects/{id}"
	case strings.HasPrefix(path, "/console/static/"):
		return "/console/static/{file}"
	}
	return path
}

// do sends the case's request and returns a copy of it for the validator (with its
// body readable again) and the response (body read, and readable again).
func do(t *testing.T, base string, tc apiCase) (*http.Request, *http.Response, []byte) {
	t.Helper()
	newReq := func() *http.Request {
		var body io.Reader
		if tc.body != "" {
			body = strings.NewReader(tc.body)
		}
		req, err := http.NewRequest(tc.method, base+tc.path, body)
		require.NoError(t, err)
		for k, vs := range tc.header {
			req.Header[k] = vs
		}
		if tc.body != "" {
			req.Header.Set("Content-Type", "application/json")
		}
		return req
	}
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(newReq())
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	resp.Body = io.NopCloser(bytes.NewReader(body))
	return newReq(), resp, body
}
