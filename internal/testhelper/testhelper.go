// Package testhelper holds the helpers that tests of several packages share: waits
// for a condition, a buffer that a server under test writes while the test reads it, an
// environment from a map, a logger that drops everything and callbacks for benchmarks. It is imported only by
// test files.
//
// Helpers that need a database (reading and writing the objects table, a fresh
// migrated database) live in internal/pgtest, and addresses for servers under test in
// internal/testnet.
package testhelper

import (
	"bytes"
	"log/slog"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/objwatch/callback/internal/callback"
)

// Eventually polls cond until it holds, and fails the test if it does not within
// timeout. It is a wait for a state (a goroutine got somewhere, a row arrived), never
// an assertion about time: timeout only stops a broken test, so make it generous. what
// says what was awaited; seen, if given, describes what was there instead, for the
// failure message.
//
// cond runs on the test's goroutine, so it may itself fail the test. It is polled
// after 1 ms, then twice as long each time up to every 50 ms: a state reached at once
// is seen at once, and a long wait on an expensive cond (queries, a scrape of
// /metrics) does not load a busy machine.
func Eventually(t testing.TB, timeout time.Duration, what string, cond func() bool, seen ...func() string) {
	t.Helper()
	poll(t, timeout, what, cond, seen, func(pause time.Duration) time.Duration {
		return min(2*pause, 50*time.Millisecond)
	})
}

// Watch is Eventually for a cond that also samples a changing value on the way (the
// highest a limit reached, whether it ever came down): it polls every 2 ms for as long
// as the wait lasts, so that a change between two polls is not lost to a slower pace.
// Keep such a cond cheap.
func Watch(t testing.TB, timeout time.Duration, what string, cond func() bool, seen ...func() string) {
	t.Helper()
	poll(t, timeout, what, cond, seen, func(time.Duration) time.Duration { return 2 * time.Millisecond })
}

// poll calls cond until it holds, sleeping next(previous pause) between calls.
func poll(t testing.TB, timeout time.Duration, what string, cond func() bool, seen []func() string, next func(time.Duration) time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	pause := time.Millisecond
	for !cond() {
		if time.Now().After(deadline) {
			state := ""
			for _, s := range seen {
				state += "; " + s()
			}
			t.Fatalf("not within %v: %s%s", timeout, what, state)
		}
		time.Sleep(pause)
		pause = next(pause)
	}
}

// Buffer is an io.Writer safe for concurrent use, for the output of a server or a
// command that the test reads while it is still being written. The zero value is
// empty and ready.
type Buffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// String is everything written so far.
func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// Getenv is a getenv (for a run(ctx, args, getenv, ...) function) that reads vars:
// the environment a test gives, and nothing of the process's own.
func Getenv(vars map[string]string) func(string) string {
	return func(key string) string { return vars[key] }
}

// DiscardLogger is a logger that drops every record, for a component whose log the
// test does not read. (Not one that writes to t.Log: goroutines of the component may
// log after the test has ended, which t.Log does not allow.)
func DiscardLogger() *slog.Logger {
	return slog.New(slog.DiscardHandler)
}

// Callbacks makes n callbacks of 200 ids drawn from 0..idMax, received now: the
// shape of the sender's bursts, for benchmarks.
func Callbacks(rng *rand.Rand, n int, idMax int64) []callback.Callback {
	cbs := make([]callback.Callback, n)
	for i := range cbs {
		ids := make([]int64, 200)
		for j := range ids {
			ids[j] = rng.Int64N(idMax + 1)
		}
		cbs[i] = callback.New(time.Now(), ids)
	}
	return cbs
}
