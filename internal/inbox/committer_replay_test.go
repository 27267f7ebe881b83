package inbox_test

import (
	"context"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/objwatch/callback/internal/callback"
	"github.com/objwatch/callback/internal/component"
	"github.com/objwatch/callback/internal/inbox"
	"github.com/objwatch/callback/internal/store"
)

// lostReply is the store as the committer sees it when COMMIT's reply is lost: the
// batch commits, and the committer hears an error (here a timeout), so it spools the
// batch as well.
type lostReply struct{ s *store.Store }

func (l lostReply) InsertBatch(ctx context.Context, batchID uuid.UUID, cbs []callback.Callback) error {
	if err := l.s.InsertBatch(ctx, batchID, cbs); err != nil {
		return err
	}
	return context.DeadlineExceeded
}

func (l lostReply) Ping(ctx context.Context) error { return l.s.Ping(ctx) }

// A batch both committed and spooled is merged once, however late its
// spooled copy is replayed.
func TestCommitter_timedOutCommitThatCommittedIsMergedOnce(t *testing.T) {
	t.Parallel()
	r, b := setup(t)
	ctx := context.Background()
	c, err := inbox.NewCommitter(inbox.CommitterConfig{}, lostReply{b.store}, b.spool, component.Deps{Metrics: b.metrics})
	require.NoError(t, err)
	cctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- c.Run(cctx) }()
	t.Cleanup(func() { stop(); <-done })

	cb := callback.New(time.Now().UTC().Truncate(time.Microsecond), []int64{2, 4})
	require.NoError(t, c.Submit(ctx, cb), "spooled after the lost reply")
	require.Equal(t, []callback.Callback{cb}, b.inbox(t), "committed")
	require.Equal(t, 1, b.segments(t), "and spooled")

	// The inbox copy is merged and its lookups are done before the spool is replayed.
	require.Equal(t, int64(2), b.mergeInbox(t).IDs)
	claims, err := b.store.ClaimDue(ctx, 10, time.Minute, time.Now().Add(-time.Hour))
	require.NoError(t, err)
	require.Len(t, claims, 2)
	var results []store.Result
	for _, cl := range claims {
		results = append(results, store.Result{ObjectID: cl.ObjectID, Token: cl.Token, Outcome: store.Offline})
	}
	_, err = b.store.CompleteLookups(ctx, results, store.CompleteParams{Cutoff: time.Now().Add(-time.Hour), Now: time.Now()})
	require.NoError(t, err)
	require.Zero(t, pending(t, b))

	for range 2 { // and a second pass finds nothing more to do
		require.NoError(t, r.ReplayOnce(ctx))
		require.Zero(t, b.segments(t))
		require.Zero(t, b.mergeInbox(t).IDs, "the replayed copy is not merged again")
		require.Zero(t, pending(t, b), "so nothing is looked up again")
	}
}

func pending(t *testing.T, b *testBundle) int {
	t.Helper()
	var n int
	require.NoError(t, b.pool.QueryRow(context.Background(), "SELECT count(*) FROM pending WHERE due_at > '-infinity'").Scan(&n))
	return n
}
