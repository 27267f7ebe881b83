package pace_test

import (
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
	p := pace.New(pace.Config{Target: 600 * time.Millisecond, Window: 30 * time.Second})
	p.Track(ids(0, 100), t0) // a steady sender's objects
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
	require.Zero(t, p.Until(received, ids(1000, 200), t0.Add(pace.HoldDefault+time.Millisecond)), "overload ends after Hold")
}

func TestUntil_offWithAZeroTarget(t *testing.T) {
	t.Parallel()
	p := pace.New(pace.Config{Window: 30 * time.Second})
	p.Overloaded(t0)
	require.Zero(t, p.Until(t0, ids(1000, 200), t0))
}

func TestTrack_forgetsIDsAfterTheWindow(t *testing.T) {
	t.Parallel()
	p := pace.New(pace.Config{Target: time.Second, Window: 30 * time.Second})
	p.Track(ids(0, 100), t0)
	require.Equal(t, 100, p.Size())
	p.Track(ids(100, 10), t0.Add(20*time.Second))
	p.Track(ids(200, 10), t0.Add(31*time.Second)) // a sweep: the first hundred are a window old
	require.Equal(t, 20, p.Size())
}
