// Package pace slows a flood of fresh ids down at the door, so that it cannot take the
// table from everybody else.
//
// The problem. On two cores the service takes in callbacks several times faster than
// it can merge fresh ids from a huge space into pending, and far faster than the object
// service can look them up. A sender that floods fresh ids (64 connections naming ids
// from a million objects as fast as they are answered) then fills pending, and the
// merger, which reads the newest batches first, falls behind: the callbacks of a sender
// with a steady set of objects, in the same batches, are merged late or not at all, so
// the rows they keep alive go stale and their new objects wait behind a million others.
// Refusing the flood is not an option (a refused callback is lost for good), and all
// senders share one address behind a load balancer, so there is no sender to single out.
//
// What the service does. While it is overloaded (merging is seconds behind, MergeLag,
// or work is being dropped, Watch), a callback most of whose ids the service is not
// tracking (a sample of its ids is checked against the ids that merge passes merged
// from callbacks of the last few seconds, about MAX_PENDING of them: see tracked) is
// answered 2xx as always, once durable, but not before Target after its receipt. A
// sender that waits for each answer, as every sender does (the original waits 1 s,
// then gives up), then sends less: 64 such connections go from thousands of callbacks
// a second to a couple of hundred. Callbacks whose ids are tracked (a steady sender's)
// are answered at once, as always. The flood's ids are then fresh each time they come
// (a million objects named at ~40k ids/s), the steady sender's repeat, and the merger
// uses the same judgement (Flooding): it takes the steady callbacks out of the
// flood's batches and refreshes their rows early (internal/merge, the steady lane and
// the early refresh), ranks the flood's fresh ids below the others', and lets fresh
// ids take turns callback by callback when pending is full (queries/inbox.sql
// MergePending).
//
// Nothing is refused or lost by pacing: the callback is durable before the wait starts.
// A sender that does not wait for answers is not slowed, only its answers are late.
package pace

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// Config tunes pacing. A zero field takes its default, below.
type Config struct {
	// Target: a paced callback is answered this long after its receipt (not sooner:
	// never later because of pacing). Zero: no pacing at all (OVERLOAD_PACE=0).
	Target time.Duration
	// Familiar: a callback with at least this share of its ids tracked is not paced.
	Familiar float64
	// Sample: ids of a callback checked, at most, spread over it.
	Sample int
	// Hold: overload lasts this long after work was last dropped, or merging was last
	// seen behind.
	Hold time.Duration
	// Behind: merging this far behind (the oldest receipt waiting in the inbox) is
	// overload too: it comes long before anything is dropped (a window later).
	Behind time.Duration
	// Capacity: ids tracked at most (MAX_PENDING): the ids merge passes merged most
	// recently. A sender that names ids from a space far larger than this can never
	// look familiar, however often its ids are merged; one with a steady set of
	// objects, merged every few seconds, stays tracked.
	Capacity int
}

// The defaults: answered 400 ms after receipt, leaving the original sender's 1 s
// timeout 600 ms for what happens before the receipt and after the answer on a loaded
// machine (at 600 ms, a fault test under a CPU hog saw paced answers arrive after the
// sender's second); a callback is familiar if half its ids are tracked
// (a flood from a million objects has a quarter at most, a steady sender all of them);
// 16 ids tell that well enough (a callback of a flood looks familiar with a chance of
// 3%) in half a microsecond: the check runs for every callback while overloaded.
const (
	TargetDefault   = 400 * time.Millisecond
	FamiliarDefault = 0.5
	SampleDefault   = 16
	HoldDefault     = 5 * time.Second
	BehindDefault   = 3 * time.Second
)

// Pacer is safe for concurrent use.
type Pacer struct {
	cfg     Config
	until   atomic.Int64 // unix nanoseconds: overloaded until then
	tracked tracked
}

// New builds a pacer. cfg.Capacity must be set if cfg.Target is.
func New(cfg Config) *Pacer {
	if cfg.Familiar == 0 {
		cfg.Familiar = FamiliarDefault
	}
	if cfg.Sample == 0 {
		cfg.Sample = SampleDefault
	}
	if cfg.Hold == 0 {
		cfg.Hold = HoldDefault
	}
	if cfg.Behind == 0 {
		cfg.Behind = BehindDefault
	}
	p := &Pacer{cfg: cfg}
	p.tracked.init(cfg.Capacity)
	return p
}

// Overloaded says that work is being dropped, as of now: callbacks of untracked ids
// are paced for Hold from now.
func (p *Pacer) Overloaded(now time.Time) {
	p.until.Store(now.Add(p.cfg.Hold).UnixNano())
}

// MergeLag says how far behind merging is as of now (expiry reads it every tick): more
// than Behind is overload.
func (p *Pacer) MergeLag(now time.Time, lag time.Duration) {
	if lag > p.cfg.Behind {
		p.Overloaded(now)
	}
}

// Watch calls Overloaded whenever dropped (the count of work dropped, by any stage and
// for any reason: callback_work_dropped_total) has grown since the last look, every
// interval until ctx ends. Whatever drops work, merging, the sweep, expiry of inbox
// batches nobody reached, claims, it means more arrives than the service can use
// within the window: the condition pacing answers.
func (p *Pacer) Watch(ctx context.Context, interval time.Duration, dropped func() float64, now func() time.Time) {
	last := dropped()
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if d := dropped(); d > last {
			p.Overloaded(now())
			last = d
		}
	}
}

// Track records that a merge pass merged ids.
func (p *Pacer) Track(ids []int64) {
	if p.cfg.Target <= 0 {
		return
	}
	p.tracked.add(ids)
}

// Until is how long the answer to a callback received at receipt, naming ids (sorted
// or not), waits: zero unless it is Flooding; else until receipt + Target. A callback
// that took more than half of Target to become durable is answered at once: the
// machine or the database is slow, the sender's clock started before the receipt, and
// its timeout is what must not be reached.
func (p *Pacer) Until(receipt time.Time, ids []int64, now time.Time) time.Duration {
	if now.Sub(receipt) > p.cfg.Target/2 || !p.Flooding(ids, now) {
		return 0
	}
	return max(receipt.Add(p.cfg.Target).Sub(now), 0)
}

// Flooding reports whether a callback naming ids is part of a flood, as of now: the
// service is overloaded, and fewer than Familiar of a sample of its ids are tracked.
// The merger ranks the fresh ids of such callbacks below the others' (their lookups
// come last), and the intake paces its answer.
func (p *Pacer) Flooding(ids []int64, now time.Time) bool {
	if p.cfg.Target <= 0 || len(ids) == 0 || now.UnixNano() > p.until.Load() {
		return false
	}
	step := max(len(ids)/p.cfg.Sample, 1)
	seen, known := 0, 0
	for i := 0; i < len(ids) && seen < p.cfg.Sample; i += step {
		seen++
		if p.tracked.has(ids[i]) {
			known++
		}
	}
	return float64(known) < p.cfg.Familiar*float64(seen)
}

// Size is how many ids are tracked.
func (p *Pacer) Size() int { return p.tracked.size() }

// tracked is a bounded set of ids: the ones merged most recently, about Capacity of
// them, in two segments as in a 2Q (or SLRU) cache. An id merged for the first time
// goes to probation; merged again while still there, it is promoted to the protected
// segment, which only ids merged more than once can enter, and what the protected
// segment forgets goes back to probation. So a flood that names each of a
// million ids once in a while churns probation only, and the ids of a steady sender,
// merged again every few seconds, stay protected while it keeps naming them. Each
// segment keeps two generations per shard: an id merged again moves to the current
// one, and when the current one is full the old one is forgotten. Shards keep the reply
// path's reads and the merger's writes apart.
type tracked [64]struct {
	mu                   sync.RWMutex
	probation, protected generations
}

// generations is a bounded set: two maps of at most per ids each.
type generations struct {
	cur, old map[int64]struct{}
	per      int
}

func (g *generations) init(per int) {
	g.cur, g.old, g.per = map[int64]struct{}{}, map[int64]struct{}{}, per
}

func (g *generations) has(id int64) bool {
	if _, ok := g.cur[id]; ok {
		return true
	}
	_, ok := g.old[id]
	return ok
}

// put adds id to the current generation and returns the generation it forgot to make
// room, if it had to (nil otherwise).
func (g *generations) put(id int64) (forgotten map[int64]struct{}) {
	if len(g.cur) >= g.per {
		forgotten = g.old
		g.old, g.cur = g.cur, make(map[int64]struct{}, g.per)
	}
	g.cur[id] = struct{}{}
	return forgotten
}

func (g *generations) remove(id int64) {
	delete(g.cur, id)
	delete(g.old, id)
}

func (g *generations) size() int {
	n := len(g.cur)
	for id := range g.old {
		if _, dup := g.cur[id]; !dup {
			n++
		}
	}
	return n
}

func shard(id int64) int { return int(uint64(id) * 0x9E3779B97F4A7C15 >> 58) }

func (t *tracked) init(capacity int) {
	// Three quarters of the capacity for probation, two generations each: an id must be
	// merged again within the time a flood takes to fill it, so it is long (at a paced
	// flood's 20,000 ids/s, about ten seconds; a steady sender names its objects every
	// few seconds, or every dozen while it is paced itself).
	per := max(capacity/len(t)/2, 2)
	for i := range t {
		t[i].probation.init(per * 3 / 4)
		t[i].protected.init(per / 4)
	}
}

func (t *tracked) add(ids []int64) {
	var byShard [64][]int64
	for _, id := range ids {
		s := shard(id)
		byShard[s] = append(byShard[s], id)
	}
	for i, ids := range byShard {
		if len(ids) == 0 {
			continue
		}
		s := &t[i]
		s.mu.Lock()
		for _, id := range ids {
			var forgotten map[int64]struct{}
			switch {
			case s.protected.has(id):
				forgotten = s.protected.put(id)
			case s.probation.has(id):
				s.probation.remove(id)
				forgotten = s.protected.put(id)
			default:
				s.probation.put(id)
			}
			// What the protected segment forgets goes back to probation (as in SLRU),
			// not out: ids from a space a little larger than the protected segment,
			// all merged again and again, stay tracked.
			for id := range forgotten {
				if !s.protected.has(id) {
					s.probation.put(id)
				}
			}
		}
		s.mu.Unlock()
	}
}

func (t *tracked) has(id int64) bool {
	s := &t[shard(id)]
	s.mu.RLock()
	ok := s.protected.has(id) || s.probation.has(id)
	s.mu.RUnlock()
	return ok
}

func (t *tracked) size() int {
	n := 0
	for i := range t {
		t[i].mu.RLock()
		n += t[i].probation.size() + t[i].protected.size()
		t[i].mu.RUnlock()
	}
	return n
}
