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
	if err := q.InsertBatch(ctx, dbsqlc.InsertBatchParams(batchRow(buf, batchID, cbs))); err != nil {
		return fmt.Errorf("inserting a batch of %d callbacks: %w", len(cbs), err)
	}
	return nil
}

// batchRow encodes cbs into *buf and returns the inbox row that holds them.
func batchRow(buf *[]byte, batchID uuid.UUID, cbs []callback.Callback) dbsqlc.InsertReplayedBatchParams {
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
	return dbsqlc.InsertReplayedBatchParams{
		BatchID:        batchID,
		ReceivedAt:     oldest,
		LastReceivedAt: newest,
		Callbacks:      int32(len(cbs)),
		Ids:            int32(min(ids, 1<<31-1)),
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
func rememberMergedBatches(ctx context.Context, q *dbsqlc.Queries, rows []dbsqlc.LockBatchesRow) error {
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
// every one of them has left the window: Merge drops such a batch or callback before
// it reaches pending (DropStaleBatches, the cutoff in the decode), ClaimDue never claims
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

// ForgetSpoolReplays drops replay records older than before.
func (s *Store) ForgetSpoolReplays(ctx context.Context, before time.Time) (int64, error) {
	return s.q.ForgetSpoolReplays(ctx, before)
}

// MergeParams bounds one merge pass.
type MergeParams struct {
	MaxBatches int // inbox rows read per pass at most
	MaxIDs     int // no further row read once the pass holds this many ids
	// MaxDistinct: distinct ids the pass offers to pending at most, newest batches
	// first; ids named only after that refresh online objects and are otherwise dropped
	// for capacity. 0: no bound. The pending upsert costs per distinct id: this bounds
	// the pass's duration and the locks it holds, while every batch read is consumed.
	MaxDistinct int
	// MaxNew: ids not pending yet that one pass makes pending, at most (0: no bound
	// but MaxPending). Lookups take a few thousand a second; more would only wait.
	MaxNew int
	// MaxPending bounds the pending rows the pass leaves: when they are that many,
	// waiting rows with receipts older than the pass's are evicted to make room for up
	// to MaxNew newer ones, and ids beyond that are dropped for capacity, the newest
	// receipts kept. 0: no bound.
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

	// Dropped before they cost anything (see MergeParams): batches, and their ids,
	// whose newest receipt left the window (deleted unread); ids in batches taken whose
	// callback left the window; ids not made pending for lack of room.
	StaleBatches, StaleBatchIDs int64
	StaleIDs                    int64
	NoRoom                      int64
	// Evicted: waiting pending rows with older receipts deleted to make room for this
	// pass's newer ones.
	Evicted int64

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
// MaxBatches rows, and no further row once MaxIDs ids are read. Batches and callbacks
// that left the window are dropped first. The batches are decoded here; the first
// MaxDistinct object ids go to pending once each, with the newest receipt that names
// them, within MaxNew and MaxPending (queries/inbox.sql: DropStaleBatches, LockBatches,
// MergePending, EvictPending), and every online object named takes the newer receipt
// as last_seen (RefreshObjects).
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
			m.StaleBatches, m.StaleBatchIDs = d.Batches, d.Ids
		}
		rows, err := q.LockBatches(ctx, dbsqlc.LockBatchesParams{Cutoff: p.Cutoff, MaxBatches: int32(p.MaxBatches), MaxIds: int64(p.MaxIDs)})
		if err != nil {
			return fmt.Errorf("reading inbox batches: %w", err)
		}
		if len(rows) == 0 {
			return nil
		}
		// Every batch read is consumed (DeleteBatches below, in this transaction).
		if err := rememberMergedBatches(ctx, q, rows); err != nil {
			return err
		}
		taken := 0
		// newest: object id -> newest receipt (Unix microseconds) of the ids this pass
		// offers to pending: the first MaxDistinct distinct ids, newest batches first.
		// Ids named after that bound only refresh online objects (online, read when the
		// bound is first reached) and are otherwise dropped for capacity: the batches are
		// consumed whole either way, so the refresh path sees every receipt read.
		newest := make(map[int64]int64)
		var online map[int64]struct{}
		refresh := make(map[int64]int64)
		var scratch []int64
		var staged []idTime
		used := make([]uuid.UUID, 0, len(rows))
		for _, r := range rows {
			used = append(used, r.BatchID)
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
				if old, ok := newest[it.id]; ok {
					if it.t > old {
						newest[it.id] = it.t
					}
					continue
				}
				if p.MaxDistinct <= 0 || len(newest) < p.MaxDistinct {
					newest[it.id] = it.t
					continue
				}
				if online == nil {
					ids, err := q.OnlineIDs(ctx)
					if err != nil {
						return fmt.Errorf("reading online objects: %w", err)
					}
					online = make(map[int64]struct{}, len(ids))
					for _, id := range ids {
						online[id] = struct{}{}
					}
				}
				if _, ok := online[it.id]; !ok {
					m.NoRoom++
				} else if old, ok := refresh[it.id]; !ok || it.t > old {
					refresh[it.id] = it.t
				}
			}
		}
		m.Batches = int64(len(used))
		if err := q.DeleteBatches(ctx, used); err != nil {
			return fmt.Errorf("deleting merged inbox batches: %w", err)
		}
		m.Full = len(rows) == p.MaxBatches || taken >= p.MaxIDs
		ids, times := sortedByID(newest)
		clear(newest)
		m.Ids = int64(len(ids))
		if len(ids) == 0 {
			return nil
		}
		// The refresh commits on its own connection before this transaction, which so
		// far holds only the inbox rows it took; see RefreshObjects.
		rids, rtimes := ids, times
		if len(refresh) > 0 {
			for i, id := range ids {
				refresh[id] = times[i].UnixMicro()
			}
			rids, rtimes = sortedByID(refresh)
		}
		if m.Refreshed, err = s.refreshObjects(ctx, rids, rtimes); err != nil {
			return err
		}
		maxNew := int64(math.MaxInt32)
		if p.MaxNew > 0 {
			maxNew = int64(p.MaxNew)
		}
		if p.MaxPending > 0 {
			n, err := q.CountPending(ctx)
			if err != nil {
				return fmt.Errorf("counting pending rows: %w", err)
			}
			room := max(int64(p.MaxPending)-n, 0)
			if room < maxNew {
				// Full: older waiting work makes room for this pass's, which is newer
				// than anything waiting from before it (newest batches first).
				oldest := times[0]
				for _, t := range times {
					if t.Before(oldest) {
						oldest = t
					}
				}
				e, err := q.EvictPending(ctx, dbsqlc.EvictPendingParams{OlderThan: oldest, MaxRows: int32(maxNew - room)})
				if err != nil {
					return fmt.Errorf("evicting older pending rows: %w", err)
				}
				m.Evicted = e
				room += e
			}
			maxNew = min(maxNew, room)
		}
		r, err := q.MergePending(ctx, dbsqlc.MergePendingParams{Ids: ids, ReceivedAts: times, MaxNew: int32(maxNew)})
		if err != nil {
			return fmt.Errorf("merging into pending: %w", err)
		}
		m.Changed = r.Changed
		m.NoRoom += r.Fresh - r.FreshTaken
		return nil
	})
	if err != nil {
		return Merged{}, fmt.Errorf("merging inbox: %w", err)
	}
	return m, nil
}

// sortedByID turns id -> receipt (Unix microseconds) into parallel slices in ascending
// id order: the lock order, and what the statements read best.
func sortedByID(m map[int64]int64) ([]int64, []time.Time) {
	ids := make([]int64, 0, len(m))
	for id := range m {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	times := make([]time.Time, len(ids))
	for i, id := range ids {
		times[i] = time.UnixMicro(m[id])
	}
	return ids, times
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
