package main

import (
	"cmp"
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/objwatch/callback/internal/callback"
	"github.com/objwatch/callback/internal/intake"
	"github.com/objwatch/callback/internal/metrics"
	"github.com/objwatch/callback/internal/server"
	"github.com/objwatch/callback/internal/tester"
)

// noopServer is the HTTP ceiling's server: the service's own routes, middleware,
// handler, parser and http.Server settings, with the durable write replaced by a
// no-op. It prints its address on stdout and serves until ctx ends.
func noopServer(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("noop-server", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", "127.0.0.1:0", "listen address")
	if err := fs.Parse(args); err != nil {
		return err
	}
	log := slog.New(slog.NewJSONHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	m := metrics.New()
	// The service's defaults (internal/service/config.go).
	icfg := intake.Config{MaxBodyBytes: 1 << 20, MaxIDs: 10000, BodyTimeout: time.Second}
	h := server.New(server.Deps{
		Log:      log,
		Metrics:  m,
		Callback: intake.NewHandler(icfg, intake.Deps{Submitter: noopSubmitter{}, Log: log, Metrics: m}),
		Objects:  server.NewObjects(nil, 30*time.Second),
		Ready:    func(context.Context) error { return nil },
	})
	srv := server.HTTPServer(*addr, h, log)
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, ln.Addr().String())
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case <-ctx.Done():
	case err := <-errc:
		return err
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return srv.Shutdown(sctx)
}

type noopSubmitter struct{}

func (noopSubmitter) Submit(context.Context, callback.Callback) error { return nil }

// loadResult is one run of the tester's sender.
type loadResult struct {
	perSec             float64 // accepted callbacks per second
	p50, p99, max      float64 // reply latency, ms
	errors             int64   // refused + failed
	accepted, idsAccep int64
	errorKinds         string // what the errors were, for the progress log
}

// load runs the tester's sender: senders keep-alive senders posting 200 ids drawn from
// 0..idMax, at rate callbacks/s in total (0: as fast as they can), 1 s timeout.
func load(ctx context.Context, target string, senders int, d time.Duration, rate float64, idMax int64, seed uint64) (loadResult, error) {
	cfg := tester.DefaultSenderConfig()
	cfg.Target = target
	cfg.Interval, cfg.Rate = 0, rate
	cfg.Senders = senders
	cfg.IDsMin, cfg.IDsMax = 200, 200
	cfg.IDMin, cfg.IDMax = 0, idMax
	cfg.Duration = d
	cfg.Timeout = time.Second
	cfg.Track = false
	cfg.Seed = seed
	s, err := tester.NewSender(cfg)
	if err != nil {
		return loadResult{}, err
	}
	if err := s.Run(ctx); err != nil {
		return loadResult{}, err
	}
	st := s.Stats()
	return loadResult{
		perSec: float64(st.Accepted) / st.Elapsed.Seconds(),
		p50:    ms(st.Latency.P50), p99: ms(st.Latency.P99), max: ms(st.Latency.Max),
		errors:   st.Refused + st.Failed,
		accepted: st.Accepted, idsAccep: st.IDsAccepted,
		errorKinds: errorKinds(st),
	}, nil
}

// errorKinds says what a sender's errors were: refusals by status, timeouts, and the
// last transport error.
func errorKinds(st tester.SenderStats) string {
	if st.Refused+st.Failed == 0 {
		return "none"
	}
	k := fmt.Sprintf("refused %v, failed %d (timeouts %d)", st.RefusedBy, st.Failed, st.Timeouts)
	if st.LastError != "" {
		k += ", last: " + st.LastError
	}
	return k
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// httpCeiling: the no-op server in its own process under 64 senders.
func (b *bench) httpCeiling(ctx context.Context) error {
	p, err := b.env.startNoop()
	if err != nil {
		return err
	}
	defer p.Stop(stopGrace)
	target := "http://" + p.addr + "/callback"
	if _, err := load(ctx, target, 64, time.Second, 0, 99, 1000); err != nil { // warm-up
		return err
	}
	f := b.fig("ceiling", "HTTP ceiling: no-op write, 64 senders", "cb/s")
	errs := b.fig("ceiling", "HTTP ceiling: errors", "count")
	lat := b.fig("ceiling", "HTTP ceiling: p99 reply", "ms")
	cpuSrv := b.fig("ceiling", "HTTP ceiling: CPU of the no-op server", "cores")
	cpuGen := b.fig("ceiling", "HTTP ceiling: CPU of the load generator", "cores")
	for i := range b.runs {
		cpu := startCPU(p.Cmd.Process.Pid)
		r, err := load(ctx, target, 64, b.runTime, 0, 99, uint64(i))
		cpu.stop()
		if err != nil {
			return err
		}
		f.add(r.perSec)
		errs.add(float64(r.errors))
		lat.add(r.p99)
		cpuSrv.add(cpu.Service)
		cpuGen.add(cpu.LoadGen)
		b.progress("HTTP ceiling run %d/%d: %.0f cb/s, p99 %.1f ms, errors %d; cores: server %.2f, load generator %.2f",
			i+1, b.runs, r.perSec, r.p99, r.errors, cpu.Service, cpu.LoadGen)
	}
	b.httpCeil = f.median()
	b.httpP99 = lat.median()
	return nil
}

// dbCeiling: one INSERT of one row (uuid, timestamptz, bigint[200]) per transaction,
// from 16 connections, into a table shaped like inbox.
func (b *bench) dbCeiling(ctx context.Context) error {
	name, drop, err := b.env.createDB(ctx, "dbceil")
	if err != nil {
		return err
	}
	defer drop()
	cfg, err := pgxpool.ParseConfig(b.env.dbURL(name))
	if err != nil {
		return err
	}
	const conns = 16 // DB_MAX_CONNS's default
	cfg.MaxConns = conns
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return err
	}
	defer pool.Close()
	if _, err := pool.Exec(ctx, `CREATE TABLE inbox (
		callback_id uuid PRIMARY KEY, received_at timestamptz NOT NULL, object_ids bigint[] NOT NULL)`); err != nil {
		return err
	}
	idSets := make([][]int64, 64)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range idSets {
		idSets[i] = make([]int64, 200)
		for j := range idSets[i] {
			idSets[i][j] = rng.Int64N(100)
		}
	}
	insert := func(d time.Duration) (float64, error) {
		var n atomic.Int64
		var mu sync.Mutex
		var firstErr error
		var wg sync.WaitGroup
		start := time.Now()
		deadline := start.Add(d)
		for w := range conns {
			wg.Go(func() {
				for i := 0; time.Now().Before(deadline); i++ {
					_, err := pool.Exec(ctx, "INSERT INTO inbox (callback_id, received_at, object_ids) VALUES ($1, $2, $3)",
						uuid.Must(uuid.NewV7()), time.Now(), idSets[(w+i)%len(idSets)])
					if err != nil {
						mu.Lock()
						firstErr = cmp.Or(firstErr, err)
						mu.Unlock()
						return
					}
					n.Add(1)
				}
			})
		}
		wg.Wait()
		if firstErr != nil {
			return 0, firstErr
		}
		return float64(n.Load()) / time.Since(start).Seconds(), nil
	}
	if _, err := insert(time.Second); err != nil { // warm-up: connections, cache
		return fmt.Errorf("database ceiling: %w", err)
	}
	f := b.fig("ceiling", "DB ceiling: 1 row/tx, 16 conns", "cb/s")
	for i := range b.runs {
		r, err := insert(b.runTime)
		if err != nil {
			return fmt.Errorf("database ceiling: %w", err)
		}
		f.add(r)
		b.progress("DB ceiling run %d/%d: %.0f cb/s", i+1, b.runs, r)
	}
	b.dbCeil = f.median()
	return nil
}
