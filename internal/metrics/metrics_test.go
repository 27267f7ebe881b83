package metrics_test

import (
	"os"
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/require"

	"github.com/objwatch/callback/internal/metrics"
)

// Own is Registry without the Go runtime's and the process's series: the same
// callback_ series, and nothing else.
func TestOwn_holdsTheServiceSeriesOfRegistryAndNothingElse(t *testing.T) {
	t.Parallel()
	m := metrics.New()
	m.CallbacksAccepted.Inc()

	own, all := gathered(t, m.Own.Gather), gathered(t, m.Registry.Gather)
	var service []string
	for _, n := range all {
		if strings.HasPrefix(n, "callback_") {
			service = append(service, n)
		}
	}
	require.NotEmpty(t, own)
	require.Equal(t, service, own)
	require.Greater(t, len(all), len(own), "Registry also has the go_ and process_ series")
}

func gathered(t *testing.T, gather func() ([]*dto.MetricFamily, error)) []string {
	t.Helper()
	families, err := gather()
	require.NoError(t, err)
	names := make([]string, len(families))
	for i, f := range families {
		names[i] = f.GetName()
	}
	return names
}

// The operator's guide names every series the service exports (one list, checked here,
// so that a new metric cannot be left out of it).
func TestNew_everySeriesIsNamedInTheOperatorsGuide(t *testing.T) {
	t.Parallel()
	guide, err := os.ReadFile("../../docs/operations.md")
	require.NoError(t, err)
	families, err := metrics.New().Own.Gather()
	require.NoError(t, err)
	require.NotEmpty(t, families)
	for _, f := range families {
		name := strings.TrimPrefix(f.GetName(), "callback_")
		require.Contains(t, string(guide), "`"+name, "docs/operations.md, Observing it, does not name %s", f.GetName())
	}
}
