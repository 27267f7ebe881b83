package tester

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/objwatch/callback/internal/backoff"
)

// SenderConfig shapes the callback load. Start from DefaultSenderConfig: in the zero
// value Interval and Rate are both 0, which means "as fast as possible".
type SenderConfig struct {
	// Target is the full URL callbacks are posted to.
	Target string
	// Rate is callbacks per second over all senders, on a fixed schedule (a sender that
	// falls behind skips the slots it missed rather than bursting). When Rate is 0, each
	// sender waits Interval after each reply before the next callback, like the original
	// (its real period is 5 s plus the reply time). Both 0: back-to-back.
	Rate     float64
	Interval time.Duration
	// Senders is the number of parallel senders, each posting one callback at a time
	// (default 1).
	Senders int
	// IDsMin..IDsMax (inclusive) is the number of ids per callback, uniform.
	IDsMin, IDsMax int
	// IDMin..IDMax (inclusive) is the range ids are drawn from, uniform, with duplicates.
	IDMin, IDMax int64
	// Duration stops sending after this long; 0 means until the context ends.
	Duration time.Duration
	// Count stops after this many callbacks in total; 0 means no limit.
	Count int64
	// Seed seeds sender i's generator with (Seed, i): runs are reproducible per sender.
	Seed uint64
	// Timeout is the HTTP timeout of one callback (default 1 s, the original's). There
	// are no retries, like the original.
	Timeout time.Duration
	// Track records, per id, the send times that Verify needs (a map under a mutex). Turn
	// it off for pure load.
	Track bool
	// Client, if set, replaces the sender's own keep-alive client (a copy is used, with
	// Timeout as its timeout).
	Client *http.Client
}

// DefaultSenderConfig is the original tester's sender, with tracking on.
func DefaultSenderConfig() SenderConfig {
	return SenderConfig{
		Target:   "http://localhost:9090/callback",
		Interval: 5 * time.Second,
		Senders:  1,
		IDsMin:   0,
		IDsMax:   199,
		IDMin:    0,
		IDMax:    99,
		Timeout:  time.Second,
		Track:    true,
	}
}

// SendRecord is what the sender knows about one id.
type SendRecord struct {
	// Accepted is the send start of the latest callback naming the id that got a 2xx.
	// The service's receipt time lies between it and the reply, within the timeout.
	Accepted time.Time
	// Maybe is the send start of the latest callback naming the id that may have been made
	// durable: accepted, or with an unknown outcome (a timeout, a transport error, a 5xx
	// other than 503). Maybe >= Accepted.
	Maybe time.Time
}

// SenderStats is a snapshot of the sender's counters. Sent = Accepted + Refused + Failed +
// callbacks still in flight.
type SenderStats struct {
	Sent     int64 // callbacks started
	Accepted int64 // 2xx
	Refused  int64 // any other status; by status in RefusedBy
	Failed   int64 // no reply: transport errors and timeouts
	Timeouts int64 // of Failed, the timeouts
	// RefusedBy counts refusals by status code.
	RefusedBy map[int]int64
	// IDsSent and IDsAccepted count ids (with duplicates) in started and accepted callbacks.
	IDsSent, IDsAccepted int64
	// Latency is the reply latency of the callbacks that got a reply (any status).
	Latency LatencySummary
	// Elapsed is the time since Run started (until it returned, once it has).
	Elapsed time.Duration
	// LastError is the latest transport error, if any.
	LastError string
}

// Sender posts callbacks. Create it with NewSender, run it once with Run; Stats and
// Records may be read at any time, from any goroutine.
type Sender struct {
	cfg    SenderConfig
	client *http.Client
	target string

	sent, accepted, refused, failed, timeouts atomic.Int64
	idsSent, idsAccepted                      atomic.Int64
	issued                                    atomic.Int64 // callbacks claimed against Count
	refusedBy                                 [600]atomic.Int64
	latency                                   Histogram
	lastErr                                   atomic.Pointer[string]
	started, stopped                          atomic.Int64 // unix nanos

	mu      sync.Mutex
	records map[int64]SendRecord
}

// NewSender validates cfg and builds a sender with a keep-alive transport sized to the
// number of senders.
func NewSender(cfg SenderConfig) (*Sender, error) {
	if cfg.Target == "" {
		cfg.Target = DefaultSenderConfig().Target
	}
	if cfg.Senders <= 0 {
		cfg.Senders = 1
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = time.Second
	}
	switch {
	case cfg.IDsMin < 0 || cfg.IDsMax < cfg.IDsMin:
		return nil, fmt.Errorf("ids per callback %d..%d: want 0 <= min <= max", cfg.IDsMin, cfg.IDsMax)
	case cfg.IDMin < 0 || cfg.IDMax < cfg.IDMin:
		return nil, fmt.Errorf("id range %d..%d: want 0 <= min <= max", cfg.IDMin, cfg.IDMax)
	case cfg.Rate < 0 || cfg.Interval < 0 || cfg.Duration < 0 || cfg.Count < 0:
		return nil, errors.New("rate, interval, duration and count must not be negative")
	}
	client := cfg.Client
	if client == nil {
		client = &http.Client{Transport: &http.Transport{
			DialContext:         (&net.Dialer{Timeout: cfg.Timeout, KeepAlive: 30 * time.Second}).DialContext,
			MaxIdleConns:        cfg.Senders,
			MaxIdleConnsPerHost: cfg.Senders, // one idle connection per sender: no re-dialling
			IdleConnTimeout:     90 * time.Second,
			DisableCompression:  true,
		}}
	}
	c := *client
	c.Timeout = cfg.Timeout
	s := &Sender{cfg: cfg, client: &c, target: cfg.Target}
	if cfg.Track {
		s.records = make(map[int64]SendRecord)
	}
	return s, nil
}

// Config returns the configuration in use (defaults filled in).
func (s *Sender) Config() SenderConfig { return s.cfg }

// Run sends until ctx ends, Duration passes or Count callbacks were sent, then waits for
// the callbacks in flight (at most Timeout) and returns. It returns ctx's error only if
// ctx ended before Duration or Count did; a Sender runs once.
func (s *Sender) Run(ctx context.Context) error {
	if !s.started.CompareAndSwap(0, time.Now().UnixNano()) {
		return errors.New("sender already ran")
	}
	defer func() { s.stopped.Store(time.Now().UnixNano()) }()
	runCtx := ctx
	if s.cfg.Duration > 0 {
		var cancel context.CancelFunc
		runCtx, cancel = context.WithTimeout(ctx, s.cfg.Duration)
		defer cancel()
	}
	var wg sync.WaitGroup
	for i := range s.cfg.Senders {
		wg.Go(func() { s.worker(runCtx, i) })
	}
	wg.Wait()
	if s.cfg.Count > 0 && s.issued.Load() >= s.cfg.Count {
		return nil
	}
	return ctx.Err()
}

func (s *Sender) worker(ctx context.Context, i int) {
	rng := rand.New(rand.NewPCG(s.cfg.Seed, uint64(i)))
	buf := make([]byte, 0, 16+s.cfg.IDsMax*20)
	ids := make([]int64, 0, s.cfg.IDsMax)

	var tick <-chan time.Time
	if s.cfg.Rate > 0 {
		period := time.Duration(float64(time.Second) * float64(s.cfg.Senders) / s.cfg.Rate)
		period = max(period, time.Microsecond)
		// Stagger the senders over one period so that they do not fire together.
		offset := period * time.Duration(i) / time.Duration(s.cfg.Senders)
		if !backoff.Sleep(ctx, offset) {
			return
		}
		t := time.NewTicker(period) // a Ticker drops the ticks a slow sender missed
		defer t.Stop()
		tick = t.C
	}
	first := true
	for {
		switch {
		case tick != nil:
			if !first {
				select {
				case <-tick:
				case <-ctx.Done():
					return
				}
			}
		case s.cfg.Interval > 0:
			// Like the original: sleep first, then post.
			if !backoff.Sleep(ctx, s.cfg.Interval) {
				return
			}
		}
		first = false
		if ctx.Err() != nil {
			return
		}
		if s.cfg.Count > 0 && s.issued.Add(1) > s.cfg.Count {
			return
		}
		ids = ids[:0]
		n := s.cfg.IDsMin + rng.IntN(s.cfg.IDsMax-s.cfg.IDsMin+1)
		for range n {
			ids = append(ids, s.cfg.IDMin+rng.Int64N(s.cfg.IDMax-s.cfg.IDMin+1))
		}
		buf = appendBody(buf[:0], ids)
		// The callback in flight finishes (within Timeout) even when ctx ends, so that
		// its outcome is known and counted.
		s.post(context.WithoutCancel(ctx), buf, ids)
	}
}

// appendBody builds {"object_ids":[...]} without encoding/json: this is the hot path of
// the load generator.
func appendBody(buf []byte, ids []int64) []byte {
	buf = append(buf, `{"object_ids":[`...)
	for i, id := range ids {
		if i > 0 {
			buf = append(buf, ',')
		}
		buf = strconv.AppendInt(buf, id, 10)
	}
	return append(buf, "]}"...)
}

func (s *Sender) post(ctx context.Context, body []byte, ids []int64) {
	s.sent.Add(1)
	s.idsSent.Add(int64(len(ids)))
	start := time.Now()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.target, bytes.NewReader(body))
	if err != nil {
		s.fail(err)
		return
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := s.client.Do(req)
	if err != nil {
		s.fail(err)
		s.track(ids, start, false)
		return
	}
	// Drain so that the connection goes back to the pool.
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<16))
	_ = resp.Body.Close()
	s.latency.Record(time.Since(start))
	switch code := resp.StatusCode; {
	case code >= 200 && code < 300:
		s.accepted.Add(1)
		s.idsAccepted.Add(int64(len(ids)))
		s.track(ids, start, true)
	default:
		s.refused.Add(1)
		if code >= 0 && code < len(s.refusedBy) {
			s.refusedBy[code].Add(1)
		}
		// 4xx and 503 promise nothing was written; other 5xx may come after a commit.
		if code >= 500 && code != http.StatusServiceUnavailable {
			s.track(ids, start, false)
		}
	}
}

func (s *Sender) fail(err error) {
	s.failed.Add(1)
	var ne net.Error
	if errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout()) {
		s.timeouts.Add(1)
	}
	msg := err.Error()
	s.lastErr.Store(&msg)
}

func (s *Sender) track(ids []int64, start time.Time, accepted bool) {
	if s.records == nil || len(ids) == 0 {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, id := range ids {
		r := s.records[id]
		if accepted && start.After(r.Accepted) {
			r.Accepted = start
		}
		if start.After(r.Maybe) {
			r.Maybe = start
		}
		s.records[id] = r
	}
}

// Records returns a copy of the per-id records (nil unless Track is on).
func (s *Sender) Records() map[int64]SendRecord {
	if s.records == nil {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[int64]SendRecord, len(s.records))
	for id, r := range s.records {
		out[id] = r
	}
	return out
}

// Stats takes a snapshot of the counters.
func (s *Sender) Stats() SenderStats {
	st := SenderStats{
		Sent: s.sent.Load(), Accepted: s.accepted.Load(), Refused: s.refused.Load(),
		Failed: s.failed.Load(), Timeouts: s.timeouts.Load(),
		IDsSent: s.idsSent.Load(), IDsAccepted: s.idsAccepted.Load(),
		Latency: s.latency.Summary(),
	}
	for code := range s.refusedBy {
		if n := s.refusedBy[code].Load(); n > 0 {
			if st.RefusedBy == nil {
				st.RefusedBy = make(map[int]int64)
			}
			st.RefusedBy[code] = n
		}
	}
	if started := s.started.Load(); started != 0 {
		end := time.Now().UnixNano()
		if stopped := s.stopped.Load(); stopped != 0 {
			end = stopped
		}
		st.Elapsed = time.Duration(end - started)
	}
	if e := s.lastErr.Load(); e != nil {
		st.LastError = *e
	}
	return st
}
