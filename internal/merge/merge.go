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
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"

	"github.com/objwatch/callback/internal/backoff"
	"github.com/objwatch/callback/internal/component"
	"github.com/objwatch/callback/internal/store"
)

// Store is what the merger needs of storage: a pass's transaction, and the refresh of
// online objects that commits beside it.
type Store interface {
	InMergeTx(ctx context.Context, fn func(tx *store.MergeTx) error) error
	RefreshObjects(ctx context.Context, ids []int64, receivedAts []time.Time) (int64, error)
	PeekBatches(ctx context.Context, after uuid.UUID, maxBatches int) ([]store.InboxBatch, error)
}

// Config tunes the merger. A zero field takes its default, below.
type Config struct {
	MaxBatches int // inbox rows read per pass at most
	MaxIDs     int // no further row read once a pass holds this many ids
	// MaxDistinct: a pass consumes batches, newest first, until they hold this many
	// distinct ids; the rest stay in the inbox for the next pass. The pending upsert
	// costs per distinct id: this bounds the pass's duration and the locks it holds.
	MaxDistinct int
	// MaxPending bounds the rows waiting for a lookup (MAX_PENDING). While there is
	// room, nothing is dropped; when a pass brings more fresh ids than fit, waiting rows
	// ranked below the pass are evicted for them, as many as needed, and what still
	// does not fit is dropped for capacity, the newest receipts kept.
	MaxPending int
	// MaxEvict bounds the waiting rows one pass evicts for its fresh ids when pending
	// is full: beyond that, the rest of its fresh ids are dropped for capacity.
	MaxEvict int
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
	// Pacer, if set, is told which ids passes merged, and when the service is
	// overloaded, and says which callbacks are part of a flood (internal/pace).
	Pacer Pacer
}

// Pacer is what the merger tells the pacing of callbacks, and asks it (pace.Pacer).
type Pacer interface {
	Track(ids []int64)
	Overloaded(now time.Time)
	Flooding(ids []int64, now time.Time) bool
}

// The defaults merge on a 100 ms cadence rather than after every commit, so that
// passes coalesce. A pass reads up to 1M ids (MaxIDs; a megabyte or so of batches, and
// decoding is ~20 ns an id) and consumes them until it holds 64k distinct ids
// (MaxDistinct): with ids from a small space that is everything read, coalesced into
// few rows; with fresh ids from a huge space it keeps a pass to half a second or so of
// Postgres, and the arrays one statement sends (and pgx keeps a buffer for, per
// connection) to a few MB: with 128k the service's RSS passed 300 MiB under a flood.
// MaxPending (256k) is about twice what the highest lookup limit (10,000 in
// flight at the object service's mean 2.3 s) can look up within a 30 s window, and
// holds what a minutes-long outage leaves behind at production rates. When it is full,
// a pass evicts at most 2,048 waiting rows for its fresh ids (MaxEvict): newest first,
// but a flood must not turn pending into a table that is rewritten every pass (the
// database grew 50% between the middle and the end of a flood with 8,192). The rest
// after a pass is capped at maxRest.
const (
	MaxBatchesDefault  = 16384
	MaxIDsDefault      = 1 << 20
	MaxDistinctDefault = 1 << 16
	MaxPendingDefault  = 1 << 18
	MaxEvictDefault    = 1 << 11
	IntervalDefault    = 100 * time.Millisecond
	RestDefault        = 1.0
)

// FloodHandicap is how far below its receipt a fresh id of a flood ranks (a third of
// the window): while the service is overloaded, objects named by senders with a steady
// set of objects are looked up first, then the flood's, and re-checks last (a window
// below: store.RecheckHandicap).
func FloodHandicap(window time.Duration) time.Duration { return window / 3 }

// MinPending is the smallest MAX_PENDING the service accepts: a bound below a few
// claims' worth of rows would drop work that the fetchers could take at once. (Tests
// of the merger use smaller ones.)
const MinPending = 1024

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

	lastPass    time.Duration // how long the last pass took, for the rest after it
	passStarted atomic.Int64  // Unix nanoseconds: when the last pass started (early.go)
	early       struct {
		after uuid.UUID // the newest batch the early refresh has looked at
	}
}

// New builds a merger, or says which setting is wrong.
func New(cfg Config, s Store, deps component.Deps) (*Merger, error) {
	cfg.MaxBatches = cmp.Or(cfg.MaxBatches, MaxBatchesDefault)
	cfg.MaxIDs = cmp.Or(cfg.MaxIDs, MaxIDsDefault)
	cfg.MaxDistinct = cmp.Or(cfg.MaxDistinct, MaxDistinctDefault)
	cfg.MaxPending = cmp.Or(cfg.MaxPending, MaxPendingDefault)
	cfg.MaxEvict = cmp.Or(cfg.MaxEvict, MaxEvictDefault)
	cfg.Interval = cmp.Or(cfg.Interval, IntervalDefault)
	cfg.Rest = cmp.Or(cfg.Rest, RestDefault)
	if cfg.Changed == nil {
		cfg.Changed = func() {}
	}
	switch {
	case cfg.MaxBatches < 0 || cfg.MaxIDs < 0 || cfg.MaxDistinct < 0 || cfg.MaxEvict < 0:
		return nil, errors.New("merge bounds must be positive")
	case cfg.MaxPending < 1:
		return nil, fmt.Errorf("the bound on waiting rows (MaxPending, %d) must be positive", cfg.MaxPending)
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
	var wg sync.WaitGroup
	defer wg.Wait()
	ectx, cancel := context.WithCancel(ctx)
	defer cancel()
	wg.Go(func() { m.refreshEarlyLoop(ectx) })
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
	start := m.Now()
	m.passStarted.Store(start.UnixNano())
	p := params{MaxBatches: m.cfg.MaxBatches, MaxIDs: m.cfg.MaxIDs, MaxDistinct: m.cfg.MaxDistinct,
		MaxPending: m.cfg.MaxPending, MaxEvict: m.cfg.MaxEvict, Now: start, Cutoff: start.Add(-m.cfg.ExpireAfter),
		Recheck: store.RecheckHandicap(m.cfg.ExpireAfter), FloodHandicap: FloodHandicap(m.cfg.ExpireAfter), Track: m.cfg.Pacer != nil}
	if m.cfg.Pacer != nil {
		p.Flooding = func(ids []int64) bool { return m.cfg.Pacer.Flooding(ids, start) }
	}
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
	m.Metrics.Dropped.WithLabelValues("recheck", "capacity").Add(float64(merged.RechecksSkipped))
	for _, q := range merged.Quarantined {
		// Every one is logged: each is callbacks that a human has to look at.
		m.Metrics.Quarantined.Inc()
		m.Log.ErrorContext(ctx, "inbox batch cannot be decoded; moved to table inbox_quarantine",
			"batch_id", q.BatchID, "callbacks", q.Callbacks, "err", q.Err)
	}
	if m.cfg.Pacer != nil {
		m.cfg.Pacer.Track(merged.Seen)
		if merged.NoRoom > 0 || merged.Evicted > 0 || merged.RechecksSkipped > 0 || merged.StaleBatches > 0 || merged.StaleIDs > 0 || merged.LeftBatches {
			m.cfg.Pacer.Overloaded(m.Now()) // at once, without waiting for the pacer's own watch
		}
	}
	merged.Seen = nil
	m.Metrics.MergedCallbacks.Add(float64(merged.Callbacks))
	m.Metrics.MergedIDs.Add(float64(merged.IDs))
	m.Metrics.Refreshed.WithLabelValues("pass").Add(float64(merged.Refreshed))
	if merged.Changed > 0 {
		m.cfg.Changed()
	}
	return merged, nil
}
