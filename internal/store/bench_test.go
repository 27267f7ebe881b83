package store_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/objwatch/callback/internal/callback"
	"github.com/objwatch/callback/internal/pgtest"
	"github.com/objwatch/callback/internal/store"
)

// callbacks makes n callbacks of 200 ids drawn from 0..idMax.
func callbacks(rng *rand.Rand, n int, idMax int64) []callback.Callback {
	cbs := make([]callback.Callback, n)
	for i := range cbs {
		ids := make([]int64, 200)
		for j := range ids {
			ids[j] = rng.Int64N(idMax + 1)
		}
		cbs[i] = callback.New(time.Now(), ids)
	}
	return cbs
}

// BenchmarkInsertCallbacks is one group commit of batch callbacks (one row, one
// transaction, one WAL flush), from one connection: the write on the reply path.
func BenchmarkInsertCallbacks(b *testing.B) {
	pool, _ := pgtest.NewPool(b)
	s := store.New(pool)
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(1, 2))
	for _, batch := range []int{1, 10, 100} {
		b.Run(fmt.Sprintf("batch=%d", batch), func(b *testing.B) {
			cbs := callbacks(rng, batch, 99)
			b.ReportAllocs()
			for b.Loop() {
				for i := range cbs {
					cbs[i] = callback.New(cbs[i].ReceivedAt, cbs[i].ObjectIDs) // fresh ids: the key is unique
				}
				if err := s.InsertCallbacks(ctx, cbs); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N*batch)/b.Elapsed().Seconds(), "callbacks/s")
		})
	}
}
