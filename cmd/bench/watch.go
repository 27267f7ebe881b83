package main

import (
	"context"
	"sync"
	"time"

	"github.com/objwatch/callback/internal/tester"
)

// point is one sample of a running service, its database and its object service.
type point struct {
	at          float64 // seconds since the watch started
	rows        int     // rows in objects
	tracked     int     // of rows, those of the tracked (normal) traffic
	problems    int     // settled differences for the tracked traffic; -1: not checked
	owed        int     // tracked ids the table owes a row (online, accepted within the window)
	shown       int     // of owed, those whose row is at most showLag behind their latest send
	inboxOldest float64 // seconds: the oldest unmerged receipt
	pending     int64   // rows in pending
	dbMB        float64 // pg_database_size
	rssMiB      float64 // the service's VmRSS
	limit       float64 // callback_lookup_limit (0 when the service does not export it)
	inFlight    float64 // callback_lookups_in_flight
	objInFlight int64   // lookups the object service is serving
	served      int64   // object service, cumulative: admitted lookups that ended
	rejected    int64   // object service, cumulative: 503 for capacity
	paced       float64 // callback_callbacks_paced_total, cumulative
}

// judge fills a point's fields about tracked traffic (tracked, problems, owed, shown)
// from what its sender had recorded at now, just before the objects table was read, and
// the rows read: a send during the read cannot count against the table.
type judge func(now time.Time, records map[int64]tester.SendRecord, rows []tester.Row, p *point)

// tracking is traffic a watch judges the table by: its sender's records and the judge.
type tracking struct {
	records func() map[int64]tester.SendRecord
	judge   judge
}

// watch samples a service every period until stopped; with a tracking, it judges every
// read of the objects table.
type watch struct {
	svc   *service
	obj   *tester.ObjectService
	start time.Time
	track *tracking

	mu     sync.Mutex
	points []point
	stop   func()
}

func (b *bench) watch(svc *service, obj *tester.ObjectService, track *tracking) *watch {
	w := &watch{svc: svc, obj: obj, start: time.Now(), track: track}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	w.stop = func() { cancel(); wg.Wait() }
	wg.Go(func() {
		t := time.NewTicker(b.sampleEvery)
		defer t.Stop()
		for {
			p := w.sample(ctx)
			if ctx.Err() != nil {
				return
			}
			w.mu.Lock()
			w.points = append(w.points, p)
			w.mu.Unlock()
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	})
	return w
}

// sample takes one point. A query that fails leaves its field at zero: a swamped
// database must not end the measurement of how swamped it is.
func (w *watch) sample(ctx context.Context) point {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	p := point{at: time.Since(w.start).Seconds(), problems: -1}
	now := time.Now()
	var records map[int64]tester.SendRecord
	if w.track != nil {
		records = w.track.records()
	}
	if rows, err := tester.ReadObjects(ctx, w.svc.pool); err == nil {
		p.rows = len(rows)
		if w.track != nil {
			w.track.judge(now, records, rows, &p)
		}
	}
	p.inboxOldest, _ = w.svc.inboxOldest(ctx)
	_ = w.svc.pool.QueryRow(ctx, "SELECT count(*) FROM pending WHERE due_at > '-infinity'").Scan(&p.pending)
	var size int64
	if err := w.svc.pool.QueryRow(ctx, "SELECT pg_database_size(current_database())").Scan(&size); err == nil {
		p.dbMB = float64(size) / (1 << 20)
	}
	p.rssMiB = w.svc.rss()
	if m, err := w.svc.metrics(); err == nil {
		p.limit = m["callback_lookup_limit"]
		p.inFlight = m["callback_lookups_in_flight"]
		p.paced = m["callback_callbacks_paced_total"]
	}
	if w.obj != nil {
		st := w.obj.Stats()
		p.objInFlight, p.served, p.rejected = st.InFlight, st.Served(), st.Rejected
	}
	return p
}

// done stops sampling and returns the points.
func (w *watch) done() []point {
	w.stop()
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.points
}

// between is the points with from <= at < to (seconds since the watch started).
func between(ps []point, from, to float64) []point {
	var out []point
	for _, p := range ps {
		if p.at >= from && p.at < to {
			out = append(out, p)
		}
	}
	return out
}

// settled counts the differences between the table and the tracked traffic, leaving out
// every id named in the last settle (its lookup may still be in flight: one slowest
// lookup plus a merge pass) and judging the other rows only by the contract's rules for
// rows nobody tracked: online, and not older than the window. With settle 0 it is
// tester.Diff over the tracked ids.
func settled(records map[int64]tester.SendRecord, tracked func(id int64) bool, rows []tester.Row,
	now time.Time, window, settle time.Duration, online tester.OnlineRule) (present, problems int) {
	recent := now.Add(-settle)
	expected := make(map[int64]tester.Expectation, len(records))
	skip := map[int64]bool{}
	for id, r := range records {
		if settle > 0 && r.Maybe.After(recent) {
			skip[id] = true
			continue
		}
		expected[id] = tester.Expectation{SendRecord: r, Online: online(id)}
	}
	var mine []tester.Row
	for _, r := range rows {
		switch {
		case skip[r.ID]:
		case tracked(r.ID):
			mine = append(mine, r)
		case !online(r.ID) || now.Sub(r.LastSeen) > window+tester.ExpiryGrace:
			problems++
		}
	}
	return len(mine), problems + len(tester.Diff(expected, mine, now, window))
}

// shown counts the tracked ids the table owes a row at now (online, accepted less than
// window - tester.LastSeenTolerance ago, as tester.Required counts them) and, of those,
// the ones it shows: with a row whose last_seen is at most lag behind the id's latest
// accepted send. A row for an older receipt of the id is shown if it is that recent: a
// reader of the table sees the object, only a little late.
func shown(records map[int64]tester.SendRecord, rows []tester.Row, now time.Time, window, lag time.Duration,
	online tester.OnlineRule) (owed, ok int) {
	last := make(map[int64]time.Time, len(records))
	for _, r := range rows {
		if _, mine := records[r.ID]; mine {
			last[r.ID] = r.LastSeen
		}
	}
	for id, r := range records {
		if !online(id) || r.Accepted.IsZero() || now.Sub(r.Accepted) >= window-tester.LastSeenTolerance {
			continue
		}
		owed++
		if seen, has := last[id]; has && r.Accepted.Sub(seen) <= lag {
			ok++
		}
	}
	return owed, ok
}
