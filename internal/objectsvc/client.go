// Package objectsvc is the client of the object service: GET {base}/objects/{id}
// answers {"id":N,"online":B}. Anything else is an error, retried by the caller.
package objectsvc

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"time"
)

// Client looks objects up. Safe for concurrent use.
type Client struct {
	base string
	http *http.Client
}

// New returns a client for baseURL (e.g. http://localhost:9010) whose connection pool
// is sized for concurrency requests in flight, so that every lookup reuses a
// keep-alive connection instead of dialing. Timeouts come from the caller's context.
func New(baseURL string, concurrency int) *Client {
	tr := &http.Transport{
		Proxy:                 nil,
		DialContext:           (&net.Dialer{Timeout: 2 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:          concurrency,
		MaxIdleConnsPerHost:   concurrency,
		MaxConnsPerHost:       concurrency,
		IdleConnTimeout:       90 * time.Second,
		ResponseHeaderTimeout: 0, // the context's deadline bounds the whole lookup
		DisableCompression:    true,
	}
	return &Client{base: baseURL, http: &http.Client{Transport: tr}}
}

type answer struct {
	ID     *int64 `json:"id"`
	Online *bool  `json:"online"`
}

// Lookup returns whether id is online.
func (c *Client) Lookup(ctx context.Context, id int64) (bool, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+"/objects/"+strconv.FormatInt(id, 10), nil)
	if err != nil {
		return false, fmt.Errorf("building request: %w", err)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return false, err
	}
	defer resp.Body.Close()
	// An answer is a few dozen bytes; a larger one is malformed anyway.
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if err != nil {
		return false, fmt.Errorf("reading answer: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return false, fmt.Errorf("object service answered %d: %s", resp.StatusCode, bytes.TrimSpace(body[:min(len(body), 200)]))
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

// CloseIdle closes idle keep-alive connections (at shutdown).
func (c *Client) CloseIdle() { c.http.CloseIdleConnections() }
