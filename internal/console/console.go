// Package console is the service's live page, for a person at a browser: GET / shows
// what the service is doing now and over the last few minutes, drawn from its own
// Prometheus series (the ones GET /metrics serves), plus a box to look an object up
// and the newest objects, through the read API. It is for a newcomer running
// `make run` and for a look at one replica; Grafana (deploy/grafana) is for
// production, over all replicas and any span of time.
//
// Two halves. The sampler gathers the service's own registry once a second and keeps
// five minutes of samples in a ring: per-interval rates from counters, quantiles
// from histogram bucket increases, gauges as they are. It runs no query of its own
// (the database's gauges are sampled by the status reporter) and shares no lock with
// the request path: the metrics it reads are atomics, as for a scrape of /metrics.
// A tick costs a fraction of a millisecond of CPU a second (BenchmarkSample; the
// figures are in docs/design.md), so it samples whether or not anybody looks, and the
// page has the history the moment it opens. The page polls GET /console/series for
// the samples it has not seen yet.
//
// The page is static HTML, CSS and JavaScript embedded in the binary: no build step,
// nothing fetched from any other host (its Content-Security-Policy forbids it), and
// charts drawn as SVG by a few hundred lines of plain JavaScript (static/console.js).
// It is read-only: it sends GETs and nothing else.
package console

import (
	"bytes"
	"cmp"
	"context"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"path"
	"strconv"
	"time"

	"github.com/objwatch/callback/internal/component"
	"github.com/objwatch/callback/internal/metrics"
)

// Config tunes the sampler.
type Config struct {
	// Interval between samples: the resolution of the charts.
	Interval time.Duration
	// History is how far back the charts go: History/Interval samples are kept.
	History time.Duration
}

// Defaults: one sample a second, five minutes of them: 300 samples of a few dozen
// numbers, under 100 KiB held for the life of the process.
const (
	IntervalDefault = time.Second
	HistoryDefault  = 5 * time.Minute
)

// Console samples the service's metrics and serves the page and the samples.
type Console struct {
	component.Base
	cfg     Config
	sampler *sampler
	ring    *ring
	values  []float64 // the sampler's scratch for one sample
	head    []byte    // the series reply up to its samples: it never changes
}

// New builds the console over deps.Metrics.Own.
func New(cfg Config, deps component.Deps) (*Console, error) {
	cfg.Interval = cmp.Or(cfg.Interval, IntervalDefault)
	cfg.History = cmp.Or(cfg.History, HistoryDefault)
	if cfg.Interval < 0 || cfg.History < 2*cfg.Interval {
		return nil, errors.New("the console's interval must be positive and its history at least two intervals")
	}
	base := component.NewBase(deps)
	ss := pageSeries()
	head, err := replyHead(cfg, ss, metrics.ReadBuild())
	if err != nil {
		return nil, err
	}
	return &Console{
		Base:    base,
		cfg:     cfg,
		sampler: newSampler(base.Metrics.Own.Gather, ss),
		ring:    newRing(int(cfg.History/cfg.Interval), len(ss)),
		values:  make([]float64, len(ss)),
		head:    head,
	}, nil
}

// Run samples at once and then every Interval, until ctx ends.
func (c *Console) Run(ctx context.Context) error {
	t := time.NewTicker(c.cfg.Interval)
	defer t.Stop()
	for {
		c.sample(ctx)
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// sample takes one sample into the ring.
func (c *Console) sample(ctx context.Context) {
	now := c.Now()
	if err := c.sampler.sample(now, c.values); err != nil {
		// A collector that failed: its series are missing from this sample, the rest is kept.
		c.Errs.Error(ctx, "console", "gathering the metrics for the console", err)
	}
	c.ring.put(now, c.values)
}

// replyHead is the start of every series reply, up to the samples.
func replyHead(cfg Config, ss []series, build metrics.Build) ([]byte, error) {
	type seriesInfo struct {
		Name   string `json:"name"`
		Metric string `json:"metric"`
		Source string `json:"source"`
	}
	info := make([]seriesInfo, len(ss))
	for i, s := range ss {
		info[i] = seriesInfo{Name: s.Name, Metric: s.Metric, Source: s.Source(cfg.Interval)}
	}
	b, err := json.Marshal(struct {
		Interval float64      `json:"interval_seconds"`
		History  float64      `json:"history_seconds"`
		Version  string       `json:"version"`
		Revision string       `json:"revision"`
		Series   []seriesInfo `json:"series"`
	}{cfg.Interval.Seconds(), cfg.History.Seconds(), build.Version, build.Revision, info})
	if err != nil {
		return nil, fmt.Errorf("encoding the console's series: %w", err)
	}
	// Reopen the object for the samples: {..."series":[...],"samples":
	return append(b[:len(b)-1], `,"samples":`...), nil
}

// Series serves GET /console/series?after=T: the samples taken after T (unix
// milliseconds; all of them without it), oldest first, each [t, v0, v1, ...] in the
// order of "series"; null where a value is unknown.
func (c *Console) Series(w http.ResponseWriter, r *http.Request) {
	var after int64 = -1 << 63
	if v := r.URL.Query().Get("after"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			writeError(w, http.StatusBadRequest, "after must be a time in unix milliseconds")
			return
		}
		after = n
	}
	b := make([]byte, 0, len(c.head)+1<<10) // a poll for the newest sample fits; the whole ring grows it
	b = append(b, c.head...)
	b = c.ring.appendJSON(b, after)
	b = append(b, '}')
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	_, _ = w.Write(b)
}

//go:embed static
var static embed.FS

// asset is one embedded file, served with its ETag.
type asset struct {
	data []byte
	etag string
}

var assets = func() map[string]asset {
	files, err := static.ReadDir("static")
	if err != nil {
		panic(err) // the embedded directory is part of the binary
	}
	out := map[string]asset{}
	for _, f := range files {
		data, err := static.ReadFile("static/" + f.Name())
		if err != nil {
			panic(err)
		}
		sum := sha256.Sum256(data)
		out[f.Name()] = asset{data: data, etag: `"` + hex.EncodeToString(sum[:8]) + `"`}
	}
	return out
}()

// contentPolicy lets the page load its own script and style and talk to the service,
// and nothing else: no other host, no inline script, no form posted anywhere.
const contentPolicy = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; " +
	"connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

// Page serves the page (GET /).
func (c *Console) Page(w http.ResponseWriter, r *http.Request) {
	serveAsset(w, r, "index.html")
}

// Static serves the page's script and style: the last element of the path names the
// file (GET /console/static/{file}).
func (c *Console) Static(w http.ResponseWriter, r *http.Request) {
	name := path.Base(r.URL.Path)
	if name == "index.html" {
		name = "" // served as / only
	}
	serveAsset(w, r, name)
}

func serveAsset(w http.ResponseWriter, r *http.Request, name string) {
	a, ok := assets[name]
	if !ok {
		writeError(w, http.StatusNotFound, "no file "+strconv.Quote(name)+" in the console")
		return
	}
	h := w.Header()
	h.Set("Content-Security-Policy", contentPolicy)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	// A newer binary may serve other files under the same names: revalidate each time,
	// which costs a 304 while they are the same.
	h.Set("Cache-Control", "no-cache")
	h.Set("ETag", a.etag)
	http.ServeContent(w, r, name, time.Time{}, bytes.NewReader(a.data))
}

func writeError(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]string{"error": msg})
}
