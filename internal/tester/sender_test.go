package tester

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// received collects the bodies a fake callback service got.
type received struct {
	mu     sync.Mutex
	bodies [][]int64
}

func (r *received) add(ids []int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.bodies = append(r.bodies, ids)
}

func (r *received) all() [][]int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([][]int64(nil), r.bodies...)
}

// senderBundle is what a test of the sender reads besides it.
type senderBundle struct {
	received *received // the bodies the fake callback service got
}

// setupSender serves a fake callback service whose reply is chosen by answer, given the
// arrival number (0, 1, ...) and the ids, and returns the config of a fast sender aimed
// at it: the test sets what it needs and runs it with runSender.
func setupSender(t *testing.T, answer func(n int64, ids []int64, w http.ResponseWriter, r *http.Request)) (SenderConfig, *senderBundle) {
	t.Helper()
	var (
		n   atomic.Int64
		got received
	)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var body struct {
			ObjectIDs []int64 `json:"object_ids"`
		}
		raw, _ := io.ReadAll(r.Body)
		if err := json.Unmarshal(raw, &body); err != nil || body.ObjectIDs == nil || r.Header.Get("Content-Type") != "application/json" {
			t.Errorf("bad callback %q: %v", raw, err)
		}
		got.add(body.ObjectIDs)
		answer(n.Add(1)-1, body.ObjectIDs, w, r)
	}))
	t.Cleanup(srv.Close)
	cfg := DefaultSenderConfig()
	cfg.Target = srv.URL + "/callback"
	cfg.Interval = 0 // back-to-back
	return cfg, &senderBundle{received: &got}
}

func accept(_ int64, ids []int64, w http.ResponseWriter, _ *http.Request) {
	w.WriteHeader(http.StatusAccepted)
	_, _ = w.Write([]byte(`{"accepted":1}`))
}

func runSender(t *testing.T, cfg SenderConfig) *Sender {
	t.Helper()
	s, err := NewSender(cfg)
	require.NoError(t, err)
	require.NoError(t, s.Run(t.Context()))
	return s
}

func TestAppendBody(t *testing.T) {
	t.Parallel()
	for _, ids := range [][]int64{{}, {0}, {1, 1, 2}, {1<<63 - 1, 0, 99}} {
		var got struct {
			ObjectIDs []int64 `json:"object_ids"`
		}
		body := appendBody(nil, ids)
		require.NoError(t, json.Unmarshal(body, &got), string(body))
		require.NotNil(t, got.ObjectIDs)
		require.Equal(t, ids, got.ObjectIDs)
	}
}

func TestSenderCounts(t *testing.T) {
	t.Parallel()
	// Arrivals cycle through five answers, so each gets exactly a fifth of 15 callbacks.
	cfg, tb := setupSender(t, func(n int64, ids []int64, w http.ResponseWriter, r *http.Request) {
		switch n % 5 {
		case 0:
			accept(n, ids, w, r)
		case 1:
			http.Error(w, `{"error":"bad"}`, http.StatusBadRequest)
		case 2:
			http.Error(w, `{"error":"not durable"}`, http.StatusServiceUnavailable)
		case 3:
			http.Error(w, `{"error":"oops"}`, http.StatusInternalServerError)
		case 4:
			<-r.Context().Done() // slower than the sender's timeout
		}
	})
	// The timeout leaves room for a loaded machine: a late 400 must not count as failed.
	cfg.Senders, cfg.Count, cfg.Timeout = 3, 15, 300*time.Millisecond
	cfg.IDsMin = 1 // every callback names an id, so that each shows up in the records
	s := runSender(t, cfg)

	st := s.Stats()
	require.Equal(t, int64(15), st.Sent)
	require.Equal(t, int64(3), st.Accepted)
	require.Equal(t, int64(9), st.Refused)
	require.Equal(t, map[int]int64{400: 3, 500: 3, 503: 3}, st.RefusedBy)
	require.Equal(t, int64(3), st.Failed)
	require.Equal(t, int64(3), st.Timeouts)
	require.Equal(t, uint64(12), st.Latency.Count, "replies only")
	require.NotEmpty(t, st.LastError)

	// The records: accepted ids have Accepted; ids of a timeout or a 500 (which may have
	// been committed) have Maybe; ids only ever refused by 400 or 503 are absent.
	accepted, maybe := map[int64]bool{}, map[int64]bool{}
	var idsSent int64
	for n, ids := range tb.received.all() {
		idsSent += int64(len(ids))
		for _, id := range ids {
			switch n % 5 {
			case 0:
				accepted[id], maybe[id] = true, true
			case 3, 4:
				maybe[id] = true
			}
		}
	}
	require.Equal(t, idsSent, st.IDsSent)
	records := s.Records()
	require.Len(t, records, len(maybe))
	for id, r := range records {
		require.True(t, maybe[id], id)
		require.Equal(t, accepted[id], !r.Accepted.IsZero(), id)
		require.False(t, r.Maybe.Before(r.Accepted), id)
	}
}

func TestSenderDrawsIDsInsideTheRanges(t *testing.T) {
	t.Parallel()
	cfg, tb := setupSender(t, accept)
	cfg.Senders, cfg.Count = 4, 400
	cfg.IDsMin, cfg.IDsMax = 3, 7
	cfg.IDMin, cfg.IDMax = 10, 20
	s := runSender(t, cfg)
	require.Equal(t, int64(400), s.Stats().Accepted)

	counts, values := map[int]bool{}, map[int64]bool{}
	for _, ids := range tb.received.all() {
		require.GreaterOrEqual(t, len(ids), 3)
		require.LessOrEqual(t, len(ids), 7)
		counts[len(ids)] = true
		for _, id := range ids {
			require.GreaterOrEqual(t, id, int64(10))
			require.LessOrEqual(t, id, int64(20))
			values[id] = true
		}
	}
	require.Len(t, counts, 5, "every count from 3 to 7 drawn")
	require.Len(t, values, 11, "every id from 10 to 20 drawn")
}

func TestSenderDefaultsAreTheOriginal(t *testing.T) {
	t.Parallel()
	cfg, tb := setupSender(t, accept)
	cfg.Count = 400
	runSender(t, cfg)
	empty, maxLen := 0, 0
	for _, ids := range tb.received.all() {
		if len(ids) == 0 {
			empty++
		}
		maxLen = max(maxLen, len(ids))
		for _, id := range ids {
			require.True(t, id >= 0 && id <= 99)
		}
	}
	require.LessOrEqual(t, maxLen, 199)
	d := DefaultSenderConfig()
	require.Equal(t, 5*time.Second, d.Interval)
	require.Equal(t, time.Second, d.Timeout)
	require.Equal(t, "http://localhost:9090/callback", d.Target)
	require.Equal(t, 1, d.Senders)
}

func TestSenderIsReproducibleFromItsSeed(t *testing.T) {
	t.Parallel()
	bodies := func(seed uint64) [][]int64 {
		cfg, tb := setupSender(t, accept)
		cfg.Count, cfg.Seed = 20, seed
		runSender(t, cfg)
		return tb.received.all()
	}
	require.Equal(t, bodies(7), bodies(7))
	require.NotEqual(t, bodies(7), bodies(8))
}

func TestSenderStops(t *testing.T) {
	t.Parallel()

	t.Run("after_its_duration_without_error", func(t *testing.T) {
		t.Parallel()
		cfg, _ := setupSender(t, accept)
		cfg.Interval, cfg.Duration = time.Hour, 10*time.Millisecond
		s := runSender(t, cfg)
		require.Zero(t, s.Stats().Sent, "the original sleeps before its first callback")
	})

	t.Run("at_a_rate", func(t *testing.T) {
		t.Parallel()
		cfg, _ := setupSender(t, accept)
		cfg.Rate, cfg.Senders, cfg.Count = 2000, 4, 20
		s := runSender(t, cfg)
		require.Equal(t, int64(20), s.Stats().Accepted)
	})

	t.Run("when_cancelled_with_the_context_error", func(t *testing.T) {
		t.Parallel()
		cfg, _ := setupSender(t, accept)
		cfg.Interval = time.Hour
		s, err := NewSender(cfg)
		require.NoError(t, err)
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		require.ErrorIs(t, s.Run(ctx), context.Canceled)
		require.Error(t, s.Run(t.Context()), "a sender runs once")
	})
}

func TestNewSenderRejectsBadRanges(t *testing.T) {
	t.Parallel()
	for name, mutate := range map[string]func(*SenderConfig){
		"ids_per_callback": func(c *SenderConfig) { c.IDsMin, c.IDsMax = 5, 4 },
		"id_values":        func(c *SenderConfig) { c.IDMin, c.IDMax = -1, 4 },
		"rate":             func(c *SenderConfig) { c.Rate = -1 },
	} {
		cfg := DefaultSenderConfig()
		mutate(&cfg)
		_, err := NewSender(cfg)
		require.Error(t, err, name)
	}
}

func TestHistogram(t *testing.T) {
	t.Parallel()
	var h Histogram
	require.Zero(t, h.Quantile(0.5))
	for i := 1; i <= 1000; i++ {
		h.Record(time.Duration(i) * time.Millisecond)
	}
	s := h.Summary()
	require.Equal(t, uint64(1000), s.Count)
	require.Equal(t, time.Second, s.Max)
	require.InEpsilon(t, 500*time.Millisecond, s.P50, 0.07)
	require.InEpsilon(t, 990*time.Millisecond, s.P99, 0.07)
	require.InEpsilon(t, 500500*time.Microsecond, s.Mean, 0.01)
	for us := uint64(0); us < 1<<20; us += 37 {
		// Plain ifs: require in a loop this long is slow under -race.
		if i := bucketOf(us); us > bucketUpper(i) || (i > 0 && us <= bucketUpper(i-1)) {
			t.Fatalf("%d µs in bucket %d: (%d, %d]", us, i, bucketUpper(i-1), bucketUpper(i))
		}
	}
	require.Less(t, bucketOf(1<<63), histBuckets)
}
