// Package expiry deletes what left the window: objects not named by any callback for
// longer than the window, pending lookups whose newest receipt is older than that (and
// the memory of receipts looked up that long ago), and inbox batches that hold nothing
// newer. Every replica ticks; each tick runs in transactions holding a
// transaction-scoped advisory lock, so one replica per tick does the work and, if it
// dies, the lock dies with its connection and another replica's next tick takes over.
// Running twice would be harmless anyway: the deletes are idempotent.
//
// Never past an accepted callback. A row must not be deleted while a callback that
// names it within the window has been accepted and not merged yet: merging would have
// moved its last_seen forward. Which ids such a callback names is not known without
// reading it, so expiry reads the clock only as far as every one of them: its "now" is
// the oldest of the oldest receipt waiting in the inbox (within the window) and the
// fleet's low watermark, the oldest receipt any replica holds outside the inbox (a
// request not committed yet, a spool; internal/watermark says what counts and for how
// long a silent replica is waited for). A row deleted on these terms was not named
// within the window before the oldest receipt not merged yet, so no callback accepted
// so far keeps it. Under a merge backlog or an outage rows thus live longer than the
// window, never shorter: by at most the window behind a live replica (older receipts
// cannot matter), and by at most REPLICA_TIMEOUT behind a silent one.
//
// The clock: receipt times (last_seen) come from the service's clock, so the cutoff
// does too (computed here and passed as a parameter). With several hosts, their clocks
// must agree to within the precision you expect of expiry; NTP gives milliseconds.
// Leases, backoffs and ranks use the database's clock instead (see queries/pending.sql),
// so skew can never delay a lookup or cause two lookups of one object at once.
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

// Watermark says how far expiry may read the clock: the fleet's low watermark
// (watermark.Publisher).
type Watermark interface {
	Low(ctx context.Context, now time.Time) (time.Time, error)
}

// spoolReplayMemory: how long a replayed spool segment is remembered. A segment file
// outlives its replay only by the time it takes to unlink it; a week is plenty.
const spoolReplayMemory = 7 * 24 * time.Hour

// Config tunes expiry. A zero field takes its default, below.
type Config struct {
	ExpireAfter time.Duration // the window (EXPIRE_AFTER), required
	Tick        time.Duration // how often
	// Chunk: rows deleted per statement and transaction at most.
	Chunk int
	// ForgetReplicas: watermark rows of replicas silent this long are deleted.
	ForgetReplicas time.Duration
	// MergeLag, if set, is told every tick how far behind merging is (the oldest receipt
	// waiting in the inbox within the window): pace.Pacer.MergeLag. It must not block.
	MergeLag func(now time.Time, lag time.Duration)
}

// The defaults check the window every second; chunks of 10,000 rows take tens of
// milliseconds each.
const (
	TickDefault           = time.Second
	ChunkDefault          = 10_000
	ForgetReplicasDefault = 24 * time.Hour
)

// Expirer runs the ticks.
type Expirer struct {
	component.Base
	cfg       Config
	store     Store
	watermark Watermark
}

// New builds an expirer, or says which setting is wrong.
func New(cfg Config, s Store, w Watermark, deps component.Deps) (*Expirer, error) {
	cfg.Tick = cmp.Or(cfg.Tick, TickDefault)
	cfg.Chunk = cmp.Or(cfg.Chunk, ChunkDefault)
	cfg.ForgetReplicas = cmp.Or(cfg.ForgetReplicas, ForgetReplicasDefault)
	switch {
	case cfg.ExpireAfter <= 0:
		return nil, errors.New("the window (ExpireAfter) must be positive")
	case cfg.Tick < 0 || cfg.Chunk < 0 || cfg.ForgetReplicas < 0:
		return nil, errors.New("tick, chunk and the time to forget replicas must not be negative")
	case w == nil:
		return nil, errors.New("expiry needs the fleet's watermark")
	}
	return &Expirer{Base: component.NewBase(deps), cfg: cfg, store: s, watermark: w}, nil
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
	p := store.ExpireParams{
		PendingCutoff: edge, PendingRankSlack: e.cfg.ExpireAfter + store.RecheckHandicap(e.cfg.ExpireAfter),
		ForgetBefore: now.Add(-spoolReplayMemory), ForgetMergedBefore: now.Add(-2 * e.cfg.ExpireAfter),
		ForgetReplicasAfter: e.cfg.ForgetReplicas, Chunk: e.cfg.Chunk,
	}
	oldest, err := e.store.OldestUnmerged(tctx, edge, now)
	if err != nil {
		e.fail(ctx, err)
		return store.ExpiryTick{}
	}
	if e.cfg.MergeLag != nil {
		e.cfg.MergeLag(now, now.Sub(oldest))
	}
	low, err := e.watermark.Low(tctx, now)
	if err != nil {
		e.fail(ctx, err)
		return store.ExpiryTick{}
	}
	p.ObjectsCutoff = earliest(now, oldest, low).Add(-e.cfg.ExpireAfter)
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

func earliest(ts ...time.Time) time.Time {
	e := ts[0]
	for _, t := range ts[1:] {
		if t.Before(e) {
			e = t
		}
	}
	return e
}
