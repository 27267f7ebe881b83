// Package intake is the front door: POST /callback. It reads and validates the body,
// stamps the receipt time, and hands the callback to the inbox, answering 202 only
// once the callback is durable. It never waits for lookups.
package intake

import (
	"bytes"
	"context"
	"crypto/subtle"
	"errors"
	"log/slog"
	"net/http"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/objwatch/callback/internal/callback"
	"github.com/objwatch/callback/internal/errlog"
	"github.com/objwatch/callback/internal/metrics"
)

// Submitter makes a callback durable (inbox.Committer).
type Submitter interface {
	Submit(ctx context.Context, cb callback.Callback) error
}

// Pacer says how long to hold the answer to a durable callback (pace.Pacer): while the
// service is overloaded, a callback of ids it is not tracking (a flood of fresh ids) is
// answered no sooner than a set time after its receipt, so that a sender waiting for
// its answers slows down.
type Pacer interface {
	Until(receipt time.Time, ids []int64, now time.Time) time.Duration
}

// Receipts counts the requests between their receipt stamp and their answer
// (watermark.Tracker): until a callback is durable, expiry must not read the clock past
// its receipt, and nothing else knows of it.
type Receipts interface {
	Begin(receipt time.Time) int64
	End(token int64)
}

// Config limits what one request may carry.
type Config struct {
	MaxBodyBytes int64
	MaxIDs       int
	Token        string        // when set, requests must carry "Authorization: Bearer <Token>"
	BodyTimeout  time.Duration // the whole body must arrive within this (0: only the server's ReadTimeout)
}

// Handler serves POST /callback.
type Handler struct {
	cfg      Config
	sub      Submitter
	receipts Receipts
	pacer    Pacer
	log      *slog.Logger
	errs     *errlog.Limiter
	metrics  *metrics.Metrics
	now      func() time.Time
}

// Deps are what the handler works with. Receipts and Pacer may be nil: nothing counts
// the receipts, nothing is paced.
type Deps struct {
	Submitter Submitter
	Receipts  Receipts
	Pacer     Pacer
	Log       *slog.Logger
	Metrics   *metrics.Metrics
}

// NewHandler builds the handler.
func NewHandler(cfg Config, d Deps) *Handler {
	if d.Receipts == nil {
		d.Receipts = noReceipts{}
	}
	if d.Pacer == nil {
		d.Pacer = noPacer{}
	}
	return &Handler{cfg: cfg, sub: d.Submitter, receipts: d.Receipts, pacer: d.Pacer, log: d.Log,
		errs: errlog.New(d.Log, 10*time.Second), metrics: d.Metrics, now: time.Now}
}

type noPacer struct{}

func (noPacer) Until(time.Time, []int64, time.Time) time.Duration { return 0 }

type noReceipts struct{}

func (noReceipts) Begin(time.Time) int64 { return 0 }
func (noReceipts) End(int64)             {}

// Buffers are pooled: at thousands of requests a second, a fresh 1 KiB body buffer
// and id slice per request would be most of the garbage the service makes.
var (
	bodyPool = sync.Pool{New: func() any { return new(bytes.Buffer) }}
	idsPool  = sync.Pool{New: func() any { s := make([]int64, 0, 256); return &s }}
)

// Callback is the gin handler.
func (h *Handler) Callback(c *gin.Context) {
	// The receipt time is the moment the request is in our hands, before reading the
	// body: it becomes last_seen. From here until the answer, the receipt holds expiry
	// back (Receipts): reading the body, waiting for the group commit or the spool.
	received := h.now()
	defer h.receipts.End(h.receipts.Begin(received))

	if h.cfg.Token != "" && !h.authorized(c.GetHeader("Authorization")) {
		h.reject(c, http.StatusUnauthorized, "unauthorized", "missing or wrong bearer token")
		return
	}

	// A declared length over the limit is refused before a byte of it is read: no
	// reading megabytes to reject them, and no race with the body deadline.
	if c.Request.ContentLength > h.cfg.MaxBodyBytes {
		h.rejectTooLarge(c)
		return
	}

	if h.cfg.BodyTimeout > 0 {
		// The sender gives up after 1 s: a body still arriving after that is abuse or
		// a dead client, and holding the connection for the server's ReadTimeout would
		// only hand it our resources. Not every writer supports deadlines (httptest's
		// recorder does not): then the server's ReadTimeout still applies.
		_ = http.NewResponseController(c.Writer).SetReadDeadline(received.Add(h.cfg.BodyTimeout))
	}

	body := bodyPool.Get().(*bytes.Buffer)
	body.Reset()
	defer func() {
		if body.Cap() <= 1<<20 { // do not keep a buffer grown by one huge body
			bodyPool.Put(body)
		}
	}()
	if _, err := body.ReadFrom(http.MaxBytesReader(c.Writer, c.Request.Body, h.cfg.MaxBodyBytes)); err != nil {
		if _, tooLarge := errors.AsType[*http.MaxBytesError](err); tooLarge {
			h.rejectTooLarge(c)
			return
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			h.reject(c, http.StatusRequestTimeout, "body_timeout",
				"body not received within "+h.cfg.BodyTimeout.String())
			return
		}
		h.reject(c, http.StatusBadRequest, "unreadable_body", "could not read body: "+err.Error())
		return
	}

	idsp := idsPool.Get().(*[]int64)
	defer func() {
		if cap(*idsp) <= 16384 {
			idsPool.Put(idsp)
		}
	}()
	ids, err := Parse(body.Bytes(), h.cfg.MaxIDs, (*idsp)[:0])
	*idsp = ids[:0]
	if err != nil {
		status, reason := parseRejection(err)
		h.reject(c, status, reason, err.Error())
		return
	}

	// Every id of one callback shares its receipt time, so a repeated id says nothing
	// new. Dropping repeats here, a few microseconds on an idle core, makes the inbox
	// row, its WAL and the merger's work proportional to the distinct ids (the original
	// sender repeats about four ids in ten). Intake is bound by WAL volume.
	sent := len(ids)
	unique := sortedDistinct(ids)

	// unique stays valid until Submit returns: the committer copies it into the
	// statement or the spool record before answering.
	if err := h.sub.Submit(c.Request.Context(), callback.New(received, unique)); err != nil {
		h.metrics.CallbacksRejected.WithLabelValues("unavailable").Inc()
		h.errs.Error(c.Request.Context(), "submit", "callback not accepted", err, "request_id", RequestID(c))
		c.AbortWithStatusJSON(http.StatusServiceUnavailable, gin.H{"error": "callback could not be stored durably; it was not accepted"})
		return
	}
	h.metrics.CallbacksAccepted.Inc()
	h.metrics.IDsReceived.Add(float64(sent))
	// Durable: nothing can lose it now. Under overload a flood of fresh ids waits for
	// its answer (internal/pace); the sender gets its 2xx all the same.
	if wait := h.pacer.Until(received, unique, h.now()); wait > 0 {
		h.metrics.CallbacksPaced.Inc()
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-c.Request.Context().Done():
		}
		t.Stop()
	}

	var out [40]byte
	b := append(out[:0], `{"accepted":`...)
	b = strconv.AppendInt(b, int64(sent), 10)
	b = append(b, '}')
	c.Data(http.StatusAccepted, "application/json", b)
}

// parseRejection is the status of the reply to a body Parse refused, and the reason
// it is counted under: the one place parse errors become HTTP statuses.
func parseRejection(err error) (status int, reason string) {
	if pe, ok := errors.AsType[*ParseError](err); ok && pe.TooManyIDs {
		return http.StatusRequestEntityTooLarge, "too_many_ids"
	}
	return http.StatusBadRequest, "invalid_body"
}

func (h *Handler) rejectTooLarge(c *gin.Context) {
	h.reject(c, http.StatusRequestEntityTooLarge, "body_too_large",
		"body exceeds "+strconv.FormatInt(h.cfg.MaxBodyBytes, 10)+" bytes")
}

func (h *Handler) authorized(header string) bool {
	const prefix = "Bearer "
	if len(header) < len(prefix) || header[:len(prefix)] != prefix {
		return false
	}
	return subtle.ConstantTimeCompare([]byte(header[len(prefix):]), []byte(h.cfg.Token)) == 1
}

// reject answers a 4xx with {"error": msg} and logs it once, with the request id.
func (h *Handler) reject(c *gin.Context, status int, reason, msg string) {
	h.metrics.CallbacksRejected.WithLabelValues(reason).Inc()
	h.log.InfoContext(c.Request.Context(), "callback rejected",
		"request_id", RequestID(c), "status", status, "reason", reason, "error", msg, "remote", c.ClientIP())
	c.AbortWithStatusJSON(status, gin.H{"error": msg})
}

// RequestID returns the id the request-id middleware gave this request.
func RequestID(c *gin.Context) string {
	return c.Writer.Header().Get("X-Request-ID")
}
