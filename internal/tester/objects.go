package tester

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/objwatch/callback/internal/backoff"
)

// OnlineRule decides an object's status from its id. It must be deterministic: Verify
// evaluates the same rule to know which ids belong in the objects table.
type OnlineRule func(id int64) bool

// OnlineParity is the original tester's rule: even ids are online.
func OnlineParity(id int64) bool { return id%2 == 0 }

// OnlineAll says every object is online.
func OnlineAll(int64) bool { return true }

// OnlineNone says every object is offline.
func OnlineNone(int64) bool { return false }

// OnlinePercent makes about pct percent of ids online, chosen by a hash of the id (not by
// id order, so that any id range gets its share). The hash is seed-independent so that a
// separately started `tester objects` and `tester send -verify` agree.
func OnlinePercent(pct int) OnlineRule {
	return func(id int64) bool { return int(mix64(uint64(id))%100) < pct }
}

// ParseOnlineRule reads "parity", "all", "none" or "percent:N" (0 <= N <= 100).
func ParseOnlineRule(s string) (OnlineRule, error) {
	switch s {
	case "parity", "":
		return OnlineParity, nil
	case "all":
		return OnlineAll, nil
	case "none":
		return OnlineNone, nil
	}
	if p, ok := strings.CutPrefix(s, "percent:"); ok {
		n, err := strconv.Atoi(p)
		if err != nil || n < 0 || n > 100 {
			return nil, fmt.Errorf("online rule %q: percent must be an integer from 0 to 100", s)
		}
		return OnlinePercent(n), nil
	}
	return nil, fmt.Errorf("online rule %q: want parity, all, none or percent:N", s)
}

// mix64 is the splitmix64 finalizer: a cheap, well-spread hash of an integer.
func mix64(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}

// ObjectConfig shapes the object service. Start from DefaultObjectConfig.
type ObjectConfig struct {
	// Each lookup waits a uniform duration in [LatencyMin, LatencyMax] before answering,
	// like the original (300 ms to 4,299 ms). Both zero: answer at once.
	LatencyMin, LatencyMax time.Duration
	// Online decides the status; nil means OnlineParity.
	Online OnlineRule
	// Fault percentages (0 to 100, summing to at most 100), drawn independently for every
	// request after the latency, so a retry of the same id eventually succeeds.
	FailPct      float64 // 500 with a JSON error
	HangPct      float64 // no answer until the client gives up, HangFor passes or Close
	MalformedPct float64 // 200 with a truncated JSON body
	DropPct      float64 // connection closed without an answer
	// HangFor bounds a hang (default 2 minutes: longer than any sane client timeout, and
	// finite so that a server's write timeout can exceed it).
	HangFor time.Duration
	// Seed seeds the per-request draws of latency and faults.
	Seed uint64
	// Capacity, when positive, is how many lookups the service serves at once: a request
	// that arrives while Capacity lookups are in progress is answered 503 at once, without
	// the latency, with a Retry-After header of RetryAfter (whole seconds, at least 1),
	// like a real service shedding load. 0: no limit.
	Capacity int
	// RetryAfter is the Retry-After of a rejection (default 1 s).
	RetryAfter time.Duration
}

// DefaultObjectConfig is the original tester's object service.
func DefaultObjectConfig() ObjectConfig {
	return ObjectConfig{
		LatencyMin: 300 * time.Millisecond,
		LatencyMax: 4299 * time.Millisecond,
		Online:     OnlineParity,
		HangFor:    2 * time.Minute,
		RetryAfter: time.Second,
	}
}

// ObjectStats counts lookups by outcome. A lookup is counted when it ends.
type ObjectStats struct {
	OK         int64 // 200 with a valid body (Online + Offline)
	Online     int64 // of OK, answered online
	Offline    int64 // of OK, answered offline
	Fail       int64 // injected 500
	Hang       int64 // injected hang
	Malformed  int64 // injected malformed body
	Drop       int64 // injected dropped connection
	BadRequest int64 // 400: the path did not hold an id
	Rejected   int64 // 503 at once: Capacity lookups were already in progress
	// InFlight is the number of lookups being served now; MaxInFlight its peak.
	InFlight, MaxInFlight int64
	// Overlapping counts lookups that started while another lookup of the same id was
	// still in its latency phase (hangs stop counting once they start hanging, since the
	// client has given up on them by design). The service promises zero.
	Overlapping int64
}

// Total is the number of lookups that ended, whatever the outcome, rejections included.
func (s ObjectStats) Total() int64 {
	return s.Served() + s.Rejected
}

// Served is the number of lookups that ended after being admitted (not rejected for
// capacity): the work the service actually did.
func (s ObjectStats) Served() int64 {
	return s.OK + s.Fail + s.Hang + s.Malformed + s.Drop + s.BadRequest
}

// ObjectService is the fake object service: an http.Handler for GET /objects/{id}.
// It is safe for concurrent use.
type ObjectService struct {
	cfg  ObjectConfig
	mux  *http.ServeMux
	reqs atomic.Uint64 // request sequence, for per-request random streams
	// closed ends every wait; hangsOver (closed first, at shutdown) ends hangs only.
	closed, hangsOver    chan struct{}
	closeOnce, hangsOnce sync.Once

	ok, online, offline, fail, hang, malformed, drop, bad atomic.Int64
	rejected                                              atomic.Int64
	inFlight, maxInFlight, overlapping                    atomic.Int64
	// admitted counts the lookups holding a slot of Capacity.
	admitted atomic.Int64

	mu      sync.Mutex
	pending map[int64]int // id -> lookups in latency phase
}

// NewObjectService validates cfg and builds the service.
func NewObjectService(cfg ObjectConfig) (*ObjectService, error) {
	if cfg.Online == nil {
		cfg.Online = OnlineParity
	}
	if cfg.HangFor <= 0 {
		cfg.HangFor = 2 * time.Minute
	}
	if cfg.RetryAfter <= 0 {
		cfg.RetryAfter = time.Second
	}
	if cfg.Capacity < 0 {
		return nil, fmt.Errorf("capacity %d: want 0 (no limit) or more", cfg.Capacity)
	}
	if cfg.LatencyMin < 0 || cfg.LatencyMax < cfg.LatencyMin {
		return nil, fmt.Errorf("latency range %v..%v: want 0 <= min <= max", cfg.LatencyMin, cfg.LatencyMax)
	}
	sum := 0.0
	for _, p := range []float64{cfg.FailPct, cfg.HangPct, cfg.MalformedPct, cfg.DropPct} {
		if p < 0 || p > 100 {
			return nil, fmt.Errorf("fault percentage %v: want 0 to 100", p)
		}
		sum += p
	}
	if sum > 100 {
		return nil, fmt.Errorf("fault percentages add up to %v: want at most 100", sum)
	}
	o := &ObjectService{
		cfg:       cfg,
		closed:    make(chan struct{}),
		hangsOver: make(chan struct{}),
		pending:   make(map[int64]int),
	}
	o.mux = http.NewServeMux()
	o.mux.HandleFunc("GET /objects/{id}", o.lookup)
	return o, nil
}

// Config returns the configuration in use (defaults filled in).
func (o *ObjectService) Config() ObjectConfig { return o.cfg }

// Online is the status the service answers for id (the rule is deterministic).
func (o *ObjectService) Online(id int64) bool { return o.cfg.Online(id) }

// ServeHTTP implements http.Handler.
func (o *ObjectService) ServeHTTP(w http.ResponseWriter, r *http.Request) { o.mux.ServeHTTP(w, r) }

// Close ends hangs and pending latencies at once; later requests answer at once too
// (with their normal outcome). Serve calls it on shutdown. Safe to call twice.
func (o *ObjectService) Close() {
	o.endHangs()
	o.closeOnce.Do(func() { close(o.closed) })
}

func (o *ObjectService) endHangs() { o.hangsOnce.Do(func() { close(o.hangsOver) }) }

// Stats takes a snapshot of the counters.
func (o *ObjectService) Stats() ObjectStats {
	return ObjectStats{
		OK: o.ok.Load(), Online: o.online.Load(), Offline: o.offline.Load(),
		Fail: o.fail.Load(), Hang: o.hang.Load(), Malformed: o.malformed.Load(),
		Drop: o.drop.Load(), BadRequest: o.bad.Load(), Rejected: o.rejected.Load(),
		InFlight: o.inFlight.Load(), MaxInFlight: o.maxInFlight.Load(),
		Overlapping: o.overlapping.Load(),
	}
}

func (o *ObjectService) lookup(w http.ResponseWriter, r *http.Request) {
	if c := o.cfg.Capacity; c > 0 {
		// Take a slot first and give it back if there was none: a check-then-add would let
		// a burst of concurrent requests all pass the check.
		if o.admitted.Add(1) > int64(c) {
			o.admitted.Add(-1)
			o.rejected.Add(1)
			w.Header().Set("Retry-After", strconv.FormatInt(int64(max(time.Second, o.cfg.RetryAfter.Round(time.Second))/time.Second), 10))
			writeJSON(w, http.StatusServiceUnavailable, `{"error":"over capacity"}`)
			return
		}
		defer o.admitted.Add(-1)
	}
	n := o.inFlight.Add(1)
	defer o.inFlight.Add(-1)
	for {
		m := o.maxInFlight.Load()
		if n <= m || o.maxInFlight.CompareAndSwap(m, n) {
			break
		}
	}
	// One PCG stream per request: race-free, and reproducible per request number.
	rng := rand.New(rand.NewPCG(o.cfg.Seed, o.reqs.Add(1)))
	latency := o.latency(rng)

	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	if err != nil || id < 0 {
		// Like the original, a bad id is answered after the latency too.
		backoff.Wait(r.Context(), latency, o.closed)
		o.bad.Add(1)
		writeJSON(w, http.StatusBadRequest, `{"error":"invalid id: want an integer from 0 to 2^63-1"}`)
		return
	}

	o.begin(id)
	backoff.Wait(r.Context(), latency, o.closed)
	o.end(id)

	draw := rng.Float64() * 100
	switch c := o.cfg; {
	case draw < c.FailPct:
		o.fail.Add(1)
		writeJSON(w, http.StatusInternalServerError, `{"error":"injected failure"}`)
	case draw < c.FailPct+c.HangPct:
		o.hang.Add(1)
		backoff.Wait(r.Context(), c.HangFor, o.hangsOver)
		abort(w)
	case draw < c.FailPct+c.HangPct+c.MalformedPct:
		o.malformed.Add(1)
		// Valid JSON cut short: a client that does not check decoding errors will notice.
		writeJSON(w, http.StatusOK, `{"id":`+strconv.FormatInt(id, 10)+`,"onl`)
	case draw < c.FailPct+c.HangPct+c.MalformedPct+c.DropPct:
		o.drop.Add(1)
		abort(w)
	default:
		o.ok.Add(1)
		online := o.cfg.Online(id)
		if online {
			o.online.Add(1)
		} else {
			o.offline.Add(1)
		}
		writeJSON(w, http.StatusOK, `{"id":`+strconv.FormatInt(id, 10)+`,"online":`+strconv.FormatBool(online)+`}`)
	}
}

// latency draws uniformly from [LatencyMin, LatencyMax].
func (o *ObjectService) latency(rng *rand.Rand) time.Duration {
	d := o.cfg.LatencyMin
	if span := o.cfg.LatencyMax - o.cfg.LatencyMin; span > 0 {
		d += time.Duration(rng.Int64N(int64(span) + 1))
	}
	return d
}

func (o *ObjectService) begin(id int64) {
	o.mu.Lock()
	if o.pending[id] > 0 {
		o.overlapping.Add(1)
	}
	o.pending[id]++
	o.mu.Unlock()
}

func (o *ObjectService) end(id int64) {
	o.mu.Lock()
	if o.pending[id]--; o.pending[id] == 0 {
		delete(o.pending, id)
	}
	o.mu.Unlock()
}

func writeJSON(w http.ResponseWriter, status int, body string) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	_, _ = w.Write([]byte(body))
}

// abort closes the connection without an answer: hijack and close where the server
// allows it (HTTP/1), otherwise http.ErrAbortHandler, which resets the stream.
func abort(w http.ResponseWriter) {
	conn, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		panic(http.ErrAbortHandler)
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		_ = tc.SetLinger(0) // a reset, not a polite FIN: what a crashed server looks like
	}
	_ = conn.Close()
}

// WriteTimeout is the server write timeout that lets every lookup finish: the longest
// latency plus the longest hang plus a margin.
func (o *ObjectService) WriteTimeout() time.Duration {
	return o.cfg.LatencyMax + o.cfg.HangFor + 10*time.Second
}

// Serve serves the object service on ln until ctx is done, then shuts down gracefully:
// hangs end at once, lookups in their latency get up to grace to finish.
// Listening is the caller's job (net.Listen) so that a busy port is reported before
// anything starts. It returns nil after a clean shutdown.
func (o *ObjectService) Serve(ctx context.Context, ln net.Listener, grace time.Duration) error {
	srv := &http.Server{
		Handler:           o,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      o.WriteTimeout(),
		IdleTimeout:       2 * time.Minute,
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("serving objects: %w", err)
	case <-ctx.Done():
	}
	shutdown, cancel := context.WithTimeout(context.WithoutCancel(ctx), grace)
	defer cancel()
	// Hangs would hold Shutdown until its deadline: end them, let latencies run out.
	o.endHangs()
	err := srv.Shutdown(shutdown)
	if err != nil {
		o.Close()
		_ = srv.Close()
	}
	if serr := <-errc; !errors.Is(serr, http.ErrServerClosed) && err == nil {
		err = serr
	}
	if err != nil {
		return fmt.Errorf("shutting down objects: %w", err)
	}
	return nil
}
