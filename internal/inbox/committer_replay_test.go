package inbox_test

import (
	"context"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/objwatch/callback/internal/callback"
	"github.com/objwatch/callback/internal/inbox"
	"github.com/objwatch/callback/internal/store"
	"github.com/objwatch/callback/internal/testhelper"
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
	f := setup(t)
	ctx := context.Background()
	c := inbox.NewCommitter(inbox.DefaultConfig(), lostReply{f.store}, f.spool, testhelper.DiscardLogger(), f.m, nil)
	cctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- c.Run(cctx) }()
	t.Cleanup(func() { stop(); <-done })

	cb := callback.New(time.Now().UTC().Truncate(time.Microsecond), []int64{2, 4})
	require.NoError(t, c.Submit(ctx, cb), "spooled after the lost reply")
	require.Equal(t, []callback.Callback{cb}, f.inbox(t), "committed")
	require.Equal(t, 1, f.segments(t), "and spooled")

	// The inbox copy is merged and its lookups are done before the spool is replayed.
	m, err := f.store.MergeInbox(ctx, 100, 1<<20)
	require.NoError(t, err)
	require.Equal(t, int64(2), m.Ids)
	claims, err := f.store.ClaimDue(ctx, 10, time.Minute, time.Now().Add(-time.Hour))
	require.NoError(t, err)
	require.Len(t, claims, 2)
	var results []store.Result
	for _, cl := range claims {
		results = append(results, store.Result{ObjectID: cl.ObjectID, Token: cl.Token, Outcome: store.Offline})
	}
	_, err = f.store.CompleteLookups(ctx, results, time.Now().Add(-time.Hour))
	require.NoError(t, err)
	require.Zero(t, pending(t, f))

	for range 2 { // and a second pass finds nothing more to do
		require.NoError(t, f.replayer(f.store, nil).ReplayOnce(ctx))
		require.Zero(t, f.segments(t))
		m, err = f.store.MergeInbox(ctx, 100, 1<<20)
		require.NoError(t, err)
		require.Zero(t, m.Ids, "the replayed copy is not merged again")
		require.Zero(t, pending(t, f), "so nothing is looked up again")
	}
}

func pending(t *testing.T, f *fixture) int {
	t.Helper()
	var n int
	require.NoError(t, f.pool.QueryRow(context.Background(), "SELECT count(*) FROM pending").Scan(&n))
	return n
}
