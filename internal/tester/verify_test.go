package tester

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/objwatch/callback/internal/pgtest"
	"github.com/stretchr/testify/require"
)

func TestDiff(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	const window = 30 * time.Second
	ago := func(d time.Duration) time.Time { return now.Add(-d) }
	accepted := func(d time.Duration, online bool) Expectation {
		return Expectation{SendRecord: SendRecord{Accepted: ago(d), Maybe: ago(d)}, Online: online}
	}
	// The sends behind every case: 1 and 2 online, 3 offline, 4 online but accepted
	// long ago, 5 online near the edge, 6 online with only an unknown outcome.
	expected := map[int64]Expectation{
		1: accepted(5*time.Second, true),
		2: accepted(10*time.Second, true),
		3: accepted(5*time.Second, false),
		4: accepted(time.Hour, true),
		5: accepted(window-LastSeenTolerance/2, true),
		6: {SendRecord: SendRecord{Maybe: ago(5 * time.Second)}, Online: true},
	}
	correct := []Row{
		{ID: 1, LastSeen: ago(5*time.Second - 20*time.Millisecond)},
		{ID: 2, LastSeen: ago(10*time.Second - 900*time.Millisecond)},
	}
	with := func(rows ...Row) []Row { return append(append([]Row(nil), correct...), rows...) }

	tests := []struct {
		name string
		rows []Row
		want map[int64]ProblemKind
	}{
		{name: "accepts_a_correct_table", rows: correct},
		{name: "accepts_rows_near_the_edge_and_of_unknown_outcome", rows: with(
			Row{ID: 5, LastSeen: ago(window - LastSeenTolerance/2)},
			Row{ID: 6, LastSeen: ago(5 * time.Second)},
		)},
		{name: "catches_a_missing_row", rows: correct[:1], want: map[int64]ProblemKind{2: Missing}},
		{name: "catches_an_offline_row", rows: with(Row{ID: 3, LastSeen: ago(5 * time.Second)}),
			want: map[int64]ProblemKind{3: Offline}},
		{name: "catches_an_unknown_id", rows: with(Row{ID: 99, LastSeen: ago(time.Second)}),
			want: map[int64]ProblemKind{99: Unknown}},
		{name: "catches_a_stale_last_seen", rows: []Row{correct[0], {ID: 2, LastSeen: ago(12 * time.Second)}},
			want: map[int64]ProblemKind{2: Stale}},
		{name: "catches_a_last_seen_later_than_any_send", rows: []Row{correct[0], {ID: 2, LastSeen: ago(5 * time.Second)}},
			want: map[int64]ProblemKind{2: Stale}},
		{name: "catches_a_row_past_the_window", rows: with(Row{ID: 4, LastSeen: ago(time.Hour)}),
			want: map[int64]ProblemKind{4: Expired}},
		{name: "catches_everything_at_once", rows: []Row{
			{ID: 3, LastSeen: ago(5 * time.Second)},
			{ID: 4, LastSeen: ago(time.Hour)},
			{ID: 99, LastSeen: ago(time.Second)},
		}, want: map[int64]ProblemKind{1: Missing, 2: Missing, 3: Offline, 4: Expired, 99: Unknown}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			problems := Diff(expected, tt.rows, now, window)
			got := map[int64]ProblemKind{}
			for _, p := range problems {
				got[p.ID] = p.Kind
				require.Contains(t, p.String(), fmt.Sprint(p.ID))
			}
			if tt.want == nil {
				require.Empty(t, problems)
				return
			}
			require.Equal(t, tt.want, got)
		})
	}

	t.Run("wants_every_row_gone_after_the_window", func(t *testing.T) {
		t.Parallel()
		later := now.Add(window + ExpiryGrace + LastSeenTolerance + time.Second)
		problems := Diff(expected, correct, later, window)
		require.Len(t, problems, 2)
		for _, p := range problems {
			require.Equal(t, Expired, p.Kind)
		}
		require.Empty(t, Diff(expected, nil, later, window))
	})
}

// setupDB gives the test its own database with the service's real schema (pgtest), so
// the verifier is checked against the table the service writes.
func setupDB(t *testing.T) *pgxpool.Pool {
	t.Helper()
	pool, _ := pgtest.NewPool(t)
	return pool
}

func insert(t *testing.T, conn *pgxpool.Pool, id int64, lastSeen time.Time) {
	t.Helper()
	_, err := conn.Exec(context.Background(), "INSERT INTO objects (id, last_seen) VALUES ($1, $2)", id, lastSeen)
	if err != nil {
		t.Errorf("inserting object %d: %v", id, err) // not FailNow: may run in a goroutine
	}
}

func TestVerifyReadsTheObjectsTable(t *testing.T) {
	t.Parallel()
	conn := setupDB(t)
	now := time.Now()
	expected := map[int64]Expectation{
		1: {SendRecord: SendRecord{Accepted: now.Add(-time.Second), Maybe: now.Add(-time.Second)}, Online: true},
		2: {SendRecord: SendRecord{Accepted: now.Add(-time.Second), Maybe: now.Add(-time.Second)}, Online: false},
	}
	cfg := VerifyConfig{Window: time.Minute, CatchUp: 10 * time.Second, Poll: 5 * time.Millisecond}

	// The row arrives while Verify polls: it waits for the service to catch up.
	var log strings.Builder
	cfg.Log = &log
	go insert(t, conn, 1, now.Add(-time.Second+10*time.Millisecond))
	problems, err := Verify(t.Context(), conn, cfg, expected)
	require.NoError(t, err)
	require.Empty(t, problems)
	require.Contains(t, log.String(), "table matches")

	// A table broken by hand: an offline row that never goes away.
	insert(t, conn, 2, now)
	cfg.CatchUp, cfg.Log = 20*time.Millisecond, nil
	problems, err = Verify(t.Context(), conn, cfg, expected)
	require.NoError(t, err)
	require.Len(t, problems, 1)
	require.Equal(t, Offline, problems[0].Kind)
	require.Equal(t, int64(2), problems[0].ID)
}

func TestVerifyChecksExpiry(t *testing.T) {
	t.Parallel()
	conn := setupDB(t)
	// Everything was sent long ago: the window has passed, so no wait, and the table must
	// be empty.
	long := time.Now().Add(-time.Hour)
	expected := map[int64]Expectation{1: {SendRecord: SendRecord{Accepted: long, Maybe: long}, Online: true}}
	cfg := VerifyConfig{Window: time.Second, CatchUp: 20 * time.Millisecond, Poll: 5 * time.Millisecond, Expiry: true}
	problems, err := Verify(t.Context(), conn, cfg, expected)
	require.NoError(t, err)
	require.Empty(t, problems)

	insert(t, conn, 1, long)
	problems, err = Verify(t.Context(), conn, cfg, expected)
	require.NoError(t, err)
	require.Len(t, problems, 1)
	require.Equal(t, Expired, problems[0].Kind)
}
