package faulttest

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/objwatch/callback/internal/childproc"
	"github.com/objwatch/callback/internal/pgtest"
	"github.com/objwatch/callback/internal/service"
	"github.com/objwatch/callback/internal/tester"
	"github.com/objwatch/callback/internal/testhelper"
	"github.com/objwatch/callback/internal/testnet"
)

// binDir holds the service binary, built once per test binary by serviceBinary.
var (
	binDir   string
	binOnce  sync.Once
	binPath  string
	binError error
)

func TestMain(m *testing.M) {
	flag.Parse()
	// These tests spend most of their time waiting on timers (leases, windows,
	// outages), not on the CPU, so more of them run at once than -parallel's default
	// of GOMAXPROCS. An explicit -parallel wins.
	explicit := false
	flag.Visit(func(f *flag.Flag) { explicit = explicit || f.Name == "test.parallel" })
	if !explicit {
		_ = flag.Set("test.parallel", "4")
	}
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// serviceBinary builds cmd/callback (without -race: the subprocess tests are about
// crashes, and the in-process tests run the same code under the race detector).
func serviceBinary(t *testing.T) string {
	t.Helper()
	binOnce.Do(func() {
		binDir, binError = os.MkdirTemp("", "faulttest-bin-")
		if binError != nil {
			return
		}
		binPath = filepath.Join(binDir, "callback")
		cmd := exec.Command("go", "build", "-o", binPath, "github.com/objwatch/callback/cmd/callback")
		if out, err := cmd.CombinedOutput(); err != nil {
			binError = fmt.Errorf("go build ./cmd/callback: %w\n%s", err, out)
		}
	})
	if binError != nil {
		t.Fatal(binError)
	}
	return binPath
}

// settingNames are the service's environment variables: the parent's values of these
// never leak into a subprocess.
var settingNames = []string{"DATABASE_URL", "LISTEN_ADDR", "OBJECTS_URL", "EXPIRE_AFTER", "FETCH_MIN_CONCURRENCY", "FETCH_CONCURRENCY",
	"FETCH_TIMEOUT", "LEASE", "SPOOL_DIR", "MAX_BODY_BYTES", "MAX_IDS", "BODY_TIMEOUT", "CALLBACK_TOKEN",
	"DB_MAX_CONNS", "COMMIT_TIMEOUT", "SHUTDOWN_TIMEOUT", "SHUTDOWN_DRAIN", "STATUS_INTERVAL", "LOG_FORMAT", "LOG_LEVEL", "PPROF_ADDR", "CONSOLE"}

// env is a service configuration.
type env map[string]string

// baseEnv: short windows and timeouts, a fresh port and spool; nothing expires for a
// minute unless the test says otherwise.
func baseEnv(t *testing.T, dbURL, objectsURL string) env {
	return env{
		"DATABASE_URL":      dbURL,
		"LISTEN_ADDR":       testnet.FreeAddr(t),
		"OBJECTS_URL":       objectsURL,
		"SPOOL_DIR":         t.TempDir(),
		"EXPIRE_AFTER":      "60s",
		"FETCH_TIMEOUT":     "1s",
		"LEASE":             "3s",
		"FETCH_CONCURRENCY": "64",
		"DB_MAX_CONNS":      "8", // several services and tests share one server's 100 connections
		"SHUTDOWN_TIMEOUT":  "5s",
		"SHUTDOWN_DRAIN":    "0",
		"STATUS_INTERVAL":   "0",
		"LOG_FORMAT":        "json",
	}
}

func (e env) with(kv ...string) env {
	out := env{}
	for k, v := range e {
		out[k] = v
	}
	for i := 0; i+1 < len(kv); i += 2 {
		out[kv[i]] = kv[i+1]
	}
	return out
}

func (e env) base() string { return "http://" + e["LISTEN_ADDR"] }

func (e env) duration(t *testing.T, key string) time.Duration {
	d, err := time.ParseDuration(e[key])
	if err != nil {
		t.Fatalf("%s=%q: %v", key, e[key], err)
	}
	return d
}

// proc is the service binary running as a subprocess.
type proc struct {
	*childproc.Proc
	t    *testing.T
	base string
}

var procSeq struct {
	sync.Mutex
	n int
}

// startProc starts the service binary with e and waits for /healthz.
func startProc(t *testing.T, e env) *proc {
	t.Helper()
	bin := serviceBinary(t)
	procSeq.Lock()
	procSeq.n++
	n := procSeq.n
	procSeq.Unlock()
	logPath := filepath.Join(t.TempDir(), fmt.Sprintf("callback-%d.log", n))
	cmd := exec.Command(bin)
	cmd.Env = subprocessEnv(e)
	cp, err := childproc.Start(cmd, logPath)
	if err != nil {
		t.Fatalf("starting the service: %v", err)
	}
	p := &proc{Proc: cp, t: t, base: e.base()}
	t.Cleanup(func() {
		p.Kill()
		if t.Failed() {
			t.Logf("last lines of %s:\n%s", filepath.Base(logPath), p.Tail(30))
		}
	})
	waitHealthy(t, p.base, p.Done())
	return p
}

func subprocessEnv(e env) []string {
	var out []string
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		skip := false
		for _, s := range settingNames {
			skip = skip || name == s
		}
		if !skip {
			out = append(out, kv)
		}
	}
	for k, v := range e {
		out = append(out, k+"="+v)
	}
	return out
}

// terminate sends SIGTERM and returns how long the process took to exit, and its
// exit code; the test fails if it is not gone within limit.
func (p *proc) terminate(limit time.Duration) (time.Duration, int) {
	p.t.Helper()
	start := time.Now()
	if err := p.Signal(syscall.SIGTERM); err != nil {
		p.t.Fatalf("SIGTERM: %v", err)
	}
	select {
	case <-p.Done():
	case <-time.After(limit):
		p.t.Fatalf("the service did not exit within %v of SIGTERM", limit)
	}
	return time.Since(start), p.Cmd.ProcessState.ExitCode()
}

// inproc is service.Run in this process, under the race detector when the tests are.
type inproc struct {
	base string
	stop context.CancelFunc
	done chan error
	log  *testhelper.Buffer
}

func startInproc(t *testing.T, e env) *inproc {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	s := &inproc{base: e.base(), stop: cancel, done: make(chan error, 1), log: &testhelper.Buffer{}}
	exited := make(chan struct{})
	go func() {
		err := service.Run(ctx, nil, testhelper.Getenv(e), io.Discard, s.log)
		s.done <- err
		close(exited)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-exited:
		case <-time.After(30 * time.Second):
			t.Errorf("service.Run did not return within 30s of cancel")
		}
		if t.Failed() {
			t.Logf("last lines of the service log:\n%s", childproc.LastLines(s.log.String(), 30))
		}
	})
	waitHealthy(t, s.base, exited)
	return s
}

// waitHealthy polls /healthz until it answers 200; exited aborts early.
func waitHealthy(t *testing.T, base string, exited <-chan struct{}) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	client := &http.Client{Timeout: time.Second}
	for {
		resp, err := client.Get(base + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		select {
		case <-exited:
			t.Fatalf("the service at %s exited before it was healthy", base)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("the service at %s is not healthy after 20s: %v", base, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// healthy reports whether /healthz answers 200 within a second.
func healthy(base string) bool {
	resp, err := (&http.Client{Timeout: time.Second}).Get(base + "/healthz")
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// metric sums every series of name on base's /metrics whose labels contain all of
// labels (e.g. `outcome="failed"`).
func metric(t *testing.T, base, name string, labels ...string) float64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	m, err := childproc.ReadMetrics(ctx, base+"/metrics")
	if err != nil {
		t.Fatalf("reading metrics: %v", err)
	}
	return m.Sum(name, labels...)
}

// setupOpts is what a fault test chooses about the service's surroundings.
type setupOpts struct {
	objects    tester.ObjectConfig             // the object service's: fastObjects(seed), perhaps slowed or faulty
	wrap       func(http.Handler) http.Handler // around the object service, if set
	objectsURL string                          // an object service of the test's own instead: none is started
	proxy      bool                            // the service reaches its database through a Proxy
	dbURL      string                          // the service's database (on a cluster of the test's); empty: a fresh one from pgtest
}

// testBundle is the service's surroundings: its environment, and what the test reads
// or breaks besides the service.
type testBundle struct {
	env       env                   // baseEnv on the database and object service below
	directURL string                // the database, not through the proxy (empty with setupOpts.dbURL)
	pool      *pgxpool.Pool         // to the database past any proxy; nil with setupOpts.dbURL
	proxy     *Proxy                // between the service and its database, with setupOpts.proxy
	objects   *tester.ObjectService // nil with setupOpts.objectsURL
}

// setup makes what every fault test runs the service in: a database, an object
// service and the environment. The test then starts the service on tb.env (changed
// with env.with as it needs) with startProc or startInproc, once or several times.
func setup(t *testing.T, opts setupOpts) *testBundle {
	t.Helper()
	tb := &testBundle{}
	dbURL := opts.dbURL
	if dbURL == "" {
		tb.pool, dbURL = pgtest.NewPool(t)
		tb.directURL = dbURL
	}
	if opts.proxy {
		tb.proxy, dbURL = proxied(t, dbURL)
	}
	objectsURL := opts.objectsURL
	if objectsURL == "" {
		tb.objects, objectsURL = objectService(t, opts.objects, opts.wrap)
	}
	tb.env = baseEnv(t, dbURL, objectsURL)
	return tb
}

// objectService serves the tester's object service (with wrap around it, if not nil)
// on a fresh port and returns its base URL.
func objectService(t *testing.T, cfg tester.ObjectConfig, wrap func(http.Handler) http.Handler) (*tester.ObjectService, string) {
	t.Helper()
	o, err := tester.NewObjectService(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var h http.Handler = o
	if wrap != nil {
		h = wrap(o)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second, WriteTimeout: o.WriteTimeout()}
	go srv.Serve(ln) //nolint:errcheck // ends with Close
	t.Cleanup(func() {
		o.Close()
		srv.Close()
	})
	return o, "http://" + ln.Addr().String()
}

// fastObjects: the parity rule, 5-50 ms per lookup, no faults.
func fastObjects(seed uint64) tester.ObjectConfig {
	return tester.ObjectConfig{LatencyMin: 5 * time.Millisecond, LatencyMax: 50 * time.Millisecond,
		Online: tester.OnlineParity, Seed: seed}
}

// largeSpace: a test whose ids come from a space larger than this names mostly fresh
// objects, thousands a second, each needing a lookup of its own: it runs with
// largeSpaceSettings, and its table is given verifyWithin to come right.
const largeSpace = 100_000

// largeSpaceSettings lets the lookup limit grow past the harness's 64: with fresh ids
// from a million objects at 300 callbacks/s, 64 lookups in flight on a machine loaded
// by the race detector and another process took longer than 20 s to look up the
// backlog an outage leaves (the limit still starts at FETCH_MIN_CONCURRENCY and adapts).
var largeSpaceSettings = []string{"FETCH_CONCURRENCY", "1024"}

// verifyWithin is how long a fault test gives the table to come right after the
// fault, for ids up to maxID: longer for a large space (still well within the
// harness's 60 s window, so every callback of the test is still owed its row).
func verifyWithin(maxID int64) time.Duration {
	if maxID > largeSpace {
		return 35 * time.Second
	}
	return 20 * time.Second
}

// load is a sender running in the background.
type load struct {
	s    *tester.Sender
	stop context.CancelFunc
	done chan struct{}
}

// sendLoad posts callbacks to base from several keep-alive senders at a moderate
// rate, with ids from 0 to maxID, until stopped.
func sendLoad(t *testing.T, base string, seed uint64, maxID int64, rate float64) *load {
	t.Helper()
	return sendLoadIDs(t, base, seed, 0, maxID, rate)
}

// sendLoadIDs is sendLoad with ids from minID to maxID.
func sendLoadIDs(t *testing.T, base string, seed uint64, minID, maxID int64, rate float64) *load {
	t.Helper()
	return senderOf(t, base, tester.SenderConfig{
		Rate: rate, Senders: 16, IDsMin: 1, IDsMax: 20, IDMin: minID, IDMax: maxID, Seed: seed,
	})
}

// senderOf starts a sender of its own shape against base, until stopped.
func senderOf(t *testing.T, base string, cfg tester.SenderConfig) *load {
	t.Helper()
	cfg.Target, cfg.Timeout, cfg.Track = base+"/callback", time.Second, true
	s, err := tester.NewSender(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	l := &load{s: s, stop: cancel, done: make(chan struct{})}
	go func() {
		defer close(l.done)
		_ = s.Run(ctx)
	}()
	t.Cleanup(l.Stop)
	return l
}

// Stop ends the load and waits for the callbacks in flight.
func (l *load) Stop() {
	l.stop()
	<-l.done
}

// mergeRecords joins several senders' records: the latest of each time wins.
func mergeRecords(all ...map[int64]tester.SendRecord) map[int64]tester.SendRecord {
	out := map[int64]tester.SendRecord{}
	for _, records := range all {
		for id, r := range records {
			o := out[id]
			if r.Accepted.After(o.Accepted) {
				o.Accepted = r.Accepted
			}
			if r.Maybe.After(o.Maybe) {
				o.Maybe = r.Maybe
			}
			out[id] = o
		}
	}
	return out
}

// verifyTable waits (up to catchUp) until the objects table matches what was accepted,
// and fails the test with the differences if it never does. It also requires that
// the check was not vacuous.
//
// late widens one check: a last_seen later than the latest send of a callback naming
// the id (plus tester.LastSeenTolerance). A callback whose sender timed out may still
// be read and stamped by a server starved of CPU after the sender gave up (the race
// detector and other test processes on two cores do that); its receipt time is then
// honest but later than the sender can know. Pass lateSlack(stats) for it: zero
// unless the sender saw timeouts.
func verifyTable(t *testing.T, pool *pgxpool.Pool, records map[int64]tester.SendRecord, online tester.OnlineRule, window, catchUp, late time.Duration) {
	t.Helper()
	expected := tester.Expect(records, online)
	start := time.Now()
	var problems, tolerated []tester.Problem
	for {
		now := time.Now()
		rows, err := tester.ReadObjects(context.Background(), pool)
		if err != nil {
			t.Fatalf("verifying the objects table: %v", err)
		}
		problems, tolerated = problems[:0], tolerated[:0]
		for _, p := range tester.Diff(expected, rows, now, window) {
			if p.Kind == tester.Stale && late > 0 && p.LastSeen.After(p.Want.Maybe) &&
				!p.LastSeen.After(p.Want.Maybe.Add(tester.LastSeenTolerance+late)) {
				tolerated = append(tolerated, p)
				continue
			}
			problems = append(problems, p)
		}
		if len(problems) == 0 {
			if n := tester.Required(expected, now, window); n == 0 {
				t.Fatalf("vacuous check: no accepted online id was required to be present")
			} else {
				t.Logf("verify: table matches after %v: %d rows, %d required present, %d stamped after their sender gave up",
					time.Since(start).Round(time.Millisecond), len(rows), n, len(tolerated))
			}
			return
		}
		if time.Since(start) > catchUp {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("the objects table still differs from what was accepted after %v (%d problems):\n%s", catchUp, len(problems), listProblems(problems))
}

// listProblems prints the first 20 problems, one a line, and how many more there are.
func listProblems(problems []tester.Problem) string {
	var b strings.Builder
	for i, p := range problems {
		if i == 20 {
			fmt.Fprintf(&b, "... and %d more\n", len(problems)-20)
			break
		}
		fmt.Fprintln(&b, p)
	}
	return b.String()
}

// lateSlack is verifyTable's late for senders with these stats.
func lateSlack(stats ...tester.SenderStats) time.Duration {
	for _, st := range stats {
		if st.Timeouts > 0 {
			return 3 * time.Second
		}
	}
	return 0
}

// column runs sql, which selects one column, and returns its values.
func column[T any](t *testing.T, pool *pgxpool.Pool, sql string) []T {
	t.Helper()
	rows, err := pool.Query(context.Background(), sql)
	if err != nil {
		t.Fatal(err)
	}
	values, err := pgx.CollectRows(rows, pgx.RowTo[T])
	if err != nil {
		t.Fatal(err)
	}
	return values
}

// queued counts the rows still to merge or look up.
func queued(t *testing.T, pool *pgxpool.Pool) int64 {
	t.Helper()
	var n int64
	if err := pool.QueryRow(context.Background(),
		"SELECT (SELECT count(*) FROM inbox_batches) + (SELECT count(*) FROM pending WHERE due_at > '-infinity')").Scan(&n); err != nil {
		t.Fatalf("counting queued rows: %v", err)
	}
	return n
}

// spoolSegments lists the segment files in a spool directory.
func spoolSegments(t *testing.T, dir string) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(dir, "*.spool"))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// sleep waits d; tests that are about time use it so the intent reads plainly.
func sleep(d time.Duration) { time.Sleep(d) }

// acceptedRatio is accepted/(accepted+refused+failed) between two snapshots.
func acceptedRatio(before, after tester.SenderStats) (ratio float64, answered int64) {
	acc := after.Accepted - before.Accepted
	all := acc + (after.Refused - before.Refused) + (after.Failed - before.Failed)
	if all == 0 {
		return 1, 0
	}
	return float64(acc) / float64(all), all
}

// proxied puts a Proxy in front of dbURL's server and returns it with the URL that
// goes through it (same database, user and options).
func proxied(t *testing.T, dbURL string) (*Proxy, string) {
	t.Helper()
	u, err := url.Parse(dbURL)
	if err != nil {
		t.Fatal(err)
	}
	p, err := NewProxy(u.Host)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	u.Host = p.Addr()
	return p, u.String()
}
