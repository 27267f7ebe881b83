package server_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/objwatch/callback/internal/callback"
	"github.com/objwatch/callback/internal/intake"
	"github.com/objwatch/callback/internal/pgtest"
)

// submitter is a fake intake.Submitter.
type submitter struct {
	SubmitFunc func(ctx context.Context, cb callback.Callback) error
}

func (s submitter) Submit(ctx context.Context, cb callback.Callback) error {
	return s.SubmitFunc(ctx, cb)
}

// setupObjects serves the routes over a fresh database, for the read API: it must
// never submit a callback.
func setupObjects(t *testing.T) *testBundle {
	t.Helper()
	pool, _ := pgtest.NewPool(t)
	sub := submitter{SubmitFunc: func(context.Context, callback.Callback) error {
		t.Error("the read API must not submit callbacks")
		return nil
	}}
	return setup(t, serverOpts{intake: intake.Config{MaxBodyBytes: 1 << 20, MaxIDs: 10000}, submit: sub, pool: pool})
}

type object struct {
	ID       int64     `json:"id"`
	LastSeen time.Time `json:"last_seen"`
}

// insert writes objects rows as lookups would have.
func (tb *testBundle) insert(t *testing.T, rows []object) {
	t.Helper()
	byID := make(map[int64]time.Time, len(rows))
	for _, r := range rows {
		byID[r.ID] = r.LastSeen
	}
	pgtest.InsertObjects(t, tb.pool, byID)
}

// get fetches path and decodes the JSON object it answers into out (if not nil).
func (tb *testBundle) get(t *testing.T, path string, out any) (int, map[string]any) {
	t.Helper()
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Get(tb.url + path)
	require.NoError(t, err)
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.Contains(t, resp.Header.Get("Content-Type"), "application/json", "reply %s", raw)
	var generic map[string]any
	require.NoError(t, json.Unmarshal(raw, &generic), "reply %s", raw)
	if out != nil {
		require.NoError(t, json.Unmarshal(raw, out), "reply %s", raw)
	}
	return resp.StatusCode, generic
}

type page struct {
	Objects []object `json:"objects"`
	Next    *string  `json:"next"`
}

// listAll follows next from the first page until a page has none.
func (tb *testBundle) listAll(t *testing.T, order string, limit int) (all []object, pages int) {
	t.Helper()
	q := url.Values{"order": {order}, "limit": {strconv.Itoa(limit)}}
	for {
		var p page
		status, raw := tb.get(t, "/objects?"+q.Encode(), &p)
		require.Equal(t, http.StatusOK, status, "reply %v", raw)
		require.LessOrEqual(t, len(p.Objects), limit)
		require.NotNil(t, p.Objects, "an empty page is [], not null")
		all = append(all, p.Objects...)
		pages++
		require.Less(t, pages, 1000, "paging does not end")
		if p.Next == nil {
			return all, pages
		}
		q.Set("after", *p.Next)
	}
}

// fresh is a last_seen inside the window, as Postgres stores it (UTC, microseconds).
func fresh(offset time.Duration) time.Time {
	return time.Now().UTC().Truncate(time.Microsecond).Add(offset)
}

// someObjects: n rows inside the window, ids spread over the whole range (0 and the
// largest included), and last_seen with ties so that newest order needs its id
// tie-break.
func someObjects(n int) []object {
	base := fresh(-10 * time.Second)
	out := make([]object, n)
	for i := range out {
		id := int64(i) * 7919
		switch i {
		case 1:
			id = 9223372036854775807
		case 2:
			id = 9223372036854775806
		}
		out[i] = object{ID: id, LastSeen: base.Add(time.Duration(i/3) * time.Millisecond)}
	}
	return out
}

func TestListObjects_pagesThroughEveryRowOnce(t *testing.T) {
	t.Parallel()
	orders := map[string]func(a, b object) int{
		"id": func(a, b object) int { return cmpInt(a.ID, b.ID) },
		"newest": func(a, b object) int {
			if c := b.LastSeen.Compare(a.LastSeen); c != 0 {
				return c
			}
			return cmpInt(b.ID, a.ID)
		},
	}
	tests := []struct {
		name      string
		rows      int
		limit     int
		wantPages int
	}{
		{name: "last_page_partial", rows: 25, limit: 7, wantPages: 4},
		{name: "last_page_full_then_an_empty_one", rows: 21, limit: 7, wantPages: 4},
		{name: "one_row_per_page", rows: 5, limit: 1, wantPages: 6},
		{name: "empty_table", rows: 0, limit: 7, wantPages: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tb := setupObjects(t)
			rows := someObjects(tt.rows)
			tb.insert(t, rows)
			// Rows out of the window are never served, on any page.
			tb.insert(t, []object{{ID: 5, LastSeen: fresh(-time.Hour)}, {ID: 9223372036854775805, LastSeen: fresh(-2 * objectsWindow)}})

			for order, sortFunc := range orders {
				got, pages := tb.listAll(t, order, tt.limit)
				want := slices.Clone(rows)
				slices.SortFunc(want, sortFunc)
				requireObjects(t, want, got)
				require.Equal(t, tt.wantPages, pages, "pages in %s order", order)
			}
		})
	}
}

func TestListObjects_parameters(t *testing.T) {
	t.Parallel()
	tb := setupObjects(t)
	rows := someObjects(4)
	tb.insert(t, rows)

	t.Run("default_is_id_order_in_one_page", func(t *testing.T) {
		t.Parallel()
		var p page
		status, _ := tb.get(t, "/objects", &p)
		require.Equal(t, http.StatusOK, status)
		require.Nil(t, p.Next, "fewer rows than the default limit: one page")
		want := slices.Clone(rows)
		slices.SortFunc(want, func(a, b object) int { return cmpInt(a.ID, b.ID) })
		requireObjects(t, want, p.Objects)
	})
	for _, limit := range []int{1, 1000} {
		t.Run("limit_"+strconv.Itoa(limit)+"_accepted", func(t *testing.T) {
			t.Parallel()
			var p page
			status, body := tb.get(t, "/objects?limit="+strconv.Itoa(limit), &p)
			require.Equal(t, http.StatusOK, status, "reply %v", body)
			require.Len(t, p.Objects, min(limit, len(rows)))
		})
	}
	for _, query := range []string{
		"limit=0",
		"limit=-1",
		"limit=1001",
		"limit=abc",
		"limit=1.5",
		"order=oldest",
		"order=id&after=abc",
		"order=id&after=1.5",
		"order=newest&after=123",
		"order=newest&after=abc.1",
		"order=newest&after=1.abc",
	} {
		t.Run(query+"_rejected", func(t *testing.T) {
			t.Parallel()
			status, body := tb.get(t, "/objects?"+query, nil)
			require.Equal(t, http.StatusBadRequest, status, "reply %v", body)
			require.NotEmpty(t, body["error"])
		})
	}
}

func TestGetObject(t *testing.T) {
	t.Parallel()
	tb := setupObjects(t)
	seen := fresh(-time.Second)
	tb.insert(t, []object{
		{ID: 0, LastSeen: seen},
		{ID: 42, LastSeen: seen},
		{ID: 9223372036854775807, LastSeen: seen},
		{ID: 7, LastSeen: fresh(-objectsWindow - time.Second)},
	})
	tests := []struct {
		name   string
		path   string
		status int
		want   *object
	}{
		{name: "online_object", path: "/objects/42", status: 200, want: &object{ID: 42, LastSeen: seen}},
		{name: "id_zero", path: "/objects/0", status: 200, want: &object{ID: 0, LastSeen: seen}},
		{name: "largest_id", path: "/objects/9223372036854775807", status: 200, want: &object{ID: 9223372036854775807, LastSeen: seen}},
		{name: "unknown_object_not_found", path: "/objects/43", status: 404},
		{name: "object_older_than_window_not_found", path: "/objects/7", status: 404},
		{name: "id_not_a_number", path: "/objects/abc", status: 400},
		{name: "id_negative", path: "/objects/-1", status: 400},
		{name: "id_over_int64", path: "/objects/9223372036854775808", status: 400},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var got object
			status, body := tb.get(t, tt.path, &got)
			require.Equal(t, tt.status, status, "reply %v", body)
			if tt.want == nil {
				require.NotEmpty(t, body["error"], "an error reply says what is wrong")
				return
			}
			require.Equal(t, tt.want.ID, got.ID)
			require.True(t, tt.want.LastSeen.Equal(got.LastSeen), "last_seen %v, want %v", got.LastSeen, tt.want.LastSeen)
		})
	}
}

func requireObjects(t *testing.T, want, got []object) {
	t.Helper()
	require.Len(t, got, len(want))
	for i := range want {
		require.Equal(t, want[i].ID, got[i].ID, "row %d", i)
		require.True(t, want[i].LastSeen.Equal(got[i].LastSeen), "row %d: last_seen %v, want %v", i, got[i].LastSeen, want[i].LastSeen)
	}
}

func cmpInt(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}
