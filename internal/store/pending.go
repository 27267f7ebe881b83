package store

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/google/uuid"

	"github.com/objwatch/callback/internal/store/internal/dbsqlc"
)

// Claim is one object to look up, leased to the claimer until the lease runs out.
type Claim struct {
	ObjectID   int64
	ReceivedAt time.Time // the receipt this lookup answers for
	Attempts   int       // including this one
	Token      uuid.UUID // proves the lease when completing
}

// ClaimDue leases up to max due objects for lease, newest receipt first, none whose
// receipt is older than cutoff. All claims of one call share a token.
func (s *Store) ClaimDue(ctx context.Context, max int, lease time.Duration, cutoff time.Time) ([]Claim, error) {
	token := uuid.New()
	rows, err := s.q.ClaimDue(ctx, dbsqlc.ClaimDueParams{
		Cutoff:     cutoff,
		MaxRows:    int32(max),
		ClaimToken: token,
		LeaseMs:    lease.Milliseconds(),
	})
	if err != nil {
		return nil, fmt.Errorf("claiming due work: %w", err)
	}
	claims := make([]Claim, len(rows))
	for i, r := range rows {
		claims[i] = Claim{ObjectID: r.ObjectID, ReceivedAt: r.ReceivedAt, Attempts: int(r.Attempts), Token: token}
	}
	return claims, nil
}

// CountDue counts the rows due now whose receipt is at or after cutoff, up to max.
func (s *Store) CountDue(ctx context.Context, max int, cutoff time.Time) (int64, error) {
	n, err := s.q.CountDue(ctx, dbsqlc.CountDueParams{Cutoff: cutoff, MaxRows: int32(max)})
	if err != nil {
		return 0, fmt.Errorf("counting due work: %w", err)
	}
	return n, nil
}

// Outcome of one lookup, as CompleteLookups applies it.
type Outcome string

const (
	Online  Outcome = "online"  // the object service said online
	Offline Outcome = "offline" // the object service said offline
	Failed  Outcome = "failed"  // no usable answer: retry after RetryAfter
	Expired Outcome = "expired" // the receipt left the window before the lookup ran
)

// Result completes one Claim.
type Result struct {
	ObjectID   int64
	Token      uuid.UUID
	Outcome    Outcome
	RetryAfter time.Duration // for Failed
}

// Completed is what one CompleteLookups did.
type Completed struct {
	Owned    int64 // results whose lease still held; the rest were stale and dropped
	Upserted int64 // objects written online
	Removed  int64 // objects deleted as offline
	Finished int64 // pending rows done (kept as the memory of their receipt) or dropped (expired)
	Released int64 // pending rows to run again (newer receipt, or retry)
}

// CompleteParams is what CompleteLookups needs besides the results.
type CompleteParams struct {
	// Cutoff: an online result for a receipt older than this writes no row (the window's
	// edge, on the service's clock).
	Cutoff time.Time
	// Now and Recheck rank a row released for one more lookup, as MergeParams does.
	Now     time.Time
	Recheck time.Duration
}

// CompleteLookups applies results in one statement; see queries/pending.sql. The
// results are sorted by id (the lock order) and a result repeated for the same lease is
// applied once.
func (s *Store) CompleteLookups(ctx context.Context, results []Result, cp CompleteParams) (Completed, error) {
	rs := slices.Clone(results)
	slices.SortStableFunc(rs, func(a, b Result) int { return cmp.Compare(a.ObjectID, b.ObjectID) })
	rs = slices.CompactFunc(rs, func(a, b Result) bool { return a.ObjectID == b.ObjectID && a.Token == b.Token })

	p := dbsqlc.CompleteLookupsParams{
		ObjectIDs:    make([]int64, len(rs)),
		ClaimTokens:  make([]uuid.UUID, len(rs)),
		Outcomes:     make([]string, len(rs)),
		RetryAfterMs: make([]int64, len(rs)),
		Cutoff:       cp.Cutoff,
		Now:          cp.Now,
		RecheckMs:    cp.Recheck.Milliseconds(),
	}
	for i, r := range rs {
		p.ObjectIDs[i] = r.ObjectID
		p.ClaimTokens[i] = r.Token
		p.Outcomes[i] = string(r.Outcome)
		p.RetryAfterMs[i] = r.RetryAfter.Milliseconds()
	}
	row, err := s.q.CompleteLookups(ctx, p)
	if err != nil {
		return Completed{}, fmt.Errorf("completing %d lookups: %w", len(rs), err)
	}
	return Completed(row), nil
}

// RecheckHandicap is how far a re-check ranks below a first lookup of the same receipt
// (queries/inbox.sql MergePending): one window. Under a backlog every object not yet
// looked up whose receipt is still within the window goes first; a re-checked object's
// status is known already, and an online one's row is kept right by the refresh path.
func RecheckHandicap(window time.Duration) time.Duration { return window }
