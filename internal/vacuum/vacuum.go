// Package vacuum keeps the tables that churn from growing with their dead rows.
//
// Every row of pending, objects and the inbox is inserted, changed and deleted within a
// window or so; under a flood, millions a minute. Left to autovacuum with its defaults
// (a fifth of a table dead, a minute between looks) such a table and its indexes grow
// for as long as the flood lasts; and autovacuum may be off altogether (it is on some
// machines this service runs on, where a 90 s flood then left 1.7 million dead rows in
// pending and doubled the database). So the service does not rely on it: every few
// seconds it reads the dead tuples of its hot tables (the counts autovacuum reads) and
// vacuums each one past a threshold itself. Where autovacuum keeps up, the counts stay
// low and this does nothing. VACUUM (SKIP_LOCKED): a table that another replica, or
// autovacuum, is vacuuming right now is left to it, so replicas never queue behind
// each other; none of this takes locks that writers wait for.
package vacuum

import (
	"cmp"
	"context"
	"errors"
	"time"

	"github.com/objwatch/callback/internal/component"
)

// Store is what the vacuumer needs of storage.
type Store interface {
	DeadRows(ctx context.Context) (map[string]int64, error)
	Vacuum(ctx context.Context, table string) error
}

// Config tunes the vacuumer. A zero field takes its default, below.
type Config struct {
	Interval  time.Duration // how often the dead rows are read
	Threshold int64         // a table with more dead rows is vacuumed
}

// Every 5 s, past 20,000 dead rows: a vacuum of that many rows of pending takes well
// under a second, and the tables stay within a few seconds' churn of their live size.
const (
	IntervalDefault  = 5 * time.Second
	ThresholdDefault = 20_000
)

// Vacuumer runs the checks.
type Vacuumer struct {
	component.Base
	cfg   Config
	store Store
}

// New builds a vacuumer, or says which setting is wrong.
func New(cfg Config, s Store, deps component.Deps) (*Vacuumer, error) {
	cfg.Interval = cmp.Or(cfg.Interval, IntervalDefault)
	cfg.Threshold = cmp.Or(cfg.Threshold, ThresholdDefault)
	if cfg.Interval < 0 || cfg.Threshold < 0 {
		return nil, errors.New("the vacuum interval and threshold must be positive")
	}
	return &Vacuumer{Base: component.NewBase(deps), cfg: cfg, store: s}, nil
}

// Run checks every Interval until ctx ends.
func (v *Vacuumer) Run(ctx context.Context) error {
	t := time.NewTicker(v.cfg.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		v.Once(ctx)
	}
}

// Once reads the dead rows and vacuums the tables past the threshold; it returns the
// tables it vacuumed.
func (v *Vacuumer) Once(ctx context.Context) []string {
	rctx, cancel := context.WithTimeout(ctx, v.cfg.Interval)
	dead, err := v.store.DeadRows(rctx)
	cancel()
	if err != nil {
		v.fail(ctx, err)
		return nil
	}
	var done []string
	for table, n := range dead {
		v.Metrics.DeadRows.WithLabelValues(table).Set(float64(n))
		if n <= v.cfg.Threshold {
			continue
		}
		// A vacuum of a big table may take a while; bounded so that a stuck one does
		// not stop the next checks for good.
		vctx, cancel := context.WithTimeout(ctx, time.Minute)
		err := v.store.Vacuum(vctx, table)
		cancel()
		if err != nil {
			v.fail(ctx, err)
			continue
		}
		v.Metrics.Vacuums.WithLabelValues(table).Inc()
		done = append(done, table)
	}
	if len(done) > 0 {
		v.Errs.Recovered(ctx, "vacuum", "vacuuming works again")
	}
	return done
}

func (v *Vacuumer) fail(ctx context.Context, err error) {
	if ctx.Err() == nil {
		v.Metrics.DatabaseErrors.WithLabelValues("vacuum").Inc()
		v.Errs.Error(ctx, "vacuum", "vacuuming the hot tables failed; next check retries", err)
	}
}
