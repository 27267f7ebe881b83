// Package component is what every long-running component of the service is built
// with: the group committer and the spool replayer (internal/inbox), the merger, the
// fetcher, expiry and the status reporter. Each constructor takes its Config, then what
// it works on, then Deps, the same for all: the logger, the metrics and the clock. It
// applies the Config's defaults, validates it, returns an error for a setting that
// makes no sense, and keeps a Base made from the Deps, so that every component logs,
// rate-limits its errors, counts and tells time alike.
package component

import (
	"log/slog"
	"time"

	"github.com/objwatch/callback/internal/errlog"
	"github.com/objwatch/callback/internal/metrics"
)

// Deps are the dependencies every component takes. The zero Deps is usable: it logs
// nothing, counts into a registry nobody reads, and reads the wall clock.
type Deps struct {
	Log     *slog.Logger
	Metrics *metrics.Metrics
	Now     func() time.Time // the clock: receipt ages, windows, how long things take
}

// ErrorEvery: an error that repeats (an outage seen by every loop, every few
// milliseconds) is logged at most this often per kind, with a count of the rest.
const ErrorEvery = 10 * time.Second

// Base is what a component keeps of its Deps, none of them nil, and the rate-limited
// log of its errors. Components embed it.
type Base struct {
	Deps
	Errs *errlog.Limiter
}

// NewBase fills in what d leaves nil.
func NewBase(d Deps) Base {
	if d.Log == nil {
		d.Log = slog.New(slog.DiscardHandler)
	}
	if d.Metrics == nil {
		d.Metrics = metrics.New()
	}
	if d.Now == nil {
		d.Now = time.Now
	}
	return Base{Deps: d, Errs: errlog.New(d.Log, ErrorEvery)}
}
