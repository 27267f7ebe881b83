// Package merge turns inbox batches (one per group commit) into pending work (one row
// per object), in bulk and off the reply path. Each pass is one transaction
// (store.InMergeTx; the pass itself is in pass.go): batches that left the window
// dropped unread, the newest batches taken and deleted, decoded, ids deduplicated with
// the newest receipt kept, online objects refreshed, the rest upserted into pending up
// to a bound. The merger decides what a pass takes, keeps and drops; the store runs one
// statement per step. Any number of mergers may run, one per replica: they claim
// disjoint batches (SKIP LOCKED).
//
// Pacing. A pass costs per distinct id, and the reply path needs the same two cores, so
// the merger rests after each pass for as long as the pass took (Config.Rest): it takes
// at most about half of one core's time however far behind it is. Falling behind does
// not make it work harder but coalesce more: the next pass takes everything that
// arrived meanwhile (up to MaxIDs), and with many callbacks per object that costs
// little more than a small pass. What it cannot reach within the window is dropped
// unread, oldest first, and counted (callback_work_dropped_total).
package merge

import (
	"cmp"
	"context"
	"errors"
	"time"

	"github.com/objwatch/callback/internal/backoff"
	"github.com/objwatch/callback/internal/component"
	"github.com/objwatch/callback/internal/store"
)

// Store is what the merger needs of storage: a pass's transaction, and the refresh of
// online objects that commits beside it.
type Store interface {
	InMergeTx(ctx context.Context, fn func(tx *store.MergeTx) error) error
	RefreshObjects(ctx context.Context, ids []int64, receivedAts []time.Time) (int64, error)
}

// Config tunes the merger. A zero field takes its default, below.
type Config struct {
	MaxBatches int // inbox rows read per pass at most
	MaxIDs     int // no further row read once a pass holds this many ids
	// MaxDistinct: distinct ids a pass offers to pending at most, newest batches
	// first; ids named only after that refresh online objects and are otherwise dropped
	// for capacity. The pending upsert costs per distinct id: this bounds the pass's
	// duration and the locks it holds, while every batch read is consumed.
	MaxDistinct int
	// MaxNew: ids not pending yet that one pass makes pending, at most. Lookups take a
	// few thousand a second; more would only wait.
	MaxNew int
	// MaxPending bounds the pending rows a pass leaves: when they are that many,
	// waiting rows with receipts older than the pass's are evicted to make room for up
	// to MaxNew newer ones, and ids beyond that are dropped for capacity, the newest
	// receipts kept.
	MaxPending int
	// ExpireAfter is the window (EXPIRE_AFTER), required: receipts older than this are
	// dropped, whole batches unread.
	ExpireAfter time.Duration
	Interval    time.Duration // poll for other replicas' inbox rows when not woken
	// Rest after a pass, as a multiple of the pass's duration: 1 leaves the cores to
	// the reply path at least half of the merger's time.
	Rest float64
	// Yield, if set, says how busy the reply path is (0 to 1); the rest after a pass
	// grows by up to 3 times the pass while it is, so that merging takes at most about
	// a fifth of a core from a burst of callbacks (and coalesces more).
	Yield func() float64
	// Changed, if set, is called after a pass that changed pending work: it wakes the
	// fetcher. It must not block.
	Changed func()
}

// The defaults merge on a 100 ms cadence rather than after every commit, so that
// passes coalesce. A pass reads up to 4M ids (MaxIDs; a few MB of batches, and decoding
// is ~20 ns an id) and consumes all of it: every id read refreshes its object if online.
// It offers the first 128k distinct ids, newest batches first, to pending (MaxDistinct):
// with ids from a small space that is all of them, coalesced into few rows; with fresh
// ids from a huge space the rest are dropped for capacity, since lookups could not use
// them, and the pass stays under a second of Postgres. It makes at most 8k ids pending
// (MaxNew): about two seconds of lookups at the highest limit, and when pending is full
// it evicts as many older waiting rows for them, so that pending holds the newest work.
// MaxPending (256k) is about twice what that limit (10,000 in flight at the object
// service's mean 2.3 s) can look up within a 30 s window. The rest after a pass is
// capped at maxRest.
const (
	MaxBatchesDefault  = 16384
	MaxIDsDefault      = 1 << 22
	MaxDistinctDefault = 1 << 17
	MaxNewDefault      = 1 << 13
	MaxPendingDefault  = 1 << 18
	IntervalDefault    = 100 * time.Millisecond
	RestDefault        = 1.0
)

// passTimeout bounds one pass; see Pass.
const passTimeout = 10 * time.Second

// maxRest bounds the rest after one slow pass (a loaded machine, a lock wait): the
// merger must come back well within the window.
const maxRest = 2 * time.Second

// Merger runs merge passes.
type Merger struct {
	component.Base
	cfg   Config
	store Store
	wake  chan struct{}

	lastPass time.Duration // how long the last pass took, for the rest after it
}

// New builds a merger, or says which setting is wrong.
func New(cfg Config, s Store, deps component.Deps) (*Merger, error) {
	cfg.MaxBatches = cmp.Or(cfg.MaxBatches, MaxBatchesDefault)
	cfg.MaxIDs = cmp.Or(cfg.MaxIDs, MaxIDsDefault)
	cfg.MaxDistinct = cmp.Or(cfg.MaxDistinct, MaxDistinctDefault)
	cfg.MaxNew = cmp.Or(cfg.MaxNew, MaxNewDefault)
	cfg.MaxPending = cmp.Or(cfg.MaxPending, MaxPendingDefault)
	cfg.Interval = cmp.Or(cfg.Interval, IntervalDefault)
	cfg.Rest = cmp.Or(cfg.Rest, RestDefault)
	if cfg.Changed == nil {
		cfg.Changed = func() {}
	}
	switch {
	case cfg.MaxBatches < 0 || cfg.MaxIDs < 0 || cfg.MaxDistinct < 0 || cfg.MaxNew < 0 || cfg.MaxPending < 0:
		return nil, errors.New("merge bounds must be positive")
	case cfg.ExpireAfter <= 0:
		return nil, errors.New("the window (ExpireAfter) must be positive")
	case cfg.Interval < 0 || cfg.Rest < 0:
		return nil, errors.New("the merge interval and rest must not be negative")
	}
	return &Merger{Base: component.NewBase(deps), cfg: cfg, store: s, wake: make(chan struct{}, 1)}, nil
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
	return m.run(ctx, m.Pass)
}

// run is Run around pass: the pacing of passes, and the retries of failed ones.
func (m *Merger) run(ctx context.Context, pass func(context.Context) (Result, error)) error {
	// Capped low: after an outage, merging resumes within a second of the database
	// answering (and the replayer wakes it sooner: the wait ends on Wake).
	retry := backoff.Retry{Policy: backoff.Policy{Base: 100 * time.Millisecond, Max: time.Second}}
	for {
		merged, err := pass(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			wait := retry.Next()
			m.Metrics.DatabaseErrors.WithLabelValues("merge").Inc()
			m.Errs.Error(ctx, "merge", "merging inbox failed; retrying", err, "retry_in", wait)
			backoff.Wait(ctx, wait, m.wake)
			continue
		}
		if retry.Reset() {
			m.Errs.Recovered(ctx, "merge", "merging inbox works again")
		}
		// Rest in proportion to the pass, whether or not more is waiting: intake
		// comes first, and a backlog is met by coalescing, not by working harder.
		restFactor := m.cfg.Rest
		if m.cfg.Yield != nil {
			restFactor += 3 * min(max(m.cfg.Yield(), 0), 1)
		}
		rest := min(time.Duration(float64(m.lastPass)*restFactor), maxRest)
		if merged.Full {
			backoff.Sleep(ctx, rest)
			continue // more is waiting
		}
		select {
		case <-ctx.Done():
			return nil
		case <-m.wake:
			backoff.Sleep(ctx, rest)
		case <-time.After(max(m.cfg.Interval, rest)):
		}
	}
}

// Pass runs one merge.
func (m *Merger) Pass(ctx context.Context) (Result, error) {
	// Bounded, so that a connection that stops answering (a primary that vanished from
	// the network: no reset, no error, until TCP gives up minutes later) holds merging
	// up for seconds, not the window. A pass is bounded by MaxDistinct to a second or
	// two even on a loaded machine.
	pctx, cancel := context.WithTimeout(ctx, passTimeout)
	defer cancel()
	p := params{MaxBatches: m.cfg.MaxBatches, MaxIDs: m.cfg.MaxIDs, MaxDistinct: m.cfg.MaxDistinct,
		MaxNew: m.cfg.MaxNew, MaxPending: m.cfg.MaxPending, Cutoff: m.Now().Add(-m.cfg.ExpireAfter)}
	start := m.Now()
	merged, err := mergeInbox(pctx, m.store, p)
	m.lastPass = m.Now().Sub(start)
	if err != nil {
		return merged, err
	}
	m.Metrics.MergeSeconds.Observe(m.lastPass.Seconds())
	m.Metrics.Dropped.WithLabelValues("inbox", "expired").Add(float64(merged.StaleBatchIDs))
	m.Metrics.Dropped.WithLabelValues("merge", "expired").Add(float64(merged.StaleIDs))
	m.Metrics.Dropped.WithLabelValues("merge", "capacity").Add(float64(merged.NoRoom))
	m.Metrics.Dropped.WithLabelValues("pending", "capacity").Add(float64(merged.Evicted))
	for _, q := range merged.Quarantined {
		// Every one is logged: each is callbacks that a human has to look at.
		m.Metrics.Quarantined.Inc()
		m.Log.ErrorContext(ctx, "inbox batch cannot be decoded; moved to table inbox_quarantine",
			"batch_id", q.BatchID, "callbacks", q.Callbacks, "err", q.Err)
	}
	m.Metrics.MergedCallbacks.Add(float64(merged.Callbacks))
	m.Metrics.MergedIDs.Add(float64(merged.IDs))
	if merged.Changed > 0 {
		m.cfg.Changed()
	}
	return merged, nil
}
