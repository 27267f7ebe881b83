// Package errlog logs errors that repeat (a database outage seen by every loop, every
// few milliseconds) at most once per interval per key, with a count of what it held
// back, so an outage is visible in the log without flooding it.
package errlog

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// Limiter rate-limits error lines per key.
type Limiter struct {
	logger *slog.Logger
	every  time.Duration
	now    func() time.Time

	mu   sync.Mutex
	keys map[string]*entry
}

type entry struct {
	last       time.Time
	suppressed int
}

// New logs each key at most once per every.
func New(log *slog.Logger, every time.Duration) *Limiter {
	return &Limiter{logger: log, every: every, now: time.Now, keys: map[string]*entry{}}
}

// Error logs msg with err under key, unless key was logged less than every ago.
func (l *Limiter) Error(ctx context.Context, key, msg string, err error, args ...any) {
	l.log(ctx, slog.LevelError, key, msg, append(args, "err", err)...)
}

// Warn is Error for a state worth a warning that has no error value of its own.
func (l *Limiter) Warn(ctx context.Context, key, msg string, args ...any) {
	l.log(ctx, slog.LevelWarn, key, msg, args...)
}

// Info is Warn at info level: a notable change of state that may flap.
func (l *Limiter) Info(ctx context.Context, key, msg string, args ...any) {
	l.log(ctx, slog.LevelInfo, key, msg, args...)
}

func (l *Limiter) log(ctx context.Context, level slog.Level, key, msg string, args ...any) {
	l.mu.Lock()
	e := l.keys[key]
	if e == nil {
		e = &entry{}
		l.keys[key] = e
	}
	now := l.now()
	if !e.last.IsZero() && now.Sub(e.last) < l.every {
		e.suppressed++
		l.mu.Unlock()
		return
	}
	suppressed := e.suppressed
	e.last, e.suppressed = now, 0
	l.mu.Unlock()

	if suppressed > 0 {
		args = append(args, "suppressed", suppressed)
	}
	l.logger.Log(ctx, level, msg, args...)
}

// Recovered logs that key works again, once, if it had failed.
func (l *Limiter) Recovered(ctx context.Context, key, msg string) {
	l.mu.Lock()
	e := l.keys[key]
	delete(l.keys, key)
	l.mu.Unlock()
	if e != nil {
		l.logger.InfoContext(ctx, msg, "suppressed", e.suppressed)
	}
}
