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

// Expire deletes objects last seen before cutoff, if no other replica is doing it
// right now (ran reports whether this one did). It also forgets spool replay records
// older than forgetBefore.
func (s *Store) Expire(ctx context.Context, cutoff, forgetBefore time.Time) (ran bool, deleted int64, err error) {
	err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		q := s.q.WithTx(tx)
		locked, err := q.TryExpiryLock(ctx, expiryLockKey)
		if err != nil {
			return fmt.Errorf("taking expiry lock: %w", err)
		}
		if !locked {
			return nil
		}
		ran = true
		if deleted, err = q.ExpireObjects(ctx, cutoff); err != nil {
			return fmt.Errorf("deleting expired objects: %w", err)
		}
		if _, err := q.ForgetSpoolReplays(ctx, forgetBefore); err != nil {
			return fmt.Errorf("forgetting spool replays: %w", err)
		}
		return nil
	})
	return ran, deleted, err
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
