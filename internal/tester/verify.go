package tester

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/objwatch/callback/internal/backoff"
)

const (
	// LastSeenTolerance is how far last_seen may be from the send time we know: the
	// service stamps the receipt time, which lies between our send start and its reply
	// (within the 1 s timeout), and the contract allows 1 s.
	LastSeenTolerance = time.Second
	// ExpiryGrace is how long after the window a row may still be there: the service
	// deletes every second, and the contract's checker allows EXPIRE_AFTER + 2 s.
	ExpiryGrace = 2 * time.Second
)

// Expectation is what the objects table should say about one id that was sent.
type Expectation struct {
	SendRecord
	Online bool // the status the object service answers for it
}

// Expect joins what the sender recorded with the object service's rule.
func Expect(records map[int64]SendRecord, online OnlineRule) map[int64]Expectation {
	out := make(map[int64]Expectation, len(records))
	for id, r := range records {
		out[id] = Expectation{SendRecord: r, Online: online(id)}
	}
	return out
}

// Row is one row of the objects table.
type Row struct {
	ID       int64
	LastSeen time.Time
}

// ProblemKind names a way the table can be wrong.
type ProblemKind string

const (
	Missing ProblemKind = "missing"   // online, accepted inside the window, no row
	Offline ProblemKind = "offline"   // a row for an id the object service says is offline
	Unknown ProblemKind = "unknown"   // a row for an id never sent
	Stale   ProblemKind = "last_seen" // last_seen does not match the send times
	Expired ProblemKind = "expired"   // a row older than the window (plus grace)
)

// Problem is one difference between the table and what was sent and served.
type Problem struct {
	Kind     ProblemKind
	ID       int64
	LastSeen time.Time // the row's, if there is one
	Want     SendRecord
	Detail   string
}

func (p Problem) String() string {
	return fmt.Sprintf("%s: id %d: %s", p.Kind, p.ID, p.Detail)
}

// Diff compares the table's rows with the expectations at time now, for a service that
// expires rows older than window. It returns the problems sorted by id (nil if none):
//   - every online id accepted less than window - LastSeenTolerance ago must have a row
//     whose last_seen is between its Accepted and Maybe times, give or take the tolerance;
//   - no row for an offline id, nor for an id never sent;
//   - no row older than window + ExpiryGrace.
//
// Ids accepted near the edge of the window may be present or not.
func Diff(expected map[int64]Expectation, rows []Row, now time.Time, window time.Duration) []Problem {
	var problems []Problem
	present := make(map[int64]bool, len(rows))
	for _, row := range rows {
		present[row.ID] = true
		e, sent := expected[row.ID]
		age := now.Sub(row.LastSeen)
		p := Problem{ID: row.ID, LastSeen: row.LastSeen, Want: e.SendRecord}
		switch {
		case !sent || e.Maybe.IsZero():
			p.Kind, p.Detail = Unknown, fmt.Sprintf("row (last_seen %s) for an id never sent", stamp(row.LastSeen))
		case !e.Online:
			p.Kind, p.Detail = Offline, fmt.Sprintf("row (last_seen %s) for an offline object", stamp(row.LastSeen))
		case !e.Accepted.IsZero() && row.LastSeen.Before(e.Accepted.Add(-LastSeenTolerance)):
			p.Kind, p.Detail = Stale, fmt.Sprintf("last_seen %s is older than the latest accepted callback (sent %s)",
				stamp(row.LastSeen), stamp(e.Accepted))
		case row.LastSeen.After(e.Maybe.Add(LastSeenTolerance)):
			p.Kind, p.Detail = Stale, fmt.Sprintf("last_seen %s is later than any callback naming it (latest sent %s)",
				stamp(row.LastSeen), stamp(e.Maybe))
		case age > window+ExpiryGrace:
			p.Kind, p.Detail = Expired, fmt.Sprintf("last_seen %s is %s old, past the %s window",
				stamp(row.LastSeen), age.Round(time.Millisecond), window)
		default:
			continue
		}
		problems = append(problems, p)
	}
	for id, e := range expected {
		if present[id] || !e.Online || e.Accepted.IsZero() {
			continue
		}
		if age := now.Sub(e.Accepted); age < window-LastSeenTolerance {
			problems = append(problems, Problem{Kind: Missing, ID: id, Want: e.SendRecord,
				Detail: fmt.Sprintf("online, accepted %s ago (sent %s), no row", age.Round(time.Millisecond), stamp(e.Accepted))})
		}
	}
	slices.SortFunc(problems, func(a, b Problem) int {
		return cmp.Or(cmp.Compare(a.ID, b.ID), cmp.Compare(a.Kind, b.Kind))
	})
	return problems
}

// Required counts the ids that Diff requires to be present at now.
func Required(expected map[int64]Expectation, now time.Time, window time.Duration) int {
	n := 0
	for _, e := range expected {
		if e.Online && !e.Accepted.IsZero() && now.Sub(e.Accepted) < window-LastSeenTolerance {
			n++
		}
	}
	return n
}

func stamp(t time.Time) string { return t.Format("15:04:05.000") }

// Querier is what ReadObjects needs: *pgx.Conn, *pgxpool.Pool and pgx.Tx all have it.
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// ReadObjects reads the whole objects table.
func ReadObjects(ctx context.Context, db Querier) ([]Row, error) {
	// A plain SQL string, not the service's sqlc queries, on purpose: the verifier must
	// not share code with what it checks. It reads only the contract's two columns.
	rows, err := db.Query(ctx, "SELECT id, last_seen FROM objects")
	if err != nil {
		return nil, fmt.Errorf("reading objects: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Row, error) {
		var row Row
		err := r.Scan(&row.ID, &row.LastSeen)
		return row, err
	})
	if err != nil {
		return nil, fmt.Errorf("reading objects: %w", err)
	}
	return out, nil
}

// VerifyConfig shapes Verify.
type VerifyConfig struct {
	// Window is the service's EXPIRE_AFTER (default 30 s).
	Window time.Duration
	// CatchUp is how long to wait, after sending stopped, for the table to match
	// (default: the slowest lookup, 4.3 s, plus room for retries: 15 s).
	CatchUp time.Duration
	// Poll is the pause between reads of the table (default 250 ms).
	Poll time.Duration
	// Expiry, when set, then waits until the window (plus grace) has passed since the last
	// callback that may have been made durable and checks that every row is gone.
	Expiry bool
	// Log, if set, gets one line per phase.
	Log io.Writer
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// Verify checks the table against expected: first it polls until Diff finds nothing (or
// CatchUp passes), then, with Expiry, it waits out the window and checks again. It returns
// the problems of the phase that failed, nil if the table was right; an error only when
// ctx ended or the table could not be read at all.
func Verify(ctx context.Context, db Querier, cfg VerifyConfig, expected map[int64]Expectation) ([]Problem, error) {
	if cfg.Window <= 0 {
		cfg.Window = 30 * time.Second
	}
	if cfg.CatchUp <= 0 {
		cfg.CatchUp = 15 * time.Second
	}
	if cfg.Poll <= 0 {
		cfg.Poll = 250 * time.Millisecond
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	logf := func(format string, args ...any) {
		if cfg.Log != nil {
			fmt.Fprintf(cfg.Log, "verify: "+format+"\n", args...)
		}
	}
	check := func() ([]Problem, int, int, error) {
		now := cfg.Now() // before the read: rows can only have aged since
		rows, err := ReadObjects(ctx, db)
		if err != nil {
			return nil, 0, 0, err
		}
		return Diff(expected, rows, now, cfg.Window), Required(expected, now, cfg.Window), len(rows), nil
	}

	start := cfg.Now()
	deadline := start.Add(cfg.CatchUp)
	for {
		problems, required, n, err := check()
		if err != nil {
			return nil, err
		}
		if len(problems) == 0 {
			logf("table matches after %s: %d rows, %d required present", cfg.Now().Sub(start).Round(time.Millisecond), n, required)
			if required == 0 && onlineAccepted(expected) > 0 {
				logf("warning: every accepted online id had left the window: presence was not checked (window too short, or catch-up too slow)")
			}
			break
		}
		if !cfg.Now().Before(deadline) {
			logf("table still differs after %s: %d problems", cfg.CatchUp, len(problems))
			return problems, nil
		}
		if !backoff.Sleep(ctx, cfg.Poll) {
			return nil, ctx.Err()
		}
	}
	if !cfg.Expiry {
		return nil, nil
	}

	var last time.Time
	for _, e := range expected {
		if e.Maybe.After(last) {
			last = e.Maybe
		}
	}
	// A little past the edge, so that any row left is unambiguously late.
	gone := last.Add(LastSeenTolerance + cfg.Window + ExpiryGrace + 100*time.Millisecond)
	logf("waiting until %s for every row to expire", stamp(gone))
	if !backoff.Sleep(ctx, gone.Sub(cfg.Now())) {
		return nil, ctx.Err()
	}
	problems, _, n, err := check()
	if err != nil {
		return nil, err
	}
	if len(problems) > 0 {
		logf("%d rows left after the window, %d problems", n, len(problems))
		return problems, nil
	}
	logf("every row expired")
	return nil, nil
}

func onlineAccepted(expected map[int64]Expectation) int {
	n := 0
	for _, e := range expected {
		if e.Online && !e.Accepted.IsZero() {
			n++
		}
	}
	return n
}
