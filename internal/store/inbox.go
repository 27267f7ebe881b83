package store

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/objwatch/callback/internal/callback"
	"github.com/objwatch/callback/internal/store/internal/dbsqlc"
)

// Batch bounds, for callers that cut callbacks into batches: a batch holds at most
// MaxBatchCallbacks callbacks and, unless one callback alone is bigger, at most
// MaxBatchIDs ids. They keep a merge pass's memory bounded (ClaimBatches).
const (
	MaxBatchCallbacks = 1024
	MaxBatchIDs       = 1 << 16
)

var batchBufs = sync.Pool{New: func() any { return new([]byte) }}

// InsertCallbacks makes a batch of callbacks durable in one row, one transaction: when
// it returns nil, every one of them is in a committed inbox_batches row.
func (s *Store) InsertCallbacks(ctx context.Context, cbs []callback.Callback) error {
	return insertBatch(ctx, s.q, cbs)
}

func insertBatch(ctx context.Context, q *dbsqlc.Queries, cbs []callback.Callback) error {
	if len(cbs) == 0 {
		return nil
	}
	buf := batchBufs.Get().(*[]byte)
	defer func() {
		if cap(*buf) <= 1<<20 { // a rare huge batch is not kept around
			batchBufs.Put(buf)
		}
	}()
	*buf = appendBatch((*buf)[:0], cbs)
	oldest, ids := cbs[0].ReceivedAt, 0
	for _, cb := range cbs {
		if cb.ReceivedAt.Before(oldest) {
			oldest = cb.ReceivedAt
		}
		ids += len(cb.ObjectIDs)
	}
	err := q.InsertBatch(ctx, dbsqlc.InsertBatchParams{
		BatchID:    uuid.Must(uuid.NewV7()),
		ReceivedAt: oldest,
		Callbacks:  int32(len(cbs)),
		Ids:        int32(min(ids, 1<<31-1)),
		Data:       *buf,
	})
	if err != nil {
		return fmt.Errorf("inserting a batch of %d callbacks: %w", len(cbs), err)
	}
	return nil
}

// ReplaySegment moves the callbacks of one spool segment into the inbox, exactly once:
// the segment id is recorded in the same transaction, and a segment already recorded
// is skipped (it was replayed just before a crash that kept its file from being
// removed). Returns how many callbacks it inserted.
//
// A callback may be both in the spool and in the inbox, already merged or not: its
// commit succeeded but the answer was lost, so the committer spooled it too. It is then
// merged twice, which changes nothing: a merge keeps the newest receipt per object, and
// both copies carry the same one.
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
		for rest := cbs; len(rest) > 0; {
			n := batchLen(rest)
			if err := insertBatch(ctx, q, rest[:n]); err != nil {
				return err
			}
			rest = rest[n:]
		}
		inserted = len(cbs)
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("replaying segment %s: %w", segment, err)
	}
	return inserted, nil
}

// batchLen is how many of cbs, from the first, make one batch within the bounds.
func batchLen(cbs []callback.Callback) int {
	ids := 0
	for i, cb := range cbs {
		ids += len(cb.ObjectIDs)
		if i == MaxBatchCallbacks || i > 0 && ids > MaxBatchIDs {
			return i
		}
	}
	return len(cbs)
}

// ForgetSpoolReplays drops replay records older than before.
func (s *Store) ForgetSpoolReplays(ctx context.Context, before time.Time) (int64, error) {
	return s.q.ForgetSpoolReplays(ctx, before)
}

// Merged is what one MergeInbox did.
type Merged struct {
	Batches   int64 // inbox rows consumed
	Callbacks int64 // callbacks in them
	Ids       int64 // distinct object ids in them
	Changed   int64 // pending rows inserted or given a newer receipt
	Refreshed int64 // online objects whose last_seen moved forward
	Full      bool  // the pass stopped at a bound: more may be waiting

	// Quarantined: batches that could not be decoded, moved to inbox_quarantine.
	Quarantined []Quarantined
}

// Quarantined is one batch the merger set aside.
type Quarantined struct {
	BatchID   uuid.UUID
	Callbacks int
	Err       error
}

type idTime struct{ id, t int64 }

// MergeInbox moves the oldest inbox batches into pending, in one transaction: at most
// maxBatches rows, and no further row once maxIDs ids are taken. The batches are decoded
// here, and every object id they name goes to pending once, with the newest receipt
// that names it (queries/inbox.sql ClaimBatches and MergePending).
func (s *Store) MergeInbox(ctx context.Context, maxBatches, maxIDs int) (Merged, error) {
	var m Merged
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		q := s.q.WithTx(tx)
		rows, err := q.ClaimBatches(ctx, dbsqlc.ClaimBatchesParams{MaxBatches: int32(maxBatches), MaxIds: int64(maxIDs)})
		if err != nil {
			return fmt.Errorf("claiming inbox batches: %w", err)
		}
		if len(rows) == 0 {
			return nil
		}
		m.Batches = int64(len(rows))
		taken := 0
		newest := make(map[int64]int64) // object id -> newest receipt, Unix microseconds
		var scratch []int64
		var staged []idTime
		for _, r := range rows {
			taken += int(r.Ids)
			// Decoded whole before any of it counts: a batch that breaks off halfway
			// contributes nothing rather than a prefix of possible garbage.
			staged = staged[:0]
			scratch, err = decodeBatch(r.Data, scratch, func(_ uuid.UUID, t int64, ids []int64) {
				for _, id := range ids {
					staged = append(staged, idTime{id, t})
				}
			})
			if err != nil {
				// Kept aside in this transaction, never dropped, and never allowed to
				// stop every later pass at the same row.
				if err := q.QuarantineBatch(ctx, dbsqlc.QuarantineBatchParams{
					BatchID: r.BatchID, ReceivedAt: r.ReceivedAt, Callbacks: r.Callbacks, Ids: r.Ids, Data: r.Data, Error: err.Error(),
				}); err != nil {
					return fmt.Errorf("quarantining inbox batch %s: %w", r.BatchID, err)
				}
				m.Quarantined = append(m.Quarantined, Quarantined{BatchID: r.BatchID, Callbacks: int(r.Callbacks), Err: err})
				continue
			}
			m.Callbacks += int64(r.Callbacks)
			for _, it := range staged {
				if old, ok := newest[it.id]; !ok || it.t > old {
					newest[it.id] = it.t
				}
			}
		}
		m.Full = len(rows) == maxBatches || taken >= maxIDs
		ids := make([]int64, 0, len(newest))
		for id := range newest {
			ids = append(ids, id)
		}
		slices.Sort(ids) // the lock order, and what the upsert reads best
		times := make([]time.Time, len(ids))
		for i, id := range ids {
			times[i] = time.UnixMicro(newest[id])
		}
		m.Ids = int64(len(ids))
		if len(ids) == 0 {
			return nil
		}
		r, err := q.MergePending(ctx, dbsqlc.MergePendingParams{Ids: ids, ReceivedAts: times})
		if err != nil {
			return fmt.Errorf("merging into pending: %w", err)
		}
		m.Changed, m.Refreshed = r.Changed, r.Refreshed
		return nil
	})
	if err != nil {
		return Merged{}, fmt.Errorf("merging inbox: %w", err)
	}
	return m, nil
}

// Inbox reads every callback in the inbox without taking it, oldest batch first: for
// tests and diagnostics.
func (s *Store) Inbox(ctx context.Context) ([]callback.Callback, error) {
	rows, err := s.pool.Query(ctx, "SELECT data FROM inbox_batches ORDER BY batch_id")
	if err != nil {
		return nil, err
	}
	datas, err := pgx.CollectRows(rows, pgx.RowTo[[]byte])
	if err != nil {
		return nil, err
	}
	var cbs []callback.Callback
	var scratch []int64
	for _, d := range datas {
		scratch, err = decodeBatch(d, scratch, func(id uuid.UUID, t int64, ids []int64) {
			cb := callback.Callback{ID: id, ReceivedAt: time.UnixMicro(t).UTC()}
			if len(ids) > 0 {
				cb.ObjectIDs = slices.Clone(ids)
			}
			cbs = append(cbs, cb)
		})
		if err != nil {
			return nil, err
		}
	}
	return cbs, nil
}
