package store

import (
	"context"
	"fmt"
	"math"
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
	err := q.InsertBatch(ctx, dbsqlc.InsertBatchParams{
		BatchID:        uuid.Must(uuid.NewV7()),
		ReceivedAt:     oldest,
		LastReceivedAt: newest,
		Callbacks:      int32(len(cbs)),
		Ids:            int32(min(ids, 1<<31-1)),
		Data:           *buf,
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

// MergeParams bounds one merge pass.
type MergeParams struct {
	MaxBatches int // inbox rows per pass at most
	MaxIDs     int // no further row once a pass holds this many ids
	// MaxPending bounds the pending rows the pass leaves: ids not pending yet beyond it
	// are dropped for capacity, the newest receipts kept. 0: no bound.
	MaxPending int
	// Cutoff: receipts older than this left the window and are dropped, whole batches
	// unread. Zero: none is.
	Cutoff time.Time
}

// Merged is what one merge pass did.
type Merged struct {
	Batches   int64 // inbox rows consumed
	Callbacks int64 // callbacks in them
	Ids       int64 // distinct object ids in them, within the window
	Changed   int64 // pending rows inserted or given a newer receipt
	Refreshed int64 // online objects whose last_seen moved forward
	Full      bool  // the pass stopped at a bound: more may be waiting

	// Dropped before they cost anything (see MergeParams): batches, and their
	// callbacks and ids, whose newest receipt left the window (deleted unread); ids in
	// batches taken whose callback left the window; ids not made pending for lack of room.
	StaleBatches, StaleCallbacks, StaleBatchIDs int64
	StaleIDs                                    int64
	NoRoom                                      int64

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

// MergeInbox is Merge with no window and no bound on pending rows.
func (s *Store) MergeInbox(ctx context.Context, maxBatches, maxIDs int) (Merged, error) {
	return s.Merge(ctx, MergeParams{MaxBatches: maxBatches, MaxIDs: maxIDs})
}

// Merge moves the newest inbox batches into pending, in one transaction: at most
// MaxBatches rows, and no further row once MaxIDs ids are taken. Batches and callbacks
// that left the window are dropped first. The batches are decoded here, every object id
// they name goes to pending once, with the newest receipt that names it, within
// MaxPending (queries/inbox.sql: DropStaleBatches, ClaimBatches, MergePending), and
// online objects named take the newer receipt as last_seen (RefreshObjects).
//
// A pass costs per distinct id, not per id received: the map keeps one entry per
// object, and the statements see each object once, however many callbacks named it.
func (s *Store) Merge(ctx context.Context, p MergeParams) (Merged, error) {
	var m Merged
	cutoff := p.Cutoff.UnixMicro()
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		q := s.q.WithTx(tx)
		if err := q.ForceCustomPlans(ctx); err != nil {
			return fmt.Errorf("setting plan mode: %w", err)
		}
		if !p.Cutoff.IsZero() {
			d, err := q.DropStaleBatches(ctx, p.Cutoff)
			if err != nil {
				return fmt.Errorf("dropping stale inbox batches: %w", err)
			}
			m.StaleBatches, m.StaleCallbacks, m.StaleBatchIDs = d.Batches, d.Callbacks, d.Ids
		}
		rows, err := q.ClaimBatches(ctx, dbsqlc.ClaimBatchesParams{Cutoff: p.Cutoff, MaxBatches: int32(p.MaxBatches), MaxIds: int64(p.MaxIDs)})
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
			stale := int64(0)
			scratch, err = decodeBatch(r.Data, scratch, func(_ uuid.UUID, t int64, ids []int64) {
				if t < cutoff {
					stale += int64(len(ids))
					return
				}
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
			m.StaleIDs += stale
			for _, it := range staged {
				if old, ok := newest[it.id]; !ok || it.t > old {
					newest[it.id] = it.t
				}
			}
		}
		m.Full = len(rows) == p.MaxBatches || taken >= p.MaxIDs
		ids := make([]int64, 0, len(newest))
		for id := range newest {
			ids = append(ids, id)
		}
		slices.Sort(ids) // the lock order, and what the statements read best
		times := make([]time.Time, len(ids))
		for i, id := range ids {
			times[i] = time.UnixMicro(newest[id])
		}
		clear(newest)
		m.Ids = int64(len(ids))
		if len(ids) == 0 {
			return nil
		}
		// The refresh commits on its own connection before this transaction, which so
		// far holds only the inbox rows it took; see RefreshObjects.
		if m.Refreshed, err = s.refreshObjects(ctx, ids, times); err != nil {
			return err
		}
		maxNew := int64(math.MaxInt64)
		if p.MaxPending > 0 {
			n, err := q.CountPending(ctx)
			if err != nil {
				return fmt.Errorf("counting pending rows: %w", err)
			}
			maxNew = max(int64(p.MaxPending)-n, 0)
		}
		r, err := q.MergePending(ctx, dbsqlc.MergePendingParams{Ids: ids, ReceivedAts: times, MaxNew: maxNew})
		if err != nil {
			return fmt.Errorf("merging into pending: %w", err)
		}
		m.Changed = r.Changed
		m.NoRoom = r.Fresh - r.FreshTaken
		return nil
	})
	if err != nil {
		return Merged{}, fmt.Errorf("merging inbox: %w", err)
	}
	return m, nil
}

// refreshObjects moves last_seen of online objects forward to the receipts given (ids
// sorted), in a transaction of its own.
func (s *Store) refreshObjects(ctx context.Context, ids []int64, times []time.Time) (int64, error) {
	var n int64
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		q := s.q.WithTx(tx)
		if err := q.ForceCustomPlans(ctx); err != nil {
			return err
		}
		var err error
		n, err = q.RefreshObjects(ctx, dbsqlc.RefreshObjectsParams{Ids: ids, ReceivedAts: times})
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("refreshing online objects: %w", err)
	}
	return n, nil
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
