package tester

import (
	"math/bits"
	"sync/atomic"
	"time"
)

// Histogram records durations into fixed log-linear buckets with atomic counters, so that
// any number of goroutines can record without a lock and a reader can take quantiles while
// they do. Each power of two is split into histSub linear buckets, so a quantile is off by
// at most 1/histSub (6.25%); below histLinear microseconds buckets are exact.
// The zero value is ready to use.
type Histogram struct {
	buckets [histBuckets]atomic.Uint64
	count   atomic.Uint64
	sumUS   atomic.Uint64
	maxUS   atomic.Uint64
}

const (
	histSubBits = 4
	histSub     = 1 << histSubBits // linear buckets per power of two
	histLinear  = 2 * histSub      // values below this (µs) get a bucket each
	// Exponents histSubBits+1 .. 63 are split; the first 2*histSub values are exact.
	histBuckets = histLinear + (64-histSubBits-1)*histSub
)

// Record adds one observation. Negative durations count as zero.
func (h *Histogram) Record(d time.Duration) {
	us := uint64(0)
	if d > 0 {
		us = uint64(d / time.Microsecond)
	}
	h.buckets[bucketOf(us)].Add(1)
	h.count.Add(1)
	h.sumUS.Add(us)
	for {
		m := h.maxUS.Load()
		if us <= m || h.maxUS.CompareAndSwap(m, us) {
			break
		}
	}
}

func bucketOf(us uint64) int {
	if us < histLinear {
		return int(us)
	}
	e := bits.Len64(us) - 1 // us in [2^e, 2^(e+1)), e >= histSubBits+1
	sub := (us >> (e - histSubBits)) & (histSub - 1)
	return histLinear + (e-histSubBits-1)*histSub + int(sub)
}

// bucketUpper is the largest value (µs) that falls into bucket i.
func bucketUpper(i int) uint64 {
	if i < histLinear {
		return uint64(i)
	}
	j := i - histLinear
	e := j/histSub + histSubBits + 1
	sub := uint64(j % histSub)
	lo := uint64(1)<<e | sub<<(e-histSubBits)
	return lo + uint64(1)<<(e-histSubBits) - 1
}

// Count is the number of observations.
func (h *Histogram) Count() uint64 { return h.count.Load() }

// Max is the largest observation (exact, to the microsecond).
func (h *Histogram) Max() time.Duration { return time.Duration(h.maxUS.Load()) * time.Microsecond }

// Mean is the average observation, 0 when empty.
func (h *Histogram) Mean() time.Duration {
	n := h.count.Load()
	if n == 0 {
		return 0
	}
	return time.Duration(h.sumUS.Load()/n) * time.Microsecond
}

// Quantile returns an upper bound of the q-quantile (0 < q <= 1), never above Max;
// 0 when empty. Taken while others record, it is a consistent-enough estimate.
func (h *Histogram) Quantile(q float64) time.Duration {
	var counts [histBuckets]uint64
	var total uint64
	for i := range h.buckets {
		counts[i] = h.buckets[i].Load()
		total += counts[i]
	}
	if total == 0 {
		return 0
	}
	rank := uint64(q*float64(total) + 0.5)
	rank = max(rank, 1)
	rank = min(rank, total)
	var seen uint64
	for i, c := range counts {
		seen += c
		if seen >= rank {
			return min(time.Duration(bucketUpper(i))*time.Microsecond, h.Max())
		}
	}
	return h.Max()
}

// LatencySummary is a snapshot of a Histogram.
type LatencySummary struct {
	Count               uint64
	Mean, P50, P99, Max time.Duration
}

// Summary takes a snapshot.
func (h *Histogram) Summary() LatencySummary {
	return LatencySummary{
		Count: h.Count(),
		Mean:  h.Mean(),
		P50:   h.Quantile(0.50),
		P99:   h.Quantile(0.99),
		Max:   h.Max(),
	}
}
