// Package metrics defines every Prometheus series the service exports, in one place,
// so that /metrics reads as a table of contents of what the service does.
package metrics

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	dto "github.com/prometheus/client_model/go"
)

// Metrics is passed to each component; fields are safe for concurrent use.
type Metrics struct {
	// Registry is what GET /metrics serves: Own's series, the Go runtime's and the
	// process's.
	Registry *prometheus.Registry
	// Own holds the service's own series alone, for the console's sampler, which
	// gathers them every second. Leaving out the process collector matters: it reads
	// /proc/self/fd, one entry per open connection, and with thousands of lookups in
	// flight that walk costs far more than everything else together.
	Own *prometheus.Registry

	// Intake.
	CallbacksAccepted prometheus.Counter
	CallbacksRejected *prometheus.CounterVec // reason
	IDsReceived       prometheus.Counter
	CallbacksPaced    prometheus.Counter   // answered late on purpose: a flood of fresh ids while overloaded
	ReplySeconds      prometheus.Histogram // POST /callback, from the first byte read to the reply
	CommitBatchSize   prometheus.Histogram // callbacks per durable write
	CommitSeconds     *prometheus.HistogramVec
	CallbacksSpooled  prometheus.Counter
	CallbacksReplayed prometheus.Counter
	SpoolSegments     prometheus.Gauge
	SpoolBytes        prometheus.Gauge

	// Merge.
	MergedCallbacks prometheus.Counter
	MergedIDs       prometheus.Counter
	Refreshed       *prometheus.CounterVec // path: pass, early
	Quarantined     prometheus.Counter     // inbox batches that could not be decoded
	MergeSeconds    prometheus.Histogram   // one merge pass

	// Work dropped before it cost anything, by stage (inbox, merge, pending, claim, recheck) and
	// reason (expired: its receipt left the window; capacity: no room for it before it
	// would). Nothing accepted is lost by this: see the inbox package's durability
	// argument.
	Dropped    *prometheus.CounterVec
	Overloaded prometheus.Gauge // 1 while work is dropped for capacity

	// Lookups.
	Lookups         *prometheus.CounterVec // outcome
	LookupSeconds   prometheus.Histogram
	LookupsInFlight prometheus.Gauge
	LookupLimit     prometheus.Gauge   // the adaptive concurrency limit now
	StaleResults    prometheus.Counter // lease lost before the result was written

	// Objects.
	RowsWritten *prometheus.CounterVec // op: upsert, delete
	RowsExpired prometheus.Counter

	// Queues, sampled.
	InboxCallbacks  prometheus.Gauge
	InboxOldest     prometheus.Gauge // age of the oldest unmerged receipt
	PendingRows     prometheus.Gauge
	PendingWaiting  prometheus.Gauge // pending rows not claimed: distinct ids waiting for a lookup
	PendingOldest   prometheus.Gauge
	ObjectsOnline   prometheus.Gauge
	DatabaseErrors  *prometheus.CounterVec // component
	PanicsRecovered *prometheus.CounterVec // where

	// The hot tables' upkeep (internal/vacuum).
	DeadRows *prometheus.GaugeVec   // table: dead tuples, as last read
	Vacuums  *prometheus.CounterVec // table: vacuums this replica ran

	// The fleet's low watermark, as this replica's expiry last read it.
	ReplicasLive   prometheus.Gauge // replicas heard from within REPLICA_TIMEOUT (they hold expiry back)
	ReplicasSilent prometheus.Gauge // replicas not heard from for longer, not stopped: no longer counted
	WatermarkLag   prometheus.Gauge // now minus the fleet's low watermark: how far expiry lags the clock

	// Health, for alerts: each is set where the state is known.
	DatabaseUp    prometheus.Gauge // 1 while Postgres answers this replica, else 0
	ExpiryLastRun prometheus.Gauge // unix time of this replica's last completed expiry
	BuildInfo     *prometheus.GaugeVec
}

// New registers all series in two fresh registries: Own, and Registry with the Go and
// process collectors besides.
func New() *Metrics {
	reg, own := prometheus.NewRegistry(), prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	f := factory{[]prometheus.Registerer{reg, own}}
	m := &Metrics{
		Registry:          reg,
		Own:               own,
		CallbacksAccepted: f.counter("callbacks_accepted_total", "Callbacks answered 2xx: durable in the inbox or the spool."),
		CallbacksRejected: f.counterVec("callbacks_rejected_total", "Callbacks answered 4xx/5xx, by reason.", "reason"),
		IDsReceived:       f.counter("ids_received_total", "Object ids in accepted callbacks, duplicates included."),
		CallbacksPaced:    f.counter("callbacks_paced_total", "Accepted callbacks answered OVERLOAD_PACE after their receipt on purpose: while the service was overloaded, most of their ids were ones it does not track (a flood of fresh ids)."),
		ReplySeconds: f.histogram("reply_seconds", "Time to answer POST /callback, whatever the status.",
			prometheus.ExponentialBuckets(0.00025, 2, 15)),
		CommitBatchSize: f.histogram("commit_batch_callbacks", "Callbacks per group commit.",
			[]float64{1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024}),
		CommitSeconds: f.histogramVec("commit_seconds", "Duration of one group commit, by target (inbox, spool).",
			prometheus.ExponentialBuckets(0.0005, 2, 14), "target"),
		CallbacksSpooled:  f.counter("callbacks_spooled_total", "Callbacks made durable in the local spool because Postgres was unreachable."),
		CallbacksReplayed: f.counter("callbacks_replayed_total", "Spooled callbacks replayed into Postgres."),
		SpoolSegments:     f.gauge("spool_segments", "Spool files waiting to be replayed."),
		SpoolBytes:        f.gauge("spool_bytes", "Bytes in spool files waiting to be replayed."),
		MergedCallbacks:   f.counter("merged_callbacks_total", "Callbacks merged from the inbox into pending work."),
		MergedIDs:         f.counter("merged_ids_total", "Distinct ids per merge batch, summed: lookups requested after coalescing."),
		Refreshed:         f.counterVec("objects_refreshed_total", "Rows of online objects whose last_seen a newer receipt moved forward without a lookup, by path: a merge pass, or the early refresh that runs while passes are far apart.", "path"),
		Quarantined:       f.counter("inbox_batches_quarantined_total", "Inbox batches the merger could not decode, moved to the inbox_quarantine table."),
		MergeSeconds: f.histogram("merge_pass_seconds", "Duration of one merge pass.",
			prometheus.ExponentialBuckets(0.001, 2, 14)),
		Dropped: f.counterVec("work_dropped_total",
			"Receipts (ids; callbacks for whole inbox batches) dropped before they cost anything, by stage (inbox: whole batches unread; merge: no room in a full pending; pending: swept or evicted before a claim; claim; recheck: an object already looked up, named again, keeps the newer receipt but is not looked up again for now) and reason (expired, capacity).",
			"stage", "reason"),
		Overloaded: f.gauge("overloaded", "1 while any work is being dropped (callback_work_dropped_total grew since the last status sample, whatever the stage or reason), else 0."),
		Lookups:    f.counterVec("lookups_total", "Object service lookups, by outcome.", "outcome"),
		LookupSeconds: f.histogram("lookup_seconds", "Object service lookup latency.",
			[]float64{.05, .1, .25, .5, 1, 1.5, 2, 2.5, 3, 3.5, 4, 4.5, 5, 7.5, 10}),
		LookupsInFlight: f.gauge("lookups_in_flight", "Lookups waiting for the object service."),
		LookupLimit:     f.gauge("lookup_limit", "Adaptive limit of lookups in flight at once (between a floor and FETCH_CONCURRENCY)."),
		StaleResults:    f.counter("lookup_results_stale_total", "Lookup results discarded because their lease had been lost."),
		RowsWritten:     f.counterVec("objects_rows_written_total", "Rows written to objects by lookup results, by op.", "op"),
		RowsExpired:     f.counter("objects_rows_expired_total", "Rows deleted from objects by expiry."),
		InboxCallbacks:  f.gauge("inbox_callbacks", "Callbacks durable in the inbox, not yet merged."),
		InboxOldest:     f.gauge("inbox_oldest_seconds", "Age of the oldest receipt in the inbox, not yet merged."),
		PendingRows:     f.gauge("pending_rows", "Objects with a lookup to do or in flight."),
		PendingWaiting:  f.gauge("pending_waiting_rows", "Objects waiting for a lookup (pending, not claimed)."),
		PendingOldest:   f.gauge("pending_oldest_seconds", "Age of the oldest receipt with a lookup to do."),
		ObjectsOnline:   f.gauge("objects_online", "Rows in objects."),
		DatabaseErrors:  f.counterVec("database_errors_total", "Failed database operations, by component.", "component"),
		PanicsRecovered: f.counterVec("panics_recovered_total", "Panics recovered, by where.", "where"),
		DeadRows:        f.gaugeVec("dead_rows", "Dead tuples of each table that churns (pending, objects, inbox_batches, merged_batches), as the service last read them; it vacuums a table past 20,000 itself.", "table"),
		Vacuums:         f.counterVec("vacuums_total", "Vacuums of a table that churns run by this replica (autovacuum's are not counted).", "table"),
		ReplicasLive:    f.gauge("replicas_live", "Replicas whose watermark holds expiry back: heard from within REPLICA_TIMEOUT (as this replica's expiry last read them)."),
		ReplicasSilent:  f.gauge("replicas_silent", "Replicas not heard from within REPLICA_TIMEOUT and not stopped: they no longer hold expiry back; if one still holds spooled callbacks, rows it keeps alive may be expired before it replays them."),
		WatermarkLag:    f.gauge("expiry_watermark_lag_seconds", "Now minus the fleet's low watermark: how far behind the clock expiry reads (about 0; up to REPLICA_TIMEOUT while a replica is cut off, up to the window at most from a live one)."),
		DatabaseUp:      f.gauge("database_up", "1 while Postgres answers this replica's pings, 0 while callbacks can only be spooled."),
		ExpiryLastRun:   f.gauge("expiry_last_run_timestamp_seconds", "Unix time of the last expiry this replica ran (it won the advisory lock); 0 if never."),
		BuildInfo: f.gaugeVec("build_info", "Always 1; the labels say which build runs.",
			"version", "revision", "goversion"),
	}
	b := ReadBuild()
	m.BuildInfo.WithLabelValues(b.Version, b.Revision, b.GoVersion).Set(1)
	m.zeroKnownLabels()
	return m
}

// zeroKnownLabels exports every known label value of the vectors at 0 from the start:
// a series that only appears when the first error happens cannot be used by rate() in
// an alert or a dashboard until it has happened twice.
func (m *Metrics) zeroKnownLabels() {
	for _, c := range []string{"commit", "replay", "merge", "claim", "complete", "expiry", "watermark", "vacuum"} {
		m.DatabaseErrors.WithLabelValues(c)
	}
	for _, w := range []string{"http", "lookup"} {
		m.PanicsRecovered.WithLabelValues(w)
	}
	for _, r := range []string{"unauthorized", "body_timeout", "unreadable_body", "invalid_body", "too_many_ids",
		"body_too_large", "method_not_allowed", "unavailable"} {
		m.CallbacksRejected.WithLabelValues(r)
	}
	for _, o := range []string{"online", "offline", "failed", "expired", "abandoned", "rejected"} {
		m.Lookups.WithLabelValues(o)
	}
	for _, stage := range []string{"inbox", "merge", "pending", "claim", "recheck"} {
		for _, reason := range []string{"expired", "capacity"} {
			m.Dropped.WithLabelValues(stage, reason)
		}
	}
	for _, t := range []string{"pending", "objects", "inbox_batches", "merged_batches"} {
		m.DeadRows.WithLabelValues(t)
		m.Vacuums.WithLabelValues(t)
	}
	for _, t := range []string{"inbox", "spool"} {
		m.CommitSeconds.WithLabelValues(t)
	}
	for _, op := range []string{"upsert", "delete"} {
		m.RowsWritten.WithLabelValues(op)
	}
}

// factory registers each series in every one of regs: a collector may belong to
// several registries, and each gathers it on its own.
type factory struct{ regs []prometheus.Registerer }

func (f factory) register(c prometheus.Collector) {
	for _, r := range f.regs {
		r.MustRegister(c)
	}
}

const namespace = "callback"

func (f factory) counter(name, help string) prometheus.Counter {
	c := prometheus.NewCounter(prometheus.CounterOpts{Namespace: namespace, Name: name, Help: help})
	f.register(c)
	return c
}

func (f factory) counterVec(name, help string, labels ...string) *prometheus.CounterVec {
	c := prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Name: name, Help: help}, labels)
	f.register(c)
	return c
}

func (f factory) gauge(name, help string) prometheus.Gauge {
	g := prometheus.NewGauge(prometheus.GaugeOpts{Namespace: namespace, Name: name, Help: help})
	f.register(g)
	return g
}

func (f factory) gaugeVec(name, help string, labels ...string) *prometheus.GaugeVec {
	g := prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: namespace, Name: name, Help: help}, labels)
	f.register(g)
	return g
}

func (f factory) histogram(name, help string, buckets []float64) prometheus.Histogram {
	h := prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: namespace, Name: name, Help: help, Buckets: buckets})
	f.register(h)
	return h
}

func (f factory) histogramVec(name, help string, buckets []float64, labels ...string) *prometheus.HistogramVec {
	h := prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: namespace, Name: name, Help: help, Buckets: buckets}, labels)
	f.register(h)
	return h
}

// Sum adds up the current values of every counter and gauge series c holds: a counter,
// or all label values of a vector. For the status line and for tests.
func Sum(c prometheus.Collector) float64 {
	ch := make(chan prometheus.Metric, 64)
	go func() { c.Collect(ch); close(ch) }()
	var sum float64
	for m := range ch {
		var d dto.Metric
		if m.Write(&d) == nil {
			sum += d.GetCounter().GetValue() + d.GetGauge().GetValue()
		}
	}
	return sum
}
