package pace_test

import (
	"math/rand/v2"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/objwatch/callback/internal/pace"
)

var t0 = time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)

func ids(from, n int64) []int64 {
	out := make([]int64, n)
	for i := range out {
		out[i] = from + int64(i)
	}
	return out
}

func TestUntil(t *testing.T) {
	t.Parallel()
	p := pace.New(pace.Config{Target: 600 * time.Millisecond, Capacity: 1 << 16})
	p.Track(ids(0, 100)) // a steady sender's objects
	received, now := t0.Add(time.Second), t0.Add(time.Second+50*time.Millisecond)

	require.Zero(t, p.Until(received, ids(1000, 200), now), "not overloaded: nothing is paced")

	p.Overloaded(t0)
	require.Equal(t, 550*time.Millisecond, p.Until(received, ids(1000, 200), now),
		"overloaded, fresh ids: answered 600 ms after the receipt")
	require.Zero(t, p.Until(received, ids(0, 100), now), "tracked ids: at once")
	require.Zero(t, p.Until(received, append(ids(0, 60), ids(1000, 40)...), now), "mostly tracked: at once")
	require.Positive(t, p.Until(received, append(ids(0, 40), ids(1000, 60)...), now), "mostly fresh: paced")
	require.Zero(t, p.Until(received, nil, now), "an empty callback names nothing to merge")
	require.Zero(t, p.Until(received, ids(1000, 200), received.Add(time.Second)), "never later than the target")
	require.Zero(t, p.Until(received, ids(1000, 200), received.Add(301*time.Millisecond)),
		"durable only after half the target: the machine is slow, answered at once")
	require.Equal(t, 301*time.Millisecond, p.Until(received, ids(1000, 200), received.Add(299*time.Millisecond)))
	require.Zero(t, p.Until(received, ids(1000, 200), t0.Add(pace.HoldDefault+time.Millisecond)), "overload ends after Hold")
}

func TestUntil_offWithAZeroTarget(t *testing.T) {
	t.Parallel()
	p := pace.New(pace.Config{Capacity: 1 << 16})
	p.Overloaded(t0)
	require.Zero(t, p.Until(t0, ids(1000, 200), t0))
}

// A sender naming ids from a space far larger than the capacity never looks familiar,
// however much of it is merged; one with a steady set of objects, merged again now and
// then, stays tracked.
func TestTrack_boundedByCapacity(t *testing.T) {
	t.Parallel()
	const capacity = 64 * 1024
	p := pace.New(pace.Config{Target: time.Second, Capacity: capacity})
	steady := ids(0, 2000)
	for round := range 100 {
		p.Track(ids(int64(1_000_000+round*10_000), 10_000)) // a flood's ids, a million over the rounds
		if round%2 == 0 {
			p.Track(steady)
		}
	}
	require.LessOrEqual(t, p.Size(), capacity+64, "at most the capacity, give or take a shard's rounding")
	p.Overloaded(t0)
	require.Zero(t, p.Until(t0, steady, t0), "the steady sender's objects are tracked")
	require.Positive(t, p.Until(t0, ids(1_000_000, 200), t0), "the flood's first ids are long forgotten")
	require.Positive(t, p.Until(t0, ids(1_500_000, 200), t0), "and so are most of its others")
}

// The steady sender's ids, merged again and again, are protected from a flood that
// churns through ten times the capacity, even when the steady sender merges only every
// few rounds.
func TestTrack_repeatsAreProtectedFromAFlood(t *testing.T) {
	t.Parallel()
	const capacity = 64 * 1024
	p := pace.New(pace.Config{Target: time.Second, Capacity: capacity})
	steady := ids(0, 2000)
	p.Track(steady)
	p.Track(steady) // seen twice: protected
	for round := range 100 {
		p.Track(ids(int64(1_000_000+round*10_000), 10_000)) // a million fresh ids in all
		if round%20 == 19 {
			p.Track(steady)
		}
	}
	p.Overloaded(t0)
	require.Zero(t, p.Until(t0, steady, t0), "the steady sender's objects are still tracked")
}

// Ids from a space larger than the protected segment (a quarter of the capacity) but
// well within the capacity, merged again and again in passes of part of it (64 senders
// naming 100,000 objects, passes of 64k distinct ids), stay tracked: what the protected
// segment forgets goes back to probation. (Without that, about 70% of them were.)
func TestTrack_aSpaceWithinTheCapacityStaysTracked(t *testing.T) {
	t.Parallel()
	const capacity, space = 1 << 18, 100_000
	p := pace.New(pace.Config{Target: time.Second, Capacity: capacity})
	r := rand.New(rand.NewPCG(1, 2))
	for range 20 {
		seen := map[int64]bool{}
		var pass []int64
		for len(seen) < 64_000 {
			id := r.Int64N(space)
			seen[id] = true
			pass = append(pass, id)
		}
		p.Track(pass)
	}
	require.LessOrEqual(t, p.Size(), capacity+64)
	p.Overloaded(t0)
	tracked := 0
	for id := range int64(space) {
		if !p.Flooding([]int64{id}, t0) {
			tracked++
		}
	}
	require.GreaterOrEqual(t, tracked, space*99/100)
}
