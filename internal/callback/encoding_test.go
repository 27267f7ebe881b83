package callback_test

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/objwatch/callback/internal/callback"
)

type decoded struct {
	id  uuid.UUID
	at  int64
	ids []int64
}

func decodeAll(t *testing.T, data []byte) []decoded {
	t.Helper()
	var out []decoded
	_, err := callback.DecodeEach(data, nil, func(id uuid.UUID, at int64, ids []int64) {
		out = append(out, decoded{id, at, slices.Clone(ids)})
	})
	require.NoError(t, err)
	return out
}

func TestEncoding_roundTrip(t *testing.T) {
	t0 := time.Date(2026, 11, 25, 12, 0, 0, 123456789, time.UTC)
	cbs := []callback.Callback{
		callback.New(t0, []int64{0, 1, 2, 99}),
		callback.New(t0.Add(-time.Hour), nil),                                                   // empty, and older than the one before
		callback.New(t0.Add(time.Millisecond), []int64{math.MaxInt64, math.MinInt64, -5, 5, 5}), // unsorted, extremes, repeats
		callback.New(time.Unix(0, 0), []int64{-1}),
	}
	got := decodeAll(t, callback.AppendEncoded(nil, cbs))
	require.Len(t, got, len(cbs))
	for i, cb := range cbs {
		require.Equal(t, cb.ID, got[i].id)
		require.Equal(t, cb.ReceivedAt.UnixMicro(), got[i].at, "microseconds: the precision of timestamptz")
		require.Equal(t, len(cb.ObjectIDs), len(got[i].ids))
		if len(cb.ObjectIDs) > 0 {
			require.Equal(t, cb.ObjectIDs, got[i].ids)
		}
	}
}

func TestEncoding_compact(t *testing.T) {
	// The sender's callback after the handler: 200 draws from 0..99, sorted and distinct.
	rng := rand.New(rand.NewPCG(1, 2))
	var ids []int64
	for range 200 {
		ids = append(ids, rng.Int64N(100))
	}
	slices.Sort(ids)
	ids = slices.Compact(ids)
	data := callback.AppendEncoded(nil, []callback.Callback{callback.New(time.Now(), ids)})
	// 1 version + 16 id + ~8 time + 1 count + one byte per id.
	require.LessOrEqual(t, len(data), 1+16+9+1+len(ids))
}

func TestEncoding_version0(t *testing.T) {
	// What the migration builds in SQL for a callback accepted before batches.
	id := uuid.Must(uuid.NewV7())
	data := []byte{0}
	data = append(data, id[:]...)
	data = append(data, 0, 0, 0, 0, 0, 0, 0x03, 0xe8)                                           // 1000 us
	data = append(data, 0, 0, 0, 0, 0, 0, 0, 7, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe) // 7, -2
	require.Equal(t, []decoded{{id, 1000, []int64{7, -2}}}, decodeAll(t, data))
}

func TestEncoding_rejectsCorruptData(t *testing.T) {
	good := callback.AppendEncoded(nil, []callback.Callback{callback.New(time.Now(), []int64{1, 2, 300})})
	cases := map[string][]byte{
		"empty":               {},
		"unknown version":     append([]byte{9}, good[1:]...),
		"truncated id":        good[:10],
		"truncated ids":       good[:len(good)-1],
		"count beyond data":   append(slices.Clone(good[:1+16+binaryLen(good[17:])]), 0xff, 0xff, 0x03),
		"version 0 too short": {0, 1, 2},
		"version 0 ragged":    append(append([]byte{0}, make([]byte, 24)...), 1, 2, 3),
	}
	for name, data := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := callback.DecodeEach(data, nil, func(uuid.UUID, int64, []int64) {})
			require.ErrorIs(t, err, callback.ErrMalformed)
		})
	}
}

// binaryLen is the length of the varint at the start of p.
func binaryLen(p []byte) int {
	for i, b := range p {
		if b < 0x80 {
			return i + 1
		}
	}
	return len(p)
}

func FuzzDecodeEach(f *testing.F) {
	f.Add(callback.AppendEncoded(nil, []callback.Callback{callback.New(time.Now(), []int64{1, 2, 3})}))
	f.Add([]byte{0})
	f.Fuzz(func(t *testing.T, data []byte) {
		// Never panics, never allocates beyond what the data can hold.
		_, _ = callback.DecodeEach(data, nil, func(_ uuid.UUID, _ int64, ids []int64) {
			if len(ids) > len(data) {
				t.Fatalf("%d ids from %d bytes", len(ids), len(data))
			}
		})
	})
}

func TestDecode(t *testing.T) {
	t0 := time.Date(2026, 11, 25, 12, 0, 0, 123456789, time.FixedZone("CET", 3600))
	cbs := []callback.Callback{
		callback.New(t0, []int64{3, 1, 2}),
		callback.New(t0.Add(-time.Second), nil),
	}
	got, err := callback.Decode(callback.AppendEncoded(nil, cbs))
	require.NoError(t, err)
	require.Len(t, got, len(cbs))
	for i, cb := range cbs {
		require.Equal(t, cb.ID, got[i].ID)
		require.True(t, got[i].ReceivedAt.Equal(cb.ReceivedAt.Truncate(time.Microsecond)),
			"got %v, want %v: microseconds, the precision of timestamptz", got[i].ReceivedAt, cb.ReceivedAt)
		require.Equal(t, time.UTC, got[i].ReceivedAt.Location())
		require.NotNil(t, got[i].ObjectIDs, "an empty list stays an empty array, not a NULL")
	}
	require.Equal(t, []int64{3, 1, 2}, got[0].ObjectIDs)
	require.Empty(t, got[1].ObjectIDs)

	_, err = callback.Decode([]byte{9})
	require.ErrorIs(t, err, callback.ErrMalformed)
}
