package service

import (
	"context"
	"log/slog"
	"time"

	"github.com/objwatch/callback/internal/fetch"
	"github.com/objwatch/callback/internal/metrics"
	"github.com/objwatch/callback/internal/store"
)

// reportStatus samples the queues into the gauges every few seconds and, if interval
// is set, logs one line a person can read at a glance.
func reportStatus(ctx context.Context, db *store.Store, m *metrics.Metrics, f *fetch.Fetcher, interval time.Duration, log *slog.Logger) {
	every := interval
	if every == 0 {
		every = 5 * time.Second
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		sctx, cancel := context.WithTimeout(ctx, every)
		st, err := db.Stats(sctx, time.Now())
		cancel()
		if err != nil {
			continue // the loops that do the work report database errors
		}
		m.InboxCallbacks.Set(float64(st.InboxCallbacks))
		m.PendingRows.Set(float64(st.PendingRows))
		m.PendingOldest.Set(st.PendingOldest.Seconds())
		m.ObjectsOnline.Set(float64(st.ObjectsRows))
		if interval == 0 {
			continue
		}
		log.Info("status",
			"callbacks_accepted", int64(metrics.Sum(m.CallbacksAccepted)),
			"callbacks_spooled", int64(metrics.Sum(m.CallbacksSpooled)),
			"inbox", st.InboxCallbacks,
			"ids_pending", st.PendingRows,
			"lookups_in_flight", f.InFlight(),
			"objects_online", st.ObjectsRows,
			"rows_expired", int64(metrics.Sum(m.RowsExpired)),
		)
	}
}
