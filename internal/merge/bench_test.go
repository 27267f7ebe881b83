package merge

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/objwatch/callback/internal/pgtest"
	"github.com/objwatch/callback/internal/store"
	"github.com/objwatch/callback/internal/testhelper"
)

// BenchmarkPass is one merge pass of inbox rows of 200 ids into pending. With ids
// from 0..99 the pending rows and the online objects rows already exist, as in steady
// state: each pass updates them (a newer receipt), however many callbacks it merges,
// so passes of 10, 100 and 1,000 callbacks show the fixed cost of a pass. With ids from
// 0..999,999 almost every id is new: 200,000 pending rows per pass of 1,000 (pending is
// emptied between passes). Only the merge is timed.
func BenchmarkPass(b *testing.B) {
	pool, _ := pgtest.NewPool(b)
	s := store.New(pool)
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(3, 4))
	if _, err := pool.Exec(ctx, "INSERT INTO objects (id, last_seen) SELECT g, now() - interval '1 hour' FROM generate_series(0, 98, 2) g"); err != nil {
		b.Fatal(err)
	}
	for _, c := range []struct {
		perPass int
		idMax   int64
		dedup   bool // each callback's ids sorted and distinct, as intake could store them
	}{{10, 99, false}, {100, 99, false}, {1000, 99, false}, {1000, 99, true}, {1000, 999_999, false}} {
		name := fmt.Sprintf("callbacks=%d/ids=0..%d", c.perPass, c.idMax)
		if c.dedup {
			name += "/distinct"
		}
		b.Run(name, func(b *testing.B) {
			var ids int64
			for b.Loop() {
				b.StopTimer()
				if c.idMax > 99 {
					if _, err := pool.Exec(ctx, "TRUNCATE pending"); err != nil {
						b.Fatal(err)
					}
				}
				cbs := testhelper.Callbacks(rng, c.perPass, c.idMax)
				if c.dedup {
					for i := range cbs {
						slices.Sort(cbs[i].ObjectIDs)
						cbs[i].ObjectIDs = slices.Compact(cbs[i].ObjectIDs)
					}
				}
				for chunk := range slices.Chunk(cbs, 20) { // a group commit's worth per batch
					if err := s.InsertCallbacks(ctx, chunk); err != nil {
						b.Fatal(err)
					}
				}
				b.StartTimer()
				merged, err := mergeInbox(ctx, s, params{MaxBatches: 1000, MaxIDs: 1 << 20})
				if err != nil {
					b.Fatal(err)
				}
				if merged.Callbacks != int64(c.perPass) {
					b.Fatalf("merged %d callbacks, want %d", merged.Callbacks, c.perPass)
				}
				ids += merged.IDs
			}
			b.ReportMetric(float64(b.N*c.perPass)/b.Elapsed().Seconds(), "callbacks/s")
			b.ReportMetric(float64(b.N*c.perPass*200)/b.Elapsed().Seconds(), "ids/s")
			b.ReportMetric(float64(ids)/float64(b.N), "distinct-ids/pass")
		})
	}
}
