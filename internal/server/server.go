// Package server assembles the HTTP surface: every route in one place, the middleware
// (request ids, panic recovery), health and readiness, metrics, the read API and the
// console's page.
package server

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"log/slog"
	"net/http"
	"runtime/debug"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/objwatch/callback/internal/intake"
	"github.com/objwatch/callback/internal/metrics"
)

// Readiness reports why the service cannot accept callbacks durably, or nil.
type Readiness func(ctx context.Context) error

// Console is the live page's handlers (internal/console).
type Console interface {
	Page(http.ResponseWriter, *http.Request)   // GET /
	Series(http.ResponseWriter, *http.Request) // GET /console/series
	Static(http.ResponseWriter, *http.Request) // GET /console/static/{file}
}

// Deps are what the routes need.
type Deps struct {
	Log      *slog.Logger
	Metrics  *metrics.Metrics
	Callback *intake.Handler
	Objects  *Objects
	Ready    Readiness
	// Console, if not nil, is served at / and under /console/ (CONSOLE=on). Like the
	// read API and /metrics it is open whether or not CALLBACK_TOKEN is set: the token
	// authenticates senders, and the page shows nothing that those two do not serve.
	Console Console
}

// New returns the handler for all routes.
func New(d Deps) http.Handler {
	gin.SetMode(gin.ReleaseMode)
	r := gin.New()
	r.HandleMethodNotAllowed = true
	r.ContextWithFallback = true
	r.Use(requestID(), recovery(d.Log, d.Metrics))

	r.POST("/callback", replyTimer(d.Metrics), d.Callback.Callback)
	r.GET("/objects", d.Objects.List)
	r.GET("/objects/:id", d.Objects.Get)
	r.GET("/healthz", func(c *gin.Context) { c.JSON(http.StatusOK, gin.H{"status": "ok"}) })
	r.GET("/readyz", func(c *gin.Context) {
		if err := d.Ready(c.Request.Context()); err != nil {
			c.JSON(http.StatusServiceUnavailable, gin.H{"status": "unavailable", "error": err.Error()})
			return
		}
		c.JSON(http.StatusOK, gin.H{"status": "ready"})
	})
	r.GET("/metrics", gin.WrapH(promhttp.HandlerFor(d.Metrics.Registry, promhttp.HandlerOpts{})))
	if d.Console != nil {
		r.GET("/", gin.WrapF(d.Console.Page))
		r.GET("/console/series", gin.WrapF(d.Console.Series))
		r.GET("/console/static/:file", gin.WrapF(d.Console.Static))
	}

	r.NoMethod(func(c *gin.Context) {
		if c.FullPath() == "/callback" || c.Request.URL.Path == "/callback" {
			d.Metrics.CallbacksRejected.WithLabelValues("method_not_allowed").Inc()
		}
		d.Log.InfoContext(c.Request.Context(), "request rejected", "request_id", intake.RequestID(c),
			"status", http.StatusMethodNotAllowed, "method", c.Request.Method, "path", c.Request.URL.Path)
		c.JSON(http.StatusMethodNotAllowed, gin.H{"error": "method " + c.Request.Method + " not allowed on " + c.Request.URL.Path})
	})
	r.NoRoute(func(c *gin.Context) {
		c.JSON(http.StatusNotFound, gin.H{"error": "no route " + c.Request.URL.Path})
	})
	return r
}

// requestID gives every request an id (the client's X-Request-ID if it sent one),
// echoed in the reply and logged on every line about the request. A process prefix
// plus a counter: unique, and cheaper than a random id per request.
func requestID() gin.HandlerFunc {
	var prefix [4]byte
	_, _ = rand.Read(prefix[:])
	p := hex.EncodeToString(prefix[:]) + "-"
	var n atomic.Uint64
	return func(c *gin.Context) {
		id := c.GetHeader("X-Request-ID")
		if id == "" || len(id) > 128 {
			id = p + strconv.FormatUint(n.Add(1), 10)
		}
		c.Writer.Header().Set("X-Request-ID", id)
		c.Next()
	}
}

// replyTimer observes how long POST /callback took to answer: the figure senders feel.
func replyTimer(m *metrics.Metrics) gin.HandlerFunc {
	return func(c *gin.Context) {
		start := time.Now()
		c.Next()
		m.ReplySeconds.Observe(time.Since(start).Seconds())
	}
}

// recovery turns a panic in a handler into a logged, counted 500; the process keeps
// serving.
func recovery(log *slog.Logger, m *metrics.Metrics) gin.HandlerFunc {
	return func(c *gin.Context) {
		defer func() {
			if p := recover(); p != nil {
				if p == http.ErrAbortHandler {
					panic(p) // the client is gone; net/http handles this one quietly
				}
				m.PanicsRecovered.WithLabelValues("http").Inc()
				log.ErrorContext(c.Request.Context(), "panic in handler", "request_id", intake.RequestID(c),
					"path", c.Request.URL.Path, "panic", p, "stack", string(debug.Stack()))
				c.AbortWithStatusJSON(http.StatusInternalServerError, gin.H{"error": "internal error"})
			}
		}()
		c.Next()
	}
}

// HTTPServer wraps h with the timeouts that keep slow or stuck clients from holding
// connections: the sender waits 1 s at most, so nothing legitimate comes near them.
func HTTPServer(addr string, h http.Handler, log *slog.Logger) *http.Server {
	return &http.Server{
		Addr:              addr,
		Handler:           h,
		ReadHeaderTimeout: time.Second, // legitimate senders send headers at once
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      15 * time.Second,
		IdleTimeout:       120 * time.Second,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
}
