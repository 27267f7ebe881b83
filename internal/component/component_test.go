package component_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/objwatch/callback/internal/component"
	"github.com/objwatch/callback/internal/metrics"
)

func TestNewBase(t *testing.T) {
	t.Parallel()

	t.Run("the_zero_deps_are_usable", func(t *testing.T) {
		t.Parallel()
		b := component.NewBase(component.Deps{})
		require.NotNil(t, b.Log)
		require.NotNil(t, b.Metrics)
		require.NotNil(t, b.Errs)
		require.WithinDuration(t, time.Now(), b.Now(), time.Minute)
		b.Errs.Warn(t.Context(), "key", "logged nowhere")
	})

	t.Run("keeps_what_it_is_given", func(t *testing.T) {
		t.Parallel()
		m := metrics.New()
		t0 := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
		b := component.NewBase(component.Deps{Metrics: m, Now: func() time.Time { return t0 }})
		require.Same(t, m, b.Metrics)
		require.Equal(t, t0, b.Now())
	})
}
