package store

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/objwatch/callback/internal/callback"
	"github.com/objwatch/callback/internal/store/internal/dbsqlc"
)

// Batch bounds, for callers that cut callbacks into batches: a batch holds at most
// MaxBatchCallbacks callbacks and, unless one callback alone is bigger, at most
// MaxBatchIDs ids. They keep a merge pass's memory bounded (LockBatches).
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
	if err := q.InsertBatch(ctx, batchRow(buf, batchID, cbs)); err != nil {
		return fmt.Errorf("inserting a batch of %d callbacks: %w", len(cbs), err)
	}
	return nil
}

// batchRow encodes cbs into *buf and returns the inbox row that holds them.
func batchRow(buf *[]byte, batchID uuid.UUID, cbs []callback.Callback) dbsqlc.InsertBatchParams {
	*buf = callback.AppendEncoded((*buf)[:0], cbs)
	oldest, newest, ids := cbs[0].ReceivedAt, cbs[0].ReceivedAt, 0
	for _, cb := range cbs {
		if cb.ReceivedAt.Before(oldest) {
			oldest = cb.ReceivedAt
		}
		if cb.ReceivedAt.After(newest) {
			newest = cb.ReceivedAt
		}
		ids += len(cb.ObjectIDs)
	}
	return dbsqlc.InsertBatchParams{
		BatchID:        batchID,
		ReceivedAt:     oldest,
		LastReceivedAt: newest,
		Callbacks:      int32(len(cbs)),
		IDs:            int32(min(ids, 1<<31-1)),
		Data:           *buf,
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
// or merged_batches says it was merged (queries/inbox.sql InsertReplayedBatches and
// DropMergedReplays; how long merged ids are remembered: ForgetMergedBatches).
//
// The batches go in ReplayChunk at a time, one statement each: a segment written during
// a long outage with small callbacks holds tens of thousands of batches, and one round
// trip each would not fit any deadline (inbox.ReplayBudget counts batches and ids).
//
// A batch without an id comes from a segment written before batches had ids: it gets
// new ids, as it always did, and may be merged twice.
func (s *Store) ReplaySegment(ctx context.Context, segment uuid.UUID, batches []callback.Batch) (int, error) {
	inserted := 0
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		inserted = 0 // a retried transaction starts over
		q := s.q.WithTx(tx)
		fresh, err := q.MarkSpoolReplayed(ctx, segment)
		if err != nil {
			return fmt.Errorf("marking segment: %w", err)
		}
		if fresh == 0 {
			return nil
		}
		var rows dbsqlc.InsertReplayedBatchesParams
		var ids []uuid.UUID
		flush := func() error {
			if len(rows.BatchIDs) == 0 {
				return nil
			}
			got, err := q.InsertReplayedBatches(ctx, rows)
			if err != nil {
				return fmt.Errorf("inserting %d batches: %w", len(rows.BatchIDs), err)
			}
			for _, r := range got {
				inserted += int(r.Callbacks)
				ids = append(ids, r.BatchID)
			}
			rows = dbsqlc.InsertReplayedBatchesParams{}
			return nil
		}
		add := func(id uuid.UUID, cbs []callback.Callback) error {
			var buf []byte // each row keeps its own bytes until the statement is sent
			r := batchRow(&buf, id, cbs)
			rows.BatchIDs = append(rows.BatchIDs, r.BatchID)
			rows.ReceivedAts = append(rows.ReceivedAts, r.ReceivedAt)
			rows.LastReceivedAts = append(rows.LastReceivedAts, r.LastReceivedAt)
			rows.Callbacks = append(rows.Callbacks, r.Callbacks)
			rows.IDs = append(rows.IDs, r.IDs)
			rows.Datas = append(rows.Datas, r.Data)
			if len(rows.BatchIDs) >= ReplayChunk {
				return flush()
			}
			return nil
		}
		for _, b := range batches {
			if len(b.Callbacks) == 0 {
				continue
			}
			if b.ID != uuid.Nil {
				// Written by one group commit, so already within the batch bounds.
				if err := add(b.ID, b.Callbacks); err != nil {
					return err
				}
				continue
			}
			for rest := b.Callbacks; len(rest) > 0; {
				n := batchLen(rest)
				if err := add(uuid.Must(uuid.NewV7()), rest[:n]); err != nil {
					return err
				}
				rest = rest[n:]
			}
		}
		if err := flush(); err != nil {
			return err
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

// ReplayChunk: batches per statement when a segment is replayed. A few megabytes of
// batch data at most (a segment is 8 MiB), and well under a second of Postgres.
const ReplayChunk = 4096

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

// ForgetMergedBatches forgets the merged batches whose ids were minted before before,
// and returns how many. Batch ids are UUIDv7 minted by the committer just before the
// write, so this is a range delete on the primary key.
//
// How long to remember. A spooled copy of a merged batch can come back at any time:
// the spool keeps it for as long as Postgres is unreachable from that host, which has no
// bound. But every receipt in a batch is older than its id (the committer mints the id
// after the callbacks arrived). So a copy replayed after its id was forgotten holds only
// receipts older than before, and if before is at least the expiry window in the past,
// every one of them has left the window: a merge pass drops such a batch or callback
// before it reaches pending (DropStaleBatches, and the merger's cutoff on each callback
// it decodes), ClaimDue never claims
// a receipt past the window, CompleteLookups never writes one, and a merge only ever
// moves last_seen forward. The late duplicate then changes nothing.
//
// So the bound for correctness is: before <= now - EXPIRE_AFTER - the clock skew between
// replicas (ids are minted on the replicas' clocks). Remembering longer costs rows: the
// table grows with the merge rate (one row per group commit, ~450/s at 10k callbacks/s),
// so twice the window, or the window plus a few minutes, is plenty.
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

// OldestUnmerged is the oldest receipt waiting in the inbox whose batch is still within
// the window (newest receipt at or after cutoff), or now if there is none.
func (s *Store) OldestUnmerged(ctx context.Context, cutoff, now time.Time) (time.Time, error) {
	t, err := s.q.OldestUnmerged(ctx, dbsqlc.OldestUnmergedParams{Cutoff: cutoff, Now: now})
	if err != nil {
		return time.Time{}, fmt.Errorf("reading the oldest unmerged receipt: %w", err)
	}
	return t, nil
}
