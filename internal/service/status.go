package service

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/objwatch/callback/internal/component"
	"github.com/objwatch/callback/internal/fetch"
	"github.com/objwatch/callback/internal/metrics"
	"github.com/objwatch/callback/internal/spool"
	"github.com/objwatch/callback/internal/store"
)

// statusConfig tunes the status reporter.
type statusConfig struct {
	// Interval: log a status line this often (STATUS_INTERVAL); zero: never. The gauges
	// are sampled as often, or every statusIntervalDefault when no line is logged.
	Interval time.Duration
}

// statusIntervalDefault is STATUS_INTERVAL's default.
const statusIntervalDefault = 5 * time.Second

// statusSources are what the status reporter reads.
type statusSources struct {
	db      *store.Store
	spool   *spool.Spool
	fetcher *fetch.Fetcher
	target  string // the database, for the log line, without the password
}

// status samples the queues and the database's health into the gauges every few
// seconds and, if its Interval is set, logs one line a person can read at a glance. It
// runs from the start, before the schema is applied: with a DATABASE_URL that never
// worked the service still accepts callbacks into the spool, and that must be loud
// in the log and visible to the alert on callback_database_up, not silent.
type status struct {
	component.Base
	cfg statusConfig
	src statusSources
}

func newStatus(cfg statusConfig, src statusSources, deps component.Deps) (*status, error) {
	if cfg.Interval < 0 {
		return nil, errors.New("the status interval must not be negative")
	}
	return &status{Base: component.NewBase(deps), cfg: cfg, src: src}, nil
}

// Run reports until ctx ends.
func (s *status) Run(ctx context.Context) error {
	d, m, log, interval := s.src, s.Metrics, s.Log, s.cfg.Interval
	every := cmp.Or(interval, statusIntervalDefault)
	// Down from the start until the first ping answers: what is spooled before then
	// counts towards the outage.
	started := s.Now()
	var (
		everUp        bool
		downSince     = started
		spooledAtDown float64
	)
	t := time.NewTicker(every)
	defer t.Stop()
	overload := overloadWatch{m: m, log: log, now: s.Now}
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		segments, bytes := d.spool.Stats()
		m.SpoolSegments.Set(float64(segments))
		m.SpoolBytes.Set(float64(bytes))

		pctx, cancel := context.WithTimeout(ctx, min(every, 2*time.Second))
		err := d.db.Ping(pctx)
		cancel()
		overload.sample(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			m.DatabaseUp.Set(0)
			if downSince.IsZero() {
				downSince, spooledAtDown = s.Now(), metrics.Sum(m.CallbacksSpooled)
			}
			if interval == 0 {
				continue
			}
			spooled := int64(metrics.Sum(m.CallbacksSpooled) - spooledAtDown)
			if !everUp {
				// Most likely a wrong DATABASE_URL rather than an outage: say so loudly.
				log.Error(fmt.Sprintf("database unreachable ever since the start %s ago: check DATABASE_URL; %d callbacks spooled",
					s.Now().Sub(started).Round(time.Second), spooled),
					"database", d.target, "err", err, "spool_segments", segments, "spool_bytes", bytes)
				continue
			}
			log.Warn(fmt.Sprintf("database unreachable since %s, %d callbacks spooled",
				downSince.Format(time.RFC3339), spooled),
				"database", d.target, "err", err, "spool_segments", segments, "spool_bytes", bytes)
			continue
		}
		m.DatabaseUp.Set(1)
		if everUp && !downSince.IsZero() && interval != 0 {
			log.Info("database reachable again", "database", d.target, "down_for", s.Now().Sub(downSince).Round(time.Second),
				"callbacks_spooled", int64(metrics.Sum(m.CallbacksSpooled)-spooledAtDown))
		}
		everUp, downSince = true, time.Time{}

		sctx, cancel := context.WithTimeout(ctx, every)
		st, err := d.db.Stats(sctx, s.Now())
		cancel()
		if err != nil {
			continue // the schema is not there yet, or the loops that do the work report it
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
		// Counters and lookups_in_flight are this replica's since its start; inbox,
		// ids_pending and objects_online are the shared database's.
		log.Info("status",
			"callbacks_accepted", int64(metrics.Sum(m.CallbacksAccepted)),
			"callbacks_spooled", int64(metrics.Sum(m.CallbacksSpooled)),
			"inbox", st.InboxCallbacks,
			"ids_pending", st.PendingRows,
			"lookups_in_flight", d.fetcher.InFlight(),
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
	now     func() time.Time
	last    float64
	since   time.Time
	dropped bool
}

func (o *overloadWatch) sample(ctx context.Context) {
	total := metrics.Sum(o.m.Dropped)
	grew := total > o.last
	switch {
	case grew && !o.dropped:
		o.dropped, o.since = true, o.now()
		o.m.Overloaded.Set(1)
		o.log.WarnContext(ctx, "dropping work: more arrives than merging and lookups can use within the window; newest receipts first, see callback_work_dropped_total",
			"dropped", int64(total-o.last))
	case !grew && o.dropped:
		o.dropped = false
		o.m.Overloaded.Set(0)
		o.log.InfoContext(ctx, "no longer dropping work", "lasted", o.now().Sub(o.since).Round(time.Second))
	}
	o.last = total
}
