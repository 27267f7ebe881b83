package console

import (
	"fmt"
	"sort"
	"strings"
	"time"
)

// kind is how a sample is computed from a metric family.
type kind int

const (
	value    kind = iota // a gauge as it is, or a counter's total since the start
	rate                 // a counter's increase over the interval, per second
	quantile             // a histogram's quantile of what was observed within the interval
)

// series is one column of the samples: one line of one chart on the page.
type series struct {
	Name   string            // the page's name for it
	Metric string            // the family in the registry
	Labels map[string]string // only the children with these labels; nil: all of them
	Summed bool              // the family has labels and all its children are added up
	Kind   kind
	Q      float64 // for a quantile
}

// Source is the series in PromQL terms, shown under its chart: where the number
// comes from, and what to ask Prometheus for the same line (over a range of one
// interval, which the page's samples are; a dashboard takes a longer one).
func (s series) Source(interval time.Duration) string {
	sel := s.Metric
	if len(s.Labels) > 0 {
		keys := make([]string, 0, len(s.Labels))
		for k := range s.Labels {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		parts := make([]string, len(keys))
		for i, k := range keys {
			parts[i] = fmt.Sprintf("%s=%q", k, s.Labels[k])
		}
		sel += "{" + strings.Join(parts, ",") + "}"
	}
	expr := sel
	switch s.Kind {
	case rate:
		expr = fmt.Sprintf("rate(%s[%s])", sel, promDuration(interval))
	case quantile:
		return fmt.Sprintf("histogram_quantile(%g, rate(%s_bucket[%s]))", s.Q, s.Metric, promDuration(interval))
	}
	if s.Summed {
		return "sum(" + expr + ")"
	}
	return expr
}

// promDuration writes d as PromQL does: 1s, 500ms, 2m.
func promDuration(d time.Duration) string {
	switch {
	case d%time.Minute == 0:
		return fmt.Sprintf("%dm", d/time.Minute)
	case d%time.Second == 0:
		return fmt.Sprintf("%ds", d/time.Second)
	}
	return fmt.Sprintf("%dms", d/time.Millisecond)
}

// pageSeries are the columns the page draws, in the order of the samples' values.
// The metric names are the ones internal/metrics declares; a test checks each is
// exported. Label values are the ones metrics exports at 0 from the start.
func pageSeries() []series {
	out := []series{
		// Intake.
		{Name: "accepted_total", Metric: "callback_callbacks_accepted_total", Kind: value},
		{Name: "accepted_per_s", Metric: "callback_callbacks_accepted_total", Kind: rate},
		{Name: "refused_per_s", Metric: "callback_callbacks_rejected_total", Summed: true, Kind: rate},
		{Name: "reply_p50_s", Metric: "callback_reply_seconds", Kind: quantile, Q: 0.5},
		{Name: "reply_p99_s", Metric: "callback_reply_seconds", Kind: quantile, Q: 0.99},
		// Merging.
		{Name: "merged_ids_total", Metric: "callback_merged_ids_total", Kind: value},
		{Name: "merged_ids_per_s", Metric: "callback_merged_ids_total", Kind: rate},
		{Name: "inbox_oldest_s", Metric: "callback_inbox_oldest_seconds", Kind: value},
		// Lookups.
		{Name: "lookups_total", Metric: "callback_lookups_total", Summed: true, Kind: value},
		{Name: "lookups_in_flight", Metric: "callback_lookups_in_flight", Kind: value},
		{Name: "lookup_limit", Metric: "callback_lookup_limit", Kind: value},
		{Name: "pending_waiting", Metric: "callback_pending_waiting_rows", Kind: value},
		// The table.
		{Name: "objects_online", Metric: "callback_objects_online", Kind: value},
		{Name: "expired_total", Metric: "callback_objects_rows_expired_total", Kind: value},
		{Name: "expired_per_s", Metric: "callback_objects_rows_expired_total", Kind: rate},
		// Overload.
		{Name: "dropped_total", Metric: "callback_work_dropped_total", Summed: true, Kind: value},
		{Name: "dropped_per_s", Metric: "callback_work_dropped_total", Summed: true, Kind: rate},
		{Name: "overloaded", Metric: "callback_overloaded", Kind: value},
		// Health.
		{Name: "database_up", Metric: "callback_database_up", Kind: value},
		{Name: "spool_segments", Metric: "callback_spool_segments", Kind: value},
		{Name: "spool_bytes", Metric: "callback_spool_bytes", Kind: value},
	}
	for _, o := range []string{"online", "offline", "failed", "expired", "abandoned", "rejected"} {
		out = append(out, series{Name: "lookups_" + o + "_per_s", Metric: "callback_lookups_total",
			Labels: map[string]string{"outcome": o}, Kind: rate})
	}
	for _, stage := range []string{"inbox", "merge", "pending", "claim"} {
		for _, reason := range []string{"expired", "capacity"} {
			out = append(out, series{Name: "dropped_" + stage + "_" + reason + "_per_s", Metric: "callback_work_dropped_total",
				Labels: map[string]string{"stage": stage, "reason": reason}, Kind: rate})
		}
	}
	return out
}
