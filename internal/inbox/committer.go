// Package inbox makes accepted callbacks durable: the reply to POST /callback waits for
// exactly this and nothing else.
//
// The durability argument. A handler calls Submit and answers 2xx only if Submit
// returned nil. Submit returns nil only after one of:
//   - the INSERT of the batch holding the callback committed in Postgres (an
//     inbox_batches row), or
//   - the spool appended the callback and fsynced the file and its directory entry.
//
// From there nothing loses it. Every stage can die at any point; what it held is either
// still committed where it was or already committed in the next stage:
//   - Spool files are deleted only after the transaction that replayed them into the
//     inbox committed (and recorded the segment, so a replay is never repeated).
//   - A batch whose commit timed out but committed is both in the inbox and in the
//     spool, under the one batch id the committer minted; replay inserts no batch id
//     that the inbox holds or that was merged, so it counts once (store.ReplaySegment).
//   - Inbox batches are deleted only by the merger, in the transaction that writes
//     their ids to pending; the refresh of online objects they name commits just
//     before it (a crash in between merges them again, and a refresh is idempotent). A
//     batch that cannot be decoded is moved to inbox_quarantine in that transaction,
//     kept for a human, never dropped.
//   - Pending rows are deleted only when a lookup result for their newest receipt is
//     written to objects in the same statement, or when that receipt left the window.
//   - A lookup holds no transaction, only a lease; a worker that dies loses the lease
//     when it runs out, and any replica claims the row again.
//   - Expiry never reads the clock past the oldest receipt not merged yet, nor while
//     the spool holds callbacks, so it never deletes a row an accepted callback still
//     keeps alive (internal/expiry).
//
// What is dropped is never accepted work that could still matter. Under overload the
// merger and the sweep drop receipts that left the window (EXPIRE_AFTER), and ids for
// which no lookup can be afforded (MAX_PENDING, counted in work_dropped_total). A
// receipt older than the window cannot keep any row in the table: the row it would
// refresh or create must be deleted anyway. An id dropped for capacity still refreshes
// its object if that is online; what it loses is a lookup the object service could not
// have answered within the window, newer receipts being served first.
//
// Group commit. Handlers do not write: they hand their callback to a flusher and wait.
// A flusher takes every callback queued at that moment and writes them as one inbox
// row (one INSERT, one transaction, one WAL flush). While it writes, new callbacks queue up for the
// next one. No timer, so an idle service commits a lone callback at once, and a busy
// one commits many per flush: the batch grows with the load.
package inbox

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"

	"github.com/objwatch/callback/internal/callback"
	"github.com/objwatch/callback/internal/component"
	"github.com/objwatch/callback/internal/store"
)

// ErrUnavailable: the callback could be made durable neither in Postgres nor in the
// spool. The handler answers 503: never a 2xx for anything that is not durable.
var ErrUnavailable = errors.New("cannot store callback durably")

// Inserter writes callbacks into the inbox table in one transaction, as one batch.
type Inserter interface {
	InsertBatch(ctx context.Context, batchID uuid.UUID, cbs []callback.Callback) error
	Ping(ctx context.Context) error
}

// Appender writes callbacks to the local spool durably, as one batch.
type Appender interface {
	AppendBatch(batchID uuid.UUID, cbs []callback.Callback) error
}

// CommitterConfig tunes the committer. A zero field takes its default, below.
type CommitterConfig struct {
	Flushers      int           // concurrent writers; each holds at most one connection
	MaxBatch      int           // callbacks per write at most
	MaxBatchIDs   int           // no further callback once a write holds this many ids
	QueueSize     int           // callbacks waiting for a flusher before Submit blocks
	CommitTimeout time.Duration // a database write slower than this is abandoned for the spool
	RetryDBAfter  time.Duration // after a failed database write, ping the database this often; writes go back to it once a ping answers
}

// The defaults suit a 2-core machine and a sender that waits at most 1 s. One flusher:
// while it waits for its commit, the next batch gathers in the queue, and the batch
// grows with the load. With one row per batch a commit costs Postgres little, and a
// second flusher's commit mostly queued behind the first's WAL flush: with 2 flushers
// batches halved, throughput fell and Postgres used half as much CPU again for nothing
// (the figures: docs/design.md, "Measurements behind the defaults"). A batch is as big
// as the store allows.
const (
	FlushersDefault      = 1
	MaxBatchDefault      = store.MaxBatchCallbacks
	MaxBatchIDsDefault   = store.MaxBatchIDs
	QueueSizeDefault     = 8192
	CommitTimeoutDefault = 400 * time.Millisecond
	RetryDBAfterDefault  = 250 * time.Millisecond
)

type request struct {
	cb   callback.Callback
	done chan error
}

var requestPool = sync.Pool{New: func() any { return &request{done: make(chan error, 1)} }}

// Committer is the group committer.
type Committer struct {
	component.Base
	cfg   CommitterConfig
	db    Inserter
	spool Appender // nil: no spool, database failures answer 503
	queue chan *request

	// dbDown is set by a failed write: writes then go straight to the spool, and a
	// probe (probing: one goroutine at a time) pings the database every RetryDBAfter
	// and clears dbDown once a ping answers. So an outage costs the callbacks of one
	// write a CommitTimeout, not those of one write per retry: against a blackholed
	// server each such write holds the callbacks behind it for CommitTimeout, and
	// with a sender that waits 1 s, a retry a second is enough to time some out.
	dbDown  atomic.Bool
	probing atomic.Bool
	runCtx  context.Context // Run's: the probe ends with it

	// failed is set by a failed database write and cleared by the next one that
	// works, which then calls recovered (see OnRecovered).
	failed    atomic.Bool
	recovered func()

	// busy is the time the flushers have spent writing, in nanoseconds; Load turns it
	// into the share of time they were busy lately.
	busy atomic.Int64
	load struct {
		sync.Mutex
		at    time.Time
		busy  int64
		value float64
	}
}

// Load is how busy the reply path is: the share of the last few hundred milliseconds
// the flushers spent writing, smoothed, from 0 (idle) to 1 (one commit after another,
// with callbacks queueing behind). Background work (merging, lookups) reads it to give
// the reply path the cores when they compete: a callback refused or timed out is lost
// for good, a merge or a lookup done a little later is not.
func (c *Committer) Load() float64 {
	c.load.Lock()
	defer c.load.Unlock()
	now, busy := c.Now(), c.busy.Load()
	if elapsed := now.Sub(c.load.at); elapsed >= 200*time.Millisecond {
		sample := 0.0
		if !c.load.at.IsZero() {
			sample = min(float64(busy-c.load.busy)/float64(elapsed)/float64(max(c.cfg.Flushers, 1)), 1)
		}
		c.load.value = 0.5*c.load.value + 0.5*sample
		c.load.at, c.load.busy = now, busy
	}
	return c.load.value
}

// NewCommitter builds a committer over db and spool (nil: none), or says which setting
// is wrong; Run starts its flushers.
func NewCommitter(cfg CommitterConfig, db Inserter, spool Appender, deps component.Deps) (*Committer, error) {
	cfg.Flushers = cmp.Or(cfg.Flushers, FlushersDefault)
	cfg.MaxBatch = cmp.Or(cfg.MaxBatch, MaxBatchDefault)
	cfg.MaxBatchIDs = cmp.Or(cfg.MaxBatchIDs, MaxBatchIDsDefault)
	cfg.QueueSize = cmp.Or(cfg.QueueSize, QueueSizeDefault)
	cfg.CommitTimeout = cmp.Or(cfg.CommitTimeout, CommitTimeoutDefault)
	cfg.RetryDBAfter = cmp.Or(cfg.RetryDBAfter, RetryDBAfterDefault)
	if cfg.Flushers < 0 || cfg.MaxBatch < 0 || cfg.MaxBatchIDs < 0 || cfg.QueueSize < 0 || cfg.CommitTimeout < 0 || cfg.RetryDBAfter < 0 {
		return nil, errors.New("committer settings must be positive")
	}
	return &Committer{
		Base: component.NewBase(deps), cfg: cfg, db: db, spool: spool,
		queue: make(chan *request, cfg.QueueSize), runCtx: context.Background(),
		recovered: func() {},
	}, nil
}

// OnRecovered sets f to be called after the first database write that works after a
// failed one: the database is back, and the stages that back off while it is away
// (the merger, the fetchers, the replayer) should not sleep through their backoff
// while callbacks wait. Call it before Run; f must not block.
func (c *Committer) OnRecovered(f func()) {
	c.recovered = f
}

// Submit blocks until cb is durable (nil) or cannot be made so (ErrUnavailable, or
// ctx's error when the caller gave up first: then cb may or may not be durable, and
// the caller must not answer 2xx). cb.ObjectIDs must stay untouched until it returns.
func (c *Committer) Submit(ctx context.Context, cb callback.Callback) error {
	r := requestPool.Get().(*request)
	r.cb = cb
	select {
	case c.queue <- r:
	case <-ctx.Done():
		r.cb = callback.Callback{}
		requestPool.Put(r)
		return ctx.Err()
	}
	// Once queued, wait for the flusher's verdict even if ctx ends: the request is
	// owned by the flusher until it answers, and the answer comes within
	// CommitTimeout plus one fsync.
	err := <-r.done
	r.cb = callback.Callback{}
	requestPool.Put(r)
	return err
}

// Run runs the flushers until ctx ends, then drains what is queued.
func (c *Committer) Run(ctx context.Context) error {
	c.runCtx = ctx
	var wg sync.WaitGroup
	for range c.cfg.Flushers {
		wg.Go(func() { c.flushLoop(ctx) })
	}
	wg.Wait()
	return nil
}

func (c *Committer) flushLoop(ctx context.Context) {
	batch := make([]*request, 0, c.cfg.MaxBatch)
	cbs := make([]callback.Callback, 0, c.cfg.MaxBatch)
	for {
		select {
		case r := <-c.queue:
			batch = c.fill(append(batch[:0], r))
			c.flush(ctx, batch, cbs)
		case <-ctx.Done():
			// Shutdown: the HTTP server stopped taking requests before ctx ended, so
			// what is queued is all there will be. Write it out.
			for {
				if batch = c.fill(batch[:0]); len(batch) == 0 {
					return
				}
				c.flush(context.Background(), batch, cbs)
			}
		}
	}
}

// fill adds what is queued right now, without waiting, up to MaxBatch callbacks or
// MaxBatchIDs ids.
func (c *Committer) fill(batch []*request) []*request {
	ids := 0
	for _, r := range batch {
		ids += len(r.cb.ObjectIDs)
	}
	for len(batch) < c.cfg.MaxBatch && ids < c.cfg.MaxBatchIDs {
		select {
		case r := <-c.queue:
			batch = append(batch, r)
			ids += len(r.cb.ObjectIDs)
		default:
			return batch
		}
	}
	return batch
}

func (c *Committer) flush(ctx context.Context, batch []*request, cbs []callback.Callback) {
	cbs = cbs[:0]
	for _, r := range batch {
		cbs = append(cbs, r.cb)
	}
	err := c.write(ctx, cbs)
	for _, r := range batch {
		r.done <- err
	}
	clear(cbs)
}

// write makes cbs durable in the database or, failing that, in the spool.
func (c *Committer) write(ctx context.Context, cbs []callback.Callback) error {
	c.Metrics.CommitBatchSize.Observe(float64(len(cbs)))
	defer func(start time.Time) { c.busy.Add(int64(c.Now().Sub(start))) }(c.Now())
	// Minted before the write, and the same for both copies, so that a batch that ends up
	// both in the inbox and in the spool is recognised at replay (store.ReplaySegment).
	batchID := uuid.Must(uuid.NewV7())
	if !c.dbDown.Load() {
		start := c.Now()
		wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.cfg.CommitTimeout)
		err := c.db.InsertBatch(wctx, batchID, cbs)
		cancel()
		if err == nil {
			c.Metrics.CommitSeconds.WithLabelValues("inbox").Observe(c.Now().Sub(start).Seconds())
			c.Errs.Recovered(ctx, "insert", "inbox writes work again")
			if c.failed.Swap(false) {
				c.recovered()
			}
			return nil
		}
		// The write may even have committed (the timeout or a dead connection came
		// during COMMIT's reply). Spooling it as well is safe: it goes under the same
		// batch id, and replay skips a batch id that is in the inbox or was merged.
		c.Metrics.DatabaseErrors.WithLabelValues("commit").Inc()
		c.dbDown.Store(true)
		c.startProbe()
		c.failed.Store(true)
		c.Errs.Error(ctx, "insert", "inbox write failed; spooling callbacks to disk", err, "callbacks", len(cbs))
	}
	if c.spool == nil {
		return fmt.Errorf("%w: database unavailable and no spool", ErrUnavailable)
	}
	start := c.Now()
	if err := c.spool.AppendBatch(batchID, cbs); err != nil {
		c.Errs.Error(ctx, "spool", "spool write failed; answering 503", err, "callbacks", len(cbs))
		return fmt.Errorf("%w: database unavailable and spool failed: %v", ErrUnavailable, err)
	}
	c.Metrics.CommitSeconds.WithLabelValues("spool").Observe(c.Now().Sub(start).Seconds())
	c.Metrics.CallbacksSpooled.Add(float64(len(cbs)))
	return nil
}

// startProbe starts the probe unless one runs. It ends with Run's context (shutdown):
// what is still queued then goes to the spool.
func (c *Committer) startProbe() {
	if c.runCtx.Err() == nil && c.probing.CompareAndSwap(false, true) {
		go c.probe(c.runCtx)
	}
}

// probe pings the database every RetryDBAfter until a ping answers, then sends writes
// back to it. probing is cleared before dbDown, so that a write failing in between
// always finds either this probe still to clear dbDown (and fail again) or room to
// start a new one: dbDown is never left set with no probe to clear it.
func (c *Committer) probe(ctx context.Context) {
	t := time.NewTicker(c.cfg.RetryDBAfter)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			c.probing.Store(false)
			return
		case <-t.C:
		}
		pctx, cancel := context.WithTimeout(ctx, c.cfg.CommitTimeout)
		err := c.db.Ping(pctx)
		cancel()
		if err == nil {
			c.probing.Store(false)
			c.dbDown.Store(false)
			return
		}
	}
}
