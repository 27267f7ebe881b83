package backoff_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/objwatch/callback/internal/backoff"
)

func TestPolicy_Delay(t *testing.T) {
	t.Parallel()
	p := backoff.Policy{Base: 100 * time.Millisecond, Max: time.Second}
	tests := []struct {
		name string
		n    int
		want time.Duration
	}{
		{"before_any_failure_counts_as_the_first", 0, 100 * time.Millisecond},
		{"first_failure_waits_base", 1, 100 * time.Millisecond},
		{"each_further_failure_doubles", 4, 800 * time.Millisecond},
		{"capped_at_max", 5, time.Second},
		{"capped_however_long_it_fails", 1000, time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			require.Equal(t, tt.want, p.Delay(tt.n))
		})
	}
}

func TestPolicy_JitteredStaysWithinHalfToWhole(t *testing.T) {
	t.Parallel()
	p := backoff.Policy{Base: 10 * time.Millisecond, Max: 80 * time.Millisecond}
	for n := 1; n < 6; n++ {
		d := p.Delay(n)
		for range 100 {
			require.GreaterOrEqual(t, p.Jittered(n), d/2)
			require.LessOrEqual(t, p.Jittered(n), d)
		}
	}
}

func TestRetry_growsUntilReset(t *testing.T) {
	t.Parallel()
	r := backoff.Retry{Policy: backoff.Policy{Base: 50 * time.Millisecond, Max: 150 * time.Millisecond}}
	require.False(t, r.Reset(), "no failure yet")
	require.Equal(t, []time.Duration{50 * time.Millisecond, 100 * time.Millisecond, 150 * time.Millisecond, 150 * time.Millisecond},
		[]time.Duration{r.Next(), r.Next(), r.Next(), r.Next()})
	require.True(t, r.Reset(), "it had failed")
	require.Equal(t, 50*time.Millisecond, r.Next(), "starts over")
}

func TestWait(t *testing.T) {
	t.Parallel()

	t.Run("returns_when_ctx_ends", func(t *testing.T) {
		t.Parallel()
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		require.False(t, backoff.Sleep(ctx, time.Hour))
	})

	t.Run("returns_when_woken", func(t *testing.T) {
		t.Parallel()
		wake := make(chan struct{}, 1)
		wake <- struct{}{}
		require.True(t, backoff.Wait(context.Background(), time.Hour, wake))
	})

	t.Run("returns_after_d", func(t *testing.T) {
		t.Parallel()
		start := time.Now()
		require.True(t, backoff.Wait(context.Background(), time.Millisecond, nil))
		require.GreaterOrEqual(t, time.Since(start), time.Millisecond)
	})

	t.Run("no_wait_reports_the_context", func(t *testing.T) {
		t.Parallel()
		require.True(t, backoff.Sleep(context.Background(), 0))
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		require.False(t, backoff.Sleep(ctx, -time.Second))
	})
}
