package fetch_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	dto "github.com/prometheus/client_model/go"

	"github.com/objwatch/callback/internal/component"
	"github.com/objwatch/callback/internal/fetch"
	"github.com/objwatch/callback/internal/metrics"
	"github.com/objwatch/callback/internal/store"
)

// requeueStore hands out its due claims once and, like pending's due_at, makes a
// failed claim due again (with one more attempt) when its result is written.
type requeueStore struct {
	mu      sync.Mutex
	due     []store.Claim
	results []store.Result
}

func (s *requeueStore) ClaimDue(_ context.Context, max int, _ time.Duration, _ time.Time) ([]store.Claim, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := min(max, len(s.due))
	out := append([]store.Claim(nil), s.due[:n]...)
	s.due = s.due[n:]
	return out, nil
}

func (s *requeueStore) CountDue(context.Context, int, time.Time) (int64, error) { return 0, nil }

func (s *requeueStore) CompleteLookups(_ context.Context, results []store.Result, _ store.CompleteParams) (store.Completed, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, r := range results {
		s.results = append(s.results, r)
		if r.Outcome == store.Failed {
			s.due = append(s.due, store.Claim{ObjectID: r.ObjectID, ReceivedAt: time.Now(), Attempts: 2, Token: uuid.New()})
		}
	}
	return store.Completed{Owned: int64(len(results))}, nil
}

func (s *requeueStore) outcomes(id int64) []store.Result {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []store.Result
	for _, r := range s.results {
		if r.ObjectID == id {
			out = append(out, r)
		}
	}
	return out
}

func TestLookupPanicIsRecoveredCountedAndRetried(t *testing.T) {
	t.Parallel()
	st := &requeueStore{due: []store.Claim{
		{ObjectID: 7, ReceivedAt: time.Now(), Attempts: 1, Token: uuid.New()},
		{ObjectID: 8, ReceivedAt: time.Now(), Attempts: 1, Token: uuid.New()},
	}}
	var mu sync.Mutex
	calls := map[int64]int{}
	lookup := func(_ context.Context, id int64) (bool, error) {
		mu.Lock()
		calls[id]++
		n := calls[id]
		mu.Unlock()
		if id == 7 && n == 1 {
			panic("lookup exploded")
		}
		return true, nil
	}
	m := metrics.New()
	cfg := fetch.Config{
		MinConcurrency: 4, Concurrency: 4, MaxClaim: 4, Timeout: time.Second, Lease: 3 * time.Second, ExpireAfter: time.Minute,
		PollInterval: 5 * time.Millisecond, FlushInterval: time.Millisecond, FlushSize: 16,
		BackoffBase: 10 * time.Millisecond, BackoffMax: 50 * time.Millisecond, ShutdownGrace: 100 * time.Millisecond,
	}
	f, err := fetch.New(cfg, st, lookup, component.Deps{Metrics: m})
	if err != nil {
		t.Fatal(err)
	}
	start(t, f)

	deadline := time.Now().Add(5 * time.Second)
	for {
		rs := st.outcomes(7)
		if len(rs) >= 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("id 7 was not retried after its lookup panicked: results %+v", rs)
		}
		time.Sleep(5 * time.Millisecond)
	}
	rs := st.outcomes(7)
	if rs[0].Outcome != store.Failed || rs[0].RetryAfter <= 0 {
		t.Errorf("the panicking lookup's result is %+v, want failed with a backoff", rs[0])
	}
	if rs[1].Outcome != store.Online {
		t.Errorf("the retry's result is %+v, want online", rs[1])
	}
	if r := st.outcomes(8); len(r) != 1 || r[0].Outcome != store.Online {
		t.Errorf("the other id's results are %+v, want one online: a panic must not hold up other lookups", r)
	}
	var out dto.Metric
	if err := m.PanicsRecovered.WithLabelValues("lookup").Write(&out); err != nil {
		t.Fatal(err)
	}
	if got := out.GetCounter().GetValue(); got != 1 {
		t.Errorf("PanicsRecovered{lookup} = %v, want 1", got)
	}
	if n := f.InFlight(); n != 0 {
		t.Errorf("%d lookups still counted in flight after the panic", n)
	}
}
