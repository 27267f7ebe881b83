package inbox_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/objwatch/callback/internal/callback"
	"github.com/objwatch/callback/internal/component"
	"github.com/objwatch/callback/internal/inbox"
	"github.com/objwatch/callback/internal/pgtest"
	"github.com/objwatch/callback/internal/store"
)

// countingInserter counts the writes the committer makes, to report the batch size.
type countingInserter struct {
	inner         inbox.Inserter
	writes, wrote atomic.Int64
}

func (c *countingInserter) InsertBatch(ctx context.Context, batchID uuid.UUID, cbs []callback.Callback) error {
	c.writes.Add(1)
	c.wrote.Add(int64(len(cbs)))
	return c.inner.InsertBatch(ctx, batchID, cbs)
}

func (c *countingInserter) Ping(ctx context.Context) error { return c.inner.Ping(ctx) }

// BenchmarkCommitter is the group commit against real Postgres (fsync as the server
// has it): many goroutines, each submitting callbacks of 200 ids one after another
// like a handler per keep-alive connection. It reports callbacks/s and the mean number
// of callbacks per commit.
func BenchmarkCommitter(b *testing.B) {
	pool, _ := pgtest.NewPool(b)
	db := store.New(pool)
	for _, submitters := range []int{16, 64} {
		for _, flushers := range []int{inbox.FlushersDefault} {
			b.Run(fmt.Sprintf("submitters=%d/flushers=%d", submitters, flushers), func(b *testing.B) {
				ins := &countingInserter{inner: db}
				cfg := inbox.CommitterConfig{
					Flushers:      flushers,
					CommitTimeout: 5 * time.Second, // a slow commit here is a slow figure, not a spool write
				}
				c, err := inbox.NewCommitter(cfg, ins, nil, component.Deps{Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
				if err != nil {
					b.Fatal(err)
				}
				ctx, stop := context.WithCancel(context.Background())
				var running sync.WaitGroup
				running.Go(func() { _ = c.Run(ctx) })
				defer func() { stop(); running.Wait() }()

				ids := make([]int64, 200)
				for i := range ids {
					ids[i] = int64(i % 100)
				}
				var next atomic.Int64
				var failed atomic.Int64
				b.ResetTimer()
				var wg sync.WaitGroup
				for range submitters {
					wg.Go(func() {
						for next.Add(1) <= int64(b.N) {
							if err := c.Submit(ctx, callback.New(time.Now(), ids)); err != nil {
								failed.Add(1)
							}
						}
					})
				}
				wg.Wait()
				b.StopTimer()
				if n := failed.Load(); n > 0 {
					b.Fatalf("%d of %d submits failed", n, b.N)
				}
				b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "callbacks/s")
				if w := ins.writes.Load(); w > 0 {
					b.ReportMetric(float64(ins.wrote.Load())/float64(w), "callbacks/commit")
				}
			})
		}
	}
}
