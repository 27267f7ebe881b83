package tester

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"
)

// Progress writes ProgressLine to w every period until ctx ends. Either party may be nil.
func Progress(ctx context.Context, w io.Writer, period time.Duration, s *Sender, o *ObjectService) {
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			fmt.Fprintf(w, "%s %s\n", now.Format("15:04:05"), ProgressLine(s, o))
		}
	}
}

// ProgressLine is one line of counters for both parties (either may be nil).
func ProgressLine(s *Sender, o *ObjectService) string {
	var parts []string
	if s != nil {
		st := s.Stats()
		parts = append(parts, fmt.Sprintf("callbacks sent=%d accepted=%d refused=%d failed=%d reply p50=%s p99=%s",
			st.Sent, st.Accepted, st.Refused, st.Failed, ms(st.Latency.P50), ms(st.Latency.P99)))
	}
	if o != nil {
		st := o.Stats()
		parts = append(parts, fmt.Sprintf("lookups ok=%d 500=%d hang=%d malformed=%d drop=%d bad=%d rejected=%d inflight=%d",
			st.OK, st.Fail, st.Hang, st.Malformed, st.Drop, st.BadRequest, st.Rejected, st.InFlight))
	}
	return strings.Join(parts, " | ")
}

// Summary writes the totals of both parties (either may be nil).
func Summary(w io.Writer, s *Sender, o *ObjectService) {
	if s != nil {
		st := s.Stats()
		fmt.Fprintf(w, "callbacks: %d sent in %s: %d accepted (%.1f/s), %d refused%s, %d failed (%d timeouts)\n",
			st.Sent, st.Elapsed.Round(time.Millisecond), st.Accepted, perSecond(st.Accepted, st.Elapsed),
			st.Refused, byStatus(st.RefusedBy), st.Failed, st.Timeouts)
		fmt.Fprintf(w, "ids: %d sent, %d accepted\n", st.IDsSent, st.IDsAccepted)
		fmt.Fprintf(w, "reply latency: p50 %s, p99 %s, max %s, mean %s over %d replies\n",
			ms(st.Latency.P50), ms(st.Latency.P99), ms(st.Latency.Max), ms(st.Latency.Mean), st.Latency.Count)
		if st.LastError != "" {
			fmt.Fprintf(w, "last error: %s\n", st.LastError)
		}
	}
	if o != nil {
		st := o.Stats()
		fmt.Fprintf(w, "lookups: %d served: ok %d (online %d, offline %d), 500 %d, hang %d, malformed %d, drop %d, bad request %d; rejected for capacity %d (%.1f%% of %d requests); peak in flight %d; overlapping %d\n",
			st.Served(), st.OK, st.Online, st.Offline, st.Fail, st.Hang, st.Malformed, st.Drop, st.BadRequest,
			st.Rejected, percent(st.Rejected, st.Total()), st.Total(), st.MaxInFlight, st.Overlapping)
	}
}

func byStatus(m map[int]int64) string {
	if len(m) == 0 {
		return ""
	}
	codes := make([]int, 0, len(m))
	for c := range m {
		codes = append(codes, c)
	}
	slices.Sort(codes)
	parts := make([]string, len(codes))
	for i, c := range codes {
		parts[i] = fmt.Sprintf("%d: %d", c, m[c])
	}
	return " (" + strings.Join(parts, ", ") + ")"
}

func percent(n, of int64) float64 {
	if of == 0 {
		return 0
	}
	return 100 * float64(n) / float64(of)
}

func perSecond(n int64, d time.Duration) float64 {
	if d <= 0 {
		return 0
	}
	return float64(n) / d.Seconds()
}

// ms prints a duration in milliseconds with a precision that suits it.
func ms(d time.Duration) string {
	switch {
	case d == 0:
		return "0ms"
	case d < 10*time.Millisecond:
		return fmt.Sprintf("%.2fms", float64(d)/float64(time.Millisecond))
	default:
		return fmt.Sprintf("%.0fms", float64(d)/float64(time.Millisecond))
	}
}
