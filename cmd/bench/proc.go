package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/objwatch/callback/internal/childproc"
	"github.com/objwatch/callback/internal/testnet"
)

// env is what every phase needs: where the server is, the service binary, a temp dir.
type env struct {
	adminURL string // DATABASE_URL with the maintenance database
	bin      string // the service binary
	self     string // this binary, for noop-server
	tmp      string
	settings settings // the service binary's settings and their defaults
	seq      atomic.Int64
}

// dbURL is adminURL pointing at database name.
func (e *env) dbURL(name string) string {
	u, _ := withDB(e.adminURL, name)
	return u
}

// withDB is the URL s with its database replaced by name.
func withDB(s, name string) (string, error) {
	u, err := url.Parse(s)
	if err != nil {
		return "", err
	}
	u.Path = "/" + name
	return u.String(), nil
}

// createDB makes a database with a name no other run uses; drop removes it.
func (e *env) createDB(ctx context.Context, tag string) (name string, drop func(), err error) {
	name = fmt.Sprintf("bench_%s_%d_%d_%d", tag, os.Getpid(), time.Now().Unix(), e.seq.Add(1))
	conn, err := pgx.Connect(ctx, e.adminURL)
	if err != nil {
		return "", nil, fmt.Errorf("connecting to %s: %w", redact(e.adminURL), err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		return "", nil, fmt.Errorf("creating database %s: %w", name, err)
	}
	return name, func() { e.dropDB(name) }, nil
}

func (e *env) dropDB(name string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, e.adminURL)
	if err != nil {
		fmt.Fprintf(os.Stderr, "bench: cannot drop database %s: %v\n", name, err)
		return
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)"); err != nil {
		fmt.Fprintf(os.Stderr, "bench: cannot drop database %s: %v\n", name, err)
	}
}

func redact(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return "(unparsable url)"
	}
	return u.Redacted()
}

// proc is a child process: the service or the no-op server.
type proc struct {
	*childproc.Proc
	addr string // its HTTP address
}

// startProc starts cmd with its output in logPath (see childproc.Start).
func startProc(cmd *exec.Cmd, logPath string) (*proc, error) {
	p, err := childproc.Start(cmd, logPath)
	if err != nil {
		return nil, err
	}
	return &proc{Proc: p}, nil
}

// stopGrace is how long a child has for its graceful shutdown before SIGKILL.
const stopGrace = 20 * time.Second

// failure describes a child that did not come up, with the end of its log.
func (p *proc) failure(what string) error {
	b, _ := os.ReadFile(p.Log)
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return fmt.Errorf("%s did not come up (log %s):\n%s", what, p.Log, b)
}

// peakRSS is VmHWM from /proc: the process's resident high-water mark, in MiB.
func (p *proc) peakRSS() float64 { return p.statusMiB("VmHWM:") }

// rss is VmRSS from /proc: the process's resident memory now, in MiB.
func (p *proc) rss() float64 { return p.statusMiB("VmRSS:") }

// statusMiB reads a field given in kB from /proc/<pid>/status, in MiB (0 when the
// process is gone).
func (p *proc) statusMiB(field string) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.Cmd.Process.Pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == field {
			kb, _ := strconv.ParseFloat(f[1], 64)
			return kb / 1024
		}
	}
	return 0
}

// startNoop starts this binary's noop-server and reads the address it listens on.
func (e *env) startNoop() (*proc, error) {
	cmd := exec.Command(e.self, "noop-server", "-addr", "127.0.0.1:0")
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	p, err := startProc(cmd, filepath.Join(e.tmp, fmt.Sprintf("noop-%d.log", e.seq.Add(1))))
	if err != nil {
		return nil, err
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		p.Stop(stopGrace)
		return nil, p.failure("noop-server")
	}
	p.addr = strings.TrimSpace(line)
	go func() { _, _ = io.Copy(io.Discard, out) }()
	return p, nil
}

// service is the real service binary running on its own fresh database.
type service struct {
	*proc
	dbName, dbURL string
	pool          *pgxpool.Pool // the bench's own connections to the service's database
	pprofAddr     string
	drop          func()
}

// startService creates a database, starts the service on it and waits until its
// schema is migrated and /readyz answers. extra (NAME=value each) are the settings the
// phase changes; every other one but benchSets is the binary's default.
func (e *env) startService(ctx context.Context, tag, objectsURL string, extra ...string) (*service, error) {
	name, drop, err := e.createDB(ctx, tag)
	if err != nil {
		return nil, err
	}
	s := &service{dbName: name, dbURL: e.dbURL(name), drop: drop}
	fail := func(err error) (*service, error) { s.close(); return nil, err }

	addr, err := testnet.Next()
	if err != nil {
		return fail(err)
	}
	s.pprofAddr, err = testnet.Next()
	if err != nil {
		return fail(err)
	}
	spool, err := os.MkdirTemp(e.tmp, "spool-")
	if err != nil {
		return fail(err)
	}
	cmd := exec.Command(e.bin)
	// Only benchSets and extra: every other setting is the binary's default, whatever
	// the shell running the bench exports.
	cmd.Env = e.settings.childEnv(os.Environ(), append([]string{
		"DATABASE_URL=" + s.dbURL, "LISTEN_ADDR=" + addr, "OBJECTS_URL=" + objectsURL, "SPOOL_DIR=" + spool,
		"LOG_FORMAT=json", "LOG_LEVEL=warn", "STATUS_INTERVAL=0", "SHUTDOWN_DRAIN=0", "PPROF_ADDR=" + s.pprofAddr,
	}, extra...)...)
	s.proc, err = startProc(cmd, filepath.Join(e.tmp, name+".log"))
	if err != nil {
		return fail(err)
	}
	s.addr = addr
	s.pool, err = pgxpool.New(ctx, s.dbURL)
	if err != nil {
		return fail(err)
	}

	deadline := time.Now().Add(60 * time.Second)
	for {
		if s.Exited() || time.Now().After(deadline) {
			return fail(s.failure("service"))
		}
		if s.ready(ctx) {
			return s, nil
		}
		select {
		case <-ctx.Done():
			return fail(ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (s *service) ready(ctx context.Context) bool {
	var migrated bool
	if err := s.pool.QueryRow(ctx, "SELECT to_regclass('public.pending') IS NOT NULL").Scan(&migrated); err != nil || !migrated {
		return false
	}
	resp, err := http.Get("http://" + s.addr + "/readyz")
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

func (s *service) close() {
	if s.proc != nil {
		s.Stop(stopGrace)
	}
	if s.pool != nil {
		s.pool.Close()
	}
	s.drop()
}

func (s *service) pending(ctx context.Context) (int64, error) {
	var n int64
	err := s.pool.QueryRow(ctx, "SELECT count(*) FROM pending WHERE due_at > '-infinity'").Scan(&n)
	return n, err
}

// metrics reads the service's /metrics.
func (s *service) metrics() (childproc.Metrics, error) {
	return childproc.ReadMetrics(context.Background(), "http://"+s.addr+"/metrics")
}

// sampler polls the service's goroutine count until stopped, keeping the peak.
type sampler struct {
	peak atomic.Int64
	stop func()
	wg   sync.WaitGroup
}

func (s *service) sample(every time.Duration) *sampler {
	sm := &sampler{}
	ctx, cancel := context.WithCancel(context.Background())
	sm.stop = func() { cancel(); sm.wg.Wait() }
	sm.wg.Go(func() {
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			if m, err := s.metrics(); err == nil {
				if g := int64(m["go_goroutines"]); g > sm.peak.Load() {
					sm.peak.Store(g)
				}
			}
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	})
	return sm
}

// cpuProfile fetches a CPU profile of the service for d into path.
func (s *service) cpuProfile(d time.Duration, path string) error {
	resp, err := http.Get(fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", s.pprofAddr, int(d.Seconds())))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var buf bytes.Buffer
	if _, err := buf.ReadFrom(resp.Body); err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return errors.New("pprof: " + resp.Status)
	}
	return os.WriteFile(path, buf.Bytes(), 0o644)
}

// cpuSeconds is the user+system CPU time of process pid so far.
func cpuSeconds(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// The command name (field 2) may hold spaces; the fields after its ')' are fixed.
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 13 {
		return 0
	}
	utime, _ := strconv.ParseFloat(f[11], 64)
	stime, _ := strconv.ParseFloat(f[12], 64)
	return (utime + stime) / 100 // USER_HZ is 100 on Linux
}

// postgresCPU maps every running postgres process to its CPU seconds so far.
func postgresCPU() map[int]float64 {
	out := map[int]float64{}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid)); err == nil && strings.TrimSpace(string(comm)) == "postgres" {
			out[pid] = cpuSeconds(pid)
		}
	}
	return out
}

// cpuSplit measures, between start and stop, the cores used by the service, by all of
// Postgres (its other clients included) and by this process (the load generator).
type cpuSplit struct {
	svcPid               int
	at                   time.Time
	svc, self            float64
	pg                   map[int]float64
	Service, PG, LoadGen float64 // cores
}

func startCPU(svcPid int) *cpuSplit {
	return &cpuSplit{svcPid: svcPid, at: time.Now(), svc: cpuSeconds(svcPid), self: cpuSeconds(os.Getpid()), pg: postgresCPU()}
}

func (c *cpuSplit) stop() *cpuSplit {
	el := time.Since(c.at).Seconds()
	c.Service = (cpuSeconds(c.svcPid) - c.svc) / el
	c.LoadGen = (cpuSeconds(os.Getpid()) - c.self) / el
	var pg float64
	for pid, v := range postgresCPU() {
		pg += v - c.pg[pid] // a backend that started meanwhile counts from 0
	}
	c.PG = pg / el
	return c
}

// inboxOldest is the age in seconds of the oldest unmerged receipt, read from
// inbox_batches directly (the gauge is sampled on a cadence, this is exact); 0 when
// the inbox is empty. Should the table be renamed, the service's gauge is the fallback.
func (s *service) inboxOldest(ctx context.Context) (float64, error) {
	var age float64
	err := s.pool.QueryRow(ctx, "SELECT coalesce(extract(epoch FROM now() - min(received_at)), 0)::float8 FROM inbox_batches").Scan(&age)
	if err == nil {
		return age, nil
	}
	m, merr := s.metrics()
	if merr != nil {
		return 0, fmt.Errorf("oldest unmerged receipt: %w", errors.Join(err, merr))
	}
	return m["callback_inbox_oldest_seconds"], nil
}

// waitMerged polls until the inbox is empty (merged or dropped as out of window), at
// most limit; past it, it returns limit: the figure then reads "at least".
func waitMerged(ctx context.Context, svc *service, limit time.Duration) (time.Duration, error) {
	start := time.Now()
	for {
		var empty bool
		if err := svc.pool.QueryRow(ctx, "SELECT NOT EXISTS (SELECT 1 FROM inbox_batches)").Scan(&empty); err != nil {
			return 0, fmt.Errorf("waiting for the inbox to drain: %w", err)
		}
		if empty {
			return time.Since(start), nil
		}
		if time.Since(start) > limit {
			return limit, nil
		}
		sleepCtx(ctx, 100*time.Millisecond)
		if ctx.Err() != nil {
			return 0, ctx.Err()
		}
	}
}
