// Package watermark is the fleet's low watermark for expiry: the oldest receipt any
// replica may still hold that the database does not.
//
// Why. Expiry deletes an object whose last_seen is older than the window. A callback
// naming it may have been accepted and not yet reached the inbox: a request between
// its receipt stamp and its commit, or a callback in a spool because Postgres was
// unreachable from its replica, possibly on another host. Merging it would have kept
// the row. So expiry reads the clock only as far as every such callback: it deletes
// rows older than the window before the fleet's low watermark, never before now
// (internal/expiry). A row deleted on these terms had already expired when the oldest
// held callback arrived, so nothing accepted kept it alive; a held callback naming it
// later makes it a new object again, looked up once merged.
//
// What a replica holds, and publishes (Publisher, every Heartbeat, in the table
// replica_watermarks, with the database's now() as the heartbeat): the oldest of
//   - the receipts of requests it has stamped and not yet answered (Tracker): read from
//     the socket, waiting for the group commit or for the spool's fsync;
//   - the receipts in its spool: its own segments, and the unlocked ones of its
//     directory that any replica there may replay (spool.OldestHeld);
//   - now, if it holds nothing: everything it stamps later is newer.
//
// Never older than now minus the window: a receipt older than that cannot keep any row
// (the merger drops it), so holding expiry back for it would only keep dead rows.
//
// Silence. A replica that cannot reach Postgres cannot publish, and that is exactly
// when it spools callbacks nobody else can see: its last watermark keeps holding expiry
// back, for everybody, until it has been silent for REPLICA_TIMEOUT. Then it stops
// counting, so that a replica that is gone (killed and not restarted, a host that
// vanished) delays expiry by at most that bound, as an outage does: rows outlive the
// window by up to REPLICA_TIMEOUT, never less than it. A replica that comes back after
// the bound loses nothing it acknowledged: its spool is replayed into the inbox, and
// every receipt in it that is still within the window is merged as any other (rows that
// expired meanwhile come back after a lookup, with the newest receipt). Silent replicas
// are counted in callback_replicas_silent, and an alert fires on them. A replica that
// has never reached Postgres (a new one, started on a host already cut off) has no
// row, and nobody can wait for what nobody knows of: until its first heartbeat, rows
// that only its spooled callbacks name may expire, and come back, as above, when its
// spool is replayed. Refusing callbacks until then would lose them instead.
//
// Identity. A replica is named by its spool directory (an id kept in it) and a slot in
// it, one per process sharing the directory (spool.ReplicaID). A replica restarted on
// its directory takes its slot, and its row, back at once: a kill -9 and a restart do
// not hold expiry for the silence bound. A live replica that finds a slot of its
// directory unlocked deletes that slot's row: the process is gone, and what it spooled
// is unlocked in the directory, counted by the live replica. A replica that stops
// cleanly with an empty spool marks its row stopped: it holds nothing any more.
//
// Clocks. Watermarks are receipt times, on the clocks of the replicas that stamped them,
// as last_seen is; heartbeats are on the database's clock, so silence is measured on
// one clock whatever the skew between hosts.
package watermark

import (
	"cmp"
	"context"
	"errors"
	"sync"
	"time"

	"github.com/objwatch/callback/internal/component"
	"github.com/objwatch/callback/internal/store"
)

// Tracker counts the requests in flight by their receipt time: from the stamp to the
// answer. Safe for concurrent use; two short critical sections per request.
type Tracker struct {
	mu       sync.Mutex
	inFlight map[int64]int // receipt in Unix milliseconds -> requests
}

// NewTracker returns an empty tracker.
func NewTracker() *Tracker { return &Tracker{inFlight: map[int64]int{}} }

// Begin counts a request stamped at receipt; pass what it returns to End once the
// request is answered, whatever the answer.
func (t *Tracker) Begin(receipt time.Time) int64 {
	ms := receipt.UnixMilli() // rounded down: never later than the receipt
	t.mu.Lock()
	t.inFlight[ms]++
	t.mu.Unlock()
	return ms
}

// End uncounts a request that Begin counted.
func (t *Tracker) End(ms int64) {
	t.mu.Lock()
	if t.inFlight[ms] <= 1 {
		delete(t.inFlight, ms)
	} else {
		t.inFlight[ms]--
	}
	t.mu.Unlock()
}

// Oldest is the oldest receipt of a request in flight, and false if there is none.
func (t *Tracker) Oldest() (time.Time, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	oldest, ok := int64(0), false
	for ms := range t.inFlight {
		if !ok || ms < oldest {
			oldest, ok = ms, true
		}
	}
	return time.UnixMilli(oldest), ok
}

// Spool is what the publisher needs of this host's spool.
type Spool interface {
	ReplicaID() (string, error)
	DeadReplicas() ([]string, error)
	OldestHeld(floor time.Time) (time.Time, bool)
}

// Store is what the publisher needs of storage.
type Store interface {
	PublishWatermark(ctx context.Context, replicaID string, low time.Time, stopped bool) error
	DeleteWatermark(ctx context.Context, replicaID string) error
	FleetWatermark(ctx context.Context, silence time.Duration) (store.Fleet, error)
}

// Config tunes the publisher. A zero field takes its default, below.
type Config struct {
	Window    time.Duration // EXPIRE_AFTER, required
	Heartbeat time.Duration // publish this often
	// Silence (REPLICA_TIMEOUT): a replica not heard from for this long no longer holds
	// expiry back.
	Silence time.Duration
}

// HeartbeatDefault publishes every second, as often as expiry ticks. SilenceDefault is
// a minute: longer than a database restart or a failover takes, so that a replica cut
// off by one keeps holding expiry back while it spools, and short enough that a replica
// that is gone keeps rows alive for at most that long past the window.
const (
	HeartbeatDefault = time.Second
	SilenceDefault   = time.Minute
)

// Publisher publishes this replica's watermark and reads the fleet's.
type Publisher struct {
	component.Base
	cfg     Config
	tracker *Tracker
	spool   Spool
	store   Store
	id      string
}

// New builds a publisher, or says which setting is wrong. It takes the replica's slot in
// the spool directory.
func New(cfg Config, tracker *Tracker, sp Spool, s Store, deps component.Deps) (*Publisher, error) {
	cfg.Heartbeat = cmp.Or(cfg.Heartbeat, HeartbeatDefault)
	cfg.Silence = cmp.Or(cfg.Silence, SilenceDefault)
	switch {
	case cfg.Window <= 0:
		return nil, errors.New("the window must be positive")
	case cfg.Heartbeat < 0:
		return nil, errors.New("the heartbeat must be positive")
	case cfg.Silence < 3*cfg.Heartbeat:
		return nil, errors.New("the silence bound must be at least three heartbeats")
	}
	id, err := sp.ReplicaID()
	if err != nil {
		return nil, err
	}
	return &Publisher{Base: component.NewBase(deps), cfg: cfg, tracker: tracker, spool: sp, store: s, id: id}, nil
}

// ID is this replica's identity in replica_watermarks.
func (p *Publisher) ID() string { return p.id }

// Local is this replica's watermark now (see the package comment), and whether it holds
// anything.
func (p *Publisher) Local(now time.Time) (time.Time, bool) {
	floor := now.Add(-p.cfg.Window)
	low, held := now, false
	if t, ok := p.tracker.Oldest(); ok && t.Before(low) {
		low, held = t, true
	}
	if t, ok := p.spool.OldestHeld(floor); ok {
		held = true
		if t.Before(low) {
			low = t
		}
	}
	if low.Before(floor) {
		low = floor
	}
	return low, held
}

// Low is how far expiry may read the clock now: the lowest watermark of this replica and
// of the replicas heard from within the silence bound.
func (p *Publisher) Low(ctx context.Context, now time.Time) (time.Time, error) {
	low, _ := p.Local(now)
	fleet, err := p.store.FleetWatermark(ctx, p.cfg.Silence)
	if err != nil {
		return time.Time{}, err
	}
	p.Metrics.ReplicasLive.Set(float64(fleet.Live))
	p.Metrics.ReplicasSilent.Set(float64(fleet.Silent))
	if fleet.Live > 0 && fleet.Lowest.Before(low) {
		low = fleet.Lowest
	}
	p.Metrics.WatermarkLag.Set(now.Sub(low).Seconds())
	return low, nil
}

// Run publishes every Heartbeat until ctx ends, then once more: stopped if it holds
// nothing. Call it after the committer has written out what was accepted.
func (p *Publisher) Run(ctx context.Context) error {
	t := time.NewTicker(p.cfg.Heartbeat)
	defer t.Stop()
	for {
		_ = p.Beat(ctx)
		select {
		case <-ctx.Done():
			fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
			defer cancel()
			p.publish(fctx, true)
			return nil
		case <-t.C:
		}
	}
}

// Beat is one heartbeat: it publishes the watermark, and deletes the rows of this
// directory's replicas that are gone.
func (p *Publisher) Beat(ctx context.Context) error {
	bctx, cancel := context.WithTimeout(ctx, max(p.cfg.Heartbeat, time.Second))
	defer cancel()
	if err := p.publish(bctx, false); err != nil {
		return err
	}
	dead, err := p.spool.DeadReplicas()
	if err != nil {
		p.Errs.Error(ctx, "dead-replicas", "listing the slots of the spool directory failed", err)
		return err
	}
	for _, id := range dead {
		if err := p.store.DeleteWatermark(bctx, id); err != nil {
			p.Errs.Error(ctx, "dead-replicas", "deleting the watermark of a replica that is gone failed", err, "replica", id)
			return err
		}
	}
	return nil
}

// publish writes the watermark; final marks the row stopped if nothing is held.
func (p *Publisher) publish(ctx context.Context, final bool) error {
	low, held := p.Local(p.Now())
	if err := p.store.PublishWatermark(ctx, p.id, low, final && !held); err != nil {
		if ctx.Err() == nil || final {
			p.Metrics.DatabaseErrors.WithLabelValues("watermark").Inc()
			p.Errs.Error(ctx, "watermark", "publishing the watermark failed; expiry elsewhere waits on the last one", err)
		}
		return err
	}
	p.Errs.Recovered(ctx, "watermark", "watermark published again")
	return nil
}
