package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"

	"github.com/objwatch/callback/internal/tester"
)

// objectService starts the tester's object service at its real latency (300 ms to
// 4.3 s, even ids online) on loopback, in this process; capacity as in
// tester.ObjectConfig (0: no limit).
func objectService(ctx context.Context, capacity int) (*tester.ObjectService, string, func(), error) {
	cfg := tester.DefaultObjectConfig()
	cfg.Capacity = capacity
	o, err := tester.NewObjectService(cfg)
	if err != nil {
		return nil, "", nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, "", nil, err
	}
	sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan struct{})
	go func() { _ = o.Serve(sctx, ln, time.Second); close(done) }()
	return o, "http://" + ln.Addr().String(), func() { cancel(); <-done }, nil
}

// intake: the service binary under n keep-alive senders as fast as they can, ids drawn
// from space objects. After each burst: the age of the oldest unmerged receipt, then a
// wait (bounded) until merging has caught up, so that runs do not pile up.
func (b *bench) intake(ctx context.Context, senders int, space int64) error {
	_, objURL, stopObj, err := objectService(ctx, 0)
	if err != nil {
		return err
	}
	defer stopObj()
	svc, err := b.env.startService(ctx, fmt.Sprintf("intake%d_%d", senders, space), objURL)
	if err != nil {
		return err
	}
	defer svc.close()
	sm := svc.sample(200 * time.Millisecond)
	target := "http://" + svc.addr + "/callback"
	if _, err := load(ctx, target, senders, time.Second, 0, 99, 1000); err != nil { // warm-up
		return err
	}
	m0, err := svc.metrics()
	if err != nil {
		return err
	}

	label := fmt.Sprintf("Intake, %d senders, ids from %s", senders, thousands(space))
	rate := b.fig("intake", label+": accepted", "cb/s")
	p50 := b.fig("intake", label+": p50 reply", "ms")
	p99 := b.fig("intake", label+": p99 reply", "ms")
	mx := b.fig("intake", label+": max reply", "ms")
	errs := b.fig("intake", label+": errors", "count")
	toHTTP := b.fig("intake", label+": / HTTP ceiling", "ratio")
	p99HTTP := b.fig("intake", label+": p99 reply / the HTTP ceiling's p99", "ratio")
	toDB := b.fig("intake", label+": / DB ceiling", "ratio")
	cpuSvc := b.fig("intake", label+": CPU of the service", "cores")
	cpuPG := b.fig("intake", label+": CPU of Postgres (all of it)", "cores")
	cpuGen := b.fig("intake", label+": CPU of the load generator", "cores")
	oldest := b.fig("intake", label+": oldest unmerged receipt at the end of the burst", "s")
	caught := b.fig("intake", label+": merging caught up after the burst in", "s")
	switch {
	case senders == 64 && space <= 100:
		rate.target, rate.ok = "≥ 5,000 and ≥ 0.6 × HTTP", func(v float64) bool { return v >= 5000 && (b.httpCeil == 0 || v >= 0.6*b.httpCeil) }
		p99.target, p99.ok = "< 20 ms", func(v float64) bool { return v < 20 }
		errs.target, errs.ok = "0", func(v float64) bool { return v == 0 }
		toHTTP.target, toHTTP.ok = "≥ 0.6", func(v float64) bool { return v >= 0.6 }
		defer func() { b.intake64 = rate.median() }()
	case senders == 64 && space == 100_000: // the intake targets at a realistic id space
		// Both against the same run's HTTP ceiling: what the service adds to its own
		// HTTP stack, which is what moves with the machine.
		toHTTP.target, toHTTP.ok = "≥ 0.75", func(v float64) bool { return v >= 0.75 }
		p99HTTP.target, p99HTTP.ok = "≤ 1.25", func(v float64) bool { return v <= 1.25 }
		p99.target, p99.ok = "< 20 ms", func(v float64) bool { return v < 20 }
		errs.target, errs.ok = "0", func(v float64) bool { return v == 0 }
		oldest.target, oldest.ok = "< 5 s", func(v float64) bool { return v < 5 }
	case senders == 64:
		errs.target, errs.ok = "0", func(v float64) bool { return v == 0 }
	}
	for i := range b.runs {
		var prof sync.WaitGroup
		if b.pprofOut != "" && senders == 64 && space == b.pprofSpace && i == 0 {
			prof.Go(func() {
				if err := svc.cpuProfile(b.runTime-time.Second, b.pprofOut); err != nil {
					b.progress("CPU profile failed: %v", err)
				} else {
					b.progress("CPU profile of the service under 64 senders written to %s", b.pprofOut)
				}
			})
		}
		cpu := startCPU(svc.Cmd.Process.Pid)
		r, err := load(ctx, target, senders, b.runTime, 0, space-1, uint64(i))
		cpu.stop()
		if err != nil {
			prof.Wait()
			return err
		}
		age, err := svc.inboxOldest(ctx)
		if err != nil {
			prof.Wait()
			return err
		}
		oldest.add(age)
		took, err := waitMerged(ctx, svc, 120*time.Second)
		prof.Wait()
		if err != nil {
			return err
		}
		caught.add(took.Seconds())
		rate.add(r.perSec)
		p50.add(r.p50)
		p99.add(r.p99)
		mx.add(r.max)
		errs.add(float64(r.errors))
		cpuSvc.add(cpu.Service)
		cpuPG.add(cpu.PG)
		cpuGen.add(cpu.LoadGen)
		if b.httpCeil > 0 {
			toHTTP.add(r.perSec / b.httpCeil)
		}
		if b.httpP99 > 0 {
			p99HTTP.add(r.p99 / b.httpP99)
		}
		if b.dbCeil > 0 {
			toDB.add(r.perSec / b.dbCeil)
		}
		b.progress("%s run %d/%d: %.0f cb/s, p50 %.1f ms, p99 %.1f ms, max %.1f ms, errors %d; cores: service %.2f, Postgres %.2f, load generator %.2f; oldest unmerged %.1f s, merged %.1f s later",
			label, i+1, b.runs, r.perSec, r.p50, r.p99, r.max, r.errors, cpu.Service, cpu.PG, cpu.LoadGen, age, took.Seconds())
	}
	sm.stop()
	m1, err := svc.metrics()
	if err != nil {
		return err
	}
	batch := b.fig("intake", label+": callbacks per group commit (mean)", "n")
	batch.note = "over all runs"
	sum := m1["callback_commit_batch_callbacks_sum"] - m0["callback_commit_batch_callbacks_sum"]
	if n := m1["callback_commit_batch_callbacks_count"] - m0["callback_commit_batch_callbacks_count"]; n > 0 {
		batch.add(sum / n)
	}
	commit := b.fig("intake", label+": group commit duration (mean)", "ms")
	commit.note = "over all runs"
	const cs = `callback_commit_seconds_%s{target="inbox"}`
	if n := m1[fmt.Sprintf(cs, "count")] - m0[fmt.Sprintf(cs, "count")]; n > 0 {
		commit.add(1000 * (m1[fmt.Sprintf(cs, "sum")] - m0[fmt.Sprintf(cs, "sum")]) / n)
	}
	b.cost(label, svc, sm)
	return nil
}

// cost records the peak RSS and goroutines of a service over its whole life.
func (b *bench) cost(label string, svc *service, sm *sampler) {
	rss := b.fig("cost", label+": peak RSS (VmHWM)", "MiB")
	rss.add(svc.peakRSS())
	rss.note = "one process"
	g := b.fig("cost", label+": peak goroutines", "n")
	g.add(float64(sm.peak.Load()))
	g.note = "one process"
	if strings.HasSuffix(label, " pending ids") {
		rss.target, rss.ok = "< 256 MiB", func(v float64) bool { return v < 256 }
	}
}

// coalescing: ids 0..99 at a steady rate (below lookup capacity: 100 distinct ids),
// plus a side sender naming fresh online ids whose rows a poller waits for.
func (b *bench) coalescing(ctx context.Context) error {
	obj, objURL, stopObj, err := objectService(ctx, 0)
	if err != nil {
		return err
	}
	defer stopObj()
	svc, err := b.env.startService(ctx, "e2e", objURL, "FETCH_CONCURRENCY="+strconv.Itoa(b.fetchConc))
	if err != nil {
		return err
	}
	defer svc.close()
	sm := svc.sample(200 * time.Millisecond)
	target := "http://" + svc.addr + "/callback"

	label := fmt.Sprintf("E2E, ids 0..99 at %.0f cb/s", b.e2eRate)
	accepted := b.fig("e2e", label+": accepted", "cb/s")
	perID := b.fig("e2e", label+": lookups per id received", "ratio")
	distinct := b.fig("e2e", label+": distinct ids per id received", "ratio")
	perDistinct := b.fig("e2e", label+": lookups per distinct id", "n")
	overlap := b.fig("e2e", label+": overlapping lookups of one id", "count")
	f50 := b.fig("e2e", label+": freshness p50 (receipt → row visible)", "ms")
	f99 := b.fig("e2e", label+": freshness p99", "ms")
	fmax := b.fig("e2e", label+": freshness max", "ms")
	missing := b.fig("e2e", label+": sample ids never visible", "count")
	perID.target, perID.ok = "≪ 1", func(v float64) bool { return v < 0.01 }
	overlap.target, overlap.ok = "0", func(v float64) bool { return v == 0 }
	f99.target, f99.ok = "< 4,800 ms", func(v float64) bool { return v < 4800 }
	missing.target, missing.ok = "0", func(v float64) bool { return v == 0 }

	for i := range b.runs {
		o0 := obj.Stats()
		loadCtx, stopLoad := context.WithCancel(ctx)
		// The side sender: 5 fresh even (online) ids every 100 ms, far outside 0..99 and
		// unique per run, so each row's appearance is caused by exactly one callback.
		side := &sideSender{target: target, base: 2_000_000_000 + int64(i)*100_000_000}
		var wg sync.WaitGroup
		wg.Go(func() { side.run(loadCtx, 100*time.Millisecond, 5) })
		var r loadResult
		var lerr error
		wg.Go(func() {
			defer stopLoad()
			r, lerr = load(ctx, target, 16, b.e2eTime, b.e2eRate, 99, uint64(100+i))
		})
		fresh, miss, perr := side.poll(ctx, svc, loadCtx.Done(), 10*time.Second)
		wg.Wait()
		if lerr != nil {
			return lerr
		}
		if perr != nil {
			return perr
		}
		if _, err := waitDrained(ctx, svc, 30*time.Second); err != nil {
			return err
		}
		o1 := obj.Stats()
		lookups := float64(o1.Total() - o0.Total())
		idsIn := float64(r.idsAccep + int64(len(side.ids)))
		nDistinct := float64(100 + len(side.ids))
		accepted.add(r.perSec)
		perID.add(lookups / idsIn)
		distinct.add(nDistinct / idsIn)
		perDistinct.add(lookups / nDistinct)
		overlap.add(float64(o1.Overlapping - o0.Overlapping))
		slices.Sort(fresh)
		f50.add(quantile(fresh, 0.5))
		f99.add(quantile(fresh, 0.99))
		fmax.add(quantile(fresh, 1))
		missing.add(float64(miss))
		b.progress("%s run %d/%d: %.0f cb/s, %.0f lookups for %.0f ids (%d sample ids: freshness p50 %.0f ms p99 %.0f ms, %d missing)",
			label, i+1, b.runs, r.perSec, lookups, idsIn, len(fresh)+miss, quantile(fresh, 0.5), quantile(fresh, 0.99), miss)
	}
	sm.stop()
	b.cost("E2E ids 0..99", svc, sm)
	return nil
}

// backlog: ids drawn from 0..999,999 faster than lookups can go, so that there is
// always due work: lookups/s against Little's law, then the drain.
func (b *bench) backlog(ctx context.Context) error {
	obj, objURL, stopObj, err := objectService(ctx, 0)
	if err != nil {
		return err
	}
	defer stopObj()
	svc, err := b.env.startService(ctx, "backlog", objURL, "FETCH_CONCURRENCY="+strconv.Itoa(b.fetchConc))
	if err != nil {
		return err
	}
	defer svc.close()
	sm := svc.sample(200 * time.Millisecond)
	target := "http://" + svc.addr + "/callback"

	label := fmt.Sprintf("E2E backlog, ids 0..999,999 at %.0f cb/s", b.backlogRate)
	lps := b.fig("e2e", label+": lookups", "/s")
	bound := b.fig("e2e", label+": Little bound (concurrency / mean latency)", "/s")
	ratio := b.fig("e2e", label+": lookups / bound", "ratio")
	meanLat := b.fig("e2e", label+": mean lookup latency", "ms")
	left := b.fig("e2e", label+": backlog when load stops (pending rows)", "n")
	drain := b.fig("e2e", label+": time to drain it", "s")
	overlap := b.fig("e2e", label+": overlapping lookups of one id", "count")
	ratio.target, ratio.ok = "≥ 0.9", func(v float64) bool { return v >= 0.9 }
	overlap.target, overlap.ok = "0", func(v float64) bool { return v == 0 }

	// Lookups are counted from when the pipeline is full (every lookup in flight was
	// claimed with a backlog behind it) to when the load stops.
	warm := min(6*time.Second, b.backlogTime/2)
	for i := range b.runs {
		o0 := obj.Stats()
		start := time.Now()
		var wg sync.WaitGroup
		var lerr error
		wg.Go(func() { _, lerr = load(ctx, target, 4, b.backlogTime, b.backlogRate, 999_999, uint64(200+i)) })
		sleepCtx(ctx, warm)
		wStart, oa := time.Now(), obj.Stats()
		ma, err := svc.metrics()
		if err != nil {
			return err
		}
		wg.Wait()
		if lerr != nil {
			return lerr
		}
		wEnd, ob := time.Now(), obj.Stats()
		mb, err := svc.metrics()
		if err != nil {
			return err
		}
		pendingAtStop, err := svc.pending(ctx)
		if err != nil {
			return err
		}
		took, err := waitDrained(ctx, svc, 120*time.Second)
		if err != nil {
			return err
		}
		o1 := obj.Stats()
		rate := float64(ob.Total()-oa.Total()) / wEnd.Sub(wStart).Seconds()
		n := mb["callback_lookup_seconds_count"] - ma["callback_lookup_seconds_count"]
		mean := (mb["callback_lookup_seconds_sum"] - ma["callback_lookup_seconds_sum"]) / n
		bnd := float64(b.fetchConc) / mean
		lps.add(rate)
		meanLat.add(mean * 1000)
		bound.add(bnd)
		ratio.add(rate / bnd)
		left.add(float64(pendingAtStop))
		drain.add(took.Seconds())
		overlap.add(float64(o1.Overlapping - o0.Overlapping))
		b.progress("%s run %d/%d: %.0f lookups/s vs bound %.0f (%.2f), backlog %d drained in %.1f s (run %.0f s)",
			label, i+1, b.runs, rate, bnd, rate/bnd, pendingAtStop, took.Seconds(), time.Since(start).Seconds())
	}
	sm.stop()
	b.cost("E2E backlog", svc, sm)
	return nil
}

// bigBacklog: 1,000,000 pending ids inserted at once; the service chews on them for
// chewTime. Also EXPLAIN of the claim query on that table.
func (b *bench) bigBacklog(ctx context.Context) error {
	obj, objURL, stopObj, err := objectService(ctx, 0)
	if err != nil {
		return err
	}
	defer stopObj()
	svc, err := b.env.startService(ctx, "million", objURL, "FETCH_CONCURRENCY="+strconv.Itoa(b.fetchConc))
	if err != nil {
		return err
	}
	defer svc.close()
	sm := svc.sample(200 * time.Millisecond)
	label := thousands(b.bigPending) + " pending ids"
	ins := b.fig("cost", label+": INSERT ... SELECT generate_series", "s")
	lps := b.fig("cost", label+": lookups while working on them", "/s")
	left := b.fig("cost", label+": pending rows left after "+b.chewTime.String(), "n")
	start := time.Now()
	// Even and odd ids far outside the other ranges, all received now.
	if _, err := svc.pool.Exec(ctx, `INSERT INTO pending (object_id, received_at)
		SELECT g, now() FROM generate_series(3000000000::bigint, 3000000000::bigint + $1 - 1) g`, b.bigPending); err != nil {
		return fmt.Errorf("inserting the backlog: %w", err)
	}
	ins.add(time.Since(start).Seconds())
	b.progress("inserted %d pending rows in %.1f s", b.bigPending, time.Since(start).Seconds())
	plan, err := b.explainClaim(ctx, svc)
	if err != nil {
		b.progress("EXPLAIN failed: %v", err)
		plan = "EXPLAIN failed: " + err.Error()
	}
	b.plan = plan
	o0, t0 := obj.Stats(), time.Now()
	sleepCtx(ctx, b.chewTime)
	lps.add(float64(obj.Stats().Total()-o0.Total()) / time.Since(t0).Seconds())
	sm.stop()
	n, err := svc.pending(ctx)
	if err != nil {
		return err
	}
	left.add(float64(n))
	b.progress("after %v: %d pending rows left", b.chewTime, n)
	b.cost(label, svc, sm)
	return nil
}

// explainClaim runs EXPLAIN of the service's claim query, taken from the sqlc output so
// that it is the statement the service runs.
func (b *bench) explainClaim(ctx context.Context, svc *service) (string, error) {
	src, err := os.ReadFile(filepath.Join("internal", "store", "internal", "dbsqlc", "pending.sql.go"))
	if err != nil {
		return "", fmt.Errorf("reading the claim query (run bench from the module root): %w", err)
	}
	const marker = "const claimDue = `"
	i := bytes.Index(src, []byte(marker))
	if i < 0 {
		return "", fmt.Errorf("no claimDue in the sqlc output")
	}
	q := src[i+len(marker):]
	q = q[:bytes.IndexByte(q, '`')]
	// The window's edge ($1) a minute back: the pending rows the bench inserts are fresh.
	rows, err := svc.pool.Query(ctx, "EXPLAIN "+string(q), time.Now().Add(-time.Minute), int32(256), uuid.New(), int64(15000))
	if err != nil {
		return "", err
	}
	defer rows.Close()
	var lines []string
	for rows.Next() {
		var l string
		if err := rows.Scan(&l); err != nil {
			return "", err
		}
		lines = append(lines, l)
	}
	return strings.Join(lines, "\n"), rows.Err()
}

// waitDrained polls pending until it is empty.
func waitDrained(ctx context.Context, svc *service, limit time.Duration) (time.Duration, error) {
	start := time.Now()
	for {
		n, err := svc.pending(ctx)
		if err != nil {
			return 0, err
		}
		if n == 0 {
			return time.Since(start), nil
		}
		if time.Since(start) > limit {
			return time.Since(start), fmt.Errorf("pending still has %d rows after %v", n, limit)
		}
		sleepCtx(ctx, 100*time.Millisecond)
		if ctx.Err() != nil {
			return 0, ctx.Err()
		}
	}
}

// sideSender posts callbacks of fresh even ids and remembers the ones accepted.
type sideSender struct {
	target string
	base   int64
	next   int64
	mu     sync.Mutex
	ids    []int64
}

func (s *sideSender) run(ctx context.Context, every time.Duration, n int) {
	client := &http.Client{Timeout: time.Second}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		ids := make([]int64, n)
		body := []byte(`{"object_ids":[`)
		for i := range ids {
			ids[i] = s.base + 2*s.next
			s.next++
			if i > 0 {
				body = append(body, ',')
			}
			body = strconv.AppendInt(body, ids[i], 10)
		}
		body = append(body, "]}"...)
		resp, err := client.Post(s.target, "application/json", bytes.NewReader(body))
		if err != nil {
			continue
		}
		resp.Body.Close()
		if resp.StatusCode/100 == 2 {
			s.mu.Lock()
			s.ids = append(s.ids, ids...)
			s.mu.Unlock()
		}
	}
}

// poll reads objects every 25 ms for the accepted side ids that have no row yet,
// from the start of the load until every one has a row or limit passes after loadDone.
// Freshness is the time of the read that first saw the row minus its last_seen (the
// service's receipt time; same clock), in ms: at most 25 ms late.
func (s *sideSender) poll(ctx context.Context, svc *service, loadDone <-chan struct{}, limit time.Duration) (fresh []float64, missing int, err error) {
	seen := map[int64]bool{}
	var deadline time.Time
	for {
		s.mu.Lock()
		var ids []int64
		for _, id := range s.ids {
			if !seen[id] {
				ids = append(ids, id)
			}
		}
		s.mu.Unlock()
		if deadline.IsZero() {
			select {
			case <-loadDone:
				deadline = time.Now().Add(limit)
			default:
			}
		}
		if !deadline.IsZero() && (len(ids) == 0 || time.Now().After(deadline)) {
			return fresh, len(ids), ctx.Err()
		}
		if len(ids) > 0 {
			rows, err := svc.pool.Query(ctx, "SELECT id, last_seen FROM objects WHERE id = ANY($1)", ids)
			if err != nil {
				return nil, 0, err
			}
			now := time.Now()
			for rows.Next() {
				var id int64
				var last time.Time
				if err := rows.Scan(&id, &last); err != nil {
					rows.Close()
					return nil, 0, err
				}
				seen[id] = true
				fresh = append(fresh, ms(now.Sub(last)))
			}
			rows.Close()
			if err := rows.Err(); err != nil {
				return nil, 0, err
			}
		}
		sleepCtx(ctx, 25*time.Millisecond)
		if ctx.Err() != nil {
			return nil, 0, ctx.Err()
		}
	}
}

func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
