package merge

import (
	"context"
	"fmt"
	"math"
	"slices"
	"time"

	"github.com/google/uuid"

	"github.com/objwatch/callback/internal/store"
)

// Result is what one merge pass did.
type Result struct {
	Batches   int64 // inbox rows consumed
	Callbacks int64 // callbacks in them
	IDs       int64 // distinct object ids in them, within the window
	Changed   int64 // pending rows inserted or given a newer receipt
	Refreshed int64 // online objects whose last_seen moved forward
	Full      bool  // the pass stopped at a bound: more may be waiting

	// Dropped before they cost anything (see Config): batches, and their ids, whose
	// newest receipt left the window (deleted unread); ids in batches taken whose
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

// params bounds one merge pass; see Config for each bound.
type params struct {
	MaxBatches  int
	MaxIDs      int
	MaxDistinct int // 0: no bound
	MaxNew      int // 0: no bound but MaxPending
	MaxPending  int // 0: no bound
	// Cutoff: receipts older than this left the window and are dropped, whole batches
	// unread. Zero: none is.
	Cutoff time.Time
}

type idTime struct{ id, t int64 }

// mergeInbox moves the newest inbox batches into pending, in one transaction: at most
// MaxBatches rows, and no further row once MaxIDs ids are read. Batches and callbacks
// that left the window are dropped first. The batches are decoded here; the first
// MaxDistinct object ids go to pending once each, with the newest receipt that names
// them, within MaxNew and MaxPending (queries/inbox.sql: DropStaleBatches, LockBatches,
// MergePending, EvictPending), and every online object named takes the newer receipt
// as last_seen (RefreshObjects).
//
// A pass costs per distinct id, not per id received: the map keeps one entry per
// object, and the statements see each object once, however many callbacks named it.
func mergeInbox(ctx context.Context, s Store, p params) (Result, error) {
	var merged Result
	cutoff := p.Cutoff.UnixMicro()
	err := s.InMergeTx(ctx, func(tx *store.MergeTx) error {
		if !p.Cutoff.IsZero() {
			var err error
			if merged.StaleBatches, merged.StaleBatchIDs, err = tx.DropStaleBatches(ctx, p.Cutoff); err != nil {
				return err
			}
		}
		batches, err := tx.LockBatches(ctx, p.Cutoff, p.MaxBatches, p.MaxIDs)
		if err != nil {
			return err
		}
		if len(batches) == 0 {
			return nil
		}
		// Every batch read is consumed (DeleteBatches below, in this transaction), the
		// quarantined ones too.
		used := make([]uuid.UUID, len(batches))
		for i, b := range batches {
			used[i] = b.ID
		}
		if err := tx.RememberMerged(ctx, used); err != nil {
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
		for _, b := range batches {
			taken += b.IDs
			// Decoded whole before any of it counts: a batch that breaks off halfway
			// contributes nothing rather than a prefix of possible garbage.
			staged = staged[:0]
			stale := int64(0)
			scratch, err = b.Decode(scratch, func(_ uuid.UUID, t int64, ids []int64) {
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
				if err := tx.Quarantine(ctx, b, err); err != nil {
					return err
				}
				merged.Quarantined = append(merged.Quarantined, Quarantined{BatchID: b.ID, Callbacks: b.Callbacks, Err: err})
				continue
			}
			merged.Callbacks += int64(b.Callbacks)
			merged.StaleIDs += stale
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
					ids, err := tx.OnlineIDs(ctx)
					if err != nil {
						return err
					}
					online = make(map[int64]struct{}, len(ids))
					for _, id := range ids {
						online[id] = struct{}{}
					}
				}
				if _, ok := online[it.id]; !ok {
					merged.NoRoom++
				} else if old, ok := refresh[it.id]; !ok || it.t > old {
					refresh[it.id] = it.t
				}
			}
		}
		merged.Batches = int64(len(used))
		if err := tx.DeleteBatches(ctx, used); err != nil {
			return err
		}
		merged.Full = len(batches) == p.MaxBatches || taken >= p.MaxIDs
		ids, times := sortedByID(newest)
		clear(newest)
		merged.IDs = int64(len(ids))
		if len(ids) == 0 {
			return nil
		}
		// The refresh commits on its own connection before this transaction, which so
		// far holds only the inbox rows it took; see queries/inbox.sql RefreshObjects.
		rids, rtimes := ids, times
		if len(refresh) > 0 {
			for i, id := range ids {
				refresh[id] = times[i].UnixMicro()
			}
			rids, rtimes = sortedByID(refresh)
		}
		if merged.Refreshed, err = s.RefreshObjects(ctx, rids, rtimes); err != nil {
			return err
		}
		maxNew := int64(math.MaxInt32)
		if p.MaxNew > 0 {
			maxNew = int64(p.MaxNew)
		}
		if p.MaxPending > 0 {
			n, err := tx.CountPending(ctx)
			if err != nil {
				return err
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
				e, err := tx.EvictPending(ctx, oldest, maxNew-room)
				if err != nil {
					return err
				}
				merged.Evicted = e
				room += e
			}
			maxNew = min(maxNew, room)
		}
		r, err := tx.MergePending(ctx, ids, times, maxNew)
		if err != nil {
			return err
		}
		merged.Changed = r.Changed
		merged.NoRoom += r.Fresh - r.FreshTaken
		return nil
	})
	if err != nil {
		return Result{}, fmt.Errorf("merging inbox: %w", err)
	}
	return merged, nil
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
