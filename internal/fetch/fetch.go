// Package fetch runs the lookups: it claims due objects from pending (with a lease),
// asks the object service about each with bounded concurrency, and writes the outcomes
// back in batches.
//
// Leases. A claim moves the row's due_at to now()+Lease and stamps a claim token. No
// transaction stays open during a lookup. If this process dies, the row becomes due
// again when the lease runs out and another fetcher (any replica) claims it with a new
// token; a late result from the dead or stuck claimer carries the old token and is
// discarded by CompleteLookups. Lease therefore exceeds Timeout plus the time a result
// may wait for the writer, so that a healthy lookup never loses its lease.
//
// At most one lookup per object is in flight across the fleet: a claimed row is not due
// until its lease ends, and claims are made with SKIP LOCKED.
package fetch

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/objwatch/callback/internal/errlog"
	"github.com/objwatch/callback/internal/metrics"
	"github.com/objwatch/callback/internal/store"
)

// dbTimeout bounds each database call: a connection that stops answering (a network
// partition, not a refusal) would otherwise hold a loop until TCP gives up, minutes later.
const dbTimeout = 10 * time.Second

// Store is what the fetcher needs of storage.
type Store interface {
	ClaimDue(ctx context.Context, max int, lease time.Duration, cutoff time.Time) ([]store.Claim, error)
	CompleteLookups(ctx context.Context, results []store.Result, cutoff time.Time) (store.Completed, error)
}

// LookupFunc asks the object service whether id is online.
type LookupFunc func(ctx context.Context, id int64) (bool, error)

// Config tunes the fetcher.
type Config struct {
	Concurrency   int           // lookups in flight at most
	MaxClaim      int           // rows per claim at most
	Timeout       time.Duration // one lookup
	Lease         time.Duration // see the package comment
	ExpireAfter   time.Duration // a receipt older than this is dropped, not looked up
	PollInterval  time.Duration // look for due work this often when not woken
	FlushInterval time.Duration // a result waits at most this long for its batch
	FlushSize     int           // results per write at most
	BackoffBase   time.Duration // first retry after a failed lookup (then doubling)
	BackoffMax    time.Duration
	// TripAfter consecutive failed lookups (no success in between) mean the object
	// service itself is down, not one object: claiming drops to one probe at a time,
	// paused BackoffBase, doubling to BackoffMax, until a lookup succeeds. Per-object
	// backoff alone would still let N pending objects make N requests per backoff
	// period against a dead service.
	TripAfter     int
	ShutdownGrace time.Duration // at shutdown, lookups in flight get this long to finish
}

// DefaultConfig keeps up with the original tester by a wide margin: 512 lookups in
// flight at a mean latency of 2.3 s is about 220 lookups/s.
func DefaultConfig() Config {
	return Config{
		Concurrency: 512, MaxClaim: 256, Timeout: 5 * time.Second, Lease: 30 * time.Second,
		ExpireAfter: 30 * time.Second, PollInterval: 50 * time.Millisecond,
		FlushInterval: 10 * time.Millisecond, FlushSize: 512,
		BackoffBase: 250 * time.Millisecond, BackoffMax: 10 * time.Second, TripAfter: 64,
		ShutdownGrace: 5 * time.Second,
	}
}

// Validate reports the first nonsensical setting.
func (c Config) Validate() error {
	switch {
	case c.Concurrency < 1:
		return errors.New("concurrency must be at least 1")
	case c.Timeout <= 0:
		return errors.New("timeout must be positive")
	case c.Lease < c.Timeout+time.Second:
		return fmt.Errorf("lease (%v) must exceed the lookup timeout (%v) by at least 1s", c.Lease, c.Timeout)
	}
	return nil
}

// Fetcher runs the claim -> lookup -> write loop.
type Fetcher struct {
	cfg     Config
	store   Store
	lookup  LookupFunc
	log     *slog.Logger
	errs    *errlog.Limiter
	metrics *metrics.Metrics
	now     func() time.Time

	wake     chan struct{}
	inFlight atomic.Int64
	failures atomic.Int64 // consecutive failed lookups; see Config.TripAfter
	results  chan store.Result
	done     chan struct{} // a lookup finished: there is room to claim
}

// New builds a fetcher.
func New(cfg Config, s Store, lookup LookupFunc, log *slog.Logger, m *metrics.Metrics) *Fetcher {
	return &Fetcher{
		cfg: cfg, store: s, lookup: lookup, log: log, errs: errlog.New(log, 10*time.Second), metrics: m,
		now: time.Now, wake: make(chan struct{}, 1),
		results: make(chan store.Result, cfg.Concurrency+cfg.MaxClaim), done: make(chan struct{}, 1),
	}
}

// Wake asks for a claim now (the merger added work). Never blocks.
func (f *Fetcher) Wake() { notify(f.wake) }

// InFlight is the number of lookups waiting for the object service.
func (f *Fetcher) InFlight() int64 { return f.inFlight.Load() }

// Run fetches until ctx ends; then it stops claiming, gives lookups in flight
// ShutdownGrace to finish, hands the rest back (due at once, for any replica), and
// writes every outcome before returning.
func (f *Fetcher) Run(ctx context.Context) error {
	lookupCtx, cancelLookups := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelLookups()

	var writer sync.WaitGroup
	writer.Go(f.writeLoop)

	var lookups sync.WaitGroup
	f.claimLoop(ctx, lookupCtx, &lookups)

	// Shutdown.
	finished := make(chan struct{})
	go func() { lookups.Wait(); close(finished) }()
	select {
	case <-finished:
	case <-time.After(f.cfg.ShutdownGrace):
		cancelLookups() // the lookups end as failures with no backoff: handed back
		<-finished
	}
	close(f.results)
	writer.Wait()
	return nil
}

func (f *Fetcher) claimLoop(ctx, lookupCtx context.Context, lookups *sync.WaitGroup) {
	backoff := time.Duration(0)
	probePause := time.Duration(0)
	for ctx.Err() == nil {
		free := f.cfg.Concurrency - int(f.inFlight.Load())
		if free <= 0 {
			waitAny(ctx, f.done, nil)
			continue
		}
		n := min(free, f.cfg.MaxClaim)
		probing := f.tripped()
		if probing {
			// The object service looks down: wait, ever more patiently, for the one
			// probe in flight to end, then send one more.
			if f.inFlight.Load() > 0 {
				waitAny(ctx, f.done, time.After(f.cfg.PollInterval))
				continue
			}
			probePause = min(max(2*probePause, f.cfg.BackoffBase), f.cfg.BackoffMax)
			waitAny(ctx, nil, time.After(probePause))
			if ctx.Err() != nil {
				continue
			}
		} else {
			probePause = 0
		}
		cctx, cancel := context.WithTimeout(ctx, dbTimeout)
		claims, err := f.store.ClaimDue(cctx, n, f.cfg.Lease, f.now().Add(-f.cfg.ExpireAfter))
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			backoff = min(max(2*backoff, 100*time.Millisecond), 5*time.Second)
			f.metrics.DatabaseErrors.WithLabelValues("claim").Inc()
			f.errs.Error(ctx, "claim", "claiming lookups failed; retrying", err, "retry_in", backoff)
			waitAny(ctx, nil, time.After(backoff))
			continue
		}
		if backoff > 0 {
			backoff = 0
			f.errs.Recovered(ctx, "claim", "claiming lookups works again")
		}
		now := f.now()
		probes := 1
		for _, c := range claims {
			if now.Sub(c.ReceivedAt) > f.cfg.ExpireAfter {
				// Too old to matter: its row would be expired as soon as written.
				f.metrics.Dropped.WithLabelValues("claim", "expired").Inc()
				f.results <- store.Result{ObjectID: c.ObjectID, Token: c.Token, Outcome: store.Expired}
				continue
			}
			if probing {
				if probes == 0 {
					// Claimed only so that expired receipts are dropped on time even
					// while the object service is down: handed back unasked.
					f.results <- store.Result{ObjectID: c.ObjectID, Token: c.Token, Outcome: store.Failed, RetryAfter: f.backoff(c.Attempts)}
					continue
				}
				probes--
			}
			f.inFlight.Add(1)
			f.metrics.LookupsInFlight.Inc()
			lookups.Go(func() { f.runLookup(lookupCtx, c) })
		}
		if len(claims) < n {
			// Nothing more is due: wait for new work, a poll, or room.
			waitAny(ctx, f.wake, time.After(f.cfg.PollInterval))
		}
	}
}

func (f *Fetcher) runLookup(ctx context.Context, c store.Claim) {
	res := store.Result{ObjectID: c.ObjectID, Token: c.Token}
	defer func() {
		if p := recover(); p != nil {
			f.metrics.PanicsRecovered.WithLabelValues("lookup").Inc()
			f.log.Error("panic in lookup", "object_id", c.ObjectID, "panic", p, "stack", string(debug.Stack()))
			res.Outcome, res.RetryAfter = store.Failed, f.backoff(c.Attempts)
		}
		f.inFlight.Add(-1)
		f.metrics.LookupsInFlight.Dec()
		f.results <- res
		notify(f.done)
	}()

	lctx, cancel := context.WithTimeout(ctx, f.cfg.Timeout)
	defer cancel()
	start := f.now()
	online, err := f.lookup(lctx, c.ObjectID)
	f.metrics.LookupSeconds.Observe(f.now().Sub(start).Seconds())
	if err == nil && f.failures.Swap(0) >= int64(f.cfg.TripAfter) && f.cfg.TripAfter > 0 {
		// Rate-limited like the trip below: lookups already in flight when the
		// breaker tripped can still succeed and make it flap for a moment.
		f.errs.Info(ctx, "breaker-closed", "object service answers again: lookups at full speed")
	}
	switch {
	case err == nil && online:
		res.Outcome = store.Online
	case err == nil:
		res.Outcome = store.Offline
	case ctx.Err() != nil:
		// Shutting down: hand the claim back, due at once.
		res.Outcome = store.Failed
		f.metrics.Lookups.WithLabelValues("abandoned").Inc()
		return
	default:
		res.Outcome, res.RetryAfter = store.Failed, f.backoff(c.Attempts)
		if f.failures.Add(1) == int64(f.cfg.TripAfter) {
			f.errs.Warn(ctx, "breaker-open", "object service looks down: probing with one lookup at a time until it answers",
				"consecutive_failures", f.cfg.TripAfter)
		}
		f.errs.Error(ctx, "lookup", "lookup failed; retrying with backoff", err, "object_id", c.ObjectID, "attempt", c.Attempts)
	}
	f.metrics.Lookups.WithLabelValues(string(res.Outcome)).Inc()
}

func (f *Fetcher) tripped() bool {
	return f.cfg.TripAfter > 0 && f.failures.Load() >= int64(f.cfg.TripAfter)
}

// backoff: exponential in the attempts so far, with full jitter in [d/2, d], so that a
// dead object service sees a trickle of probes, not a storm, and recovering lookups
// spread out instead of arriving together.
func (f *Fetcher) backoff(attempts int) time.Duration {
	d := f.cfg.BackoffBase << min(max(attempts-1, 0), 20)
	if d <= 0 || d > f.cfg.BackoffMax {
		d = f.cfg.BackoffMax
	}
	return d/2 + rand.N(d/2+1)
}

// writeLoop batches results and applies them; it ends when results is closed and
// everything received was written (or written off: see write).
func (f *Fetcher) writeLoop() {
	batch := make([]store.Result, 0, f.cfg.FlushSize)
	for {
		r, ok := <-f.results
		if !ok {
			return
		}
		batch = append(batch[:0], r)
		deadline := time.NewTimer(f.cfg.FlushInterval)
	collect:
		for len(batch) < f.cfg.FlushSize {
			select {
			case r, ok := <-f.results:
				if !ok {
					break collect
				}
				batch = append(batch, r)
			case <-deadline.C:
				break collect
			}
		}
		deadline.Stop()
		f.write(batch)
	}
}

// write applies one batch, retrying while the database is down. It gives up only when
// every lease in the batch must have run out: the rows are then due again for a fresh
// lookup, and writing these results could not succeed anyway (stale tokens).
func (f *Fetcher) write(batch []store.Result) {
	ctx := context.Background()
	giveUp := f.now().Add(f.cfg.Lease)
	backoff := 50 * time.Millisecond
	for {
		wctx, cancel := context.WithTimeout(ctx, dbTimeout)
		// The cutoff is taken at each attempt: a batch retried through an outage must
		// not write rows that expired meanwhile.
		done, err := f.store.CompleteLookups(wctx, batch, f.now().Add(-f.cfg.ExpireAfter))
		cancel()
		if err == nil {
			f.metrics.RowsWritten.WithLabelValues("upsert").Add(float64(done.Upserted))
			f.metrics.RowsWritten.WithLabelValues("delete").Add(float64(done.Removed))
			f.metrics.StaleResults.Add(float64(int64(len(batch)) - done.Owned))
			f.errs.Recovered(ctx, "complete", "writing lookup results works again")
			return
		}
		f.metrics.DatabaseErrors.WithLabelValues("complete").Inc()
		if f.now().After(giveUp) {
			f.errs.Error(ctx, "complete-giveup", "lookup results dropped: leases ran out, the objects will be looked up again", err, "results", len(batch))
			return
		}
		f.errs.Error(ctx, "complete", "writing lookup results failed; retrying", err, "results", len(batch))
		time.Sleep(backoff)
		backoff = min(2*backoff, 2*time.Second)
	}
}

func notify(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

func waitAny(ctx context.Context, ch <-chan struct{}, timer <-chan time.Time) {
	select {
	case <-ctx.Done():
	case <-ch:
	case <-timer:
	}
}
