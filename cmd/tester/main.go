// Command tester plays both parties around the callback service, like the tester that
// came with the task: an object service on :9010 and a callback sender posting to :9090.
// Its defaults reproduce the original; flags shape the load, inject faults and, with
// -verify, check the service's objects table afterwards.
//
//	tester [flags]          object service and sender together (the original's behaviour)
//	tester objects [flags]  object service only
//	tester send [flags]     sender only
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/objwatch/callback/internal/tester"
)

func main() {
	// SIGKILL cannot be caught; SIGINT and SIGTERM stop sending and shut down gracefully.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "tester:", err)
		os.Exit(1)
	}
}

type mode string

const (
	modeBoth    mode = ""
	modeObjects mode = "objects"
	modeSend    mode = "send"
)

type config struct {
	mode        mode
	objectsAddr string
	objects     tester.ObjectConfig
	sender      tester.SenderConfig
	progress    time.Duration
	grace       time.Duration
	verify      bool
	databaseURL string
	verifyCfg   tester.VerifyConfig
}

func parse(args []string, getenv func(string) string, stderr io.Writer) (config, error) {
	var cfg config
	if len(args) > 0 && (args[0] == string(modeObjects) || args[0] == string(modeSend)) {
		cfg.mode, args = mode(args[0]), args[1:]
	}
	cfg.objects = tester.DefaultObjectConfig()
	cfg.sender = tester.DefaultSenderConfig()
	o, s, v := &cfg.objects, &cfg.sender, &cfg.verifyCfg

	fs := flag.NewFlagSet("tester", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: tester [objects|send] [flags]\n\nWith no subcommand, runs the object service and the sender together.\n\nFlags:")
		fs.PrintDefaults()
	}
	// The object service.
	fs.StringVar(&cfg.objectsAddr, "objects-addr", ":9010", "object service listen address")
	fs.DurationVar(&o.LatencyMin, "latency-min", o.LatencyMin, "shortest lookup latency")
	fs.DurationVar(&o.LatencyMax, "latency-max", o.LatencyMax, "longest lookup latency (uniform between)")
	online := fs.String("online", "parity", "online rule: parity (even ids), all, none or percent:N (N% of ids, by hash)")
	fs.Float64Var(&o.FailPct, "fail-pct", 0, "percent of lookups answered 500")
	fs.Float64Var(&o.HangPct, "hang-pct", 0, "percent of lookups that hang until the client gives up (or -hang-for)")
	fs.Float64Var(&o.MalformedPct, "malformed-pct", 0, "percent of lookups answered 200 with a truncated body")
	fs.Float64Var(&o.DropPct, "drop-pct", 0, "percent of lookups whose connection is closed without an answer")
	fs.DurationVar(&o.HangFor, "hang-for", o.HangFor, "longest hang")
	fs.IntVar(&o.Capacity, "capacity", 0, "lookups served at once; more are answered 503 at once, with Retry-After (0: no limit)")
	fs.DurationVar(&o.RetryAfter, "retry-after", o.RetryAfter, "Retry-After of a 503 for capacity (whole seconds)")
	// The sender.
	fs.StringVar(&s.Target, "target", s.Target, "URL callbacks are posted to")
	fs.DurationVar(&s.Interval, "interval", s.Interval, "pause after each reply before a sender's next callback (used when -rate is 0; both 0: as fast as possible)")
	fs.Float64Var(&s.Rate, "rate", 0, "callbacks per second over all senders (overrides -interval)")
	fs.IntVar(&s.Senders, "senders", s.Senders, "parallel senders, each with one callback in flight")
	fs.IntVar(&s.IDsMin, "ids-min", s.IDsMin, "fewest ids per callback")
	fs.IntVar(&s.IDsMax, "ids-max", s.IDsMax, "most ids per callback")
	fs.Int64Var(&s.IDMin, "id-min", s.IDMin, "smallest id")
	fs.Int64Var(&s.IDMax, "id-max", s.IDMax, "largest id (a range wider than the ids sent in the window lets objects expire)")
	fs.DurationVar(&s.Duration, "duration", 0, "stop sending after this long (0: until interrupted)")
	fs.Int64Var(&s.Count, "count", 0, "stop after this many callbacks (0: no limit)")
	fs.Uint64Var(&s.Seed, "seed", 0, "random seed for ids and lookups (0: a random one, printed)")
	fs.DurationVar(&s.Timeout, "timeout", s.Timeout, "HTTP timeout of one callback (no retries)")
	// Reporting and verification.
	fs.DurationVar(&cfg.progress, "progress", 5*time.Second, "progress line period (0: none)")
	fs.DurationVar(&cfg.grace, "shutdown-grace", 5*time.Second, "how long lookups in flight may finish at shutdown")
	fs.BoolVar(&cfg.verify, "verify", false, "after sending, check the objects table at DATABASE_URL; exit 1 on any difference")
	expire := 30 * time.Second
	if e := getenv("EXPIRE_AFTER"); e != "" {
		d, err := time.ParseDuration(e)
		if err != nil {
			return cfg, fmt.Errorf("EXPIRE_AFTER=%q: %w", e, err)
		}
		expire = d
	}
	fs.DurationVar(&v.Window, "expire-after", expire, "the service's EXPIRE_AFTER ($EXPIRE_AFTER sets the default)")
	fs.DurationVar(&v.CatchUp, "catch-up", 15*time.Second, "how long -verify waits for the table to match after sending stops")
	fs.BoolVar(&v.Expiry, "verify-expiry", true, "with -verify, then wait out the window and check that every row is gone")

	if err := fs.Parse(args); err != nil {
		return cfg, err
	}
	if fs.NArg() > 0 {
		return cfg, fmt.Errorf("unexpected argument %q (subcommands: objects, send; they come first)", fs.Arg(0))
	}
	rule, err := tester.ParseOnlineRule(*online)
	if err != nil {
		return cfg, fmt.Errorf("-online: %w", err)
	}
	o.Online = rule
	if s.Seed == 0 {
		s.Seed = rand.Uint64()
	}
	o.Seed = s.Seed
	if cfg.verify {
		cfg.databaseURL = getenv("DATABASE_URL")
		switch {
		case cfg.mode == modeObjects:
			return cfg, errors.New("-verify needs the sender: run tester or tester send")
		case cfg.databaseURL == "":
			return cfg, errors.New("-verify needs DATABASE_URL")
		case s.Duration == 0 && s.Count == 0:
			return cfg, errors.New("-verify needs -duration or -count: it runs after sending stops")
		}
		s.Track = true
	} else {
		s.Track = false
	}
	return cfg, nil
}

func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	cfg, err := parse(args, getenv, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	if err != nil {
		return err
	}
	out := &syncWriter{w: stdout}

	var (
		objects *tester.ObjectService
		sender  *tester.Sender
	)
	if cfg.mode != modeSend {
		if objects, err = tester.NewObjectService(cfg.objects); err != nil {
			return err
		}
	}
	if cfg.mode != modeObjects {
		if sender, err = tester.NewSender(cfg.sender); err != nil {
			return err
		}
	}

	// The object service outlives sending: the service under test is still looking up
	// what it received, and -verify waits for that.
	objectsCtx, stopObjects := context.WithCancel(ctx)
	defer stopObjects()
	served := make(chan error, 1)
	if objects != nil {
		// Listen first, so that a busy port is an error now, not a log line later.
		ln, err := net.Listen("tcp", cfg.objectsAddr)
		if err != nil {
			return fmt.Errorf("object service: %w", err)
		}
		go func() { served <- objects.Serve(objectsCtx, ln, cfg.grace) }()
		c := objects.Config()
		capacity := "no capacity limit"
		if c.Capacity > 0 {
			capacity = fmt.Sprintf("capacity %d at once (503, Retry-After %s, beyond)", c.Capacity, c.RetryAfter)
		}
		fmt.Fprintf(out, "objects: serving GET /objects/{id} on %s, latency %s..%s, faults 500 %g%%, hang %g%%, malformed %g%%, drop %g%%, %s\n",
			ln.Addr(), c.LatencyMin, c.LatencyMax, c.FailPct, c.HangPct, c.MalformedPct, c.DropPct, capacity)
	} else {
		served <- nil
	}

	var progress sync.WaitGroup
	progressCtx, stopProgress := context.WithCancel(ctx)
	if cfg.progress > 0 {
		progress.Go(func() { tester.Progress(progressCtx, out, cfg.progress, sender, objects) })
	}
	finish := func() error {
		stopProgress()
		progress.Wait()
		stopObjects()
		err := <-served
		tester.Summary(out, sender, objects)
		return err
	}

	if sender == nil {
		select {
		case <-ctx.Done():
			return finish()
		case err := <-served:
			served <- err // for finish
			return finish()
		}
	}

	describeSender(out, sender.Config())
	if err := sender.Run(ctx); err != nil && !errors.Is(err, context.Canceled) {
		return errors.Join(err, finish())
	}
	var problems []tester.Problem
	if cfg.verify && ctx.Err() == nil {
		problems, err = verify(ctx, cfg, sender, out)
		if err != nil {
			return errors.Join(fmt.Errorf("verify: %w", err), finish())
		}
	}
	if err := finish(); err != nil {
		return err
	}
	if len(problems) > 0 {
		for _, p := range problems {
			fmt.Fprintln(out, "verify:", p)
		}
		return fmt.Errorf("verify: %d differences between the objects table and what was sent", len(problems))
	}
	if cfg.verify && ctx.Err() == nil {
		fmt.Fprintln(out, "verify: OK")
	}
	return nil
}

func describeSender(w io.Writer, c tester.SenderConfig) {
	pace := fmt.Sprintf("every %s after each reply", c.Interval)
	switch {
	case c.Rate > 0:
		pace = fmt.Sprintf("%g callbacks/s", c.Rate)
	case c.Interval == 0:
		pace = "as fast as possible"
	}
	fmt.Fprintf(w, "sender: %d sender(s) posting to %s, %s, %d..%d ids from %d..%d, timeout %s, seed %d\n",
		c.Senders, c.Target, pace, c.IDsMin, c.IDsMax, c.IDMin, c.IDMax, c.Timeout, c.Seed)
}

func verify(ctx context.Context, cfg config, sender *tester.Sender, out io.Writer) ([]tester.Problem, error) {
	conn, err := pgx.Connect(ctx, cfg.databaseURL)
	if err != nil {
		return nil, fmt.Errorf("connecting to DATABASE_URL: %w", err)
	}
	defer func() { _ = conn.Close(context.WithoutCancel(ctx)) }()
	vc := cfg.verifyCfg
	vc.Log = out
	return tester.Verify(ctx, conn, vc, tester.Expect(sender.Records(), cfg.objects.Online))
}

// syncWriter serialises the progress goroutine's lines with everything else.
type syncWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}
