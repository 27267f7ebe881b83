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
// What the service does. While it is overloaded (pending is full, or merging is behind:
// the merger says so, Overloaded), a callback most of whose ids the service is not
// tracking (no pending row, no lookup within the window: a sample of its ids is checked
// against Tracked, the ids merge passes have given a pending row lately) is answered
// 2xx as always, once durable, but not before Target after its receipt. A sender that
// waits for each answer, as every sender does (the original waits 1 s, then gives up),
// then sends less: 64 such connections go from thousands of callbacks a second to about
// a hundred, which the merger takes whole. Callbacks whose ids are tracked (a steady
// sender's, and rows already in the table) are answered at once, as always. The flood's
// ids are then fresh each time they come (a million objects named at ~20k ids/s), the
// steady sender's repeat, and the merge, whose fresh ids take turns callback by
// callback when pending is full (queries/inbox.sql MergePending), gives each its share.
//
// Nothing is refused or lost by pacing: the callback is durable before the wait starts.
// A sender that does not wait for answers is not slowed, only its answers are late.
package pace

import (
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
	// Hold: overload lasts this long after the merger last said so.
	Hold time.Duration
	// Window: ids are tracked for this long after a merge pass gave them a row
	// (EXPIRE_AFTER): the rows they are in then leave the window too.
	Window time.Duration
}

// The defaults: answered 600 ms after receipt, leaving the original sender's 1 s
// timeout 400 ms for a slow commit; a callback is familiar if half its ids are tracked
// (a flood from a million objects has a third at most, a steady sender all of them);
// 32 ids tell that well enough in a microsecond.
const (
	TargetDefault   = 600 * time.Millisecond
	FamiliarDefault = 0.5
	SampleDefault   = 32
	HoldDefault     = 5 * time.Second
)

// Pacer is safe for concurrent use.
type Pacer struct {
	cfg        Config
	until      atomic.Int64 // unix nanoseconds: overloaded until then
	tracked    tracked
	sinceSweep atomic.Int64 // unix nanoseconds of the last sweep of old ids
}

// New builds a pacer. cfg.Window must be set if cfg.Target is.
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
	p := &Pacer{cfg: cfg}
	for i := range p.tracked {
		p.tracked[i].m = map[int64]int64{}
	}
	return p
}

// Overloaded says that work is being dropped for capacity, or merging is behind, as
// of now: callbacks of untracked ids are paced for Hold from now.
func (p *Pacer) Overloaded(now time.Time) {
	p.until.Store(now.Add(p.cfg.Hold).UnixNano())
}

// Track records that ids have a pending row as of now (a merge pass gave them one or
// a newer receipt).
func (p *Pacer) Track(ids []int64, now time.Time) {
	if p.cfg.Target <= 0 {
		return
	}
	t := now.UnixNano()
	p.tracked.add(ids, t)
	if last := p.sinceSweep.Load(); t-last > int64(p.cfg.Window/4) && p.sinceSweep.CompareAndSwap(last, t) {
		p.tracked.forget(t - int64(p.cfg.Window))
	}
}

// Until is how long the answer to a callback received at receipt, naming ids (sorted
// or not), waits: zero unless the service is overloaded now and the callback is
// unfamiliar; else until receipt + Target.
func (p *Pacer) Until(receipt time.Time, ids []int64, now time.Time) time.Duration {
	if p.cfg.Target <= 0 || len(ids) == 0 || now.UnixNano() > p.until.Load() {
		return 0
	}
	step := max(len(ids)/p.cfg.Sample, 1)
	seen, known := 0, 0
	for i := 0; i < len(ids) && seen < p.cfg.Sample; i += step {
		seen++
		if p.tracked.has(ids[i]) {
			known++
		}
	}
	if float64(known) >= p.cfg.Familiar*float64(seen) {
		return 0
	}
	return max(receipt.Add(p.cfg.Target).Sub(now), 0)
}

// Size is how many ids are tracked.
func (p *Pacer) Size() int { return p.tracked.size() }

// tracked is a set of ids with the time each was last tracked, in shards so that the
// reply path's reads and the merger's writes rarely meet.
type tracked [64]struct {
	mu sync.RWMutex
	m  map[int64]int64
}

func shard(id int64) int { return int(uint64(id) * 0x9E3779B97F4A7C15 >> 58) }

func (t *tracked) add(ids []int64, at int64) {
	var byShard [64][]int64
	for _, id := range ids {
		s := shard(id)
		byShard[s] = append(byShard[s], id)
	}
	for s, ids := range byShard {
		if len(ids) == 0 {
			continue
		}
		t[s].mu.Lock()
		for _, id := range ids {
			t[s].m[id] = at
		}
		t[s].mu.Unlock()
	}
}

func (t *tracked) has(id int64) bool {
	s := &t[shard(id)]
	s.mu.RLock()
	_, ok := s.m[id]
	s.mu.RUnlock()
	return ok
}

func (t *tracked) forget(before int64) {
	for i := range t {
		t[i].mu.Lock()
		for id, at := range t[i].m {
			if at < before {
				delete(t[i].m, id)
			}
		}
		t[i].mu.Unlock()
	}
}

func (t *tracked) size() int {
	n := 0
	for i := range t {
		t[i].mu.RLock()
		n += len(t[i].m)
		t[i].mu.RUnlock()
	}
	return n
}
