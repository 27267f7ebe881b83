package childproc_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
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

// servePages serves each page at its path, and 404 elsewhere; it returns the base URL.
func servePages(t *testing.T, pages map[string]string) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		page, ok := pages[r.URL.Path]
		if !ok {
			http.NotFound(w, r)
			return
		}
		fmt.Fprint(w, page)
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

func TestReadMetrics(t *testing.T) {
	t.Parallel()
	base := servePages(t, map[string]string{
		"/metrics": `# HELP callback_lookups_total Lookups by outcome.
# TYPE callback_lookups_total counter
callback_lookups_total{outcome="failed"} 3
callback_lookups_total{outcome="ok"} 4
callback_lookups_total{outcome="failed",target="odd label"} 2
go_goroutines 12

`,
		"/bad": "go_goroutines many\n",
	})

	m, err := childproc.ReadMetrics(context.Background(), base+"/metrics")
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
		if _, err := childproc.ReadMetrics(context.Background(), base+path); err == nil {
			t.Errorf("ReadMetrics(%s) succeeded", path)
		}
	}
}

// The text format as Prometheus reads it, in the cases a split at the last blank got
// wrong: each page is read whole and compared series by series.
func TestReadMetricsParsesTheTextFormat(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		page string
		want childproc.Metrics
	}{
		{
			name: "a_trailing_timestamp_is_not_the_value",
			page: "# TYPE go_goroutines gauge\ngo_goroutines 12 1700000000000\n",
			want: childproc.Metrics{"go_goroutines": 12},
		},
		{
			name: "a_tab_separates_the_value",
			page: "go_goroutines\t7\n",
			want: childproc.Metrics{"go_goroutines": 7},
		},
		{
			name: "escaped_quotes_backslashes_and_newlines_stay_escaped_in_the_series",
			page: `callback_lookups_total{outcome="failed",target="say \"hi\" } 9, \\ and\nbye"} 2 1700000000000` + "\n",
			want: childproc.Metrics{`callback_lookups_total{outcome="failed",target="say \"hi\" } 9, \\ and\nbye"}`: 2},
		},
		{
			name: "a_histogram_is_its_bucket_sum_and_count_series",
			page: `# HELP callback_commit_seconds Group commits.
# TYPE callback_commit_seconds histogram
callback_commit_seconds_bucket{target="inbox",le="0.005"} 1
callback_commit_seconds_bucket{target="inbox",le="1e+06"} 2
callback_commit_seconds_bucket{target="inbox",le="+Inf"} 3
callback_commit_seconds_sum{target="inbox"} 0.25
callback_commit_seconds_count{target="inbox"} 3
`,
			want: childproc.Metrics{
				`callback_commit_seconds_bucket{target="inbox",le="0.005"}`: 1,
				`callback_commit_seconds_bucket{target="inbox",le="1e+06"}`: 2,
				`callback_commit_seconds_bucket{target="inbox",le="+Inf"}`:  3,
				`callback_commit_seconds_sum{target="inbox"}`:               0.25,
				`callback_commit_seconds_count{target="inbox"}`:             3,
			},
		},
		{
			name: "a_summary_is_its_quantile_sum_and_count_series",
			page: `# TYPE go_gc_duration_seconds summary
go_gc_duration_seconds{quantile="0.5"} 0.001
go_gc_duration_seconds{quantile="1"} 0.002
go_gc_duration_seconds_sum 0.01
go_gc_duration_seconds_count 7
`,
			want: childproc.Metrics{
				`go_gc_duration_seconds{quantile="0.5"}`: 0.001,
				`go_gc_duration_seconds{quantile="1"}`:   0.002,
				"go_gc_duration_seconds_sum":             0.01,
				"go_gc_duration_seconds_count":           7,
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			base := servePages(t, map[string]string{"/metrics": tc.page})
			got, err := childproc.ReadMetrics(context.Background(), base+"/metrics")
			if err != nil {
				t.Fatal(err)
			}
			if !maps.Equal(got, tc.want) {
				t.Errorf("ReadMetrics() = %v\nwant %v", got, tc.want)
			}
		})
	}

	t.Run("sum_matches_whole_labels", func(t *testing.T) {
		t.Parallel()
		base := servePages(t, map[string]string{"/metrics": `callback_lookups_total{outcome="failed"} 3
callback_lookups_total{prev_outcome="failed",outcome="ok"} 4
callback_lookups_total{outcome="failed",target="say \"hi\""} 5
`})
		m, err := childproc.ReadMetrics(context.Background(), base+"/metrics")
		if err != nil {
			t.Fatal(err)
		}
		for _, tc := range []struct {
			labels []string
			want   float64
		}{
			{[]string{`outcome="failed"`}, 8},
			{[]string{`prev_outcome="failed"`}, 4},
			{[]string{`target="say \"hi\""`}, 5},
			{[]string{`target="say"`}, 0},
		} {
			if got := m.Sum("callback_lookups_total", tc.labels...); got != tc.want {
				t.Errorf("Sum(callback_lookups_total, %q) = %v, want %v", tc.labels, got, tc.want)
			}
		}
	})

	t.Run("a_malformed_page_is_an_error", func(t *testing.T) {
		t.Parallel()
		base := servePages(t, map[string]string{"/metrics": `callback_lookups_total{outcome="failed} 3` + "\n"})
		if m, err := childproc.ReadMetrics(context.Background(), base+"/metrics"); err == nil {
			t.Errorf("ReadMetrics of an unterminated label value = %v, want an error", m)
		}
	})
}
