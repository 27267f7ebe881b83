// Package fetch runs the lookups: it claims due objects from pending (with a lease),
// asks the object service about each under an adaptive concurrency limit (package
// limit: it finds what the object service takes), and writes the outcomes back in
// batches.
//
// Leases. A claim moves the row's due_at to now()+Lease and stamps a claim token. No
// transaction stays open during a lookup. If this process dies, the row becomes due
// again when the lease runs out and another fetcher (any replica) claims it with a new
// token; a late result from the dead or stuck claimer carries the old token and is
// discarded by CompleteLookups. Lease therefore exceeds Timeout plus the time a result
// may wait for the writer, so that a healthy lookup never loses its lease, and two
// rules keep it so when something is slow:
//
//   - A lookup starts only within the first half of the slack (Lease - Timeout) after
//     its claim was sent; later (a claim that took long to answer), the row is handed
//     back unasked, due at once. The other half is for writing the result.
//   - Claimed rows whose results are not written are bounded, not only lookups in
//     flight: while two batches of results wait for the writer (a database that takes
//     claims but not writes), nothing more is claimed.
//
// At most one lookup per object is in flight across the fleet: a claimed row is not due
// until its lease ends, and claims are made with SKIP LOCKED.
package fetch

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/objwatch/callback/internal/backoff"
	"github.com/objwatch/callback/internal/component"
	"github.com/objwatch/callback/internal/fetch/limit"
	"github.com/objwatch/callback/internal/store"
)

// dbTimeout bounds each database call: a connection that stops answering (a network
// partition, not a refusal) would otherwise hold a loop until TCP gives up, minutes later.
const dbTimeout = 10 * time.Second

// Store is what the fetcher needs of storage.
type Store interface {
	ClaimDue(ctx context.Context, max int, lease time.Duration, cutoff time.Time) ([]store.Claim, error)
	CountDue(ctx context.Context, max int, cutoff time.Time) (int64, error)
	CompleteLookups(ctx context.Context, results []store.Result, p store.CompleteParams) (store.Completed, error)
}

// LookupFunc asks the object service whether id is online. An error that has the
// methods of rejection says whether the service refused for lack of capacity.
type LookupFunc func(ctx context.Context, id int64) (bool, error)

// rejection is what the fetcher needs to know of an error from the object service:
// whether it refused the lookup for lack of capacity (429, 503), and how long it
// asked the client to wait (Retry-After; 0 if it did not say).
type rejection interface {
	Rejected() bool
	Wait() time.Duration
}

// claimDBBackoffMax caps the wait between failed claims: the database may be back a
// moment after a failure, and lookups should resume within about a second of it.
const claimDBBackoffMax = time.Second

// Config tunes the fetcher. A zero field takes its default, below.
type Config struct {
	// The lookups in flight at once are an adaptive limit (package limit) between
	// MinConcurrency and Concurrency; it starts at MinConcurrency.
	MinConcurrency int
	Concurrency    int
	MaxClaim       int // rows per claim at most
	// Yield, if set, says how much of the lookup limit to leave unused right now (0 to
	// 1), because the reply path needs the cores: lookups cost CPU in this process, in
	// Postgres and at the object service. The limit itself is not changed.
	Yield         func() float64
	Timeout       time.Duration // one lookup
	Lease         time.Duration // see the package comment
	ExpireAfter   time.Duration // the window (EXPIRE_AFTER), required: an older receipt is dropped, not looked up
	PollInterval  time.Duration // look for due work this often when not woken
	FlushInterval time.Duration // a result waits at most this long for its batch
	FlushSize     int           // results per write at most
	BackoffBase   time.Duration // first retry after a failed lookup (then doubling)
	BackoffMax    time.Duration
	// RetryAfterMax caps what a Retry-After can make an object (and the limit, and the
	// probes of a service that refuses everything) wait: RETRY_AFTER_MAX. A service
	// that says "come back tomorrow" must not keep an object from the lookup a newer
	// receipt asks for: a wait longer than the window is worth no more than the window.
	RetryAfterMax time.Duration
	// TripAfter consecutive lookups without an answer (failed, or rejected with a 429
	// or 503) mean the object service itself is down or refusing everything, not one
	// object: claiming drops to one probe at a time, paused BackoffBase, doubling to
	// BackoffMax (and at least the last Retry-After, capped), until a lookup is
	// answered. Per-object backoff alone would still let N pending objects make N
	// requests per backoff period against a dead service.
	TripAfter     int
	ShutdownGrace time.Duration // at shutdown, lookups in flight get this long to finish
}

// Default floor and ceiling of the lookup limit. The ceiling is far above what one
// replica needs against the original object service (2,000 ids/s at 2.3 s is 4,600
// in flight), so that only the object service limits it; 10,000 lookups in flight
// take the service to about 140 MiB of RSS (see objectsvc.Client). The floor is what a congested
// service is still asked at once: 128 at 2.3 s is 55 lookups/s.
const (
	MinConcurrencyDefault = 128
	ConcurrencyDefault    = 10000
)

// The other defaults. LeaseDefault leaves 10 s beyond TimeoutDefault for the claim's
// round trip, the start of the lookup and the write of its result (see the package
// comment). BackoffMaxDefault is short: a failed lookup of one object says nothing of
// the others, and the window is better spent on lookups than on waits (an object
// whose lookups fail seven times in a row still shows within 30 s; at 5 s, six did
// not: TestRetry_aFaultyServiceLeavesTheWindowToTheLookups). A service that fails
// everything is the breaker's (TripAfter): one probe at a time.
const (
	MaxClaimDefault      = 256
	TimeoutDefault       = 5 * time.Second
	LeaseDefault         = 15 * time.Second
	PollIntervalDefault  = 50 * time.Millisecond
	FlushIntervalDefault = 10 * time.Millisecond
	FlushSizeDefault     = 512
	BackoffBaseDefault   = 250 * time.Millisecond
	BackoffMaxDefault    = time.Second
	RetryAfterMaxDefault = 5 * time.Second
	TripAfterDefault     = 64
	ShutdownGraceDefault = 5 * time.Second
)

// demandEvery: how often, at most, the fetcher counts the rows due while the limit is
// fully used, to tell the limiter the demand (a range of one index, up to the ceiling).
const demandEvery = 250 * time.Millisecond

func (c Config) withDefaults() Config {
	c.MinConcurrency = cmp.Or(c.MinConcurrency, MinConcurrencyDefault)
	c.Concurrency = cmp.Or(c.Concurrency, ConcurrencyDefault)
	c.MaxClaim = cmp.Or(c.MaxClaim, MaxClaimDefault)
	c.Timeout = cmp.Or(c.Timeout, TimeoutDefault)
	c.Lease = cmp.Or(c.Lease, LeaseDefault)
	c.PollInterval = cmp.Or(c.PollInterval, PollIntervalDefault)
	c.FlushInterval = cmp.Or(c.FlushInterval, FlushIntervalDefault)
	c.FlushSize = cmp.Or(c.FlushSize, FlushSizeDefault)
	c.BackoffBase = cmp.Or(c.BackoffBase, BackoffBaseDefault)
	// The defaults of the longest waits are kept within half a short window.
	if c.ExpireAfter > 0 {
		c.BackoffMax = cmp.Or(c.BackoffMax, min(BackoffMaxDefault, c.ExpireAfter/2))
		c.RetryAfterMax = cmp.Or(c.RetryAfterMax, min(RetryAfterMaxDefault, c.ExpireAfter/2))
	}
	c.TripAfter = cmp.Or(c.TripAfter, TripAfterDefault)
	c.ShutdownGrace = cmp.Or(c.ShutdownGrace, ShutdownGraceDefault)
	return c
}

// Validate reports the first setting that makes no sense once the defaults are
// applied. New checks this; the service checks it too, before it starts anything.
func (c Config) Validate() error {
	c = c.withDefaults()
	switch {
	case c.MinConcurrency < 1:
		return errors.New("the lookup limit's floor must be at least 1")
	case c.Concurrency < c.MinConcurrency:
		return fmt.Errorf("the lookup limit's ceiling (%d) must be at least its floor (%d)", c.Concurrency, c.MinConcurrency)
	case c.MaxClaim < 1 || c.FlushSize < 1:
		return errors.New("claim and flush sizes must be at least 1")
	case c.Timeout <= 0:
		return errors.New("timeout must be positive")
	case c.Lease < c.Timeout+time.Second:
		return fmt.Errorf("lease (%v) must exceed the lookup timeout (%v) by at least 1s", c.Lease, c.Timeout)
	case c.ExpireAfter <= 0:
		return errors.New("the window (ExpireAfter) must be positive")
	case c.PollInterval < 0 || c.FlushInterval < 0 || c.BackoffBase < 0 || c.BackoffMax < 0 || c.RetryAfterMax < 0 || c.ShutdownGrace < 0 || c.TripAfter < 1:
		return errors.New("intervals, backoffs and the shutdown grace must not be negative, and TripAfter must be at least 1")
	case c.RetryAfterMax > c.ExpireAfter/2 || c.BackoffMax > c.ExpireAfter/2:
		return fmt.Errorf("the longest wait before a retry (%v, Retry-After at most %v) must be at most half the window (%v): an object must be looked up again well within it",
			c.BackoffMax, c.RetryAfterMax, c.ExpireAfter)
	}
	return nil
}

// Fetcher runs the claim -> lookup -> write loop.
type Fetcher struct {
	component.Base
	cfg    Config
	store  Store
	lookup LookupFunc

	limiter  *limit.Limiter
	wake     chan struct{}
	inFlight atomic.Int64
	held     atomic.Int64 // claimed rows whose result is not written yet (in flight included)
	failures atomic.Int64 // consecutive lookups without an answer; see Config.TripAfter
	refusal  atomic.Int64 // the last Retry-After of a rejection, capped (nanoseconds): the least pause between probes
	results  chan store.Result
	room     chan struct{} // signalled when a lookup finished or a batch was written: there may be room to claim

	// The claim loop's own: whether its last claim came back full (more may be due), and
	// when it last counted the rows due.
	moreDue  bool
	demandAt time.Time
}

// New builds a fetcher, or says which setting is wrong.
func New(cfg Config, s Store, lookup LookupFunc, deps component.Deps) (*Fetcher, error) {
	cfg = cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	lcfg := limit.DefaultConfig(cfg.MinConcurrency, cfg.Concurrency, cfg.Timeout)
	lcfg.MaxHold = cfg.RetryAfterMax
	if err := lcfg.Validate(); err != nil {
		return nil, err
	}
	f := &Fetcher{
		Base: component.NewBase(deps), cfg: cfg, store: s, lookup: lookup,
		limiter: limit.New(lcfg), wake: make(chan struct{}, 1),
		// Room for every result that can exist at once (see claimLoop), so that
		// neither a lookup nor the claim loop ever waits to hand one over.
		results: make(chan store.Result, cfg.Concurrency+cfg.MaxClaim+maxWaiting(cfg)),
		room:    make(chan struct{}, 1),
	}
	f.Metrics.LookupLimit.Set(float64(f.limiter.Limit()))
	return f, nil
}

// maxWaiting is how many results may wait for the writer before claiming stops: the
// batch being written and the next one.
func maxWaiting(cfg Config) int { return 2 * cfg.FlushSize }

// Limit is the adaptive limit of lookups in flight now.
func (f *Fetcher) Limit() int { return f.limiter.Limit() }

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
	claimRetry := backoff.Retry{Policy: backoff.Policy{Base: 100 * time.Millisecond, Max: claimDBBackoffMax}}
	// Paused ever longer while the object service looks down.
	probePause := backoff.Retry{Policy: backoff.Policy{Base: f.cfg.BackoffBase, Max: f.cfg.BackoffMax}}
	for ctx.Err() == nil {
		// Results that wait for the writer hold their claims too: held - inFlight
		// stays below maxWaiting when a claim is made, and a claim adds at most
		// MaxClaim, so at most Concurrency + MaxClaim + maxWaiting results exist at
		// once: the results channel's capacity.
		inFlight := int(f.inFlight.Load())
		limit := f.limiter.Limit()
		yielding := false
		if f.cfg.Yield != nil {
			if y := f.cfg.Yield(); y > 0 {
				limit, yielding = max(int(float64(limit)*(1-min(y, 1))), 1), true
			}
		}
		free := limit - inFlight
		// Also while yielding: the limit is what the object service takes, the share of
		// it used now is the reply path's business.
		if free <= 0 && f.moreDue {
			// The limit is fully used and more is due: tell the limiter the demand, which
			// may raise the limit to meet it at once (package limit).
			if now := f.Now(); now.Sub(f.demandAt) >= demandEvery {
				f.demandAt = now
				cctx, cancel := context.WithTimeout(ctx, dbTimeout)
				due, err := f.store.CountDue(cctx, f.cfg.Concurrency, now.Add(-f.cfg.ExpireAfter))
				cancel()
				if err == nil && due > 0 {
					full := f.limiter.Demand(inFlight+int(due), now)
					f.Metrics.LookupLimit.Set(float64(full))
					if yielding {
						limit = max(int(float64(full)*(1-min(f.cfg.Yield(), 1))), 1)
					} else {
						limit = full
					}
					free = limit - inFlight
				}
			}
		}
		if free <= 0 || int(f.held.Load())-inFlight >= maxWaiting(f.cfg) {
			if yielding {
				backoff.Wait(ctx, f.cfg.PollInterval, f.room) // the reply path may be idle again
			} else {
				select {
				case <-ctx.Done():
				case <-f.room:
				}
			}
			continue
		}
		n := min(free, f.cfg.MaxClaim)
		probing := f.tripped()
		if probing {
			// The object service looks down: wait, ever more patiently, for the one
			// probe in flight to end, then send one more.
			if f.inFlight.Load() > 0 {
				backoff.Wait(ctx, f.cfg.PollInterval, f.room)
				continue
			}
			// At least what the service asked for, capped: it is refusing everything.
			if !backoff.Sleep(ctx, max(probePause.Next(), time.Duration(f.refusal.Load()))) {
				continue
			}
		} else {
			probePause.Reset()
		}
		// The lease starts on the database's clock during the claim, so no earlier
		// than now: the lookups' deadline to start is reckoned from here.
		claimedAt := f.Now()
		cctx, cancel := context.WithTimeout(ctx, dbTimeout)
		claims, err := f.store.ClaimDue(cctx, n, f.cfg.Lease, f.Now().Add(-f.cfg.ExpireAfter))
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			wait := claimRetry.Next()
			f.Metrics.DatabaseErrors.WithLabelValues("claim").Inc()
			f.Errs.Error(ctx, "claim", "claiming lookups failed; retrying", err, "retry_in", wait)
			backoff.Sleep(ctx, wait)
			continue
		}
		if claimRetry.Reset() {
			f.Errs.Recovered(ctx, "claim", "claiming lookups works again")
		}
		f.held.Add(int64(len(claims)))
		now := f.Now()
		probes := 1
		for _, c := range claims {
			if now.Sub(c.ReceivedAt) > f.cfg.ExpireAfter {
				// Too old to matter: its row would be expired as soon as written.
				f.Metrics.Dropped.WithLabelValues("claim", "expired").Inc()
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
			f.Metrics.LookupsInFlight.Inc()
			lookups.Go(func() { f.runLookup(lookupCtx, c, claimedAt) })
		}
		f.moreDue = len(claims) == n
		if !f.moreDue {
			// Nothing more is due: wait for new work, a poll, or room.
			backoff.Wait(ctx, f.cfg.PollInterval, f.wake)
		}
	}
}

func (f *Fetcher) runLookup(ctx context.Context, c store.Claim, claimedAt time.Time) {
	res := store.Result{ObjectID: c.ObjectID, Token: c.Token}
	sample := limit.Sample{Outcome: limit.Failed}
	defer func() {
		if p := recover(); p != nil {
			f.Metrics.PanicsRecovered.WithLabelValues("lookup").Inc()
			f.Log.Error("panic in lookup", "object_id", c.ObjectID, "panic", p, "stack", string(debug.Stack()))
			res.Outcome, res.RetryAfter = store.Failed, f.backoff(c.Attempts)
			sample.Outcome = limit.Failed
		}
		if !sample.Start.IsZero() {
			sample.End, sample.InFlight = f.Now(), int(f.inFlight.Load())
			f.Metrics.LookupLimit.Set(float64(f.limiter.Observe(sample)))
		}
		f.inFlight.Add(-1)
		f.Metrics.LookupsInFlight.Dec()
		f.results <- res
		notify(f.room)
	}()

	start := f.Now()
	if slack := f.cfg.Lease - f.cfg.Timeout; start.After(claimedAt.Add(slack / 2)) {
		// The lease could run out before the result is written: hand the row back
		// unasked, due at once for whichever fetcher has room.
		res.Outcome = store.Failed
		f.Metrics.Lookups.WithLabelValues("abandoned").Inc()
		f.Errs.Warn(ctx, "lease-short", "claims handed back unasked: too little of their lease left",
			"claimed_ago", start.Sub(claimedAt).String())
		return
	}
	lctx, cancel := context.WithTimeout(ctx, f.cfg.Timeout)
	defer cancel()
	sample.Start = start
	online, err := f.lookup(lctx, c.ObjectID)
	f.Metrics.LookupSeconds.Observe(f.Now().Sub(start).Seconds())
	var rej rejection
	switch {
	case err == nil:
		sample.Outcome = limit.Answered
	case errors.As(err, &rej) && rej.Rejected():
		// The service is up but full, or refusing everything for now: the object is
		// asked again no sooner than the service said, but never later than
		// RetryAfterMax (a newer receipt must not wait a day for its lookup), and no
		// answer from a row of these trips the breaker as failures do.
		wait := min(rej.Wait(), f.cfg.RetryAfterMax)
		sample.Outcome, sample.RetryAfter = limit.Rejected, wait
		res.Outcome, res.RetryAfter = store.Failed, max(f.backoff(c.Attempts), wait)
		f.refusal.Store(int64(wait))
		f.Metrics.Lookups.WithLabelValues("rejected").Inc()
		if f.failures.Add(1) == int64(f.cfg.TripAfter) {
			f.Errs.Warn(ctx, "breaker-open", "object service refuses every lookup: probing with one lookup at a time until it answers",
				"consecutive_rejections", f.cfg.TripAfter, "retry_after", rej.Wait().String())
		}
		f.Errs.Info(ctx, "rejected", "object service rejected lookups (429/503)",
			"limit", f.limiter.Limit(), "retry_after", rej.Wait().String())
		return
	case errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil:
		sample.Outcome = limit.Timeout
	}
	if err == nil {
		f.refusal.Store(0)
	}
	if err == nil && f.failures.Swap(0) >= int64(f.cfg.TripAfter) {
		// Rate-limited like the trip below: lookups already in flight when the
		// breaker tripped can still succeed and make it flap for a moment.
		f.Errs.Info(ctx, "breaker-closed", "object service answers again: lookups at full speed")
	}
	switch {
	case err == nil && online:
		res.Outcome = store.Online
	case err == nil:
		res.Outcome = store.Offline
	case ctx.Err() != nil:
		// Shutting down: hand the claim back, due at once.
		res.Outcome = store.Failed
		f.Metrics.Lookups.WithLabelValues("abandoned").Inc()
		return
	default:
		res.Outcome, res.RetryAfter = store.Failed, f.backoff(c.Attempts)
		if f.failures.Add(1) == int64(f.cfg.TripAfter) {
			f.Errs.Warn(ctx, "breaker-open", "object service looks down: probing with one lookup at a time until it answers",
				"consecutive_failures", f.cfg.TripAfter)
		}
		f.Errs.Error(ctx, "lookup", "lookup failed; retrying with backoff", err, "object_id", c.ObjectID, "attempt", c.Attempts)
	}
	f.Metrics.Lookups.WithLabelValues(string(res.Outcome)).Inc()
}

func (f *Fetcher) tripped() bool {
	return f.failures.Load() >= int64(f.cfg.TripAfter)
}

// backoff: exponential in the attempts so far, with full jitter in [d/2, d], so that a
// dead object service sees a trickle of probes, not a storm, and recovering lookups
// spread out instead of arriving together.
func (f *Fetcher) backoff(attempts int) time.Duration {
	return backoff.Policy{Base: f.cfg.BackoffBase, Max: f.cfg.BackoffMax}.Jittered(attempts)
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
		f.held.Add(-int64(len(batch)))
		notify(f.room)
	}
}

// write applies one batch, retrying while the database is down. It gives up only when
// every lease in the batch must have run out: the rows are then due again for a fresh
// lookup, and writing these results could not succeed anyway (stale tokens).
func (f *Fetcher) write(batch []store.Result) {
	ctx := context.Background()
	giveUp := f.Now().Add(f.cfg.Lease)
	retry := backoff.Retry{Policy: backoff.Policy{Base: 50 * time.Millisecond, Max: 2 * time.Second}}
	for {
		wctx, cancel := context.WithTimeout(ctx, dbTimeout)
		// The cutoff is taken at each attempt: a batch retried through an outage must
		// not write rows that expired meanwhile.
		now := f.Now()
		completed, err := f.store.CompleteLookups(wctx, batch, store.CompleteParams{
			Cutoff: now.Add(-f.cfg.ExpireAfter), Now: now, Recheck: store.RecheckHandicap(f.cfg.ExpireAfter),
		})
		cancel()
		if err == nil {
			f.Metrics.RowsWritten.WithLabelValues("upsert").Add(float64(completed.Upserted))
			f.Metrics.RowsWritten.WithLabelValues("delete").Add(float64(completed.Removed))
			f.Metrics.StaleResults.Add(float64(int64(len(batch)) - completed.Owned))
			f.Errs.Recovered(ctx, "complete", "writing lookup results works again")
			return
		}
		f.Metrics.DatabaseErrors.WithLabelValues("complete").Inc()
		if f.Now().After(giveUp) {
			f.Errs.Error(ctx, "complete-giveup", "lookup results dropped: leases ran out, the objects will be looked up again", err, "results", len(batch))
			return
		}
		f.Errs.Error(ctx, "complete", "writing lookup results failed; retrying", err, "results", len(batch))
		backoff.Sleep(ctx, retry.Next())
	}
}

func notify(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}
