package merge

import (
	"bytes"
	"context"
	"slices"
	"time"

	"github.com/google/uuid"

	"github.com/objwatch/callback/internal/store"
)

// The early refresh. A row already in the table needs no lookup to stay right: a
// newer receipt only moves its last_seen forward (the refresh path, RefreshObjects).
// A merge pass does that first thing, but passes come as often as they can, and while
// a backlog makes each one take a second or two of Postgres (pending full, a flood's
// fresh ids) and the merger rests as long again, a row could wait three or four
// seconds for a receipt that arrived just after a pass began. So, while passes are that
// far apart, the merger also looks at the batches committed since its last look every
// earlyEvery, without taking or locking them, and refreshes the online objects named
// by the callbacks that are not part of a flood (the pacer's judgement; a flood's
// fresh ids are mostly not in the table, and refreshing them would cost index probes
// for nothing). The passes still take those batches, and refresh the same rows again:
// a refresh is idempotent (last_seen only moves forward, to a receipt that was
// accepted), so the early one changes when a row is right, never what it holds.
// Nothing else is done early: pending, lookups and everything a lookup decides stay
// with the passes.
const (
	earlyEvery = 250 * time.Millisecond
	// earlyBehind: the early refresh runs only when the last pass started longer ago
	// than this. With passes on their 100 ms cadence it would only do their work twice.
	earlyBehind = 500 * time.Millisecond
	// earlyMaxBatches: batches one look reads at most; the next look goes on from there.
	earlyMaxBatches = 1024
	// earlyShare: a look refreshes at most MaxDistinct/earlyShare distinct ids (16k).
	earlyShare = 4
)

// refreshEarlyLoop runs the early refresh until ctx ends. Its errors are logged and
// otherwise ignored: the passes do the same work, later.
func (m *Merger) refreshEarlyLoop(ctx context.Context) {
	t := time.NewTicker(earlyEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now := m.Now()
		passStarted := time.Unix(0, m.passStarted.Load())
		// What the last pass could not see is what is left to look at (a batch id is
		// minted before its commit: a little earlier than the pass, for one in flight).
		if floor := store.MinBatchID(passStarted.Add(-earlyBehind)); bytes.Compare(m.early.after[:], floor[:]) < 0 {
			m.early.after = floor
		}
		if now.Sub(passStarted) < earlyBehind {
			continue // passes come often enough
		}
		if m.cfg.Yield != nil && m.cfg.Yield() > 0.5 {
			continue // the reply path needs the cores: a burst, not a flood that waits
		}
		if _, err := m.RefreshEarly(ctx, now); err != nil && ctx.Err() == nil {
			m.Errs.Error(ctx, "early-refresh", "refreshing online objects early failed; merge passes will", err)
		}
	}
}

// RefreshEarly is one look of the early refresh, as of now: it reads the batches
// committed since the last look and moves last_seen of the online objects their steady
// callbacks name. It returns how many rows moved.
func (m *Merger) RefreshEarly(ctx context.Context, now time.Time) (int64, error) {
	if m.early.after == (uuid.UUID{}) {
		m.early.after = store.MinBatchID(now.Add(-earlyBehind))
	}
	batches, err := m.store.PeekBatches(ctx, m.early.after, earlyMaxBatches)
	if err != nil || len(batches) == 0 {
		return 0, err
	}
	cutoff := now.Add(-m.cfg.ExpireAfter).UnixMicro()
	limit := max(m.cfg.MaxDistinct/earlyShare, 1)
	newest := make(map[int64]int64)
	var scratch []int64
	for _, b := range batches {
		if len(newest) >= limit {
			break // the next look goes on from this batch
		}
		m.early.after = b.ID
		// An undecodable batch is the passes' to quarantine; what it decoded before
		// the fault is skipped with it.
		staged := map[int64]int64{}
		scratch, err = b.Decode(scratch, func(_ uuid.UUID, t int64, ids []int64) {
			if t < cutoff || (m.cfg.Pacer != nil && m.cfg.Pacer.Flooding(ids, now)) {
				return
			}
			for _, id := range ids {
				staged[id] = max(staged[id], t)
			}
		})
		if err != nil {
			continue
		}
		for id, t := range staged {
			newest[id] = max(newest[id], t)
		}
	}
	if len(newest) == 0 {
		return 0, nil
	}
	ids := make([]int64, 0, len(newest))
	for id := range newest {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	times := make([]time.Time, len(ids))
	for i, id := range ids {
		times[i] = time.UnixMicro(newest[id])
	}
	n, err := m.store.RefreshObjects(ctx, ids, times)
	if err != nil {
		return 0, err
	}
	m.Metrics.Refreshed.WithLabelValues("early").Add(float64(n))
	return n, nil
}
