package tester

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/objwatch/callback/internal/testhelper"
)

// objectsBundle is what a test of the object service reads besides the service.
type objectsBundle struct {
	url     string          // the server's base URL
	handled <-chan struct{} // receives once per request, when its handler has returned
}

// setupObjects serves an ObjectService built from cfg.
func setupObjects(t *testing.T, cfg ObjectConfig) (*ObjectService, *objectsBundle) {
	t.Helper()
	o, err := NewObjectService(cfg)
	require.NoError(t, err)
	handled := make(chan struct{}, 100)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() { handled <- struct{}{} }()
		o.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(o.Close) // runs first: ends hangs so that srv.Close does not wait for them
	return o, &objectsBundle{url: srv.URL, handled: handled}
}

func fastObjects() ObjectConfig {
	cfg := DefaultObjectConfig()
	cfg.LatencyMin, cfg.LatencyMax = time.Millisecond, 2*time.Millisecond
	return cfg
}

func get(t *testing.T, ctx context.Context, url string) (*http.Response, []byte, error) {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	require.NoError(t, err)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp, body, err
}

func TestObjectService(t *testing.T) {
	t.Parallel()

	t.Run("answers_the_original_format_with_a_json_content_type", func(t *testing.T) {
		t.Parallel()
		_, tb := setupObjects(t, fastObjects())
		for _, id := range []int64{0, 1, 42, 1<<63 - 1} {
			resp, body, err := get(t, t.Context(), tb.url+"/objects/"+strconv.FormatInt(id, 10))
			require.NoError(t, err)
			require.Equal(t, http.StatusOK, resp.StatusCode)
			require.Equal(t, "application/json", resp.Header.Get("Content-Type"))
			var got struct {
				ID     int64 `json:"id"`
				Online bool  `json:"online"`
			}
			require.NoError(t, json.Unmarshal(body, &got))
			require.Equal(t, id, got.ID)
			require.Equal(t, id%2 == 0, got.Online)
		}
	})

	t.Run("rejects_a_bad_id_with_a_json_400", func(t *testing.T) {
		t.Parallel()
		o, tb := setupObjects(t, fastObjects())
		for _, id := range []string{"abc", "-1", "1.5", "9223372036854775808"} {
			resp, body, err := get(t, t.Context(), tb.url+"/objects/"+id)
			require.NoError(t, err)
			require.Equal(t, http.StatusBadRequest, resp.StatusCode, id)
			require.Equal(t, "application/json", resp.Header.Get("Content-Type"))
			var e struct{ Error string }
			require.NoError(t, json.Unmarshal(body, &e))
			require.NotEmpty(t, e.Error)
		}
		require.Equal(t, int64(4), o.Stats().BadRequest)
	})

	t.Run("waits_at_least_the_minimum_latency", func(t *testing.T) {
		t.Parallel()
		cfg := fastObjects()
		cfg.LatencyMin, cfg.LatencyMax = 5*time.Millisecond, 5*time.Millisecond
		_, tb := setupObjects(t, cfg)
		start := time.Now()
		_, _, err := get(t, t.Context(), tb.url+"/objects/1")
		require.NoError(t, err)
		require.GreaterOrEqual(t, time.Since(start), 5*time.Millisecond)
	})

	t.Run("counts_overlapping_lookups_of_one_id", func(t *testing.T) {
		t.Parallel()
		cfg := fastObjects()
		cfg.LatencyMin, cfg.LatencyMax = time.Hour, time.Hour // ended by Close below
		o, tb := setupObjects(t, cfg)
		var wg sync.WaitGroup
		for _, id := range []string{"7", "7", "8"} {
			wg.Go(func() { _, _, _ = get(t, context.Background(), tb.url+"/objects/"+id) })
		}
		testhelper.Eventually(t, 10*time.Second, "three lookups in flight", func() bool { return o.Stats().InFlight == 3 })
		o.Close()
		wg.Wait()
		st := o.Stats()
		require.Equal(t, int64(1), st.Overlapping)
		require.Equal(t, int64(3), st.MaxInFlight)
		require.Equal(t, int64(3), st.OK)
	})
}

func TestCapacity(t *testing.T) {
	t.Parallel()

	// holdTwo fills a capacity of 2 with lookups that wait until Close.
	holdTwo := func(t *testing.T, cfg ObjectConfig) (*ObjectService, *objectsBundle, *sync.WaitGroup) {
		t.Helper()
		cfg.Capacity = 2
		cfg.LatencyMin, cfg.LatencyMax = time.Hour, time.Hour // ended by Close
		o, tb := setupObjects(t, cfg)
		var wg sync.WaitGroup
		for _, id := range []string{"2", "4"} {
			wg.Go(func() { _, _, _ = get(t, context.Background(), tb.url+"/objects/"+id) })
		}
		testhelper.Eventually(t, 10*time.Second, "two lookups in flight", func() bool { return o.Stats().InFlight == 2 })
		return o, tb, &wg
	}

	t.Run("answers_503_with_retry_after_beyond_capacity_without_the_latency", func(t *testing.T) {
		t.Parallel()
		o, tb, wg := holdTwo(t, fastObjects())
		// The latency is an hour: an answer at all proves the rejection skipped it. (The
		// timeout only stops a broken test from hanging.)
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		defer cancel()
		resp, body, err := get(t, ctx, tb.url+"/objects/6")
		require.NoError(t, err)
		require.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
		require.Equal(t, "1", resp.Header.Get("Retry-After"))
		require.Equal(t, "application/json", resp.Header.Get("Content-Type"))
		require.Contains(t, string(body), "capacity")
		st := o.Stats()
		require.Equal(t, int64(1), st.Rejected)
		require.Equal(t, int64(2), st.InFlight, "a rejection holds no slot")
		o.Close()
		wg.Wait()
		st = o.Stats()
		require.Equal(t, int64(2), st.OK)
		require.Equal(t, int64(2), st.Served())
		require.Equal(t, int64(3), st.Total())
	})

	t.Run("serves_again_once_a_slot_is_free", func(t *testing.T) {
		t.Parallel()
		o, tb, wg := holdTwo(t, fastObjects())
		o.Close() // ends both waits; later lookups answer at once
		wg.Wait()
		for range 3 {
			resp, _, err := get(t, t.Context(), tb.url+"/objects/8")
			require.NoError(t, err)
			require.Equal(t, http.StatusOK, resp.StatusCode)
		}
		require.Equal(t, int64(0), o.Stats().Rejected)
	})

	t.Run("says_the_configured_retry_after_in_whole_seconds", func(t *testing.T) {
		t.Parallel()
		cfg := fastObjects()
		cfg.RetryAfter = 3 * time.Second
		_, tb, _ := holdTwo(t, cfg)
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		defer cancel()
		resp, _, err := get(t, ctx, tb.url+"/objects/6")
		require.NoError(t, err)
		require.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
		require.Equal(t, "3", resp.Header.Get("Retry-After"))
	})

	t.Run("never_admits_more_than_capacity_at_once", func(t *testing.T) {
		t.Parallel()
		cfg := fastObjects()
		cfg.Capacity = 5
		cfg.LatencyMin, cfg.LatencyMax = 2*time.Millisecond, 5*time.Millisecond
		o, tb := setupObjects(t, cfg)
		var wg sync.WaitGroup
		for i := range 40 {
			wg.Go(func() { _, _, _ = get(t, context.Background(), tb.url+"/objects/"+strconv.Itoa(i)) })
		}
		wg.Wait()
		st := o.Stats()
		require.LessOrEqual(t, st.MaxInFlight, int64(5))
		require.Equal(t, int64(40), st.Total())
		require.Equal(t, st.OK, st.Served())
	})

	t.Run("refuses_a_negative_capacity", func(t *testing.T) {
		t.Parallel()
		cfg := fastObjects()
		cfg.Capacity = -1
		_, err := NewObjectService(cfg)
		require.Error(t, err)
	})
}

func TestLatencyStaysInsideItsBounds(t *testing.T) {
	t.Parallel()
	cfg := fastObjects()
	cfg.LatencyMin, cfg.LatencyMax = 300*time.Millisecond, 4299*time.Millisecond
	o, err := NewObjectService(cfg)
	require.NoError(t, err)
	lo, hi := time.Duration(1<<62), time.Duration(0)
	for i := range 20000 {
		d := o.latency(rand.New(rand.NewPCG(1, uint64(i))))
		lo, hi = min(lo, d), max(hi, d)
	}
	require.GreaterOrEqual(t, lo, cfg.LatencyMin)
	require.LessOrEqual(t, hi, cfg.LatencyMax)
	// Uniform over 4 s: 20,000 draws come within a few ms of both ends.
	require.Less(t, lo, cfg.LatencyMin+10*time.Millisecond)
	require.Greater(t, hi, cfg.LatencyMax-10*time.Millisecond)
}

func TestOnlineRules(t *testing.T) {
	t.Parallel()
	tests := []struct {
		rule     string
		wantPct  int // expected share online over ids 0..9999, +-3
		parityOK bool
	}{
		{rule: "parity", wantPct: 50, parityOK: true},
		{rule: "", wantPct: 50, parityOK: true},
		{rule: "all", wantPct: 100},
		{rule: "none", wantPct: 0},
		{rule: "percent:0", wantPct: 0},
		{rule: "percent:30", wantPct: 30},
		{rule: "percent:100", wantPct: 100},
	}
	for _, tt := range tests {
		t.Run("rule_"+tt.rule, func(t *testing.T) {
			t.Parallel()
			rule, err := ParseOnlineRule(tt.rule)
			require.NoError(t, err)
			online := 0
			for id := range int64(10000) {
				if rule(id) {
					online++
				}
				if tt.parityOK {
					require.Equal(t, id%2 == 0, rule(id))
				}
				require.Equal(t, rule(id), rule(id), "deterministic")
			}
			require.InDelta(t, tt.wantPct*100, online, 300)
		})
	}
	for _, bad := range []string{"odd", "percent:", "percent:101", "percent:-1", "percent:x"} {
		_, err := ParseOnlineRule(bad)
		require.Error(t, err, bad)
	}

	t.Run("the_service_answers_its_rule", func(t *testing.T) {
		t.Parallel()
		cfg := fastObjects()
		cfg.Online = OnlinePercent(50)
		o, tb := setupObjects(t, cfg)
		for id := range int64(20) {
			_, body, err := get(t, t.Context(), tb.url+"/objects/"+strconv.FormatInt(id, 10))
			require.NoError(t, err)
			require.JSONEq(t, `{"id":`+strconv.FormatInt(id, 10)+`,"online":`+strconv.FormatBool(o.Online(id))+`}`, string(body))
		}
	})
}

func TestFaults(t *testing.T) {
	t.Parallel()

	t.Run("injects_500", func(t *testing.T) {
		t.Parallel()
		cfg := fastObjects()
		cfg.FailPct = 100
		o, tb := setupObjects(t, cfg)
		resp, body, err := get(t, t.Context(), tb.url+"/objects/2")
		require.NoError(t, err)
		require.Equal(t, http.StatusInternalServerError, resp.StatusCode)
		require.Contains(t, string(body), `"error"`)
		require.Equal(t, int64(1), o.Stats().Fail)
	})

	t.Run("hang_ends_when_the_client_gives_up", func(t *testing.T) {
		t.Parallel()
		cfg := fastObjects()
		cfg.HangPct, cfg.HangFor = 100, time.Hour
		o, tb := setupObjects(t, cfg)
		ctx, cancel := context.WithTimeout(t.Context(), 20*time.Millisecond)
		defer cancel()
		_, _, err := get(t, ctx, tb.url+"/objects/2")
		require.ErrorIs(t, err, context.DeadlineExceeded)
		<-tb.handled // the handler returned although HangFor is an hour
		require.Equal(t, int64(1), o.Stats().Hang)
	})

	t.Run("hang_ends_when_the_service_closes", func(t *testing.T) {
		t.Parallel()
		cfg := fastObjects()
		cfg.HangPct, cfg.HangFor = 100, time.Hour
		o, tb := setupObjects(t, cfg)
		errc := make(chan error, 1)
		go func() { _, _, err := get(t, context.Background(), tb.url+"/objects/2"); errc <- err }()
		testhelper.Eventually(t, 10*time.Second, "a lookup hangs", func() bool { return o.Stats().Hang == 1 })
		o.Close()
		<-tb.handled
		require.Error(t, <-errc, "a hang ends without an answer")
	})

	t.Run("injects_malformed_bodies", func(t *testing.T) {
		t.Parallel()
		cfg := fastObjects()
		cfg.MalformedPct = 100
		o, tb := setupObjects(t, cfg)
		resp, body, err := get(t, t.Context(), tb.url+"/objects/2")
		require.NoError(t, err)
		require.Equal(t, http.StatusOK, resp.StatusCode)
		var v map[string]any
		require.Error(t, json.Unmarshal(body, &v))
		require.Equal(t, int64(1), o.Stats().Malformed)
	})

	t.Run("drops_connections", func(t *testing.T) {
		t.Parallel()
		cfg := fastObjects()
		cfg.DropPct = 100
		o, tb := setupObjects(t, cfg)
		_, _, err := get(t, t.Context(), tb.url+"/objects/2")
		require.Error(t, err)
		require.Equal(t, int64(1), o.Stats().Drop)
	})

	t.Run("are_drawn_per_request_so_retries_succeed", func(t *testing.T) {
		t.Parallel()
		cfg := fastObjects()
		cfg.LatencyMin, cfg.LatencyMax = 0, 0
		cfg.FailPct, cfg.MalformedPct, cfg.DropPct = 25, 25, 25
		o, tb := setupObjects(t, cfg)
		for id := range int64(10) {
			for attempt := 0; ; attempt++ {
				require.Less(t, attempt, 200, "id %d never answered", id)
				resp, body, err := get(t, t.Context(), tb.url+"/objects/"+strconv.FormatInt(id, 10))
				if err == nil && resp.StatusCode == http.StatusOK && json.Valid(body) {
					break
				}
			}
		}
		st := o.Stats()
		require.Equal(t, int64(10), st.OK)
		require.Positive(t, st.Fail+st.Malformed+st.Drop)
	})

	t.Run("rejects_percentages_over_100", func(t *testing.T) {
		t.Parallel()
		cfg := fastObjects()
		cfg.FailPct, cfg.HangPct = 60, 50
		_, err := NewObjectService(cfg)
		require.Error(t, err)
	})
}

func TestServe(t *testing.T) {
	t.Parallel()
	cfg := fastObjects()
	cfg.HangPct, cfg.HangFor = 100, time.Hour
	o, err := NewObjectService(cfg)
	require.NoError(t, err)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(t.Context())
	served := make(chan error, 1)
	go func() { served <- o.Serve(ctx, ln, 5*time.Second) }()

	errc := make(chan error, 1)
	go func() {
		_, _, err := get(t, context.Background(), "http://"+ln.Addr().String()+"/objects/1")
		errc <- err
	}()
	testhelper.Eventually(t, 10*time.Second, "a lookup hangs", func() bool { return o.Stats().Hang == 1 })
	cancel() // a graceful shutdown must not wait an hour for the hang
	require.NoError(t, <-served)
	require.Error(t, <-errc)
	require.True(t, errors.Is(o.Serve(t.Context(), ln, time.Second), net.ErrClosed))
}
