package main

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/objwatch/callback/internal/tester"
)

func TestSettled(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC)
	ago := func(d time.Duration) time.Time { return now.Add(-d) }
	sent := func(d time.Duration) tester.SendRecord { return tester.SendRecord{Accepted: ago(d), Maybe: ago(d)} }
	tracked := func(id int64) bool { return id >= 100 }
	records := map[int64]tester.SendRecord{
		100: sent(10 * time.Second), // online, settled: needs a row
		102: sent(2 * time.Second),  // online, named 2 s ago: its lookup may be in flight
		101: sent(10 * time.Second), // offline: must have no row
	}
	row := func(id int64, d time.Duration) tester.Row { return tester.Row{ID: id, LastSeen: ago(d)} }

	for _, tc := range []struct {
		name          string
		rows          []tester.Row
		settle        time.Duration
		present, diff int
	}{
		{"exact_when_settled_ids_have_their_rows", []tester.Row{row(100, 10*time.Second)}, 5 * time.Second, 1, 0},
		{"a_settled_id_without_a_row_differs", nil, 5 * time.Second, 0, 1},
		{"an_id_named_within_settle_is_not_judged", []tester.Row{row(100, 10*time.Second)}, 5 * time.Second, 1, 0},
		{"with_settle_0_every_id_is_judged", []tester.Row{row(100, 10*time.Second)}, 0, 1, 1},
		{"a_row_for_an_offline_tracked_id_differs", []tester.Row{row(100, 10*time.Second), row(101, 10*time.Second)}, 5 * time.Second, 2, 1},
		{"an_untracked_online_row_inside_the_window_is_fine", []tester.Row{row(100, 10*time.Second), row(2, 20*time.Second)}, 5 * time.Second, 1, 0},
		{"an_untracked_offline_row_differs", []tester.Row{row(100, 10*time.Second), row(3, 20*time.Second)}, 5 * time.Second, 1, 1},
		{"an_untracked_row_past_the_window_differs", []tester.Row{row(100, 10*time.Second), row(4, 40*time.Second)}, 5 * time.Second, 1, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			present, diff := settled(records, tracked, tc.rows, now, 30*time.Second, tc.settle, tester.OnlineParity)
			require.Equal(t, tc.present, present)
			require.Equal(t, tc.diff, diff)
		})
	}
}

func TestSVGChart(t *testing.T) {
	t.Parallel()
	ps := []point{{at: 0, rows: 1}, {at: 1, rows: 5}, {at: 2, rows: 3}}
	svg := svgChart("a title & more", ps, []series{{"rows", "n", func(p point) float64 { return float64(p.rows) }}},
		[]mark{{at: 1, label: "flood ends"}})
	require.Contains(t, svg, "<svg ")
	require.Contains(t, svg, "a title &amp; more")
	require.Contains(t, svg, "<polyline")
	require.Contains(t, svg, "flood ends")
	require.Equal(t, []string{"ab cd", "ef"}, wrap("ab cd ef", 5))
}

func TestShown(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC)
	ago := func(d time.Duration) time.Time { return now.Add(-d) }
	accepted := func(d time.Duration) tester.SendRecord { return tester.SendRecord{Accepted: ago(d), Maybe: ago(d)} }
	row := func(id int64, d time.Duration) tester.Row { return tester.Row{ID: id, LastSeen: ago(d)} }

	for _, tc := range []struct {
		name     string
		records  map[int64]tester.SendRecord
		rows     []tester.Row
		owed, ok int
	}{
		{"a_row_for_the_latest_receipt_shows_the_object", map[int64]tester.SendRecord{100: accepted(10 * time.Second)},
			[]tester.Row{row(100, 10*time.Second)}, 1, 1},
		{"a_row_for_a_receipt_5_s_older_still_shows_it", map[int64]tester.SendRecord{100: accepted(time.Second)},
			[]tester.Row{row(100, 6*time.Second)}, 1, 1},
		{"a_row_more_than_5_s_behind_does_not", map[int64]tester.SendRecord{100: accepted(time.Second)},
			[]tester.Row{row(100, 6*time.Second+time.Millisecond)}, 1, 0},
		{"no_row_does_not", map[int64]tester.SendRecord{100: accepted(10 * time.Second)}, nil, 1, 0},
		{"an_offline_id_is_not_owed", map[int64]tester.SendRecord{101: accepted(10 * time.Second)}, nil, 0, 0},
		{"an_id_accepted_a_window_less_a_second_ago_is_not_owed", map[int64]tester.SendRecord{100: accepted(29 * time.Second)}, nil, 0, 0},
		{"an_id_never_accepted_is_not_owed", map[int64]tester.SendRecord{100: {Maybe: ago(time.Second)}}, nil, 0, 0},
		{"rows_of_other_traffic_do_not_count", map[int64]tester.SendRecord{100: accepted(10 * time.Second)},
			[]tester.Row{row(2, time.Second), row(100, 10*time.Second)}, 1, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			owed, ok := shown(tc.records, tc.rows, now, 30*time.Second, 5*time.Second, tester.OnlineParity)
			require.Equal(t, tc.owed, owed)
			require.Equal(t, tc.ok, ok)
		})
	}
}
