package store

import (
	"context"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/objwatch/callback/internal/store/internal/dbsqlc"
)

// The statements of a merge pass. The merger (internal/merge) decides what a pass
// takes, keeps and writes; here each step is one statement of queries/inbox.sql, run
// in the pass's transaction (InMergeTx), and the refresh of online objects, which
// commits on its own (RefreshObjects).

// InboxBatch is one inbox row a merge pass took: the callbacks of one group commit.
type InboxBatch struct {
	ID         uuid.UUID
	ReceivedAt time.Time // its oldest receipt
	Callbacks  int
	IDs        int // object ids in its callbacks, repeats included
	Data       []byte
}

// Decode calls fn for each callback in the batch, in order, with its receipt time in
// Unix microseconds and its ids. ids is scratch space that is reused and returned, so
// fn must not keep the slice it is given. An error means the data is malformed: fn may
// have been called for the callbacks before the fault.
func (b InboxBatch) Decode(ids []int64, fn func(id uuid.UUID, receivedAt int64, ids []int64)) ([]int64, error) {
	return decodeBatch(b.Data, ids, fn)
}

// MergeTx is the transaction of one merge pass.
type MergeTx struct {
	q *dbsqlc.Queries
}

// InMergeTx runs fn in one transaction, and commits it if fn returns nil. Every
// statement in it is planned for its actual parameters (ForceCustomPlans): a pass sends
// arrays of one to a million ids.
func (s *Store) InMergeTx(ctx context.Context, fn func(tx *MergeTx) error) error {
	return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		q := s.q.WithTx(tx)
		if err := q.ForceCustomPlans(ctx); err != nil {
			return fmt.Errorf("setting plan mode: %w", err)
		}
		return fn(&MergeTx{q: q})
	})
}

// DropStaleBatches deletes, unread, the batches whose newest receipt is older than
// cutoff, and returns how many batches and how many ids they held.
func (tx *MergeTx) DropStaleBatches(ctx context.Context, cutoff time.Time) (batches, ids int64, err error) {
	d, err := tx.q.DropStaleBatches(ctx, cutoff)
	if err != nil {
		return 0, 0, fmt.Errorf("dropping stale inbox batches: %w", err)
	}
	return d.Batches, d.IDs, nil
}

// LockBatches locks and reads the newest batches whose newest receipt is at or after
// cutoff, skipping those another merger holds: at most maxBatches, and no further
// batch once maxIDs ids are read. Newest first.
func (tx *MergeTx) LockBatches(ctx context.Context, cutoff time.Time, maxBatches, maxIDs int) ([]InboxBatch, error) {
	rows, err := tx.q.LockBatches(ctx, dbsqlc.LockBatchesParams{Cutoff: cutoff, MaxBatches: int32(maxBatches), MaxIDs: int64(maxIDs)})
	if err != nil {
		return nil, fmt.Errorf("reading inbox batches: %w", err)
	}
	batches := make([]InboxBatch, len(rows))
	for i, r := range rows {
		batches[i] = InboxBatch{ID: r.BatchID, ReceivedAt: r.ReceivedAt, Callbacks: int(r.Callbacks), IDs: int(r.IDs), Data: r.Data}
	}
	return batches, nil
}

// RememberMerged records every batch the pass took, so that a spooled copy of one of
// them is not merged again (ReplaySegment).
func (tx *MergeTx) RememberMerged(ctx context.Context, batchIDs []uuid.UUID) error {
	if err := tx.q.RememberMergedBatches(ctx, batchIDs); err != nil {
		return fmt.Errorf("remembering merged batches: %w", err)
	}
	return nil
}

// Quarantine keeps a batch that cannot be decoded in inbox_quarantine, as it was, with
// why.
func (tx *MergeTx) Quarantine(ctx context.Context, b InboxBatch, reason error) error {
	if err := tx.q.QuarantineBatch(ctx, dbsqlc.QuarantineBatchParams{
		BatchID: b.ID, ReceivedAt: b.ReceivedAt, Callbacks: int32(b.Callbacks), IDs: int32(b.IDs), Data: b.Data, Error: reason.Error(),
	}); err != nil {
		return fmt.Errorf("quarantining inbox batch %s: %w", b.ID, err)
	}
	return nil
}

// DeleteBatches deletes the batches the pass took.
func (tx *MergeTx) DeleteBatches(ctx context.Context, batchIDs []uuid.UUID) error {
	if err := tx.q.DeleteBatches(ctx, batchIDs); err != nil {
		return fmt.Errorf("deleting merged inbox batches: %w", err)
	}
	return nil
}

// PeekBatches reads, without locking or taking them, up to maxBatches batches whose id
// is above after (committed since then, batch ids being UUIDv7), in id order.
func (s *Store) PeekBatches(ctx context.Context, after uuid.UUID, maxBatches int) ([]InboxBatch, error) {
	rows, err := s.q.PeekBatches(ctx, dbsqlc.PeekBatchesParams{After: after, MaxBatches: int32(maxBatches)})
	if err != nil {
		return nil, fmt.Errorf("reading new inbox batches: %w", err)
	}
	batches := make([]InboxBatch, len(rows))
	for i, r := range rows {
		batches[i] = InboxBatch{ID: r.BatchID, ReceivedAt: r.ReceivedAt, Callbacks: int(r.Callbacks), IDs: int(r.IDs), Data: r.Data}
	}
	return batches, nil
}

// MinBatchID is the smallest batch id minted at t or later (ids are UUIDv7).
func MinBatchID(t time.Time) uuid.UUID { return minUUIDv7(t) }

// BatchRest is what a pass leaves of a batch it took some callbacks from: the rest of
// its callbacks, encoded (callback.AppendEncoded), with their oldest and newest receipt.
type BatchRest struct {
	ID                         uuid.UUID
	ReceivedAt, LastReceivedAt time.Time
	Callbacks, IDs             int
	Data                       []byte
}

// KeepBatchRests writes back what is left of batches the pass took callbacks from.
func (tx *MergeTx) KeepBatchRests(ctx context.Context, rests []BatchRest) error {
	if len(rests) == 0 {
		return nil
	}
	p := dbsqlc.KeepBatchRestsParams{
		BatchIDs: make([]uuid.UUID, len(rests)), ReceivedAts: make([]time.Time, len(rests)),
		LastReceivedAts: make([]time.Time, len(rests)), Callbacks: make([]int32, len(rests)),
		IDs: make([]int32, len(rests)), Datas: make([][]byte, len(rests)),
	}
	for i, r := range rests {
		p.BatchIDs[i], p.ReceivedAts[i], p.LastReceivedAts[i] = r.ID, r.ReceivedAt, r.LastReceivedAt
		p.Callbacks[i], p.IDs[i], p.Datas[i] = int32(r.Callbacks), int32(r.IDs), r.Data
	}
	if err := tx.q.KeepBatchRests(ctx, p); err != nil {
		return fmt.Errorf("keeping the rest of inbox batches: %w", err)
	}
	return nil
}

// CountWaiting counts the pending rows that are or will be looked up (not done ones).
func (tx *MergeTx) CountWaiting(ctx context.Context) (int64, error) {
	n, err := tx.q.CountWaiting(ctx)
	if err != nil {
		return 0, fmt.Errorf("counting waiting pending rows: %w", err)
	}
	return n, nil
}

// PendingMerged is what one MergePending did.
type PendingMerged struct {
	Changed    int64 // pending rows inserted or given a newer receipt
	Fresh      int64 // ids with no pending row before
	FreshTaken int64 // of those, the ones made pending
	Rearm      int64 // done rows (already looked up) given a newer receipt
	Rearmed    int64 // of those, the ones made due for another lookup
	Evicted    int64 // waiting rows ranked below this pass, deleted to make room
}

// MergeParams is one MergePending: ids distinct and ascending, each with its newest
// receipt; see queries/inbox.sql.
type MergeParams struct {
	IDs         []int64
	ReceivedAts []time.Time
	// Ordinals: each id's turn in the round robin over the callbacks that named it,
	// which decides who gets the room when there is not enough (queries/inbox.sql).
	Ordinals []int32
	// Handicaps: how far below its receipt each id ranks (0 but for a flood's ids).
	Handicaps []time.Duration
	// Room: fresh ids (and re-checks) that fit under the bound on waiting rows. More
	// fresh ids evict waiting rows ranked below this pass, as many as they need.
	Room int64
	// MaxEvict bounds the waiting rows one call evicts for fresh ids.
	MaxEvict int64
	// Now is the service's clock: receipts are ranked by their age on it.
	Now time.Time
	// Recheck: how far a re-check ranks below a first lookup of the same receipt.
	Recheck time.Duration
}

// MergePending gives each id its newest receipt in pending; see MergeParams.
func (tx *MergeTx) MergePending(ctx context.Context, p MergeParams) (PendingMerged, error) {
	handicaps := make([]int64, len(p.IDs))
	for i := range p.Handicaps {
		handicaps[i] = p.Handicaps[i].Milliseconds()
	}
	r, err := tx.q.MergePending(ctx, dbsqlc.MergePendingParams{
		IDs: p.IDs, ReceivedAts: p.ReceivedAts, Ordinals: p.Ordinals, HandicapsMs: handicaps, Room: max(p.Room, 0), MaxEvict: max(p.MaxEvict, 0),
		Now: p.Now, RecheckMs: p.Recheck.Milliseconds(),
	})
	if err != nil {
		return PendingMerged{}, fmt.Errorf("merging into pending: %w", err)
	}
	return PendingMerged(r), nil
}

// RefreshObjects moves last_seen of the online objects among ids (distinct, ascending:
// the lock order) forward to their receipts, in a transaction of its own, and returns
// how many moved.
func (s *Store) RefreshObjects(ctx context.Context, ids []int64, receivedAts []time.Time) (int64, error) {
	var n int64
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		q := s.q.WithTx(tx)
		if err := q.ForceCustomPlans(ctx); err != nil {
			return err
		}
		var err error
		n, err = q.RefreshObjects(ctx, dbsqlc.RefreshObjectsParams{IDs: ids, ReceivedAts: receivedAts})
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("refreshing online objects: %w", err)
	}
	return n, nil
}
