package fetch_test

import (
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/objwatch/callback/internal/fetch"
	"github.com/objwatch/callback/internal/metrics"
	"github.com/objwatch/callback/internal/objectsvc"
	"github.com/objwatch/callback/internal/testhelper"
)

// capacityService is an object service over HTTP that serves at most capacity lookups
// at once (0: no limit) and answers any more 503 with Retry-After at once, like the
// tester's -capacity. Every object is online; latency is uniform in [lo, hi]. It
// remembers when it rejected each id, to check that the id is not asked again sooner
// than it said.
type capacityService struct {
	capacity   int64
	lo, hi     time.Duration
	retryAfter time.Duration

	inFlight, peak, answered, rejected atomic.Int64

	mu         sync.Mutex
	rejectedAt map[int64]time.Time
	early      []string // ids asked again before their Retry-After passed
}

func newCapacityService(t *testing.T, capacity int, lo, hi, retryAfter time.Duration) (*capacityService, fetch.LookupFunc) {
	s := &capacityService{capacity: int64(capacity), lo: lo, hi: hi, retryAfter: retryAfter, rejectedAt: map[int64]time.Time{}}
	srv := httptest.NewServer(s)
	t.Cleanup(srv.Close)
	client := objectsvc.New(srv.URL, 10_000)
	t.Cleanup(client.CloseIdle)
	return s, client.Lookup
}

func (s *capacityService) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	id, err := strconv.ParseInt(r.URL.Path[len("/objects/"):], 10, 64)
	if err != nil {
		http.Error(w, "bad id", http.StatusBadRequest)
		return
	}
	now := time.Now()
	s.mu.Lock()
	if at, ok := s.rejectedAt[id]; ok {
		if now.Sub(at) < s.retryAfter {
			s.early = append(s.early, strconv.FormatInt(id, 10)+" after "+now.Sub(at).String())
		}
		delete(s.rejectedAt, id)
	}
	s.mu.Unlock()

	n := s.inFlight.Add(1)
	defer s.inFlight.Add(-1)
	if s.capacity > 0 && n > s.capacity {
		s.rejected.Add(1)
		s.mu.Lock()
		s.rejectedAt[id] = time.Now()
		s.mu.Unlock()
		w.Header().Set("Retry-After", strconv.Itoa(int(s.retryAfter/time.Second)))
		http.Error(w, "over capacity", http.StatusServiceUnavailable)
		return
	}
	for p := s.peak.Load(); n > p && !s.peak.CompareAndSwap(p, n); p = s.peak.Load() {
	}
	time.Sleep(s.lo + rand.N(s.hi-s.lo+1))
	s.answered.Add(1)
	_, _ = w.Write([]byte(`{"id":` + strconv.FormatInt(id, 10) + `,"online":true}`))
}

func (s *capacityService) earlyRetries() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.early...)
}

// limitConfig: a floor of 4, a ceiling of 1,000.
func limitConfig() fetch.Config {
	cfg := config()
	cfg.MinConcurrency, cfg.Concurrency, cfg.MaxClaim = 4, 1000, 64
	cfg.Timeout, cfg.Lease = 2*time.Second, 10*time.Second
	return cfg
}

func ids(n int) []int64 {
	out := make([]int64, n)
	for i := range out {
		out[i] = int64(i)
	}
	return out
}

func TestLimit_growsAgainstAnUnlimitedService(t *testing.T) {
	t.Parallel()
	const n = 3000
	// Latency well above the local noise of a loaded test machine, which a service of
	// a few milliseconds is not.
	svc, lookup := newCapacityService(t, 0, 20*time.Millisecond, 220*time.Millisecond, 0)
	cfg := limitConfig()
	fetcher, bundle := setup(t, cfg, lookup)
	bundle.receive(t, ids(n), now())
	start(t, fetcher)

	highest := 0
	testhelper.Watch(t, time.Minute, "pending work never drained", func() bool {
		highest = max(highest, fetcher.Limit())
		return bundle.pending(t) == 0
	})
	t.Logf("limit %d at most, %d now; at most %d in flight at the service", highest, fetcher.Limit(), svc.peak.Load())
	require.Len(t, bundle.objects(t), n)
	// Slow start: from 4, one more per answer while the limit is used.
	require.Greater(t, highest, 10*cfg.MinConcurrency, "the limit did not grow")
	require.Greater(t, svc.peak.Load(), int64(10*cfg.MinConcurrency), "the service never saw more than the floor at once")
	require.Equal(t, float64(fetcher.Limit()), metrics.Sum(bundle.metrics.LookupLimit), "callback_lookup_limit")
	require.Zero(t, metrics.Sum(bundle.metrics.Lookups.WithLabelValues("rejected")))
}

func TestLimit_doesNotGrowWithoutDemand(t *testing.T) {
	t.Parallel()
	_, lookup := newCapacityService(t, 0, time.Millisecond, 2*time.Millisecond, 0)
	cfg := limitConfig()
	cfg.MinConcurrency = 8
	fetcher, bundle := setup(t, cfg, lookup)
	bundle.receive(t, ids(2), now()) // never more than 2 in flight: under half the floor
	start(t, fetcher)
	for range 20 {
		bundle.receive(t, ids(2), now())
		bundle.settle(t)
	}
	require.Equal(t, cfg.MinConcurrency, fetcher.Limit())
}

func TestLimit_backsOffOn503AndHonoursRetryAfter(t *testing.T) {
	t.Parallel()
	const (
		n        = 400
		capacity = 40
	)
	svc, lookup := newCapacityService(t, capacity, 20*time.Millisecond, 220*time.Millisecond, time.Second)
	fetcher, bundle := setup(t, limitConfig(), lookup)
	bundle.receive(t, ids(n), now())
	start(t, fetcher)

	// Watch the limit's direction until every object is written.
	last, decreased := fetcher.Limit(), false
	testhelper.Watch(t, time.Minute, "pending work never drained", func() bool {
		l := fetcher.Limit()
		decreased = decreased || l < last
		last = l
		return bundle.pending(t) == 0
	})

	t.Logf("limit %d, at most %d in flight at the service, %d answered, %d rejected",
		fetcher.Limit(), svc.peak.Load(), svc.answered.Load(), svc.rejected.Load())
	require.Len(t, bundle.objects(t), n, "every object written in the end")
	rejected := metrics.Sum(bundle.metrics.Lookups.WithLabelValues("rejected"))
	require.Positive(t, rejected, "the service never said it was full: the test proves nothing")
	require.Equal(t, float64(svc.rejected.Load()), rejected, "lookups_total{outcome=rejected}")
	require.True(t, decreased, "the limit never came down after a 503")
	require.Less(t, fetcher.Limit(), 4*capacity, "the limit ran away from the capacity")
	require.Empty(t, svc.earlyRetries(), "objects asked again before their Retry-After passed")
	require.Zero(t, metrics.Sum(bundle.metrics.Lookups.WithLabelValues("failed")), "a rejection is not a failure")
}

// An object service that says "come back tomorrow" (503, Retry-After: 86400) for a
// while, then answers: the objects are looked up again within RetryAfterMax, not a day
// later, and the limit is not left at its floor. The wait used to be taken whole by the
// object's row and by the limiter's hold: nothing was looked up again, ever.
func TestLimit_aRetryAfterOfADayHoldsNothingForLong(t *testing.T) {
	t.Parallel()
	const n = 300
	var refusing atomic.Bool
	refusing.Store(true)
	var refused atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := r.URL.Path[len("/objects/"):]
		if refusing.Load() {
			refused.Add(1)
			w.Header().Set("Retry-After", "86400")
			http.Error(w, "come back tomorrow", http.StatusServiceUnavailable)
			return
		}
		time.Sleep(20 * time.Millisecond)
		_, _ = w.Write([]byte(`{"id":` + id + `,"online":true}`))
	}))
	t.Cleanup(srv.Close)
	client := objectsvc.New(srv.URL, 1000)
	t.Cleanup(client.CloseIdle)

	cfg := limitConfig()
	cfg.RetryAfterMax = time.Second
	fetcher, bundle := setup(t, cfg, client.Lookup)
	bundle.receive(t, ids(n), now())
	start(t, fetcher)
	// Refused long enough for the breaker to open (64 in a row) and to probe, one
	// lookup at a time, a Retry-After (capped) apart.
	testhelper.Eventually(t, 30*time.Second, "the service was asked", func() bool { return refused.Load() >= 64 })
	time.Sleep(2 * time.Second)
	refusing.Store(false)
	ended := time.Now()

	testhelper.Watch(t, 30*time.Second, "objects refused with a Retry-After of a day were never looked up again", func() bool {
		return len(bundle.objects(t)) == n
	})
	t.Logf("all %d objects online %v after the refusals ended (%d refused); limit %d", n, time.Since(ended).Round(time.Millisecond),
		refused.Load(), fetcher.Limit())
	require.Greater(t, fetcher.Limit(), cfg.MinConcurrency, "the limit stayed at its floor")
}
