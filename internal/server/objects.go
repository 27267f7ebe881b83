package server

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/objwatch/callback/internal/store"
)

// ObjectReader is what the read API needs of storage.
type ObjectReader interface {
	GetObject(ctx context.Context, id int64, cutoff time.Time) (store.Object, error)
	ListObjectsByID(ctx context.Context, afterID int64, limit int, cutoff time.Time) ([]store.Object, error)
	ListObjectsNewest(ctx context.Context, beforeSeen time.Time, beforeID int64, limit int, cutoff time.Time) ([]store.Object, error)
}

// Objects serves the read API over the objects table. It applies the same window as
// expiry, so a row that expiry has not reached yet in this second is not served.
type Objects struct {
	db     ObjectReader
	window time.Duration
	now    func() time.Time
}

// NewObjects builds the read API.
func NewObjects(db ObjectReader, window time.Duration) *Objects {
	return &Objects{db: db, window: window, now: time.Now}
}

const (
	defaultLimit = 100
	maxLimit     = 1000
)

// Get serves GET /objects/:id.
func (o *Objects) Get(c *gin.Context) {
	id, err := strconv.ParseInt(c.Param("id"), 10, 64)
	if err != nil || id < 0 {
		c.JSON(http.StatusBadRequest, gin.H{"error": "id must be an integer from 0 to 9223372036854775807"})
		return
	}
	obj, err := o.db.GetObject(c.Request.Context(), id, o.now().Add(-o.window))
	switch {
	case errors.Is(err, store.ErrNotFound):
		c.JSON(http.StatusNotFound, gin.H{"error": "object " + c.Param("id") + " is not online"})
	case err != nil:
		c.JSON(http.StatusServiceUnavailable, gin.H{"error": "database unavailable"})
	default:
		c.JSON(http.StatusOK, obj)
	}
}

// List serves GET /objects?order=id|newest&limit=N&after=CURSOR. The reply's "next"
// is the cursor of the following page, absent on the last one.
func (o *Objects) List(c *gin.Context) {
	limit := defaultLimit
	if v := c.Query("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > maxLimit {
			c.JSON(http.StatusBadRequest, gin.H{"error": "limit must be an integer from 1 to " + strconv.Itoa(maxLimit)})
			return
		}
		limit = n
	}
	cutoff := o.now().Add(-o.window)
	after := c.Query("after")

	var (
		rows []store.Object
		err  error
		next func(store.Object) string
	)
	switch order := c.DefaultQuery("order", "id"); order {
	case "id":
		afterID := int64(-1)
		if after != "" {
			if afterID, err = strconv.ParseInt(after, 10, 64); err != nil {
				c.JSON(http.StatusBadRequest, gin.H{"error": "after must be the next cursor of a previous page"})
				return
			}
		}
		rows, err = o.db.ListObjectsByID(c.Request.Context(), afterID, limit, cutoff)
		next = func(last store.Object) string { return strconv.FormatInt(last.ID, 10) }
	case "newest":
		// Cursor: "<last_seen unix nanos>.<id>" of the previous page's last row.
		beforeSeen, beforeID := time.Unix(1<<40, 0), int64(-1) // far future: first page
		if after != "" {
			ns, id, ok := strings.Cut(after, ".")
			n, err1 := strconv.ParseInt(ns, 10, 64)
			i, err2 := strconv.ParseInt(id, 10, 64)
			if !ok || err1 != nil || err2 != nil {
				c.JSON(http.StatusBadRequest, gin.H{"error": "after must be the next cursor of a previous page"})
				return
			}
			beforeSeen, beforeID = time.Unix(0, n), i
		}
		rows, err = o.db.ListObjectsNewest(c.Request.Context(), beforeSeen, beforeID, limit, cutoff)
		next = func(last store.Object) string {
			return strconv.FormatInt(last.LastSeen.UnixNano(), 10) + "." + strconv.FormatInt(last.ID, 10)
		}
	default:
		c.JSON(http.StatusBadRequest, gin.H{"error": "order must be id or newest, not " + order})
		return
	}
	if err != nil {
		c.JSON(http.StatusServiceUnavailable, gin.H{"error": "database unavailable"})
		return
	}
	reply := gin.H{"objects": rows}
	if len(rows) == limit {
		reply["next"] = next(rows[len(rows)-1])
	}
	c.JSON(http.StatusOK, reply)
}
