package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

const defaultDatabaseURL = "postgres://postgres@127.0.0.1:5432/callback?sslmode=disable"

// bench holds the settings and the figures measured so far.
type bench struct {
	env         *env
	runs        int
	runTime     time.Duration
	e2eTime     time.Duration
	e2eRate     float64
	backlogTime time.Duration
	backlogRate float64
	bigPending  int64
	chewTime    time.Duration
	fetchConc   int
	pprofOut    string
	pprofSpace  int64
	stderr      io.Writer

	intakeSpaces    []int64 // id spaces of the 64-sender intake runs
	scaleSpaces     []int64 // id spaces of the end-to-end runs at 2,000 ids/s
	scaleTime       time.Duration
	scaleRate       float64
	floodTime       time.Duration
	floodAfter      time.Duration
	floodNormalRate float64 // callbacks/s of the normal traffic beside a flood
	floodNormalIDs  int64   // its objects
	limiterTime     time.Duration
	capacity        int
	soak            bool
	soakTime        time.Duration
	sampleEvery     time.Duration
	outDir          string

	figs             []*figure
	httpCeil, dbCeil float64
	httpP99          float64 // the HTTP ceiling's p99 reply, ms (median of its runs)
	intake64         float64
	plan             string
	charts           []string // markdown lines linking the charts written beside the table
	started          time.Time
}

func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	if len(args) > 0 && args[0] == "noop-server" {
		return noopServer(ctx, args[1:], stdout, stderr)
	}
	b := &bench{stderr: stderr, started: time.Now()}
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.IntVar(&b.runs, "runs", 3, "runs per figure (each figure is their median, with min and max)")
	fs.DurationVar(&b.runTime, "run-time", 5*time.Second, "length of one ceiling or intake run")
	fs.DurationVar(&b.e2eTime, "e2e-time", 10*time.Second, "length of one end-to-end run (ids 0..99)")
	fs.Float64Var(&b.e2eRate, "e2e-rate", 500, "callbacks/s of the end-to-end load (ids 0..99, 16 senders)")
	fs.DurationVar(&b.backlogTime, "backlog-time", 12*time.Second, "length of one backlog run (ids 0..999,999)")
	fs.Float64Var(&b.backlogRate, "backlog-rate", 2, "callbacks/s of the backlog load (200 ids each: 400 ids/s by default, about twice the lookup capacity)")
	fs.Int64Var(&b.bigPending, "pending", 1_000_000, "pending ids inserted for the cost phase")
	fs.DurationVar(&b.chewTime, "chew-time", 10*time.Second, "how long the service works on the big backlog")
	fs.IntVar(&b.fetchConc, "fetch-concurrency", 512, "FETCH_CONCURRENCY of the service in the end-to-end phases")
	fs.StringVar(&b.pprofOut, "pprof", "", "write a CPU profile of the service during the first 64-sender intake run from -pprof-space objects to this file")
	fs.Int64Var(&b.pprofSpace, "pprof-space", 100_000, "the id space (objects) of the intake run -pprof profiles")
	intakeSpaces := fs.String("intake-spaces", "100,100000,1000000", "id spaces (objects) of the 64-sender intake runs, comma-separated")
	scaleSpaces := fs.String("scale-spaces", "100,20000,100000,1000000", "id spaces of the end-to-end runs (phase scale), comma-separated")
	fs.DurationVar(&b.scaleTime, "scale-time", 60*time.Second, "length of one end-to-end run at an id space (phase scale; also the limiter's)")
	fs.Float64Var(&b.scaleRate, "scale-rate", 20, "callbacks/s of 0..199 ids (mean ~100) in the phases scale and limiter: 20 is ~2,000 ids/s")
	fs.DurationVar(&b.floodTime, "flood-time", 90*time.Second, "length of the flood: 64 senders x 200 ids from 1,000,000 objects (phase flood)")
	fs.DurationVar(&b.floodAfter, "flood-after", 40*time.Second, "normal traffic alone after the flood (one window plus ~10 s)")
	fs.Float64Var(&b.floodNormalRate, "flood-normal-rate", 5, "callbacks/s of 1..200 ids of the normal traffic beside a flood (phases flood, soak): 5 is one every 200 ms")
	fs.Int64Var(&b.floodNormalIDs, "flood-normal-ids", 2000, "objects of the normal traffic beside a flood, ids no flood callback names")
	fs.DurationVar(&b.limiterTime, "limiter-time", 60*time.Second, "length of the run against a capacity-limited object service (phase limiter)")
	fs.IntVar(&b.capacity, "capacity", 1000, "the object service's capacity in the limiter phase (tester objects -capacity)")
	fs.BoolVar(&b.soak, "soak", false, "add the soak phase: a flood for -soak-time with the service's RSS sampled")
	fs.DurationVar(&b.soakTime, "soak-time", 10*time.Minute, "length of the soak's flood")
	fs.DurationVar(&b.sampleEvery, "sample-every", time.Second, "sampling period of the flood, limiter and soak time series")
	out := fs.String("out", "bin/bench.md", "also write the table here (charts go beside it)")
	bin := fs.String("service-bin", "", "the service binary (default: go build ./cmd/callback)")
	phases := fs.String("phases", "ceilings,intake,e2e,scale,flood,limiter,backlog,cost", "phases to run, comma-separated (soak: also with -soak)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if b.runs < 1 {
		return fmt.Errorf("-runs must be at least 1")
	}
	want := map[string]bool{}
	for _, p := range strings.Split(*phases, ",") {
		want[strings.TrimSpace(p)] = true
	}
	want["soak"] = want["soak"] || b.soak
	var err error
	if b.intakeSpaces, err = parseSpaces(*intakeSpaces); err != nil {
		return fmt.Errorf("-intake-spaces: %w", err)
	}
	if b.scaleSpaces, err = parseSpaces(*scaleSpaces); err != nil {
		return fmt.Errorf("-scale-spaces: %w", err)
	}
	if b.sampleEvery <= 0 {
		return fmt.Errorf("-sample-every must be positive")
	}
	if b.floodNormalRate <= 0 || b.floodNormalIDs < 1 {
		return fmt.Errorf("-flood-normal-rate and -flood-normal-ids must be positive")
	}
	if *out != "" {
		b.outDir = filepath.Dir(*out)
	}

	dbURL := getenv("DATABASE_URL")
	if dbURL == "" {
		dbURL = defaultDatabaseURL
	}
	if b.outDir != "" {
		if err := os.MkdirAll(b.outDir, 0o755); err != nil {
			return err
		}
	}
	tmp, err := os.MkdirTemp("", "callback-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	self, err := os.Executable()
	if err != nil {
		return err
	}
	adminURL, err := withDB(dbURL, "postgres")
	if err != nil {
		return fmt.Errorf("DATABASE_URL: %w", err)
	}
	b.env = &env{adminURL: adminURL, self: self, tmp: tmp, bin: *bin}
	if b.env.bin == "" {
		b.env.bin = filepath.Join(tmp, "callback")
		b.progress("building ./cmd/callback")
		build := exec.CommandContext(ctx, "go", "build", "-o", b.env.bin, "./cmd/callback")
		build.Stdout, build.Stderr = stderr, stderr
		if err := build.Run(); err != nil {
			return fmt.Errorf("building the service: %w", err)
		}
	}
	if b.env.settings, err = readSettings(ctx, b.env.bin); err != nil {
		return fmt.Errorf("reading the service's settings: %w", err)
	}
	header, err := b.header(ctx, args)
	if err != nil {
		return err
	}
	before := b.background(ctx)

	steps := []step{
		{"ceilings", "HTTP ceiling", b.httpCeiling},
		{"ceilings", "database ceiling", b.dbCeiling},
		{"intake", "intake, 16 senders", func(ctx context.Context) error { return b.intake(ctx, 16, 100) }},
	}
	for _, space := range b.intakeSpaces {
		steps = append(steps, step{"intake", "intake, 64 senders, ids from " + thousands(space), func(ctx context.Context) error { return b.intake(ctx, 64, space) }})
	}
	steps = append(steps, []step{
		{"e2e", "end to end, ids 0..99", b.coalescing},
		{"scale", "end to end at id spaces " + *scaleSpaces, b.scale},
		{"flood", "a flood, then normal traffic", func(ctx context.Context) error { return b.flood(ctx, "flood", b.floodTime, b.floodAfter) }},
		{"limiter", "lookups against a capacity-limited object service", b.limiter},
		{"backlog", "end to end with a backlog", b.backlog},
		{"cost", "a big backlog of pending ids", b.bigBacklog},
		{"soak", "soak: a long flood", func(ctx context.Context) error { return b.flood(ctx, "soak", b.soakTime, 0) }},
	}...)
	for _, s := range steps {
		if !want[s.phase] {
			continue
		}
		b.progress("== %s", s.what)
		if err := s.do(ctx); err != nil {
			return fmt.Errorf("%s: %w", s.what, err)
		}
	}

	after := b.background(ctx)
	header += fmt.Sprintf("- background, from other users of the machine and of the server (before / after the phases): load average %s / %s; WAL written %s / %s MB/s while the bench wrote nothing\n\n",
		before.load, after.load, before.wal, after.wal)
	report := header + b.table() + b.chartBlock() + b.planBlock()
	fmt.Fprint(stdout, report)
	if *out != "" {
		if err := os.MkdirAll(filepath.Dir(*out), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(*out, []byte(report), 0o644); err != nil {
			return err
		}
		b.progress("written to %s (%.0f s in all)", *out, time.Since(b.started).Seconds())
	}
	return nil
}

// step is one measurement of a phase.
type step struct {
	phase, what string
	do          func(context.Context) error
}

// parseSpaces reads a comma-separated list of id spaces (numbers of objects).
func parseSpaces(s string) ([]int64, error) {
	var out []int64
	for _, f := range strings.Split(s, ",") {
		f = strings.ReplaceAll(strings.TrimSpace(f), "_", "")
		if f == "" {
			continue
		}
		n, err := strconv.ParseInt(f, 10, 64)
		if err != nil || n < 1 {
			return nil, fmt.Errorf("%q: want a positive number of objects", f)
		}
		out = append(out, n)
	}
	return out, nil
}

func (b *bench) progress(format string, args ...any) {
	fmt.Fprintf(b.stderr, "bench %5.1fs: %s\n", time.Since(b.started).Seconds(), fmt.Sprintf(format, args...))
}

// header: the machine, the versions, the settings.
func (b *bench) header(ctx context.Context, args []string) (string, error) {
	conn, err := pgx.Connect(ctx, b.env.adminURL)
	if err != nil {
		return "", fmt.Errorf("connecting to %s (run `go run ./cmd/devpg ensure` first): %w", redact(b.env.adminURL), err)
	}
	defer conn.Close(ctx)
	show := func(name string) string {
		var v string
		if err := conn.QueryRow(ctx, "SHOW "+name).Scan(&v); err != nil {
			return "?"
		}
		return v
	}
	cpu := "?"
	if info, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(info), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				cpu = strings.TrimSpace(v)
				break
			}
		}
	}
	var h strings.Builder
	fmt.Fprintf(&h, "## make bench: %s\n\n", time.Now().Format("2006-01-02 15:04 MST"))
	fmt.Fprintf(&h, "- machine: nproc %d, %s, %s/%s; everything on loopback, load generator included\n", runtime.NumCPU(), cpu, runtime.GOOS, runtime.GOARCH)
	fmt.Fprintf(&h, "- Go %s; PostgreSQL %s (fsync=%s, synchronous_commit=%s, shared_buffers=%s)\n",
		strings.TrimPrefix(runtime.Version(), "go"), show("server_version"), show("fsync"), show("synchronous_commit"), show("shared_buffers"))
	fmt.Fprintf(&h, "- command: `%s`; each figure is the median of %d runs (min, max)\n", strings.Join(append([]string{"go run ./cmd/bench"}, args...), " "), b.runs)
	fmt.Fprintf(&h, "- loads (tester sender, 200 ids per callback, 1 s timeout, keep-alive): ceilings and intake as fast as possible for %v per run, ids 0..99 (64-sender intake: ids from each id space named);"+
		" e2e ids 0..99 at %.0f cb/s (16 senders) for %v plus 10 sample callbacks/s of 5 fresh even ids;"+
		" backlog ids 0..999,999 at %.0f cb/s for %v; object service latency 300 ms to 4.3 s; FETCH_CONCURRENCY=%d (e2e, backlog and cost only)\n",
		b.runTime, b.e2eRate, b.e2eTime, b.backlogRate, b.backlogTime, b.fetchConc)
	fmt.Fprintf(&h, "- service settings: every phase leaves these at the defaults of the binary measured (its -h), whatever the shell exports, except FETCH_CONCURRENCY where named above: %s;"+
		" the bench sets only %s\n", b.env.settings.defaults(), strings.Join(benchSets, ", "))
	fmt.Fprintf(&h, "- scale, flood, limiter, soak: default service settings; scale and limiter traffic is %.0f cb/s of 0..199 ids (~%s ids/s, 4 senders);"+
		" scale runs %v per id space; flood 64 senders x 200 ids from 1,000,000 objects for %v beside normal traffic of %s cb/s of 1..200 ids from %s other objects, which goes on %v after it;"+
		" limiter: the scale traffic from 1,000,000 objects for %v against an object service of capacity %d; one run each\n",
		b.scaleRate, thousands(int64(b.scaleRate*100)), b.scaleTime, b.floodTime, trimFloat(b.floodNormalRate), thousands(b.floodNormalIDs), b.floodAfter, b.limiterTime, b.capacity)
	return h.String(), nil
}

type background struct{ load, wal string }

// background measures what others do on the same machine and server while the bench
// does nothing: the load average and the WAL the server writes for other clients. A
// commit waits for the WAL flush, so someone else's WAL slows our commits down.
func (b *bench) background(ctx context.Context) background {
	bg := background{load: "?", wal: "?"}
	if l, err := os.ReadFile("/proc/loadavg"); err == nil {
		bg.load = strings.Fields(string(l))[0]
	}
	conn, err := pgx.Connect(ctx, b.env.adminURL)
	if err != nil {
		return bg
	}
	defer conn.Close(ctx)
	var lsn0, lsn1 string
	if err := conn.QueryRow(ctx, "SELECT pg_current_wal_lsn()::text").Scan(&lsn0); err != nil {
		return bg
	}
	start := time.Now()
	sleepCtx(ctx, 2*time.Second)
	var bytes float64
	if err := conn.QueryRow(ctx, "SELECT pg_current_wal_lsn()::text, pg_wal_lsn_diff(pg_current_wal_lsn(), $1::pg_lsn)", lsn0).Scan(&lsn1, &bytes); err != nil {
		return bg
	}
	bg.wal = strconv.FormatFloat(bytes/time.Since(start).Seconds()/(1<<20), 'f', 1, 64)
	return bg
}

// figure is one row of the table.
type figure struct {
	section, name, unit string
	vals                []float64
	target              string
	ok                  func(median float64) bool
	note                string // replaces min and max when there is one figure for all runs
}

func (b *bench) fig(section, name, unit string) *figure {
	f := &figure{section: section, name: name, unit: unit}
	b.figs = append(b.figs, f)
	return f
}

func (f *figure) add(v float64) { f.vals = append(f.vals, v) }

func (f *figure) median() float64 { return median(f.vals) }

// median of vals (the mean of the middle two for an even count), 0 when empty.
func median(vals []float64) float64 {
	if len(vals) == 0 {
		return 0
	}
	v := slices.Clone(vals)
	slices.Sort(v)
	if len(v)%2 == 1 {
		return v[len(v)/2]
	}
	return (v[len(v)/2-1] + v[len(v)/2]) / 2
}

// quantile of sorted values (nearest rank), 0 when empty.
func quantile(sorted []float64, q float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(q*float64(len(sorted)))) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

func (b *bench) table() string {
	var t strings.Builder
	t.WriteString("| phase | figure | median | min | max | unit | target | met |\n")
	t.WriteString("| --- | --- | ---: | ---: | ---: | --- | --- | --- |\n")
	for _, f := range b.figs {
		if len(f.vals) == 0 {
			continue
		}
		med := f.median()
		met := ""
		lo, hi := format(slices.Min(f.vals), f.unit), format(slices.Max(f.vals), f.unit)
		if f.note != "" {
			lo, hi = f.note, ""
		}
		if f.ok != nil {
			met = "yes"
			if !f.ok(med) {
				met = "**no**"
			}
		}
		fmt.Fprintf(&t, "| %s | %s | %s | %s | %s | %s | %s | %s |\n", f.section, f.name,
			format(med, f.unit), lo, hi, f.unit, f.target, met)
	}
	return t.String()
}

func (b *bench) planBlock() string {
	if b.plan == "" {
		return ""
	}
	lines := strings.Split(b.plan, "\n")
	if len(lines) > 12 {
		lines = lines[:12]
	}
	uses := "does NOT use pending_due_at_idx"
	if strings.Contains(b.plan, "pending_due_at_idx") {
		uses = "uses pending_due_at_idx"
	}
	return fmt.Sprintf("\nEXPLAIN of the claim query (ClaimDue) with %s pending rows: %s\n\n```text\n%s\n```\n",
		thousands(b.bigPending), uses, strings.Join(lines, "\n"))
}

// format prints v with a precision suited to its unit.
func format(v float64, unit string) string {
	switch unit {
	case "ratio":
		if v != 0 && math.Abs(v) < 0.01 {
			return strconv.FormatFloat(v, 'e', 2, 64)
		}
		return strconv.FormatFloat(v, 'f', 2, 64)
	case "cores":
		return strconv.FormatFloat(v, 'f', 2, 64)
	case "ms", "s", "n":
		if math.Abs(v) < 100 {
			return strconv.FormatFloat(v, 'f', 1, 64)
		}
	}
	return thousands(int64(math.Round(v)))
}

func thousands(n int64) string {
	s := strconv.FormatInt(n, 10)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var out []byte
	for i := range len(s) {
		if i > 0 && (len(s)-i)%3 == 0 {
			out = append(out, ',')
		}
		out = append(out, s[i])
	}
	if neg {
		return "-" + string(out)
	}
	return string(out)
}
