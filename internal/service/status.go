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
	overload := overloadWatch{m: m, log: log}
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		sctx, cancel := context.WithTimeout(ctx, every)
		st, err := db.Stats(sctx, time.Now())
		cancel()
		overload.sample(ctx)
		if err != nil {
			continue // the loops that do the work report database errors
		}
		m.InboxCallbacks.Set(float64(st.InboxCallbacks))
		m.InboxOldest.Set(st.InboxOldest.Seconds())
		m.PendingRows.Set(float64(st.PendingRows))
		m.PendingWaiting.Set(float64(st.PendingRows - st.ClaimedRows))
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

// overloadWatch says when the service starts dropping work because merging or lookups
// cannot keep up, and when it stops: one line each way, and callback_overloaded.
type overloadWatch struct {
	m       *metrics.Metrics
	log     *slog.Logger
	last    float64
	since   time.Time
	dropped bool
}

func (o *overloadWatch) sample(ctx context.Context) {
	total := metrics.Sum(o.m.Dropped)
	grew := total > o.last
	switch {
	case grew && !o.dropped:
		o.dropped, o.since = true, time.Now()
		o.m.Overloaded.Set(1)
		o.log.WarnContext(ctx, "dropping work: more arrives than merging and lookups can use within the window; newest receipts first, see callback_work_dropped_total",
			"dropped", int64(total-o.last))
	case !grew && o.dropped:
		o.dropped = false
		o.m.Overloaded.Set(0)
		o.log.InfoContext(ctx, "no longer dropping work", "lasted", time.Since(o.since).Round(time.Second))
	}
	o.last = total
}
