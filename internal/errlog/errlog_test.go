package errlog

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func setup(t *testing.T) (*Limiter, *bytes.Buffer, *time.Time) {
	t.Helper()
	var buf bytes.Buffer
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	l := New(slog.New(slog.NewTextHandler(&buf, nil)), 10*time.Second)
	l.now = func() time.Time { return now }
	return l, &buf, &now
}

func lines(buf *bytes.Buffer) []string {
	return strings.Split(strings.TrimSpace(buf.String()), "\n")
}

func TestLimiter(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	boom := errors.New("boom")

	t.Run("logs_a_key_once_per_interval_then_counts_what_it_held_back", func(t *testing.T) {
		t.Parallel()
		l, buf, now := setup(t)
		for range 5 {
			l.Error(ctx, "db", "write failed", boom)
		}
		require.Len(t, lines(buf), 1)
		require.Contains(t, buf.String(), "err=boom")

		*now = now.Add(10 * time.Second)
		l.Error(ctx, "db", "write failed", boom)
		got := lines(buf)
		require.Len(t, got, 2)
		require.Contains(t, got[1], "suppressed=4")
	})

	t.Run("keys_are_independent_and_levels_kept", func(t *testing.T) {
		t.Parallel()
		l, buf, _ := setup(t)
		l.Warn(ctx, "breaker-open", "looks down")
		l.Info(ctx, "breaker-closed", "answers again")
		l.Warn(ctx, "breaker-open", "looks down")
		got := lines(buf)
		require.Len(t, got, 2)
		require.Contains(t, got[0], "level=WARN")
		require.Contains(t, got[1], "level=INFO")
	})

	t.Run("recovered_logs_only_after_a_failure_and_resets_the_key", func(t *testing.T) {
		t.Parallel()
		l, buf, _ := setup(t)
		l.Recovered(ctx, "db", "works again")
		require.Empty(t, strings.TrimSpace(buf.String()), "nothing had failed")

		l.Error(ctx, "db", "write failed", boom)
		l.Error(ctx, "db", "write failed", boom)
		l.Recovered(ctx, "db", "works again")
		l.Error(ctx, "db", "write failed", boom) // a new outage is reported at once
		got := lines(buf)
		require.Len(t, got, 3)
		require.Contains(t, got[1], "works again")
		require.Contains(t, got[1], "suppressed=1")
		require.Contains(t, got[2], "write failed")
	})
}
