package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/objwatch/callback/internal/callback"
	"github.com/objwatch/callback/internal/store/internal/dbsqlc"
)

// InsertCallbacks makes a batch of callbacks durable in one COPY, one transaction:
// when it returns nil, every one of them is in a committed inbox row.
func (s *Store) InsertCallbacks(ctx context.Context, cbs []callback.Callback) error {
	rows := make([]dbsqlc.InsertCallbacksParams, len(cbs))
	for i, cb := range cbs {
		ids := cb.ObjectIDs
		if ids == nil {
			ids = []int64{} // the column is NOT NULL; an empty callback is still a callback
		}
		rows[i] = dbsqlc.InsertCallbacksParams{CallbackID: cb.ID, ReceivedAt: cb.ReceivedAt, ObjectIds: ids}
	}
	if _, err := s.q.InsertCallbacks(ctx, rows); err != nil {
		return fmt.Errorf("inserting %d callbacks: %w", len(cbs), err)
	}
	return nil
}

// ReplaySegment moves the callbacks of one spool segment into the inbox, exactly once:
// the segment id is recorded in the same transaction, and a segment already recorded
// is skipped (it was replayed just before a crash that kept its file from being
// removed). Returns how many callbacks were new.
func (s *Store) ReplaySegment(ctx context.Context, segment uuid.UUID, cbs []callback.Callback) (int, error) {
	inserted := 0
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		q := s.q.WithTx(tx)
		fresh, err := q.MarkSpoolReplayed(ctx, segment)
		if err != nil {
			return fmt.Errorf("marking segment: %w", err)
		}
		if fresh == 0 {
			return nil
		}
		params := make([]dbsqlc.ReplayCallbackParams, len(cbs))
		for i, cb := range cbs {
			ids := cb.ObjectIDs
			if ids == nil {
				ids = []int64{}
			}
			params[i] = dbsqlc.ReplayCallbackParams{CallbackID: cb.ID, ReceivedAt: cb.ReceivedAt, ObjectIds: ids}
		}
		var batchErr error
		q.ReplayCallback(ctx, params).QueryRow(func(_ int, _ uuid.UUID, err error) {
			switch {
			case err == nil:
				inserted++
			case errors.Is(err, pgx.ErrNoRows): // already in the inbox
			case batchErr == nil:
				batchErr = err
			}
		})
		if batchErr != nil {
			return fmt.Errorf("inserting replayed callbacks: %w", batchErr)
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("replaying segment %s: %w", segment, err)
	}
	return inserted, nil
}

// ForgetSpoolReplays drops replay records older than before.
func (s *Store) ForgetSpoolReplays(ctx context.Context, before time.Time) (int64, error) {
	return s.q.ForgetSpoolReplays(ctx, before)
}

// Merged is what one MergeInbox did.
type Merged struct {
	Callbacks int64 // inbox rows consumed
	Ids       int64 // distinct object ids in them
	Changed   int64 // pending rows inserted or given a newer receipt
	Refreshed int64 // online objects whose last_seen moved forward
}

// MergeInbox moves up to maxCallbacks inbox rows into pending; see queries/inbox.sql.
func (s *Store) MergeInbox(ctx context.Context, maxCallbacks int) (Merged, error) {
	r, err := s.q.MergeInbox(ctx, int32(maxCallbacks))
	if err != nil {
		return Merged{}, fmt.Errorf("merging inbox: %w", err)
	}
	return Merged(r), nil
}
