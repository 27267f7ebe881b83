// Package expiry deletes what left the window: objects not named by any callback for
// longer than the window, pending lookups whose newest receipt is older than that, and
// inbox batches that hold nothing newer.
// Every replica ticks; each tick runs in transactions holding a transaction-scoped
// advisory lock, so one replica per tick does the work and, if it dies, the lock dies
// with its connection and another replica's next tick takes over. Running twice would
// be harmless anyway: the deletes are idempotent.
//
// Never past unmerged work. A row must not be deleted while an accepted callback that
// names it within the window has not been merged yet: merging would have moved its
// last_seen forward. Which ids a waiting callback names is not known without decoding
// it, so expiry reads the clock only as far as merging has got: its "now" is the
// oldest receipt still waiting in the inbox (within the window), and no later than now
// minus Grace, which covers callbacks accepted but not yet committed (the group
// commit's timeout). While this host's spool holds callbacks (Postgres was unreachable
// and they are not replayed yet) objects are not expired at all. A row deleted on these
// terms was not named within the window before the oldest receipt not yet merged, so
// no callback accepted so far can keep it. Under a merge backlog rows thus live longer
// than the window, never shorter; the backlog itself is bounded by the window (the
// merger drops what left it), so expiry lags by at most one window.
//
// The clock: receipt times (last_seen) come from the service's clock, so the cutoff
// does too (computed here and passed as a parameter). With several hosts, their clocks
// must agree to within the precision you expect of expiry; NTP gives milliseconds.
// Leases use the database's clock instead (see queries/pending.sql), so skew can never
// cause two lookups of one object at once.
package expiry

import (
	"cmp"
	"context"
	"errors"
	"time"

	"github.com/objwatch/callback/internal/component"
	"github.com/objwatch/callback/internal/store"
)

// Store is what expiry needs of storage.
type Store interface {
	Expire(ctx context.Context, p store.ExpireParams) (store.ExpiryTick, error)
	OldestUnmerged(ctx context.Context, cutoff, now time.Time) (time.Time, error)
}

// spoolReplayMemory: how long a replayed spool segment is remembered. A segment file
// outlives its replay only by the time it takes to unlink it; a week is plenty.
const spoolReplayMemory = 7 * 24 * time.Hour

// Config tunes expiry. A zero field takes its default, below, but for Grace.
type Config struct {
	ExpireAfter time.Duration // the window (EXPIRE_AFTER), required
	Tick        time.Duration // how often
	// Grace: callbacks accepted less than this ago may not be committed yet (the group
	// commit's timeout, plus a margin); expiry does not read the clock past them. The
	// service sets it from its commit timeout; zero: none.
	Grace time.Duration
	// Chunk: rows deleted per statement and transaction at most.
	Chunk int
	// SpoolHolds reports whether this host's spool holds callbacks not yet replayed
	// (nil: never).
	SpoolHolds func() bool
}

// The defaults check the window every second; chunks of 10,000 rows take tens of
// milliseconds each.
const (
	TickDefault  = time.Second
	ChunkDefault = 10_000
)

// Expirer runs the ticks.
type Expirer struct {
	component.Base
	cfg   Config
	store Store
}

// New builds an expirer, or says which setting is wrong.
func New(cfg Config, s Store, deps component.Deps) (*Expirer, error) {
	cfg.Tick = cmp.Or(cfg.Tick, TickDefault)
	cfg.Chunk = cmp.Or(cfg.Chunk, ChunkDefault)
	if cfg.SpoolHolds == nil {
		cfg.SpoolHolds = func() bool { return false }
	}
	switch {
	case cfg.ExpireAfter <= 0:
		return nil, errors.New("the window (ExpireAfter) must be positive")
	case cfg.Tick < 0 || cfg.Grace < 0 || cfg.Chunk < 0:
		return nil, errors.New("tick, grace and chunk must not be negative")
	}
	return &Expirer{Base: component.NewBase(deps), cfg: cfg, store: s}, nil
}

// Run ticks until ctx ends.
func (e *Expirer) Run(ctx context.Context) error {
	t := time.NewTicker(e.cfg.Tick)
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
func (e *Expirer) Tick(ctx context.Context) store.ExpiryTick {
	now := e.Now()
	// A tick that cannot finish before the next one is pointless: bound it. Work done
	// by the chunks that finished stays done.
	tctx, cancel := context.WithTimeout(ctx, max(e.cfg.Tick, 5*time.Second))
	defer cancel()
	edge := now.Add(-e.cfg.ExpireAfter)
	// A merged batch id is kept two windows: a spooled copy of the batch replayed after
	// that holds only receipts past the window, which change nothing (store.ForgetMergedBatches).
	p := store.ExpireParams{PendingCutoff: edge, ForgetBefore: now.Add(-spoolReplayMemory),
		ForgetMergedBefore: now.Add(-2 * e.cfg.ExpireAfter), Chunk: e.cfg.Chunk}
	if !e.cfg.SpoolHolds() {
		oldest, err := e.store.OldestUnmerged(tctx, edge, now)
		if err != nil {
			e.fail(ctx, err)
			return store.ExpiryTick{}
		}
		seenUpTo := now.Add(-e.cfg.Grace)
		if oldest.Before(seenUpTo) {
			seenUpTo = oldest
		}
		p.ObjectsCutoff = seenUpTo.Add(-e.cfg.ExpireAfter)
	} // else: the zero cutoff deletes no object
	t, err := e.store.Expire(tctx, p)
	if err != nil {
		e.fail(ctx, err)
	} else {
		e.Errs.Recovered(ctx, "expire", "expiry works again")
	}
	// What the chunks that finished did counts, even after an error.
	e.Metrics.RowsExpired.Add(float64(t.Deleted))
	e.Metrics.Dropped.WithLabelValues("pending", "expired").Add(float64(t.Swept))
	e.Metrics.Dropped.WithLabelValues("inbox", "expired").Add(float64(t.StaleIDs))
	if err == nil && t.Ran {
		e.Metrics.ExpiryLastRun.Set(float64(now.Unix()))
	}
	return t
}

func (e *Expirer) fail(ctx context.Context, err error) {
	if ctx.Err() == nil {
		e.Metrics.DatabaseErrors.WithLabelValues("expiry").Inc()
		e.Errs.Error(ctx, "expire", "expiry failed; next tick retries", err)
	}
}
