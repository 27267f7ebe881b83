package childproc_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/objwatch/callback/internal/childproc"
)

// The tests run this test binary itself as the child: with CHILDPROC_HELPER set, TestMain
// writes a line to stdout and one to stderr and then waits for a signal, ignoring
// SIGTERM when the variable says so.
func TestMain(m *testing.M) {
	switch os.Getenv("CHILDPROC_HELPER") {
	case "":
		os.Exit(m.Run())
	case "ignore-term":
		signal.Ignore(syscall.SIGTERM)
	}
	fmt.Println("to stdout")
	fmt.Fprintln(os.Stderr, "to stderr")
	time.Sleep(time.Hour)
}

// setup starts the helper child with mode and returns it; it is killed at the end.
func setup(t *testing.T, mode string) *childproc.Proc {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "CHILDPROC_HELPER="+mode)
	p, err := childproc.Start(cmd, filepath.Join(t.TempDir(), "child.log"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Kill)
	// Both lines are in the log once the child is waiting.
	deadline := time.Now().Add(time.Minute)
	for !strings.Contains(p.Tail(10), "to stderr") {
		if time.Now().After(deadline) || p.Exited() {
			t.Fatalf("the child did not start: %s", p.Tail(10))
		}
		time.Sleep(5 * time.Millisecond)
	}
	return p
}

func TestProc(t *testing.T) {
	t.Parallel()

	t.Run("logs_stdout_and_stderr_and_stops_on_sigterm", func(t *testing.T) {
		t.Parallel()
		p := setup(t, "wait")
		if got := p.Tail(10); !strings.Contains(got, "to stdout") {
			t.Errorf("log %q, want the child's stdout in it too", got)
		}
		p.Stop(time.Minute)
		if !p.Exited() {
			t.Fatal("Stop returned before the child exited")
		}
		var exit *exec.ExitError
		if err := p.Err(); !errors.As(err, &exit) || exit.Sys().(syscall.WaitStatus).Signal() != syscall.SIGTERM {
			t.Errorf("Err() = %v, want death by SIGTERM", err)
		}
	})

	t.Run("stop_kills_a_child_that_ignores_sigterm_after_the_grace", func(t *testing.T) {
		t.Parallel()
		p := setup(t, "ignore-term")
		p.Stop(100 * time.Millisecond)
		var exit *exec.ExitError
		if err := p.Err(); !errors.As(err, &exit) || exit.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
			t.Errorf("Err() = %v, want death by SIGKILL", err)
		}
	})

	t.Run("kill_after_exit_returns", func(t *testing.T) {
		t.Parallel()
		p := setup(t, "wait")
		p.Kill()
		p.Kill()
		if !p.Exited() {
			t.Error("not exited after Kill")
		}
	})

	t.Run("a_missing_program_is_an_error", func(t *testing.T) {
		t.Parallel()
		_, err := childproc.Start(exec.Command(filepath.Join(t.TempDir(), "none")), filepath.Join(t.TempDir(), "log"))
		if err == nil {
			t.Error("Start of a missing program succeeded")
		}
	})
}

func TestLastLines(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		text string
		n    int
		want string
	}{
		{"a\nb\nc\n", 2, "b\nc"},
		{"a\nb\nc", 5, "a\nb\nc"},
		{"", 3, ""},
	} {
		if got := childproc.LastLines(tc.text, tc.n); got != tc.want {
			t.Errorf("LastLines(%q, %d) = %q, want %q", tc.text, tc.n, got, tc.want)
		}
	}
	if got := childproc.Tail(filepath.Join(t.TempDir(), "none"), 3); !strings.HasPrefix(got, "(") {
		t.Errorf("Tail of a missing file = %q, want the error in parentheses", got)
	}
}

func TestReadMetrics(t *testing.T) {
	t.Parallel()
	page := `# HELP callback_lookups_total Lookups by outcome.
# TYPE callback_lookups_total counter
callback_lookups_total{outcome="failed"} 3
callback_lookups_total{outcome="ok"} 4
callback_lookups_total{outcome="failed",target="odd label"} 2
go_goroutines 12

`
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/metrics":
			fmt.Fprint(w, page)
		case "/bad":
			fmt.Fprint(w, "go_goroutines many\n")
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(srv.Close)

	m, err := childproc.ReadMetrics(context.Background(), srv.URL+"/metrics")
	if err != nil {
		t.Fatal(err)
	}
	if m["go_goroutines"] != 12 || m[`callback_lookups_total{outcome="ok"}`] != 4 {
		t.Errorf("ReadMetrics() = %v", m)
	}
	for _, tc := range []struct {
		labels []string
		want   float64
	}{
		{nil, 9},
		{[]string{`outcome="failed"`}, 5},
		{[]string{`outcome="failed"`, `target="odd label"`}, 2},
	} {
		if got := m.Sum("callback_lookups_total", tc.labels...); got != tc.want {
			t.Errorf("Sum(callback_lookups_total, %q) = %v, want %v", tc.labels, got, tc.want)
		}
	}
	if got := m.Sum("callback_lookups"); got != 0 {
		t.Errorf("Sum of a name that is only a prefix = %v, want 0", got)
	}
	for _, path := range []string{"/bad", "/missing"} {
		if _, err := childproc.ReadMetrics(context.Background(), srv.URL+path); err == nil {
			t.Errorf("ReadMetrics(%s) succeeded", path)
		}
	}
}
