package testhelper_test

import (
	"fmt"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/objwatch/callback/internal/testhelper"
)

// fatalRecorder is a testing.TB whose Fatalf records the message and ends the calling
// goroutine, as the real one does.
type fatalRecorder struct {
	testing.TB
	msg string
}

func (f *fatalRecorder) Helper() {}

func (f *fatalRecorder) Fatalf(format string, args ...any) {
	f.msg = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

// eventuallyFails runs Eventually on its own goroutine and returns its failure message
// ("" if it returned).
func eventuallyFails(t *testing.T, timeout time.Duration, what string, cond func() bool, seen ...func() string) string {
	t.Helper()
	rec := &fatalRecorder{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		testhelper.Eventually(rec, timeout, what, cond, seen...)
	}()
	<-done
	return rec.msg
}

func TestEventually(t *testing.T) {
	t.Parallel()

	t.Run("returns_once_the_condition_holds", func(t *testing.T) {
		t.Parallel()
		var calls atomic.Int64
		msg := eventuallyFails(t, time.Minute, "the third call", func() bool { return calls.Add(1) == 3 })
		if msg != "" || calls.Load() != 3 {
			t.Errorf("failed with %q after %d calls, want no failure after 3", msg, calls.Load())
		}
	})

	t.Run("watch_returns_once_the_condition_holds", func(t *testing.T) {
		t.Parallel()
		var calls atomic.Int64
		testhelper.Watch(t, time.Minute, "the third call", func() bool { return calls.Add(1) == 3 })
		if calls.Load() != 3 {
			t.Errorf("%d calls, want 3", calls.Load())
		}
	})

	t.Run("fails_with_what_was_awaited_and_what_was_seen", func(t *testing.T) {
		t.Parallel()
		msg := eventuallyFails(t, 20*time.Millisecond, "the impossible", func() bool { return false },
			func() string { return "nothing" })
		if want := "not within 20ms: the impossible; nothing"; msg != want {
			t.Errorf("message %q, want %q", msg, want)
		}
	})
}

func TestBuffer(t *testing.T) {
	t.Parallel()
	var b testhelper.Buffer
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 100 {
				_, _ = b.Write([]byte("line\n"))
				_ = b.String()
			}
		})
	}
	wg.Wait()
	if got := strings.Count(b.String(), "line\n"); got != 800 {
		t.Errorf("%d lines, want 800", got)
	}
}

func TestGetenv(t *testing.T) {
	t.Parallel()
	getenv := testhelper.Getenv(map[string]string{"A": "1"})
	if getenv("A") != "1" || getenv("PATH") != "" {
		t.Errorf(`getenv("A") = %q, getenv("PATH") = %q; want "1" and nothing of the process's`, getenv("A"), getenv("PATH"))
	}
}
