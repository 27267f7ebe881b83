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

// InsertCallbacks makes a batch of callbacks durable in one row, one transaction, under
// a new batch id: when it returns nil, every one of them is in a committed inbox_batches
// row.
func (s *Store) InsertCallbacks(ctx context.Context, cbs []callback.Callback) error {
	return s.InsertBatch(ctx, uuid.Must(uuid.NewV7()), cbs)
}

// InsertBatch is InsertCallbacks under the batch id the caller minted: the group
// committer mints it before the write so that the spooled copy of a write whose outcome
// it never learnt carries the same id (ReplaySegment).
func (s *Store) InsertBatch(ctx context.Context, batchID uuid.UUID, cbs []callback.Callback) error {
	return insertBatch(ctx, s.q, batchID, cbs)
}

func insertBatch(ctx context.Context, q *dbsqlc.Queries, batchID uuid.UUID, cbs []callback.Callback) error {
	if len(cbs) == 0 {
		return nil
	}
	buf := batchBufs.Get().(*[]byte)
	defer putBatchBuf(buf)
	if err := q.InsertBatch(ctx, dbsqlc.InsertBatchParams(batchRow(buf, batchID, cbs))); err != nil {
		return fmt.Errorf("inserting a batch of %d callbacks: %w", len(cbs), err)
	}
	return nil
}

// batchRow encodes cbs into *buf and returns the inbox row that holds them.
func batchRow(buf *[]byte, batchID uuid.UUID, cbs []callback.Callback) dbsqlc.InsertReplayedBatchParams {
	*buf = appendBatch((*buf)[:0], cbs)
	oldest, ids := cbs[0].ReceivedAt, 0
	for _, cb := range cbs {
		if cb.ReceivedAt.Before(oldest) {
			oldest = cb.ReceivedAt
		}
		ids += len(cb.ObjectIDs)
	}
	return dbsqlc.InsertReplayedBatchParams{
		BatchID:    batchID,
		ReceivedAt: oldest,
		Callbacks:  int32(len(cbs)),
		Ids:        int32(min(ids, 1<<31-1)),
		Data:       *buf,
	}
}

func putBatchBuf(buf *[]byte) {
	if cap(*buf) <= 1<<20 { // a rare huge batch is not kept around
		batchBufs.Put(buf)
	}
}

// ReplaySegment moves the batches of one spool segment into the inbox, exactly once:
// the segment id is recorded in the same transaction, and a segment already recorded
// is skipped (it was replayed just before a crash that kept its file from being
// removed). Returns how many callbacks it inserted.
//
// A batch may be both in the spool and in the inbox: its commit timed out but
// committed, so the committer spooled it too, under the same batch id. Its inbox copy
// may still be there, or may have been merged and looked up long ago. Merging it again
// would look its objects up again (up to 65,536 lookups for one batch), and with two
// replicas could put back a row, with an old last_seen, that a newer lookup deleted. So
// a batch is inserted under its own id, and not at all if the inbox still holds that id
// or merged_batches says it was merged (queries/inbox.sql InsertReplayedBatch and
// DropMergedReplays; how long merged ids are remembered: ForgetMergedBatches).
//
// A batch without an id comes from a segment written before batches had ids: it gets
// new ids, as it always did, and may be merged twice.
func (s *Store) ReplaySegment(ctx context.Context, segment uuid.UUID, batches []callback.Batch) (int, error) {
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
		var ids []uuid.UUID
		buf := batchBufs.Get().(*[]byte)
		defer putBatchBuf(buf)
		for _, b := range batches {
			if len(b.Callbacks) == 0 {
				continue
			}
			if b.ID == uuid.Nil {
				for rest := b.Callbacks; len(rest) > 0; {
					n := batchLen(rest)
					if err := insertBatch(ctx, q, uuid.Must(uuid.NewV7()), rest[:n]); err != nil {
						return err
					}
					inserted += n
					rest = rest[n:]
				}
				continue
			}
			// Written by one group commit, so already within the batch bounds.
			n, err := q.InsertReplayedBatch(ctx, batchRow(buf, b.ID, b.Callbacks))
			if err != nil {
				return fmt.Errorf("inserting batch %s of %d callbacks: %w", b.ID, len(b.Callbacks), err)
			}
			if n > 0 {
				inserted += len(b.Callbacks)
				ids = append(ids, b.ID)
			}
		}
		if len(ids) > 0 {
			dropped, err := q.DropMergedReplays(ctx, ids)
			if err != nil {
				return fmt.Errorf("dropping batches merged meanwhile: %w", err)
			}
			inserted -= int(dropped)
		}
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

// rememberMergedBatches records, in a merge pass's transaction, every batch it took,
// so that a spooled copy of one of them is not merged again (ReplaySegment).
func rememberMergedBatches(ctx context.Context, q *dbsqlc.Queries, rows []dbsqlc.InboxBatch) error {
	ids := make([]uuid.UUID, len(rows))
	for i, r := range rows {
		ids[i] = r.BatchID
	}
	if err := q.RememberMergedBatches(ctx, ids); err != nil {
		return fmt.Errorf("remembering merged batches: %w", err)
	}
	return nil
}

// ForgetMergedBatches forgets the merged batches whose ids were minted before before,
// and returns how many. Batch ids are UUIDv7 minted by the committer just before the
// write, so this is a range delete on the primary key.
//
// How long to remember. A spooled copy of a merged batch can come back at any time:
// the spool keeps it for as long as Postgres is unreachable from that host, which has no
// bound. But every receipt in a batch is older than its id (the committer mints the id
// after the callbacks arrived). So a copy replayed after its id was forgotten holds only
// receipts older than before, and if before is at least the expiry window in the past,
// every one of them has left the window: the fetcher drops such a pending row at claim
// without a lookup, CompleteLookups never writes a receipt older than its cutoff, and a
// merge only ever moves last_seen forward. The late duplicate then costs one pending row
// per id and changes nothing in objects.
//
// So the bound for correctness is: before <= now - EXPIRE_AFTER - the clock skew between
// replicas (ids are minted on the replicas' clocks). Remembering longer only spares
// pending rows after longer outages; the table grows with the merge rate (one row per
// group commit, ~450/s at 10k callbacks/s), so an hour is a reasonable default.
func (s *Store) ForgetMergedBatches(ctx context.Context, before time.Time) (int64, error) {
	return s.q.ForgetMergedBatches(ctx, minUUIDv7(before))
}

// minUUIDv7 is the smallest UUIDv7 of t's millisecond: every UUIDv7 minted before t's
// millisecond sorts below it, byte by byte, as Postgres compares uuids.
func minUUIDv7(t time.Time) uuid.UUID {
	var u uuid.UUID
	ms := uint64(max(t.UnixMilli(), 0))
	for i := range 6 {
		u[i] = byte(ms >> (40 - 8*i))
	}
	u[6] = 0x70 // version 7
	u[8] = 0x80 // RFC 4122 variant
	return u
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
		if err := rememberMergedBatches(ctx, q, rows); err != nil {
			return err
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
