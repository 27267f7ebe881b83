package store_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/objwatch/callback/internal/callback"
	"github.com/objwatch/callback/internal/pgtest"
	"github.com/objwatch/callback/internal/store"
	"github.com/objwatch/callback/internal/testhelper"
)

// BenchmarkInsertCallbacks is one group commit of batch callbacks (one row, one
// transaction, one WAL flush), from one connection: the write on the reply path.
func BenchmarkInsertCallbacks(b *testing.B) {
	pool, _ := pgtest.NewPool(b)
	s := store.New(pool)
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(1, 2))
	for _, batch := range []int{1, 10, 100} {
		b.Run(fmt.Sprintf("batch=%d", batch), func(b *testing.B) {
			cbs := testhelper.Callbacks(rng, batch, 99)
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
