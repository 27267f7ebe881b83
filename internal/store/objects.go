package store

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/objwatch/callback/internal/store/internal/dbsqlc"
)

// expiryLockKey names the advisory lock that makes one replica per tick run expiry.
var expiryLockKey = lockKey("callback-expiry")

// ExpireParams is one expiry tick's work.
type ExpireParams struct {
	// Objects last seen before ObjectsCutoff are deleted.
	ObjectsCutoff time.Time
	// Pending rows whose newest receipt is before PendingCutoff (the window's edge) are
	// swept: their lookup could no longer write a row, and a done row no longer needs
	// to remember its receipt. Waiting rows are found by their rank, which for a receipt
	// within the window is never more than PendingRankSlack behind now (the window plus
	// a re-check's handicap; see queries/pending.sql SweepPending).
	PendingCutoff    time.Time
	PendingRankSlack time.Duration
	// Spool replay records older than ForgetBefore are forgotten.
	ForgetBefore time.Time
	// Merged batch ids minted before ForgetMergedBefore are forgotten (see
	// ForgetMergedBatches for how long they must be kept). Zero: none is.
	ForgetMergedBefore time.Time
	// Watermark rows of replicas silent for longer than ForgetReplicasAfter are
	// deleted (zero: none is).
	ForgetReplicasAfter time.Duration
	// Chunk: rows per statement and transaction at most.
	Chunk int
}

// ExpiryTick is what one Expire did.
type ExpiryTick struct {
	Ran     bool  // this replica held the expiry lock
	Deleted int64 // objects rows
	Swept   int64 // pending rows still waiting for a lookup (work dropped: it left the window)
	Forgot  int64 // done pending rows whose receipt left the window
	// StaleIDs: ids in inbox batches whose newest receipt left the window, deleted
	// unread (the merger does it too, at the start of each pass; here it happens every
	// tick, however long a pass takes, so the inbox never holds more than a window).
	StaleIDs int64
}

// Expire runs one tick of expiry if no other replica is running one right now. It works
// in chunks, each a transaction that takes the transaction-scoped expiry lock again,
// until a chunk comes back short or ctx ends: after a long outage a large table may
// hold a mass of expired rows, and one unbounded DELETE under a deadline could roll back
// on every tick and never finish. What a chunk deleted stays deleted. Between chunks
// another replica may take the lock; both deleting is harmless (SKIP LOCKED, and the
// rows are gone either way).
func (s *Store) Expire(ctx context.Context, p ExpireParams) (ExpiryTick, error) {
	var e ExpiryTick
	chunk := int32(max(p.Chunk, 1))
	for first := true; ; first = false {
		var objects, staleIDs int64
		var swept dbsqlc.SweepPendingRow
		locked := false
		err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
			q := s.q.WithTx(tx)
			var err error
			if locked, err = q.TryExpiryLock(ctx, expiryLockKey); err != nil {
				return fmt.Errorf("taking expiry lock: %w", err)
			}
			if !locked {
				return nil
			}
			if objects, err = q.ExpireObjects(ctx, dbsqlc.ExpireObjectsParams{Cutoff: p.ObjectsCutoff, MaxRows: chunk}); err != nil {
				return fmt.Errorf("deleting expired objects: %w", err)
			}
			if swept, err = q.SweepPending(ctx, dbsqlc.SweepPendingParams{
				Cutoff: p.PendingCutoff, MaxRows: chunk, OlderMs: p.PendingRankSlack.Milliseconds(),
			}); err != nil {
				return fmt.Errorf("sweeping pending rows out of the window: %w", err)
			}
			if first {
				d, err := q.DropStaleBatches(ctx, p.PendingCutoff)
				if err != nil {
					return fmt.Errorf("dropping stale inbox batches: %w", err)
				}
				staleIDs = d.IDs
				if _, err := q.ForgetSpoolReplays(ctx, p.ForgetBefore); err != nil {
					return fmt.Errorf("forgetting spool replays: %w", err)
				}
				if p.ForgetReplicasAfter > 0 {
					if _, err := q.ForgetReplicas(ctx, p.ForgetReplicasAfter.Milliseconds()); err != nil {
						return fmt.Errorf("forgetting silent replicas: %w", err)
					}
				}
				if !p.ForgetMergedBefore.IsZero() {
					if _, err := q.ForgetMergedBatches(ctx, minUUIDv7(p.ForgetMergedBefore)); err != nil {
						return fmt.Errorf("forgetting merged batches: %w", err)
					}
				}
			}
			return nil
		})
		if err != nil {
			return e, err
		}
		if !locked {
			return e, nil
		}
		e.Ran = true
		e.Deleted += objects
		e.Swept += swept.Waiting
		e.Forgot += swept.Done
		e.StaleIDs += staleIDs
		if (objects < int64(chunk) && swept.Waiting < int64(chunk) && swept.Done < int64(chunk)) || ctx.Err() != nil {
			return e, nil
		}
	}
}

// Object is one row of the objects table.
type Object struct {
	ID       int64     `json:"id"`
	LastSeen time.Time `json:"last_seen"`
}

// GetObject reads one online object seen at or after cutoff.
func (s *Store) GetObject(ctx context.Context, id int64, cutoff time.Time) (Object, error) {
	o, err := s.q.GetObject(ctx, dbsqlc.GetObjectParams{ID: id, Cutoff: cutoff})
	if err != nil {
		return Object{}, notFound(err)
	}
	return Object(o), nil
}

// ListObjectsByID pages through online objects by ascending id, after afterID.
func (s *Store) ListObjectsByID(ctx context.Context, afterID int64, limit int, cutoff time.Time) ([]Object, error) {
	rows, err := s.q.ListObjectsByID(ctx, dbsqlc.ListObjectsByIDParams{AfterID: afterID, Cutoff: cutoff, MaxRows: int32(limit)})
	return objects(rows), err
}

// ListObjectsNewest pages through online objects newest first, after the key
// (beforeSeen, beforeID) of the previous page's last row.
func (s *Store) ListObjectsNewest(ctx context.Context, beforeSeen time.Time, beforeID int64, limit int, cutoff time.Time) ([]Object, error) {
	rows, err := s.q.ListObjectsNewest(ctx, dbsqlc.ListObjectsNewestParams{
		BeforeSeen: beforeSeen, BeforeID: beforeID, Cutoff: cutoff, MaxRows: int32(limit),
	})
	return objects(rows), err
}

func objects(rows []dbsqlc.Object) []Object {
	out := make([]Object, len(rows))
	for i, r := range rows {
		out[i] = Object(r)
	}
	return out
}
