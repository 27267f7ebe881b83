package watermark_test

import (
	"context"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/objwatch/callback/internal/callback"
	"github.com/objwatch/callback/internal/component"
	"github.com/objwatch/callback/internal/metrics"
	"github.com/objwatch/callback/internal/pgtest"
	"github.com/objwatch/callback/internal/spool"
	"github.com/objwatch/callback/internal/store"
	"github.com/objwatch/callback/internal/testhelper"
	"github.com/objwatch/callback/internal/watermark"
)

const window = 30 * time.Second

func TestTracker(t *testing.T) {
	t.Parallel()
	tr := watermark.NewTracker()
	_, ok := tr.Oldest()
	require.False(t, ok)
	t0 := time.Date(2026, 12, 6, 12, 0, 0, 500_700_000, time.UTC)
	a := tr.Begin(t0)
	b := tr.Begin(t0.Add(time.Second))
	c := tr.Begin(t0)
	oldest, ok := tr.Oldest()
	require.True(t, ok)
	require.Equal(t, t0.Truncate(time.Millisecond), oldest.UTC(), "never later than the receipt")
	tr.End(a)
	oldest, _ = tr.Oldest()
	require.Equal(t, t0.Truncate(time.Millisecond), oldest.UTC(), "one of two requests of that millisecond is still in flight")
	tr.End(c)
	oldest, _ = tr.Oldest()
	require.Equal(t, t0.Add(time.Second).Truncate(time.Millisecond), oldest.UTC())
	tr.End(b)
	_, ok = tr.Oldest()
	require.False(t, ok)
}

// replica is one replica's publisher: its own spool directory (its host), its tracker,
// its clock.
type replica struct {
	pub     *watermark.Publisher
	tracker *watermark.Tracker
	spool   *spool.Spool
	dir     string
	clock   atomic.Pointer[time.Time]
	metrics *metrics.Metrics
}

func (r *replica) now() time.Time   { return *r.clock.Load() }
func (r *replica) set(ts time.Time) { r.clock.Store(&ts) }

func newReplica(t *testing.T, db *store.Store, dir string, now time.Time, silence time.Duration) *replica {
	t.Helper()
	sp, err := spool.Open(dir, testhelper.DiscardLogger())
	require.NoError(t, err)
	t.Cleanup(func() { sp.Close() })
	r := &replica{tracker: watermark.NewTracker(), spool: sp, dir: dir, metrics: metrics.New()}
	r.set(now)
	r.pub, err = watermark.New(watermark.Config{Window: window, Heartbeat: time.Second, Silence: silence},
		r.tracker, sp, db, component.Deps{Metrics: r.metrics, Now: r.now})
	require.NoError(t, err)
	return r
}

// beat is one heartbeat.
func (r *replica) beat(t *testing.T) {
	t.Helper()
	require.NoError(t, r.pub.Beat(context.Background()))
}

// stop is Run stopped at once: one heartbeat, then the final one.
func (r *replica) stop(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	require.NoError(t, r.pub.Run(ctx))
}

func setup(t *testing.T) (*store.Store, *pgxpool.Pool) {
	t.Helper()
	pool, _ := pgtest.NewPool(t)
	return store.New(pool), pool
}

func low(t *testing.T, r *replica) time.Time {
	t.Helper()
	l, err := r.pub.Low(context.Background(), r.now())
	require.NoError(t, err)
	return l.UTC()
}

func TestLocal(t *testing.T) {
	t.Parallel()
	db, _ := setup(t)
	now := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	r := newReplica(t, db, t.TempDir(), now, time.Minute)

	got, held := r.pub.Local(now)
	require.False(t, held)
	require.Equal(t, now, got, "holding nothing, it holds nothing before now")

	tok := r.tracker.Begin(now.Add(-2 * time.Second))
	got, held = r.pub.Local(now)
	require.True(t, held)
	require.Equal(t, now.Add(-2*time.Second), got.UTC(), "a request in flight")
	r.tracker.End(tok)

	require.NoError(t, r.spool.Append([]callback.Callback{callback.New(now.Add(-5*time.Second), []int64{1})}))
	got, _ = r.pub.Local(now)
	require.Equal(t, now.Add(-5*time.Second), got.UTC(), "a spooled callback")

	got, _ = r.pub.Local(now.Add(time.Hour))
	require.Equal(t, now.Add(time.Hour-window), got.UTC(), "never older than the window: older receipts keep no row")
}

// Two replicas on separate hosts (spool directories). One is cut off from the database
// and spools: the watermark it last published holds expiry back for everybody until it
// has been silent for the bound, then stops counting; once it publishes again (its spool
// replayed) it holds nothing.
func TestLow_aSilentReplicaHoldsExpiryBackUntilTheBound(t *testing.T) {
	t.Parallel()
	db, pool := setup(t)
	// The replicas' clocks are real (heartbeats are on the database's clock, and
	// silence is measured on it).
	now := time.Now().UTC().Truncate(time.Millisecond)
	a := newReplica(t, db, t.TempDir(), now, 3*time.Second)
	b := newReplica(t, db, t.TempDir(), now, 3*time.Second)
	a.beat(t)
	b.beat(t)
	require.Equal(t, now, low(t, a), "nobody holds anything")

	// B holds a callback it received 2 s ago in its spool, publishes, and is cut off.
	require.NoError(t, b.spool.Append([]callback.Callback{callback.New(now.Add(-2*time.Second), []int64{1})}))
	b.beat(t)
	later := now.Add(10 * time.Second)
	a.set(later)
	a.beat(t)
	require.Equal(t, now.Add(-2*time.Second), low(t, a), "A waits for B's spooled callback")
	require.Equal(t, 2.0, metrics.Sum(a.metrics.ReplicasLive))

	// B silent past the bound (3 s): it no longer holds A back.
	_, err := pool.Exec(context.Background(), "UPDATE replica_watermarks SET heartbeat_at = now() - interval '4 seconds' WHERE replica_id = $1", b.pub.ID())
	require.NoError(t, err)
	require.Equal(t, later, low(t, a))
	require.Equal(t, 1.0, metrics.Sum(a.metrics.ReplicasSilent))
}

// A replica killed and restarted on its directory takes its identity back: its old row
// is overwritten at once instead of holding expiry for the silence bound. A replica that
// finds a sibling's slot free deletes the sibling's row.
func TestIdentity_restartAndDeadSiblings(t *testing.T) {
	t.Parallel()
	db, pool := setup(t)
	now := time.Now().UTC().Truncate(time.Millisecond)
	dir := filepath.Join(t.TempDir(), "spool")
	first := newReplica(t, db, dir, now, time.Minute)
	sibling := newReplica(t, db, dir, now, time.Minute)
	require.NotEqual(t, first.pub.ID(), sibling.pub.ID())
	first.tracker.Begin(now.Add(-20 * time.Second)) // in flight when it dies
	first.beat(t)
	sibling.beat(t)
	require.Equal(t, now.Add(-20*time.Second), low(t, sibling))

	require.NoError(t, first.spool.Close()) // killed: its slot's lock goes with it
	sibling.beat(t)
	ids := column(t, pool)
	require.Equal(t, []string{sibling.pub.ID()}, ids, "the dead sibling's row is deleted")
	require.Equal(t, now, low(t, sibling))

	restarted := newReplica(t, db, dir, now, time.Minute)
	require.Equal(t, first.pub.ID(), restarted.pub.ID(), "the slot, and the identity, is taken back")
}

// A replica that stops cleanly holding nothing marks its row stopped; one that stops
// with callbacks in its spool keeps holding expiry back.
func TestRun_finalBeat(t *testing.T) {
	t.Parallel()
	db, _ := setup(t)
	now := time.Now().UTC().Truncate(time.Millisecond)
	empty := newReplica(t, db, t.TempDir(), now, time.Minute)
	holding := newReplica(t, db, t.TempDir(), now, time.Minute)
	require.NoError(t, holding.spool.Append([]callback.Callback{callback.New(now.Add(-3*time.Second), []int64{1})}))
	empty.stop(t)
	holding.stop(t)

	watcher := newReplica(t, db, t.TempDir(), now.Add(time.Second), time.Minute)
	f, err := db.FleetWatermark(context.Background(), time.Minute)
	require.NoError(t, err)
	require.Equal(t, int64(1), f.Live, "the stopped replica no longer counts")
	require.Equal(t, now.Add(-3*time.Second), low(t, watcher))
}

func column(t *testing.T, pool *pgxpool.Pool) []string {
	t.Helper()
	rows, err := pool.Query(context.Background(), "SELECT replica_id FROM replica_watermarks ORDER BY replica_id")
	require.NoError(t, err)
	defer rows.Close()
	var out []string
	for rows.Next() {
		var s string
		require.NoError(t, rows.Scan(&s))
		out = append(out, s)
	}
	require.NoError(t, rows.Err())
	return out
}
