package console_test

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/objwatch/callback/internal/pgtest"
	"github.com/objwatch/callback/internal/service"
	"github.com/objwatch/callback/internal/tester"
	"github.com/objwatch/callback/internal/testhelper"
	"github.com/objwatch/callback/internal/testnet"
)

// The page in a real browser: Debian's Chromium, headless, driven through chromedp,
// against the real service (service.Run) under the tester's load.
//
// For the picture in docs/console.png:
//
//	go test ./internal/console -run TestBrowser -count=1 \
//	  -screenshot="$PWD/docs/console.png" -screenshot-after=3m
var (
	screenshot      = flag.String("screenshot", "", "write a PNG of the page under load to this file")
	screenshotAfter = flag.Duration("screenshot-after", 0, "with -screenshot: how long the load runs before the picture (the charts fill up over HistoryDefault)")
)

// chromiumPath is where Debian's chromium package puts the browser.
const chromiumPath = "/usr/bin/chromium"

// unknownID is never sent: the sender's ids are below idMax.
const (
	idMax     = 99_999
	unknownID = 987_654_321_012
)

func TestBrowser(t *testing.T) {
	t.Parallel()
	b := openBrowser(t)
	svc := startUnderLoad(t)
	b.do(t, chromedp.Navigate(svc.base+"/"))

	// Every chart draws a line, and those of the work the load causes draw more than zeros.
	charts := func() map[string]int {
		return evaluate[map[string]int](t, b, `Object.fromEntries([...document.querySelectorAll('section.card')].map((c) =>
			[c.id, Math.max(0, ...[...c.querySelectorAll('path.line')].map((p) => +p.dataset.points))]))`)
	}
	testhelper.Eventually(t, 60*time.Second, "every chart draws a line of two points or more", func() bool {
		got := charts()
		if len(got) != 12 {
			return false
		}
		for _, points := range got {
			if points < 2 {
				return false
			}
		}
		return true
	}, func() string { return fmt.Sprintf("points per chart: %v", charts()) })
	for _, chart := range []string{"accepted", "merged", "lookups", "objects"} {
		testhelper.Eventually(t, 60*time.Second, "the "+chart+" chart's latest value is above zero", func() bool {
			v := b.text(t, "#chart-"+chart+" .legend .val")
			return v != "" && v != "–" && !strings.HasPrefix(v, "0")
		}, func() string { return "legend: " + b.text(t, "#chart-"+chart+" .legend") })
	}
	require.Equal(t, "live", b.text(t, "#pill-live"))
	require.Equal(t, "Postgres answers", b.text(t, "#pill-database"))

	// The counters move between two reads.
	for _, tile := range []string{"accepted", "lookups"} {
		first := b.number(t, "#tile-"+tile)
		testhelper.Eventually(t, 60*time.Second, "the "+tile+" counter moves", func() bool {
			return b.number(t, "#tile-"+tile) > first
		}, func() string { return fmt.Sprintf("%d, then %q", first, b.text(t, "#tile-"+tile)) })
	}

	// The newest objects are listed.
	testhelper.Eventually(t, 30*time.Second, "a row in the newest objects", func() bool {
		return evaluate[int](t, b, `document.querySelectorAll('#newest a').length`) > 0
	})

	// The box answers for an object that is in the table, and for one that is not.
	known := svc.newestObject(t)
	b.lookUp(t, strconv.FormatInt(known, 10))
	testhelper.Eventually(t, 30*time.Second, "the box says the known object is online", func() bool {
		return strings.HasPrefix(b.text(t, "#lookup-result"), fmt.Sprintf("%d is online", known))
	}, func() string { return "result: " + b.text(t, "#lookup-result") })
	b.lookUp(t, strconv.FormatInt(unknownID, 10))
	testhelper.Eventually(t, 30*time.Second, "the box says the unknown object is not found", func() bool {
		return strings.HasPrefix(b.text(t, "#lookup-result"), fmt.Sprintf("%d: not found", unknownID))
	}, func() string { return "result: " + b.text(t, "#lookup-result") })

	if *screenshot != "" {
		b.screenshot(t, svc, *screenshot, *screenshotAfter)
	}

	// Nothing went wrong in the page, and it asked nothing of any other host. First
	// make sure an error and an exception would be seen: a check that sees nothing
	// must not pass for one that found nothing.
	evaluate[chromedp.Void](t, b, `console.error('probe-error'); setTimeout(() => { throw new Error('probe-exception'); })`)
	testhelper.Eventually(t, 30*time.Second, "the probe error and exception in the console", func() bool {
		var seen int
		for _, m := range b.messages() {
			if m.Type == chromedp.ConsoleError && m.Text == "probe-error" || m.IsException() && strings.Contains(m.Text, "probe-exception") {
				seen++
			}
		}
		return seen == 2
	}, func() string { return fmt.Sprintf("messages: %v", b.messages()) })
	for _, m := range b.messages() {
		if m.Type != chromedp.ConsoleError && !m.IsException() || strings.Contains(m.Text, "probe-") {
			continue
		}
		// The lookup of the unknown id is a 404, which Chromium logs as a failed load.
		if m.Source == "network" && strings.Contains(m.URL, fmt.Sprintf("/objects/%d", unknownID)) {
			continue
		}
		t.Errorf("browser console: %s (%s:%d)", m, m.URL, m.Line)
	}
	for _, u := range b.requested() {
		if !strings.HasPrefix(u, svc.base+"/") && !strings.HasPrefix(u, "data:") {
			t.Errorf("the page requested %s, not from the service", u)
		}
	}
}

// instance is the service under test and its load.
type instance struct {
	base string
	pool *pgxpool.Pool
	from time.Time // when the load started
}

// startUnderLoad runs service.Run against a fresh database, the tester's object
// service (some failures, a capacity that rejects, so that every chart has something
// to draw) and a sender.
func startUnderLoad(t *testing.T) *instance {
	t.Helper()
	dbURL := pgtest.New(t)
	pool, err := pgxpool.New(context.Background(), dbURL)
	require.NoError(t, err)
	t.Cleanup(pool.Close)

	objects, err := tester.NewObjectService(tester.ObjectConfig{
		LatencyMin: 20 * time.Millisecond, LatencyMax: 500 * time.Millisecond, FailPct: 1,
		Capacity: 400, RetryAfter: time.Second, Seed: 1,
	})
	require.NoError(t, err)
	objLn, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	ctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { stop(); wg.Wait() })
	wg.Go(func() { _ = objects.Serve(ctx, objLn, time.Second) })

	addr := testnet.FreeAddr(t)
	env := map[string]string{
		"DATABASE_URL":    dbURL,
		"LISTEN_ADDR":     addr,
		"OBJECTS_URL":     "http://" + objLn.Addr().String(),
		"SPOOL_DIR":       t.TempDir(),
		"FETCH_TIMEOUT":   "2s",
		"LEASE":           "4s",
		"DB_MAX_CONNS":    "8",  // tests share one server's connections
		"STATUS_INTERVAL": "1s", // the database's gauges as often as the console samples
		"SHUTDOWN_DRAIN":  "0",
		"LOG_FORMAT":      "json",
	}
	svc := &instance{base: "http://" + addr, pool: pool}
	logs := &testhelper.Buffer{}
	wg.Go(func() {
		if err := service.Run(ctx, nil, testhelper.Getenv(env), io.Discard, logs); err != nil {
			t.Errorf("service.Run: %v\n%s", err, logs.String())
		}
	})
	testhelper.Eventually(t, 30*time.Second, "the service answers /healthz", func() bool {
		resp, err := http.Get(svc.base + "/healthz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})

	sender, err := tester.NewSender(tester.SenderConfig{
		Target: svc.base + "/callback", Rate: 20, Senders: 2,
		IDsMin: 1, IDsMax: 200, IDMin: 0, IDMax: idMax, Timeout: 2 * time.Second, Seed: 1,
	})
	require.NoError(t, err)
	svc.from = time.Now()
	wg.Go(func() { _ = sender.Run(ctx) })
	return svc
}

// newestObject is the id of the row seen last in objects, once there is one.
func (s *instance) newestObject(t *testing.T) int64 {
	t.Helper()
	var id int64
	testhelper.Eventually(t, 60*time.Second, "a row in objects", func() bool {
		return s.pool.QueryRow(context.Background(), "SELECT id FROM objects ORDER BY last_seen DESC LIMIT 1").Scan(&id) == nil
	})
	return id
}

// browser is a headless Chromium with one tab, and what the tab reported.
type browser struct {
	ctx  context.Context
	mu   sync.Mutex
	msgs []chromedp.ConsoleMessage
	urls []string
}

// openBrowser starts Debian's Chromium with nothing that reaches the network on its
// own (no updates, sync, QUIC or background requests) and a fresh profile. Without
// the package installed the test fails: a skipped browser test is one that never runs.
func openBrowser(t *testing.T) *browser {
	t.Helper()
	path := findChromium(t)
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(),
		chromedp.ExecPath(path),
		chromedp.Headless,
		chromedp.NoSandbox, // runs as root in CI
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1440, 1000),
	)
	ctx, cancelTab := chromedp.NewContext(allocCtx)
	b := &browser{ctx: ctx}
	done := make(chan struct{})
	t.Cleanup(func() { cancelTab(); cancelAlloc(); <-done }) // before the profile directory goes

	// Subscribe before the page loads: nothing it logs or requests is missed.
	if err := chromedp.Listen(ctx, func(ev any) {
		if e, ok := ev.(*network.EventRequestWillBeSent); ok {
			b.mu.Lock()
			b.urls = append(b.urls, e.Request.URL)
			b.mu.Unlock()
		}
	}); err != nil {
		close(done)
		t.Fatalf("starting %s: %v", path, err)
	}
	messages := chromedp.Console(ctx)
	go func() {
		defer close(done)
		for m, err := range messages {
			if err != nil {
				return
			}
			b.mu.Lock()
			b.msgs = append(b.msgs, m)
			b.mu.Unlock()
		}
	}()
	return b
}

// findChromium is Debian's Chromium, or one on PATH.
func findChromium(t *testing.T) string {
	t.Helper()
	if _, err := os.Stat(chromiumPath); err == nil {
		return chromiumPath
	}
	if path, err := exec.LookPath("chromium"); err == nil {
		return path
	}
	t.Fatalf("no Chromium at %s or on PATH: install it with `apt-get install -y chromium` (.ci/run does)", chromiumPath)
	return ""
}

func (b *browser) messages() []chromedp.ConsoleMessage {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]chromedp.ConsoleMessage(nil), b.msgs...)
}

func (b *browser) requested() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.urls...)
}

// do runs steps, each within a generous time.
func (b *browser) do(t *testing.T, steps ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 30*time.Second)
	defer cancel()
	require.NoError(t, chromedp.Do(ctx, steps...))
}

func evaluate[T any](t *testing.T, b *browser, expr string) T {
	t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 30*time.Second)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr))
	require.NoError(t, err, "evaluating %s", expr)
	return v
}

// text is the text of the first element sel selects, "" if there is none.
func (b *browser) text(t *testing.T, sel string) string {
	t.Helper()
	return evaluate[string](t, b, fmt.Sprintf(`document.querySelector(%q)?.textContent ?? ''`, sel))
}

// number reads a count written with thousands separators ("–" before the first sample: -1).
func (b *browser) number(t *testing.T, sel string) int64 {
	t.Helper()
	s := strings.ReplaceAll(b.text(t, sel), ",", "")
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return -1
	}
	return n
}

// lookUp types id into the box and presses its button.
func (b *browser) lookUp(t *testing.T, id string) {
	t.Helper()
	b.do(t, chromedp.SetValue(chromedp.ID("lookup-id"), id), chromedp.Click(chromedp.CSS("#lookup button")))
}

// screenshot waits until the load has run for after, looks an object that is online
// up, then writes the whole page.
func (b *browser) screenshot(t *testing.T, svc *instance, path string, after time.Duration) {
	t.Helper()
	if wait := time.Until(svc.from.Add(after)); wait > 0 {
		t.Logf("screenshot in %v", wait.Round(time.Second))
		time.Sleep(wait) // a picture with history, not a wait for a state
	}
	id := strconv.FormatInt(svc.newestObject(t), 10)
	b.lookUp(t, id)
	testhelper.Eventually(t, 30*time.Second, "the box's answer", func() bool {
		return strings.HasPrefix(b.text(t, "#lookup-result"), id+" is online")
	})
	ctx, cancel := context.WithTimeout(b.ctx, 30*time.Second)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(path, png, 0o644))
	t.Logf("wrote %s", path)
}
