// Package service is the whole callback service, wired: configuration, the HTTP
// server, the group committer and spool, the merger, the fetchers, expiry, and the
// shutdown order. cmd/callback's main only calls Run, and so do the end-to-end tests,
// the fault tests and the benchmark: they all exercise the real thing.
package service

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/objwatch/callback/internal/backoff"
	"github.com/objwatch/callback/internal/component"
	"github.com/objwatch/callback/internal/console"
	"github.com/objwatch/callback/internal/errlog"
	"github.com/objwatch/callback/internal/expiry"
	"github.com/objwatch/callback/internal/fetch"
	"github.com/objwatch/callback/internal/inbox"
	"github.com/objwatch/callback/internal/intake"
	"github.com/objwatch/callback/internal/merge"
	"github.com/objwatch/callback/internal/metrics"
	"github.com/objwatch/callback/internal/objectsvc"
	"github.com/objwatch/callback/internal/pace"
	"github.com/objwatch/callback/internal/server"
	"github.com/objwatch/callback/internal/spool"
	"github.com/objwatch/callback/internal/store"
	"github.com/objwatch/callback/internal/vacuum"
	"github.com/objwatch/callback/internal/watermark"
)

// Run is the whole service; it returns when ctx ends and shutdown is complete, or when
// the service cannot start.
func Run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	cfg, err := parseConfig(args, getenv, stderr)
	if err != nil {
		return err
	}
	log := newLogger(cfg, stderr)
	m := metrics.New()

	// DATABASE_URL may name a primary and its standbys: PoolConfig's pool drops
	// connections that cannot write and re-dials, which finds the promoted standby.
	poolCfg, err := store.PoolConfig(cfg.DatabaseURL)
	if err != nil {
		return fmt.Errorf("invalid DATABASE_URL: %w", err)
	}
	poolCfg.MaxConns = int32(cfg.DBMaxConns)
	poolCfg.ConnConfig.ConnectTimeout = 2 * time.Second
	// Two connections opened in the background from the start and kept: the flusher's
	// first commit after a start or an idle spell does not pay for a connection
	// (TCP, auth, type loading) inside its COMMIT_TIMEOUT.
	poolCfg.MinConns = min(2, poolCfg.MaxConns)
	pool, err := pgxpool.NewWithConfig(ctx, poolCfg) // connects lazily: Postgres may be down now
	if err != nil {
		return fmt.Errorf("creating database pool: %w", err)
	}
	defer pool.Close()
	db := store.New(pool)

	sp, err := spool.Open(cfg.SpoolDir, log)
	if err != nil {
		return fmt.Errorf("opening SPOOL_DIR %q: %w", cfg.SpoolDir, err)
	}
	defer sp.Close()

	// Every long-running component logs, counts and reads the clock the same way.
	deps := component.Deps{Log: log, Metrics: m}
	// The committer does not wake the merger: the merger keeps its own cadence, so that
	// passes coalesce (see merge's defaults).
	committer, err := inbox.NewCommitter(inbox.CommitterConfig{CommitTimeout: cfg.CommitTimeout}, db, sp, deps)
	if err != nil {
		return fmt.Errorf("building the committer: %w", err)
	}
	// Intake first: merging and lookups give the reply path the cores while it is busy.
	busy := func() float64 { return replyPathBusy(committer.Load()) }

	lookups := objectsvc.New(cfg.ObjectsURL, cfg.FetchConcurrency)
	defer lookups.CloseIdle()
	fcfg := cfg.fetchConfig()
	fcfg.Yield = func() float64 { return 0.75 * busy() }
	fetcher, err := fetch.New(fcfg, db, lookups.Lookup, deps)
	if err != nil {
		return err // parseConfig validated it
	}
	// Under overload a flood of fresh ids is answered late, so that a sender waiting for
	// its answers slows down (internal/pace); the merger says when, and which ids the
	// service tracks.
	pacer := pace.New(pace.Config{Target: cfg.OverloadPace, Capacity: cfg.MaxPending})
	merger, err := merge.New(merge.Config{MaxPending: cfg.MaxPending, ExpireAfter: cfg.ExpireAfter, Yield: busy, Changed: fetcher.Wake, Pacer: pacer}, db, deps)
	if err != nil {
		return fmt.Errorf("building the merger: %w", err)
	}
	// When the database answers again (a replay or a commit worked after a failure),
	// every stage that backed off while it was away starts at once: spooled and
	// queued callbacks reach the table within a second, not after the longest backoff.
	wakeWorkers := func() { merger.Wake(); fetcher.Wake() }
	replayer, err := inbox.NewReplayer(inbox.ReplayerConfig{Replayed: wakeWorkers}, db, sp, deps)
	if err != nil {
		return fmt.Errorf("building the replayer: %w", err)
	}
	committer.OnRecovered(func() { wakeWorkers(); replayer.Wake() })
	// The fleet's low watermark: this replica's requests in flight and spool, and the
	// other replicas' (internal/watermark). Expiry reads the clock no further.
	receipts := watermark.NewTracker()
	publisher, err := watermark.New(watermark.Config{Window: cfg.ExpireAfter, Silence: cfg.ReplicaTimeout}, receipts, sp, db, deps)
	if err != nil {
		return fmt.Errorf("building the watermark publisher (SPOOL_DIR %q): %w", cfg.SpoolDir, err)
	}
	expirer, err := expiry.New(expiry.Config{ExpireAfter: cfg.ExpireAfter, MergeLag: pacer.MergeLag}, db, publisher, deps)
	if err != nil {
		return fmt.Errorf("building expiry: %w", err)
	}
	vacuumer, err := vacuum.New(vacuum.Config{}, db, deps)
	if err != nil {
		return fmt.Errorf("building the vacuumer: %w", err)
	}
	status, err := newStatus(statusConfig{Interval: cfg.StatusInterval},
		statusSources{db: db, spool: sp, fetcher: fetcher, target: databaseTarget(poolCfg)}, deps)
	if err != nil {
		return fmt.Errorf("building the status reporter: %w", err)
	}

	// The live page (CONSOLE): its sampler reads the metrics, nothing else.
	var (
		cons *console.Console
		page server.Console // stays nil, not a nil *Console, when it is off
	)
	if cfg.Console {
		if cons, err = console.New(console.Config{}, deps); err != nil {
			return fmt.Errorf("building the console: %w", err)
		}
		page = cons
	}

	// draining turns /readyz to 503 at shutdown, before the listener closes.
	var draining atomic.Bool
	handler := server.New(server.Deps{
		Log:     log,
		Metrics: m,
		Callback: intake.NewHandler(intake.Config{MaxBodyBytes: cfg.MaxBodyBytes, MaxIDs: cfg.MaxIDs, Token: cfg.CallbackToken, BodyTimeout: cfg.BodyTimeout},
			intake.Deps{Submitter: committer, Receipts: receipts, Pacer: pacer, Log: log, Metrics: m}),
		Objects: server.NewObjects(db, cfg.ExpireAfter),
		Ready:   readiness(db, cfg.SpoolDir, &draining),
		Console: page,
	})
	srv := server.HTTPServer(cfg.ListenAddr, handler, log)
	ln, err := net.Listen("tcp", cfg.ListenAddr)
	if err != nil {
		return fmt.Errorf("listening on LISTEN_ADDR %q: %w", cfg.ListenAddr, err)
	}
	build := metrics.ReadBuild()
	log.Info("callback service listening", "addr", ln.Addr().String(), "objects_url", cfg.ObjectsURL,
		"database", databaseTarget(poolCfg), "expire_after", cfg.ExpireAfter,
		"fetch_concurrency", fmt.Sprintf("%d..%d", cfg.FetchMinConcurrency, cfg.FetchConcurrency),
		"spool_dir", cfg.SpoolDir, "replica", publisher.ID(), "version", build.Version, "revision", build.Revision)
	if cons != nil {
		log.Info("console: open "+consoleURL(ln.Addr())+" to watch the service live (CONSOLE=off turns it off)",
			"url", consoleURL(ln.Addr()))
	}

	// Three lifetimes, ended in this order at shutdown: the HTTP server (no new
	// callbacks), the committer (writes out what was accepted), the workers (hand back
	// their claims). Each later stage outlives everything that feeds it.
	commitCtx, stopCommitter := context.WithCancel(context.WithoutCancel(ctx))
	defer stopCommitter()
	workCtx, stopWorkers := context.WithCancel(context.WithoutCancel(ctx))
	defer stopWorkers()

	var committing, working sync.WaitGroup
	committing.Go(func() { _ = committer.Run(commitCtx) })

	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()

	if cfg.PprofAddr != "" {
		stopPprof := servePprof(cfg.PprofAddr, log)
		defer stopPprof()
	}

	// The status line and the health gauges run from the start: a DATABASE_URL that
	// never works must be as visible as one that went away.
	working.Go(func() { _ = status.Run(workCtx) })
	if cons != nil {
		working.Go(func() { _ = cons.Run(workCtx) })
	}
	// Everything that reads the tables waits for the schema; intake does not (until
	// then its writes fail over to the spool).
	working.Go(func() {
		if !migrate(workCtx, cfg.DatabaseURL, log) {
			return
		}
		var w sync.WaitGroup
		w.Go(func() { _ = replayer.Run(workCtx) })
		w.Go(func() { _ = merger.Run(workCtx) })
		w.Go(func() { _ = fetcher.Run(workCtx) })
		w.Go(func() { _ = expirer.Run(workCtx) })
		w.Go(func() { _ = publisher.Run(workCtx) })
		w.Go(func() { _ = vacuumer.Run(workCtx) })
		w.Go(func() {
			pacer.Watch(workCtx, 500*time.Millisecond, func() float64 { return metrics.Sum(m.Dropped) }, time.Now)
		})
		w.Wait()
	})

	select {
	case <-ctx.Done():
	case err := <-serveErr:
		return fmt.Errorf("serving HTTP: %w", err)
	}

	// Drain the way a replica behind a load balancer must: /readyz answers 503 at
	// once, so the balancer stops sending new connections here, while the listener
	// stays open and keeps answering whatever still arrives during SHUTDOWN_DRAIN.
	// Closing the listener at once would refuse senders that the balancer has not
	// yet moved (a refused callback is lost for good). Keep-alives end now, so that
	// open connections move to another replica after their next request.
	draining.Store(true)
	srv.SetKeepAlivesEnabled(false)
	log.Info("shutting down: draining", "drain", cfg.ShutdownDrain, "then_timeout", cfg.ShutdownTimeout,
		"lookups_in_flight", fetcher.InFlight())
	if cfg.ShutdownDrain > 0 {
		select {
		case <-time.After(cfg.ShutdownDrain):
		case err := <-serveErr:
			log.Warn("HTTP server failed while draining", "err", err)
		}
	}
	deadline, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
	defer cancel()
	start := time.Now()
	log.Info("shutdown: closing the listener, waiting for requests in progress (each waits for its commit)")
	if err := srv.Shutdown(deadline); err != nil {
		log.Warn("HTTP shutdown incomplete", "err", err)
	}
	log.Info("shutdown: writing out queued callbacks", "waited", time.Since(start).Round(time.Millisecond))
	stopCommitter()
	if !waitUntil(deadline, &committing) {
		log.Warn("committer did not finish before the shutdown deadline")
	}
	log.Info("shutdown: stopping workers, handing back lookups in flight", "lookups_in_flight", fetcher.InFlight(),
		"waited", time.Since(start).Round(time.Millisecond))
	stopWorkers()
	if !waitUntil(deadline, &working) {
		log.Warn("workers did not finish before the shutdown deadline; their leases will expire")
	}
	if segments, bytes := sp.Stats(); segments > 0 {
		// Not lost: the next start (or any replica sharing SPOOL_DIR) replays them.
		log.Warn("shutdown: callbacks left in the spool, replayed at the next start", "spool_dir", cfg.SpoolDir,
			"segments", segments, "bytes", bytes)
	}
	log.Info("stopped", "took", time.Since(start).Round(time.Millisecond))
	return nil
}

// databaseTarget names the database for log lines, without the password.
func databaseTarget(c *pgxpool.Config) string {
	return fmt.Sprintf("%s:%d/%s", c.ConnConfig.Host, c.ConnConfig.Port, c.ConnConfig.Database)
}

// consoleURL is where a browser on this machine finds the console: an address that
// listens on every interface is reached as localhost.
func consoleURL(addr net.Addr) string {
	host, port, err := net.SplitHostPort(addr.String())
	if err != nil {
		return "http://" + addr.String() + "/"
	}
	if ip := net.ParseIP(host); ip == nil || ip.IsUnspecified() {
		host = "localhost"
	}
	return "http://" + net.JoinHostPort(host, port) + "/"
}

// replyPathBusy maps the group committer's load (the share of time it spends writing)
// to how much background work should yield, 0 to 1: nothing below 30% (ordinary
// traffic), all it may from 80% on (commits back to back, callbacks queueing). Merging
// then still has about a fifth of a core and lookups a quarter of their limit, so the
// table keeps moving through a burst, slowly: intake comes first. Without yielding,
// intake fell to a fraction of the HTTP ceiling once the lookup limit had grown. A
// twentieth instead of a quarter took 64 senders x 200 ids from 100,000 objects from
// 8.2k to 10.8k callbacks/s, but the committer's load is also high on a machine that
// is merely slow (commits take longer, not more of them): under a CPU hog, with 300
// callbacks/s of fresh ids, lookups kept a twentieth for the whole run and a thousand
// objects were still not looked up 20 s after their receipt
// (faulttest.TestPostgresOutage). Intake first, but not at the table's expense.
func replyPathBusy(load float64) float64 {
	return min(max((load-0.3)/0.5, 0), 1)
}

// migrate applies the migrations, retrying until it works or ctx ends.
func migrate(ctx context.Context, databaseURL string, log *slog.Logger) bool {
	errs := errlog.New(log, component.ErrorEvery)
	retry := backoff.Retry{Policy: backoff.Policy{Base: 200 * time.Millisecond, Max: 5 * time.Second}}
	for {
		err := store.Migrate(ctx, databaseURL, io.Discard)
		if err == nil {
			errs.Recovered(ctx, "migrate", "database reachable; migrations applied")
			log.Info("schema up to date")
			return true
		}
		errs.Error(ctx, "migrate", "cannot apply migrations yet; callbacks are spooled meanwhile", err)
		if !backoff.Sleep(ctx, retry.Next()) {
			return false
		}
	}
}

// readiness: ready when callbacks can be made durable, in Postgres or in the spool,
// and not shutting down.
func readiness(db *store.Store, spoolDir string, draining *atomic.Bool) server.Readiness {
	return func(ctx context.Context) error {
		if draining.Load() {
			return errors.New("shutting down")
		}
		pctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
		defer cancel()
		dbErr := db.Ping(pctx)
		if dbErr == nil {
			return nil
		}
		f, err := os.CreateTemp(spoolDir, ".probe-*")
		if err != nil {
			return fmt.Errorf("database unreachable (%v) and spool not writable (%v)", dbErr, err)
		}
		f.Close()
		os.Remove(f.Name())
		return nil
	}
}

func waitUntil(ctx context.Context, wg *sync.WaitGroup) bool {
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
		return true
	case <-ctx.Done():
		return false
	}
}

func servePprof(addr string, log *slog.Logger) func() {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	srv := &http.Server{Addr: addr, Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("pprof server failed", "addr", addr, "err", err)
		}
	}()
	log.Info("pprof listening", "addr", addr)
	return func() { srv.Close() }
}

// durationText writes durations as "30s" rather than JSON's 30000000000 nanoseconds.
func durationText(_ []string, a slog.Attr) slog.Attr {
	if a.Value.Kind() == slog.KindDuration {
		a.Value = slog.StringValue(a.Value.Duration().String())
	}
	return a
}

func newLogger(cfg config, w io.Writer) *slog.Logger {
	var level slog.Level
	_ = level.UnmarshalText([]byte(cfg.LogLevel))
	opts := &slog.HandlerOptions{Level: level, ReplaceAttr: durationText}
	format := cfg.LogFormat
	if format == "auto" {
		format = "json"
		if f, ok := w.(*os.File); ok {
			if st, err := f.Stat(); err == nil && st.Mode()&os.ModeCharDevice != 0 {
				format = "text"
			}
		}
	}
	if format == "text" {
		return slog.New(slog.NewTextHandler(w, opts))
	}
	return slog.New(slog.NewJSONHandler(w, opts))
}
