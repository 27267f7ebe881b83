// Package expiry deletes objects not named by any callback for longer than the window.
// Every replica ticks; the tick runs inside a transaction holding a transaction-scoped
// advisory lock, so one replica per tick does the work and, if it dies, the lock dies
// with its connection and another replica's next tick takes over. Running twice would
// be harmless anyway: the delete is idempotent.
//
// The clock: receipt times (last_seen) come from the service's clock, so the cutoff
// does too (now - window, computed here and passed as a parameter). With several
// hosts, their clocks must agree to within the precision you expect of expiry; NTP
// gives milliseconds. Leases use the database's clock instead (see queries/pending.sql),
// so skew can never cause two lookups of one object at once.
package expiry

import (
	"context"
	"log/slog"
	"time"

	"github.com/objwatch/callback/internal/errlog"
	"github.com/objwatch/callback/internal/metrics"
)

// Store is what expiry needs of storage.
type Store interface {
	Expire(ctx context.Context, cutoff, forgetBefore time.Time) (ran bool, deleted int64, err error)
}

// spoolReplayMemory: how long a replayed spool segment is remembered. A segment file
// outlives its replay only by the time it takes to unlink it; a week is plenty.
const spoolReplayMemory = 7 * 24 * time.Hour

// Expirer runs the ticks.
type Expirer struct {
	store   Store
	window  time.Duration
	every   time.Duration
	log     *slog.Logger
	errs    *errlog.Limiter
	metrics *metrics.Metrics
	now     func() time.Time
}

// New expires rows older than window, checking every tick.
func New(s Store, window, tick time.Duration, log *slog.Logger, m *metrics.Metrics) *Expirer {
	return &Expirer{store: s, window: window, every: tick, log: log, errs: errlog.New(log, 10*time.Second), metrics: m, now: time.Now}
}

// Run ticks until ctx ends.
func (e *Expirer) Run(ctx context.Context) error {
	t := time.NewTicker(e.every)
	defer t.Stop()
	for {
		e.Tick(ctx)
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// Tick runs one expiry, if this replica wins the lock.
func (e *Expirer) Tick(ctx context.Context) (ran bool, deleted int64) {
	now := e.now()
	// A tick that cannot finish before the next one is pointless: bound it.
	tctx, cancel := context.WithTimeout(ctx, max(e.every, 5*time.Second))
	defer cancel()
	ran, deleted, err := e.store.Expire(tctx, now.Add(-e.window), now.Add(-spoolReplayMemory))
	if err != nil {
		if ctx.Err() == nil {
			e.metrics.DatabaseErrors.WithLabelValues("expiry").Inc()
			e.errs.Error(ctx, "expire", "expiry failed; next tick retries", err)
		}
		return false, 0
	}
	e.errs.Recovered(ctx, "expire", "expiry works again")
	e.metrics.RowsExpired.Add(float64(deleted))
	if ran {
		e.metrics.ExpiryLastRun.Set(float64(now.Unix()))
	}
	return ran, deleted
}
