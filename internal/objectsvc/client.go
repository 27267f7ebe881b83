// Package objectsvc is the client of the object service: GET {base}/objects/{id}
// answers {"id":N,"online":B}. Anything else is an error, retried by the caller.
package objectsvc

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Client looks objects up. Safe for concurrent use.
//
// It speaks just enough HTTP/1.1 for one GET, on keep-alive connections of its own,
// because of what thousands of lookups in flight cost. net/http's transport holds each
// connection with a reader and a writer goroutine beside the caller's: three stacks per
// lookup: with 10,000 lookups in flight the service took 282 MiB through http.Client
// and 139 MiB with this client (docs/design.md, "Measurements behind the defaults"),
// and the former left too little of a 256 MiB budget for merging during a flood. Here a lookup is one goroutine, its connection and a 512 B
// read buffer; the response is still parsed by net/http (http.ReadResponse), so
// chunked bodies, long header lines and Connection: close are handled as usual.
type Client struct {
	addr   string // host:port to dial
	host   string // Host header
	prefix string // base path, without a trailing slash
	tls    *tls.Config
	dialer net.Dialer

	mu      sync.Mutex
	idle    []*conn // most recently used last
	maxIdle int
}

// conn is one keep-alive connection and its reader.
type conn struct {
	net.Conn
	br       *bufio.Reader
	lastUsed time.Time
}

// idleTimeout: an idle connection older than this may have been closed by the server;
// it is closed here instead of being tried.
const idleTimeout = 60 * time.Second

// New returns a client for baseURL (e.g. http://localhost:9010) that keeps up to
// concurrency idle connections, so that every lookup reuses a keep-alive connection
// instead of dialing. Timeouts come from the caller's context.
func New(baseURL string, concurrency int) *Client {
	c := &Client{maxIdle: concurrency, dialer: net.Dialer{Timeout: 2 * time.Second, KeepAlive: 30 * time.Second}}
	u, err := url.Parse(baseURL)
	if err != nil {
		// The service validates OBJECTS_URL at start; a bad one here fails each lookup.
		c.addr = baseURL
		return c
	}
	c.host, c.prefix = u.Host, strings.TrimSuffix(u.EscapedPath(), "/")
	port := u.Port()
	if port == "" {
		port = map[bool]string{true: "443", false: "80"}[u.Scheme == "https"]
	}
	c.addr = net.JoinHostPort(u.Hostname(), port)
	if u.Scheme == "https" {
		c.tls = &tls.Config{ServerName: u.Hostname(), MinVersion: tls.VersionTLS12}
	}
	return c
}

// StatusError is an answer other than 200. Retry-After, when the service sent one (in
// seconds or as an HTTP date), is in RetryAfter.
type StatusError struct {
	Code       int
	RetryAfter time.Duration
	Body       string
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("object service answered %d: %s", e.Code, e.Body)
}

// Rejected reports whether the service refused the request for lack of capacity (429
// or 503), as opposed to failing on it.
func (e *StatusError) Rejected() bool {
	return e.Code == http.StatusTooManyRequests || e.Code == http.StatusServiceUnavailable
}

// Wait is how long the service asked the client to wait before trying again, 0 if
// it did not say.
func (e *StatusError) Wait() time.Duration { return e.RetryAfter }

// parseRetryAfter reads a Retry-After header: delay-seconds or an HTTP date (RFC 9110
// 10.2.3). Anything else, or a time already past, is 0.
func parseRetryAfter(v string, now time.Time) time.Duration {
	if v == "" {
		return 0
	}
	if s, err := strconv.ParseInt(v, 10, 64); err == nil {
		if s <= 0 {
			return 0
		}
		return time.Duration(min(s, int64(24*time.Hour/time.Second))) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil && t.After(now) {
		return t.Sub(now)
	}
	return 0
}

type answer struct {
	ID     *int64 `json:"id"`
	Online *bool  `json:"online"`
}

// Lookup returns whether id is online.
func (c *Client) Lookup(ctx context.Context, id int64) (bool, error) {
	path := c.prefix + "/objects/" + strconv.FormatInt(id, 10)
	status, retryAfter, body, err := c.get(ctx, path)
	if err != nil {
		return false, fmt.Errorf("GET %s: %w", path, err)
	}
	if status != http.StatusOK {
		return false, &StatusError{
			Code:       status,
			RetryAfter: parseRetryAfter(retryAfter, time.Now()),
			Body:       string(bytes.TrimSpace(body[:min(len(body), 200)])),
		}
	}
	var a answer
	if err := json.Unmarshal(body, &a); err != nil {
		return false, fmt.Errorf("malformed answer: %w", err)
	}
	if a.ID == nil || a.Online == nil {
		return false, fmt.Errorf("malformed answer: missing id or online: %.200s", body)
	}
	if *a.ID != id {
		return false, fmt.Errorf("answer is about id %d, asked for %d", *a.ID, id)
	}
	return *a.Online, nil
}

// maxBody: an answer is a few dozen bytes; a larger one is malformed anyway, and its
// connection is not reused.
const maxBody = 4096

// get sends GET path and reads the answer. A reused connection that fails before any
// byte of the answer arrived was most likely closed by the server while idle: the GET
// is idempotent and is sent once more on a new connection, as net/http does.
func (c *Client) get(ctx context.Context, path string) (status int, retryAfter string, body []byte, err error) {
	for attempt := 0; ; attempt++ {
		cn, reused, err := c.conn(ctx, attempt > 0)
		if err != nil {
			return 0, "", nil, err
		}
		status, retryAfter, body, keep, answered, err := c.roundTrip(ctx, cn, path)
		if err == nil && keep {
			c.release(cn)
		} else {
			cn.Close()
		}
		if err != nil && reused && !answered && ctx.Err() == nil && attempt == 0 {
			continue
		}
		return status, retryAfter, body, err
	}
}

func (c *Client) roundTrip(ctx context.Context, cn *conn, path string) (status int, retryAfter string, body []byte, keep, answered bool, err error) {
	// The context bounds the whole exchange: its deadline is the connection's, and
	// cancelling it (shutdown) ends a read or write that is blocked.
	if d, ok := ctx.Deadline(); ok {
		_ = cn.SetDeadline(d)
	}
	stop := context.AfterFunc(ctx, func() { _ = cn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	req := make([]byte, 0, 64+len(path)+len(c.host))
	req = append(req, "GET "...)
	req = append(req, path...)
	req = append(req, " HTTP/1.1\r\nHost: "...)
	req = append(req, c.host...)
	req = append(req, "\r\nUser-Agent: callback\r\nAccept: application/json\r\n\r\n"...)
	if _, err := cn.Write(req); err != nil {
		return 0, "", nil, false, false, ctxErr(ctx, err)
	}
	if _, err := cn.br.Peek(1); err != nil {
		return 0, "", nil, false, false, ctxErr(ctx, err)
	}
	resp, err := http.ReadResponse(cn.br, nil)
	if err != nil {
		return 0, "", nil, false, true, ctxErr(ctx, fmt.Errorf("reading answer: %w", err))
	}
	body, err = io.ReadAll(io.LimitReader(resp.Body, maxBody))
	if err != nil {
		return 0, "", nil, false, true, ctxErr(ctx, fmt.Errorf("reading answer: %w", err))
	}
	// Reusable only if the body ended within maxBody and the server did not say close.
	var probe [1]byte
	n, _ := resp.Body.Read(probe[:])
	keep = n == 0 && !resp.Close
	resp.Body.Close()
	if keep && cn.br.Buffered() > 0 {
		keep = false // bytes nobody asked for: the stream is out of step
	}
	return resp.StatusCode, resp.Header.Get("Retry-After"), body, keep, true, nil
}

// ctxErr prefers the context's error: a deadline shows up as an i/o timeout of the
// connection, a cancellation as an error on a connection whose deadline was moved.
func ctxErr(ctx context.Context, err error) error {
	if cerr := ctx.Err(); cerr != nil {
		return fmt.Errorf("%w (%v)", cerr, err)
	}
	// The connection's deadline is the context's: it may fire a moment before the
	// context's own timer marks it done.
	var ne net.Error
	if d, ok := ctx.Deadline(); ok && errors.As(err, &ne) && ne.Timeout() && !time.Now().Before(d) {
		return fmt.Errorf("%w (%v)", context.DeadlineExceeded, err)
	}
	return err
}

// conn takes an idle connection (unless fresh is asked for) or dials a new one.
func (c *Client) conn(ctx context.Context, fresh bool) (*conn, bool, error) {
	if !fresh {
		now := time.Now()
		c.mu.Lock()
		for len(c.idle) > 0 {
			cn := c.idle[len(c.idle)-1]
			c.idle = c.idle[:len(c.idle)-1]
			if now.Sub(cn.lastUsed) < idleTimeout {
				c.mu.Unlock()
				return cn, true, nil
			}
			cn.Close()
		}
		c.mu.Unlock()
	}
	raw, err := c.dialer.DialContext(ctx, "tcp", c.addr)
	if err != nil {
		return nil, false, err
	}
	if c.tls != nil {
		tc := tls.Client(raw, c.tls)
		if err := tc.HandshakeContext(ctx); err != nil {
			raw.Close()
			return nil, false, err
		}
		raw = tc
	}
	return &conn{Conn: raw, br: bufio.NewReaderSize(raw, 512)}, false, nil
}

// release puts a connection that ended its exchange cleanly back for reuse.
func (c *Client) release(cn *conn) {
	_ = cn.SetDeadline(time.Time{})
	cn.lastUsed = time.Now()
	c.mu.Lock()
	if len(c.idle) < c.maxIdle {
		c.idle = append(c.idle, cn)
		cn = nil
	}
	c.mu.Unlock()
	if cn != nil {
		cn.Close()
	}
}

// CloseIdle closes idle keep-alive connections (at shutdown).
func (c *Client) CloseIdle() {
	c.mu.Lock()
	idle := c.idle
	c.idle = nil
	c.mu.Unlock()
	for _, cn := range idle {
		cn.Close()
	}
}
