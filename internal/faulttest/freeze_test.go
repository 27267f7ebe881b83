package faulttest

import (
	"context"
	"fmt"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/objwatch/callback/internal/tester"
	"github.com/objwatch/callback/internal/testhelper"
	"github.com/objwatch/callback/internal/testnet"
)

// TestFrozenReplica freezes a replica with SIGSTOP while it holds claimed lookups, for
// longer than its lease, and lets another replica carry on under load. The other
// replica takes the frozen one's claims over once their lease has run out; when the
// frozen one is resumed with SIGCONT, the results it had in hand are discarded as
// stale (callback_lookup_results_stale_total), nothing is lost, and the table is exact.
func TestFrozenReplica(t *testing.T) {
	t.Parallel()
	cfg := fastObjects(11)
	// Slow enough that the replica has many lookups in flight when it is frozen.
	cfg.LatencyMin, cfg.LatencyMax = 300*time.Millisecond, 800*time.Millisecond
	tb := setup(t, setupOpts{objects: cfg})
	ea := tb.env.with("EXPIRE_AFTER", "20s") // FETCH_TIMEOUT=1s, LEASE=3s
	// B has room for more lookups than its own load needs: lookups go newest receipt
	// first, so a saturated replica would leave A's claims (the oldest receipts) to
	// leave the window rather than take them over.
	eb := ea.with("LISTEN_ADDR", testnet.FreeAddr(t), "FETCH_CONCURRENCY", "256") // same database, same spool
	lease := ea.duration(t, "LEASE")

	a := startProc(t, ea)
	la := sendLoad(t, a.base, 11, 1000, 150)
	sleep(2 * time.Second)
	// A's sender stops before the freeze: a request that A would read only after
	// SIGCONT gets a receipt time long after its sender gave up, which is about
	// something else than leases.
	la.Stop()
	if err := a.Signal(syscall.SIGSTOP); err != nil {
		t.Fatalf("SIGSTOP: %v", err)
	}
	frozen := time.Now()
	resumed := false
	resume := func() {
		if !resumed {
			resumed = true
			_ = a.Signal(syscall.SIGCONT)
		}
	}
	t.Cleanup(resume) // so that the cleanup's SIGKILL is not the only way out

	// B is not running yet, so every claim now is A's.
	tokens := claimTokens(t, tb.pool)
	t.Logf("replica A frozen holding %d claims", len(tokens))
	if len(tokens) == 0 {
		t.Fatal("replica A held no claims when frozen: nothing to take over")
	}

	b := startProc(t, eb)
	lb := sendLoad(t, b.base, 12, 1000, 30)

	// Only B runs, so only B can take A's claims: by claiming them again after the
	// lease, and completing them. A row that a frozen transaction of A holds locked
	// cannot be taken by anyone until A runs again; such rows are left out (counted
	// by SKIP LOCKED), but at least one claim must have been taken.
	var left, all int
	testhelper.Eventually(t, lease+15*time.Second, "replica B takes over the claims of the frozen replica", func() bool {
		left, all = heldClaims(t, tb.pool, tokens)
		return left == 0 && all < len(tokens)
	}, func() string { return fmt.Sprintf("A's tokens still on %d unlocked rows, %d rows in all", left, all) })
	t.Logf("B took over A's claims %v after the freeze; %d of them locked by A's frozen session", time.Since(frozen).Round(time.Millisecond), all)
	if resumedAfter := frozen.Add(2 * lease); time.Now().Before(resumedAfter) {
		sleep(time.Until(resumedAfter)) // frozen for twice its lease at least
	}
	resume()

	// The lookups A had in flight end (answered or timed out) and their results are
	// written under tokens that B has replaced: every one is discarded.
	testhelper.Eventually(t, 15*time.Second, "the resumed replica discards its stale results", func() bool {
		return metric(t, a.base, "callback_lookup_results_stale_total") > 0
	})
	sleep(time.Second)
	lb.Stop()
	t.Logf("sender A: %+v", la.s.Stats())
	t.Logf("sender B: %+v", lb.s.Stats())
	t.Logf("stale results discarded by A: %v", metric(t, a.base, "callback_lookup_results_stale_total"))

	records := mergeRecords(la.s.Records(), lb.s.Records())
	verifyTable(t, tb.pool, records, tester.OnlineParity, ea.duration(t, "EXPIRE_AFTER"), 20*time.Second, lateSlack(la.s.Stats(), lb.s.Stats()))
	testhelper.Eventually(t, 15*time.Second, "inbox and pending drain", func() bool { return queued(t, tb.pool) == 0 })
}

// claimTokens lists the claim tokens in pending (as text).
func claimTokens(t *testing.T, pool *pgxpool.Pool) []string {
	t.Helper()
	return column[string](t, pool, "SELECT claim_token::text FROM pending WHERE claim_token IS NOT NULL")
}

// heldClaims counts the pending rows that still hold one of tokens: left among the
// rows no transaction has locked, all among every row.
func heldClaims(t *testing.T, pool *pgxpool.Pool, tokens []string) (left, all int) {
	t.Helper()
	err := pool.QueryRow(context.Background(), `
		SELECT (SELECT count(*) FROM (
		            SELECT 1 FROM pending WHERE claim_token::text = ANY($1::text[]) FOR UPDATE SKIP LOCKED
		        ) unlocked),
		       (SELECT count(*) FROM pending WHERE claim_token::text = ANY($1::text[]))`, tokens).Scan(&left, &all)
	if err != nil {
		t.Fatalf("counting claims: %v", err)
	}
	return left, all
}
