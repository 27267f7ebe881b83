package merge

import (
	"context"
	"encoding/binary"
	"fmt"
	"slices"
	"time"

	"github.com/google/uuid"

	"github.com/objwatch/callback/internal/callback"
	"github.com/objwatch/callback/internal/store"
)

// Result is what one merge pass did.
type Result struct {
	Batches   int64 // inbox rows consumed
	Callbacks int64 // callbacks in them
	IDs       int64 // distinct object ids in them, within the window
	Changed   int64 // pending rows inserted or given a newer receipt
	Refreshed int64 // online objects whose last_seen moved forward
	// Full: the pass stopped at a bound and left batches in the inbox (or may have):
	// more is waiting.
	Full bool

	// Dropped before they cost anything (see Config): batches, and their ids, whose
	// newest receipt left the window (deleted unread); ids in batches taken whose
	// callback left the window; fresh ids for which pending had no room (full).
	StaleBatches, StaleBatchIDs int64
	StaleIDs                    int64
	NoRoom                      int64
	// Evicted: waiting pending rows ranked below this pass, deleted to make room for
	// its fresh ids.
	Evicted int64
	// RechecksSkipped: objects already looked up, named again, whose re-check found no
	// room: they keep the newer receipt, without another lookup for now.
	RechecksSkipped int64

	// Quarantined: batches that could not be decoded, moved to inbox_quarantine.
	Quarantined []Quarantined

	// Seen: ids of the callbacks the pass merged, repeats included (Config.Pacer tracks
	// them). A flood's backlog merged late goes to the pacer's probation, where it
	// cannot push out the ids of steady senders, merged again and again.
	Seen []int64
	// LeftBatches: the pass held its distinct ids before it had used every batch it
	// read: merging takes less than arrives.
	LeftBatches bool
	// SteadyTaken: batches past the bound whose steady callbacks the pass took, leaving
	// the flood's in the inbox (the steady lane, see mergeInbox).
	SteadyTaken int64
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
	MaxPending  int // waiting pending rows at most
	MaxEvict    int // waiting rows one pass evicts for fresh ids, at most
	// Now is the service's clock at the start of the pass: receipts are ranked by their
	// age on it. Cutoff: receipts older than this left the window and are dropped,
	// whole batches unread; zero: none is.
	Now     time.Time
	Cutoff  time.Time
	Recheck time.Duration // see store.RecheckHandicap
	// Flooding, if set, says whether a callback's ids are part of a flood (pace); its
	// fresh ids then rank FloodHandicap below their receipt.
	Flooding      func(ids []int64) bool
	FloodHandicap time.Duration
	// Track: report the ids merged (Seen).
	Track bool
}

type idTime struct {
	id, t   int64
	ordinal int32
	flood   bool
}

// receipt is what a pass keeps of one object: its newest receipt in the pass (Unix
// microseconds), its earliest turn in the round robin over callbacks, and whether only
// floods named it.
type receipt struct {
	t       int64
	ordinal int32
	flood   bool
}

// mergeInbox moves the newest inbox batches into pending, in one transaction. Batches
// and callbacks that left the window are dropped first. It reads at most MaxBatches
// rows, and no further row once MaxIDs ids are read, and consumes them newest first
// until they hold MaxDistinct distinct ids: the rest stay in the inbox, unlocked at
// commit, for the next pass. A batch is decoded whole; every id in the batches it
// consumes gets the newest receipt that names it: online objects take it as last_seen
// (RefreshObjects), and pending takes it (MergePending), fresh ids within the room
// MaxPending leaves (queries/inbox.sql: DropStaleBatches, LockBatches, MergePending).
// Nothing is dropped for capacity unless pending is full.
//
// The steady lane. Under a flood more arrives than a pass can take, and newest first
// alone would leave every callback in the older batches behind, whoever sent it: the
// callbacks of a sender with a steady set of objects, interleaved with the flood's in
// the same group commits, would reach the table only when a pass happened to reach
// their batch, and most never would before they left the window (measured: about a
// quarter of a steady sender's rows stale through a 90 s flood). So once a pass holds
// MaxDistinct ids, it reads on through the batches it locked, up to as many distinct
// ids again (steadyMax), and takes from them only the callbacks that are not part of a
// flood (p.Flooding, the pacer's judgement): a batch with only those is consumed whole,
// a batch with both is written back holding the flood's callbacks alone
// (KeepBatchRests, in this transaction, under its batch id), and a batch of the flood
// alone is left as it is. The flood's callbacks keep their receipts and their place,
// newest first; nothing is dropped here. With no pacer, or the service not
// overloaded (no callback is then a flood's), the lane takes whole batches. The same
// holds when every callback is familiar, ids from a space that passes keep merging
// (100,000 objects named a million times a second): the lane then takes whole batches
// up to twice MaxDistinct, which covers such a space, and a pass reaches back as far
// as MaxIDs, coalescing a second of intake into one row per object. Fresh ids from a
// huge space, the costly kind, stay bounded by MaxDistinct.
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
		// newest: object id -> its newest receipt and turn in the batches used.
		newest := make(map[int64]receipt)
		var used []uuid.UUID
		var rests []store.BatchRest
		taken := 0
		var scratch, restIDs []int64
		var staged []idTime
		var restCbs []restCallback
		for _, b := range batches {
			lane := wholeBatches
			if p.MaxDistinct > 0 && len(newest) >= p.MaxDistinct {
				if p.Flooding == nil || len(newest) >= steadyMax(p.MaxDistinct) {
					break // left in the inbox for the next pass, not dropped
				}
				lane = steadyOnly
			}
			// Decoded whole before any of it counts: a batch that breaks off halfway
			// contributes nothing rather than a prefix of possible garbage.
			staged, restCbs, restIDs = staged[:0], restCbs[:0], restIDs[:0]
			stale := int64(0)
			var seen []int64
			scratch, err = b.Decode(scratch, func(cb uuid.UUID, t int64, ids []int64) {
				if t < cutoff {
					stale += int64(len(ids))
					return
				}
				flood := p.Flooding != nil && p.Flooding(ids)
				if lane == steadyOnly && flood {
					restCbs = append(restCbs, restCallback{cb, t, len(restIDs), len(restIDs) + len(ids)})
					restIDs = append(restIDs, ids...)
					return
				}
				// Each callback's ids take turns from a point of their own (the ids
				// are sorted): the first turn of every callback comes before the
				// second of any, so fresh ids share a full pending callback by callback.
				start := turnStart(cb, len(ids))
				if p.Track {
					seen = append(seen, ids...)
				}
				for i, id := range ids {
					staged = append(staged, idTime{id, t, int32((i - start + len(ids)) % len(ids)), flood})
				}
			})
			if err != nil {
				// Kept aside in this transaction, never dropped, and never allowed to
				// stop every later pass at the same row.
				if err := tx.Quarantine(ctx, b, err); err != nil {
					return err
				}
				used = append(used, b.ID)
				taken += b.IDs
				merged.Quarantined = append(merged.Quarantined, Quarantined{BatchID: b.ID, Callbacks: b.Callbacks, Err: err})
				continue
			}
			switch {
			case lane == steadyOnly && len(staged) == 0:
				continue // only the flood's (or stale) callbacks: left as it is
			case lane == steadyOnly && len(restCbs) > 0:
				rests = append(rests, batchRest(b.ID, restCbs, restIDs))
				merged.Callbacks += int64(b.Callbacks - len(restCbs))
				merged.SteadyTaken++
			default:
				used = append(used, b.ID)
				taken += b.IDs
				merged.Callbacks += int64(b.Callbacks)
			}
			merged.Seen = append(merged.Seen, seen...)
			merged.StaleIDs += stale
			for _, it := range staged {
				old, ok := newest[it.id]
				switch {
				case !ok:
					newest[it.id] = receipt{it.t, it.ordinal, it.flood}
				default:
					newest[it.id] = receipt{max(old.t, it.t), min(old.ordinal, it.ordinal), old.flood && it.flood}
				}
			}
		}
		merged.Batches = int64(len(used))
		merged.LeftBatches = len(used) < len(batches)
		merged.Full = len(used) < len(batches) || len(batches) == p.MaxBatches || taken >= p.MaxIDs
		// Every batch used is consumed in this transaction, the quarantined ones too.
		if err := tx.RememberMerged(ctx, used); err != nil {
			return err
		}
		if err := tx.DeleteBatches(ctx, used); err != nil {
			return err
		}
		if err := tx.KeepBatchRests(ctx, rests); err != nil {
			return err
		}
		ids, times, ordinals, floods := sortedByID(newest)
		clear(newest)
		merged.IDs = int64(len(ids))
		if len(ids) == 0 {
			return nil
		}
		// The refresh commits on its own connection before this transaction, which so
		// far holds only the inbox rows it took; see queries/inbox.sql RefreshObjects.
		if merged.Refreshed, err = s.RefreshObjects(ctx, ids, times); err != nil {
			return err
		}
		waiting, err := tx.CountWaiting(ctx)
		if err != nil {
			return err
		}
		var handicaps []time.Duration
		for i, f := range floods {
			if f {
				if handicaps == nil {
					handicaps = make([]time.Duration, len(ids))
				}
				handicaps[i] = p.FloodHandicap
			}
		}
		r, err := tx.MergePending(ctx, store.MergeParams{
			IDs: ids, ReceivedAts: times, Ordinals: ordinals, Handicaps: handicaps, Room: int64(p.MaxPending) - waiting,
			MaxEvict: int64(p.MaxEvict), Now: p.Now, Recheck: p.Recheck,
		})
		if err != nil {
			return err
		}
		merged.Changed = r.Changed
		merged.NoRoom = r.Fresh - r.FreshTaken
		merged.RechecksSkipped = r.Rearm - r.Rearmed
		merged.Evicted = r.Evicted
		return nil
	})
	if err != nil {
		return Result{}, fmt.Errorf("merging inbox: %w", err)
	}
	return merged, nil
}

// The two ways a pass takes a batch: whole, or (past MaxDistinct) only the callbacks
// that are not a flood's.
const (
	wholeBatches = iota
	steadyOnly
)

// steadyMax is how many distinct ids a pass holds at most with the steady lane.
func steadyMax(maxDistinct int) int { return 2 * maxDistinct }

// restCallback is a callback the steady lane leaves in its batch: its ids are
// restIDs[from:to].
type restCallback struct {
	id       uuid.UUID
	t        int64
	from, to int
}

// batchRest encodes the callbacks left of batch id.
func batchRest(id uuid.UUID, cbs []restCallback, ids []int64) store.BatchRest {
	r := store.BatchRest{ID: id, Callbacks: len(cbs), IDs: len(ids)}
	list := make([]callback.Callback, len(cbs))
	oldest, newest := cbs[0].t, cbs[0].t
	for i, c := range cbs {
		list[i] = callback.Callback{ID: c.id, ReceivedAt: time.UnixMicro(c.t), ObjectIDs: ids[c.from:c.to]}
		oldest, newest = min(oldest, c.t), max(newest, c.t)
	}
	r.ReceivedAt, r.LastReceivedAt = time.UnixMicro(oldest), time.UnixMicro(newest)
	r.Data = callback.AppendEncoded(nil, list)
	return r
}

// sortedByID turns id -> receipt into parallel slices in ascending id order: the lock
// order, and what the statements read best.
func sortedByID(m map[int64]receipt) ([]int64, []time.Time, []int32, []bool) {
	ids := make([]int64, 0, len(m))
	for id := range m {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	times := make([]time.Time, len(ids))
	ordinals := make([]int32, len(ids))
	floods := make([]bool, len(ids))
	for i, id := range ids {
		r := m[id]
		times[i], ordinals[i], floods[i] = time.UnixMicro(r.t), r.ordinal, r.flood
	}
	return ids, times, ordinals, floods
}

// turnStart is where a callback's ids start taking turns: a point derived from the
// callback's id, so that the same objects are not always first.
func turnStart(cb uuid.UUID, n int) int {
	if n == 0 {
		return 0
	}
	return int(binary.LittleEndian.Uint64(cb[8:]) % uint64(n))
}
