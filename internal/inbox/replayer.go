package inbox

import (
	"context"
	"log/slog"
	"time"

	"github.com/google/uuid"

	"github.com/objwatch/callback/internal/backoff"
	"github.com/objwatch/callback/internal/callback"
	"github.com/objwatch/callback/internal/errlog"
	"github.com/objwatch/callback/internal/metrics"
)

// SegmentStore replays one spool segment into the inbox exactly once.
type SegmentStore interface {
	Ping(ctx context.Context) error
	ReplaySegment(ctx context.Context, segment uuid.UUID, batches []callback.Batch) (int, error)
}

// Spool is the spool as the replayer uses it.
type Spool interface {
	Replay(ctx context.Context, apply func(ctx context.Context, segment uuid.UUID, batches []callback.Batch) error) (int, error)
	Stats() (segments int, bytes int64)
}

// Replayer moves spooled callbacks into Postgres once it answers again: this process's
// own spool and whatever dead processes left in the same directory.
type Replayer struct {
	store    SegmentStore
	spool    Spool
	log      *slog.Logger
	errs     *errlog.Limiter
	metrics  *metrics.Metrics
	interval time.Duration
	replayed func() // wakes the merger and the fetchers
	wake     chan struct{}
}

// ReplayRetry is how soon a pass that left work in the spool (the database did not
// answer, or a replay failed) is tried again. Spooled callbacks wait in no table, so
// nothing else moves them: an outage must not end in a backoff. Low, so that they
// reach the inbox well within a second of Postgres answering again;
// a failed ping costs a refused connection or at most pingTimeout, and runs only while
// the spool holds work.
const ReplayRetry = 200 * time.Millisecond

// pingTimeout bounds the check that the database answers before a replay. Short: a
// blackholed server must not hold the next retry back for long.
const pingTimeout = time.Second

// ReplayBudget is how long the replay of one segment may take before it is abandoned
// and retried: a few seconds plus one per 100,000 ids. Inserting 100,000 ids into the
// inbox takes well under a second; the budget is not there for the work but for a
// connection that hangs. After a failover through a blackholed network, the pool
// may hand out a connection to the old primary that was used a moment ago and is
// not pinged (pgxpool pings only connections idle for over a second); a replay
// stuck on it holds the whole spool until its deadline, so the deadline must be as
// short as the segment allows.
func ReplayBudget(batches []callback.Batch) time.Duration {
	ids := 0
	for _, b := range batches {
		for _, cb := range b.Callbacks {
			ids += len(cb.ObjectIDs)
		}
	}
	return 5*time.Second + time.Duration(ids)*(time.Second/100_000)
}

// NewReplayer checks the spool every interval, and every ReplayRetry while it holds
// work the database did not take. replayed is called after a pass that replayed
// something; it may be nil.
func NewReplayer(store SegmentStore, spool Spool, interval time.Duration, log *slog.Logger, m *metrics.Metrics, replayed func()) *Replayer {
	if replayed == nil {
		replayed = func() {}
	}
	return &Replayer{store: store, spool: spool, log: log, errs: errlog.New(log, 10*time.Second), metrics: m,
		interval: interval, replayed: replayed, wake: make(chan struct{}, 1)}
}

// Wake makes Run take its next pass now: the database answers again (a commit worked).
// It never blocks.
func (r *Replayer) Wake() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// Run replays until ctx ends.
func (r *Replayer) Run(ctx context.Context) error {
	wait := time.Duration(0) // first pass at once: a restart finds the previous run's spool
	for {
		if !backoff.Wait(ctx, wait, r.wake) {
			return nil
		}
		if r.ReplayOnce(ctx) != nil {
			wait = min(ReplayRetry, r.interval)
		} else {
			wait = r.interval
		}
	}
}

// ReplayOnce replays every segment it can lock, if there are any and the database
// answers.
func (r *Replayer) ReplayOnce(ctx context.Context) error {
	segments, bytes := r.spool.Stats()
	r.metrics.SpoolSegments.Set(float64(segments))
	r.metrics.SpoolBytes.Set(float64(bytes))
	if segments == 0 {
		return nil
	}
	pctx, cancel := context.WithTimeout(ctx, pingTimeout)
	err := r.store.Ping(pctx)
	cancel()
	if err != nil {
		r.errs.Error(ctx, "ping", "database still unreachable; spool kept", err, "segments", segments)
		return err
	}
	n, err := r.spool.Replay(ctx, func(ctx context.Context, segment uuid.UUID, batches []callback.Batch) error {
		sctx, cancel := context.WithTimeout(ctx, ReplayBudget(batches))
		defer cancel()
		inserted, err := r.store.ReplaySegment(sctx, segment, batches)
		if err != nil {
			return err
		}
		r.metrics.CallbacksReplayed.Add(float64(inserted))
		callbacks := 0
		for _, b := range batches {
			callbacks += len(b.Callbacks)
		}
		r.log.InfoContext(ctx, "spool segment replayed", "segment", segment, "callbacks", callbacks, "new", inserted)
		return nil
	})
	if n > 0 {
		r.replayed()
	}
	if err != nil {
		r.metrics.DatabaseErrors.WithLabelValues("replay").Inc()
		r.errs.Error(ctx, "replay", "spool replay failed; will retry", err)
		return err
	}
	segments, bytes = r.spool.Stats()
	r.metrics.SpoolSegments.Set(float64(segments))
	r.metrics.SpoolBytes.Set(float64(bytes))
	return nil
}
