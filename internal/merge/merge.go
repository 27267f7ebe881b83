// Package merge turns inbox batches (one per group commit) into pending work (one row
// per object), in bulk and off the reply path. Each pass is one transaction
// (store.MergeInbox): the oldest batches taken and deleted, decoded, ids deduplicated
// with the newest receipt kept, upserted in id order. Any number of mergers may run,
// one per replica: they claim disjoint batches (SKIP LOCKED).
package merge

import (
	"context"
	"log/slog"
	"time"

	"github.com/objwatch/callback/internal/errlog"
	"github.com/objwatch/callback/internal/metrics"
	"github.com/objwatch/callback/internal/store"
)

// Store is what the merger needs of storage.
type Store interface {
	MergeInbox(ctx context.Context, maxBatches, maxIDs int) (store.Merged, error)
}

// Config tunes the merger.
type Config struct {
	MaxBatches int           // inbox rows per pass at most
	MaxIDs     int           // no further row once a pass holds this many ids
	Interval   time.Duration // poll for other replicas' inbox rows when not woken
}

// DefaultConfig merges on a 100 ms cadence rather than after every commit. A pass
// rewrites every pending row its callbacks name, and a callback of the original sender
// names most of the ids 0..99, so a pass over 10 callbacks costs nearly what a pass over
// 1000 does (BenchmarkMergeInbox). Waking per commit made Postgres spend most of a core
// on tiny passes, taken from intake; the cadence adds at most 100 ms before a lookup
// starts, inside the freshness budget (4.3 s + 0.5 s).
//
// A pass of 256 batches or 256k ids holds at most ~20 MB while it deduplicates; at
// 10,000 callbacks/s of 200 ids a 100 ms pass holds ~200k ids, so one pass per tick
// keeps up, and a backlog is drained by passes back to back.
func DefaultConfig() Config {
	return Config{MaxBatches: 256, MaxIDs: 1 << 18, Interval: 100 * time.Millisecond}
}

// Merger runs merge passes.
type Merger struct {
	cfg     Config
	store   Store
	log     *slog.Logger
	errs    *errlog.Limiter
	metrics *metrics.Metrics
	wake    chan struct{}
	merged  func() // wakes the fetcher
}

// New builds a merger; merged (may be nil) is called after a pass that changed pending work.
func New(cfg Config, s Store, log *slog.Logger, m *metrics.Metrics, merged func()) *Merger {
	if merged == nil {
		merged = func() {}
	}
	return &Merger{cfg: cfg, store: s, log: log, errs: errlog.New(log, 10*time.Second), metrics: m, wake: make(chan struct{}, 1), merged: merged}
}

// Wake asks for a pass now (new inbox rows were committed). Never blocks.
func (m *Merger) Wake() {
	select {
	case m.wake <- struct{}{}:
	default:
	}
}

// Run merges until ctx ends.
func (m *Merger) Run(ctx context.Context) error {
	backoff := time.Duration(0)
	for {
		n, err := m.Pass(ctx)
		switch {
		case ctx.Err() != nil:
			return nil
		case err != nil:
			backoff = min(max(2*backoff, 100*time.Millisecond), 5*time.Second)
			m.metrics.DatabaseErrors.WithLabelValues("merge").Inc()
			m.errs.Error(ctx, "merge", "merging inbox failed; retrying", err, "retry_in", backoff)
			sleep(ctx, backoff)
			continue
		case backoff > 0:
			backoff = 0
			m.errs.Recovered(ctx, "merge", "merging inbox works again")
		}
		if n.Full {
			continue // more is waiting
		}
		select {
		case <-ctx.Done():
			return nil
		case <-m.wake:
		case <-time.After(m.cfg.Interval):
		}
	}
}

// Pass runs one merge.
func (m *Merger) Pass(ctx context.Context) (store.Merged, error) {
	// Bounded, so that a connection that stops answering cannot hold the loop for
	// minutes; a full pass takes tens of milliseconds.
	pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	n, err := m.store.MergeInbox(pctx, m.cfg.MaxBatches, m.cfg.MaxIDs)
	if err != nil {
		return n, err
	}
	for _, q := range n.Quarantined {
		// Every one is logged: each is callbacks that a human has to look at.
		m.metrics.Quarantined.Inc()
		m.log.ErrorContext(ctx, "inbox batch cannot be decoded; moved to table inbox_quarantine",
			"batch_id", q.BatchID, "callbacks", q.Callbacks, "err", q.Err)
	}
	m.metrics.MergedCallbacks.Add(float64(n.Callbacks))
	m.metrics.MergedIDs.Add(float64(n.Ids))
	if n.Changed > 0 {
		m.merged()
	}
	return n, nil
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
