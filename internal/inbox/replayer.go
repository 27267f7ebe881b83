package inbox

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"

	"github.com/objwatch/callback/internal/backoff"
	"github.com/objwatch/callback/internal/callback"
	"github.com/objwatch/callback/internal/component"
	"github.com/objwatch/callback/internal/spool"
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

// ReplayerConfig tunes the replayer. A zero field takes its default, below.
type ReplayerConfig struct {
	// Interval: how often the spool is checked while it holds nothing the database
	// refused (see replayRetry for when it does).
	Interval time.Duration
	// Replayed, if set, is called after a pass that replayed something: it wakes the
	// merger and the fetchers. It must not block.
	Replayed func()
}

// ReplayIntervalDefault: a spool filled while the database was away is noticed within
// a second of the database answering, even if nothing wakes the replayer.
const ReplayIntervalDefault = time.Second

// Replayer moves spooled callbacks into Postgres once it answers again: this process's
// own spool and whatever dead processes left in the same directory.
type Replayer struct {
	component.Base
	cfg   ReplayerConfig
	store SegmentStore
	spool Spool
	wake  chan struct{}
}

// replayRetry is how soon a pass that left work in the spool (the database did not
// answer, or a replay failed) is tried again. Spooled callbacks wait in no table, so
// nothing else moves them: an outage must not end in a backoff. Low, so that they
// reach the inbox well within a second of Postgres answering again;
// a failed ping costs a refused connection or at most pingTimeout, and runs only while
// the spool holds work.
const replayRetry = 200 * time.Millisecond

// pingTimeout bounds the check that the database answers before a replay. Short: a
// blackholed server must not hold the next retry back for long.
const pingTimeout = time.Second

// ReplayBudget is how long the replay of one segment may take before it is abandoned
// and retried: a few seconds, plus one per 100,000 ids and one per 10,000 batches.
// Replaying 100,000 ids or 10,000 batches into the inbox takes well under a second
// (store.ReplaySegment inserts thousands of batches per statement); the budget is not
// there for the work but for a connection that hangs. After a failover through a
// blackholed network, the pool may hand out a connection to the old primary that was
// used a moment ago and is not pinged (pgxpool pings only connections idle for over a
// second); a replay stuck on it holds its segment until its deadline, so the deadline
// must be as short as the segment allows. A segment of many small batches (a long
// outage with small callbacks) gets time for its batches as well as its ids.
func ReplayBudget(batches []callback.Batch) time.Duration {
	ids := 0
	for _, b := range batches {
		for _, cb := range b.Callbacks {
			ids += len(cb.ObjectIDs)
		}
	}
	return 5*time.Second + time.Duration(ids)*(time.Second/100_000) + time.Duration(len(batches))*(time.Second/10_000)
}

// NewReplayer builds a replayer of spool into store, or says which setting is wrong.
// It checks the spool every Interval, and every replayRetry while it holds work the
// database did not take.
func NewReplayer(cfg ReplayerConfig, store SegmentStore, spool Spool, deps component.Deps) (*Replayer, error) {
	cfg.Interval = cmp.Or(cfg.Interval, ReplayIntervalDefault)
	if cfg.Replayed == nil {
		cfg.Replayed = func() {}
	}
	if cfg.Interval < 0 {
		return nil, errors.New("the replay interval must be positive")
	}
	return &Replayer{Base: component.NewBase(deps), cfg: cfg, store: store, spool: spool, wake: make(chan struct{}, 1)}, nil
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
			wait = min(replayRetry, r.cfg.Interval)
		} else {
			wait = r.cfg.Interval
		}
	}
}

// ReplayOnce replays every segment it can lock, if there are any and the database
// answers.
func (r *Replayer) ReplayOnce(ctx context.Context) error {
	segments, bytes := r.spool.Stats()
	r.Metrics.SpoolSegments.Set(float64(segments))
	r.Metrics.SpoolBytes.Set(float64(bytes))
	if segments == 0 {
		return nil
	}
	pctx, cancel := context.WithTimeout(ctx, pingTimeout)
	err := r.store.Ping(pctx)
	cancel()
	if err != nil {
		r.Errs.Error(ctx, "ping", "database still unreachable; spool kept", err, "segments", segments)
		return err
	}
	n, err := r.spool.Replay(ctx, func(ctx context.Context, segment uuid.UUID, batches []callback.Batch) error {
		sctx, cancel := context.WithTimeout(ctx, ReplayBudget(batches))
		defer cancel()
		inserted, err := r.store.ReplaySegment(sctx, segment, batches)
		if err != nil {
			// The next segments are tried only if the database still answers: one
			// segment that fails must not hold back the others, and a database that
			// is gone must not cost each of them its budget.
			pctx, cancel := context.WithTimeout(ctx, pingTimeout)
			defer cancel()
			if perr := r.store.Ping(pctx); perr != nil {
				return fmt.Errorf("%w: %w (and the database does not answer: %v)", spool.ErrStop, err, perr)
			}
			return err
		}
		r.Metrics.CallbacksReplayed.Add(float64(inserted))
		callbacks := 0
		for _, b := range batches {
			callbacks += len(b.Callbacks)
		}
		r.Log.InfoContext(ctx, "spool segment replayed", "segment", segment, "callbacks", callbacks, "new", inserted)
		return nil
	})
	if n > 0 {
		r.cfg.Replayed()
	}
	if err != nil {
		r.Metrics.DatabaseErrors.WithLabelValues("replay").Inc()
		r.Errs.Error(ctx, "replay", "spool replay failed; will retry", err)
		return err
	}
	segments, bytes = r.spool.Stats()
	r.Metrics.SpoolSegments.Set(float64(segments))
	r.Metrics.SpoolBytes.Set(float64(bytes))
	return nil
}
