package vacuum_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/objwatch/callback/internal/component"
	"github.com/objwatch/callback/internal/metrics"
	"github.com/objwatch/callback/internal/pgtest"
	"github.com/objwatch/callback/internal/store"
	"github.com/objwatch/callback/internal/testhelper"
	"github.com/objwatch/callback/internal/vacuum"
)

// A table past the threshold of dead rows is vacuumed by the service itself, whether or
// not autovacuum runs (it is off on this machine's server); one below it is not.
func TestOnce_vacuumsATablePastTheThreshold(t *testing.T) {
	t.Parallel()
	pool, _ := pgtest.NewPool(t)
	ctx := context.Background()
	for _, sql := range []string{
		`INSERT INTO objects (id, last_seen) SELECT g, now() FROM generate_series(1, 3000) g`,
		`DELETE FROM objects`,
		`INSERT INTO merged_batches (batch_id) SELECT gen_random_uuid() FROM generate_series(1, 10)`,
		`DELETE FROM merged_batches`,
	} {
		_, err := pool.Exec(ctx, sql)
		require.NoError(t, err)
	}
	m := metrics.New()
	v, err := vacuum.New(vacuum.Config{Threshold: 1000}, store.New(pool), component.Deps{Metrics: m})
	require.NoError(t, err)

	// The statistics reach the collector within a second or so of the commit.
	var done []string
	testhelper.Eventually(t, 30*time.Second, "objects is vacuumed", func() bool {
		done = v.Once(ctx)
		return slices.Contains(done, "objects")
	})
	require.Equal(t, []string{"objects"}, done, "merged_batches has 10 dead rows: below the threshold")
	require.Equal(t, 1.0, metrics.Sum(m.Vacuums.WithLabelValues("objects")))
	dead, err := store.New(pool).DeadRows(ctx)
	require.NoError(t, err)
	require.Zero(t, dead["objects"], "the vacuum cleared the dead rows")
}
