// Package store is the storage boundary: the only package that imports the
// sqlc-generated code (internal/store/internal/dbsqlc) and pgx's error types. It turns
// the service's steps (make a callback durable, merge, claim, complete, expire, read)
// into single statements, and translates driver errors into the errors callers branch on.
package store

import (
	"context"
	"errors"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/objwatch/callback/internal/store/internal/dbsqlc"
)

// ErrNotFound: no such row (for reads).
var ErrNotFound = errors.New("not found")

// Store runs the service's queries on a pool.
type Store struct {
	pool *pgxpool.Pool
	q    *dbsqlc.Queries
}

// New wraps pool. The caller owns the pool.
func New(pool *pgxpool.Pool) *Store {
	return &Store{pool: pool, q: dbsqlc.New(pool)}
}

// Ping checks that a connection can be had and answers.
func (s *Store) Ping(ctx context.Context) error {
	return s.pool.Ping(ctx)
}

// QueueStats is a snapshot of the work queues, for metrics and the status line.
type QueueStats struct {
	InboxCallbacks int64
	InboxOldest    time.Duration
	PendingRows    int64 // waiting, backing off or claimed: lookups to do
	ClaimedRows    int64
	DoneRows       int64 // looked up, kept as the memory of the newest receipt
	PendingOldest  time.Duration
	ObjectsRows    int64
}

// Stats reads QueueStats; ages are against now, the service's clock.
func (s *Store) Stats(ctx context.Context, now time.Time) (QueueStats, error) {
	r, err := s.q.QueueStats(ctx, now)
	if err != nil {
		return QueueStats{}, err
	}
	return QueueStats{
		InboxCallbacks: r.InboxCallbacks,
		InboxOldest:    seconds(r.InboxOldestSeconds),
		PendingRows:    r.PendingRows,
		ClaimedRows:    r.ClaimedRows,
		DoneRows:       r.DoneRows,
		PendingOldest:  seconds(r.PendingOldestSeconds),
		ObjectsRows:    r.ObjectsRows,
	}, nil
}

func seconds(f float64) time.Duration { return time.Duration(f * float64(time.Second)) }

func notFound(err error) error {
	if errors.Is(err, pgx.ErrNoRows) {
		return ErrNotFound
	}
	return err
}
