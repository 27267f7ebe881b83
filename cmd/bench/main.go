// Command bench measures the service beside the ceilings of the machine it runs on, in
// one run, and prints one markdown table (also written to bin/bench.md):
//
//  1. ceilings: the same HTTP server with a no-op durable write, in its own process,
//     under the tester's sender; and the cheapest durable write of one callback
//     straight through pgx (one row, one transaction, 16 connections);
//  2. intake: the real service binary (fresh database, spool in a temp dir) under 16
//     keep-alive senders (ids 0..99) and 64 (ids from each of -intake-spaces) posting 200
//     ids as fast as they can, throughput and p99 against the HTTP ceiling's, with the
//     oldest unmerged receipt at the end of each burst;
//  3. end to end, through the tester's object service at its real latency: coalescing
//     and freshness below lookup capacity (e2e), then lookups/s against Little's law with
//     a backlog, and the time to drain it (backlog);
//  4. scale: ~2,000 ids/s from each of -scale-spaces objects with default settings:
//     freshness, exactness at the end, lookups/s against the limit's Little bound;
//  5. flood: a 64-sender flood from 1,000,000 objects for 90 s beside normal traffic (a
//     callback of 1..200 ids every 200 ms from 2,000 other objects), then the normal
//     traffic alone for 40 s, sampled every second and drawn in bin/flood.svg: the share
//     of the normal traffic's objects the table shows, its rows, the database's growth;
//  6. limiter: the same traffic against an object service with a capacity
//     (bin/limiter.svg); soak (-soak): a long flood with the service's RSS sampled;
//  7. cost: peak RSS and goroutines of the service in each phase and with 1,000,000
//     pending ids, plus EXPLAIN of the claim query on that table.
//
// Every service runs with the binary's default settings (read from its -h; none is
// inherited from the shell) but for those a phase names. docs/benchmarks.md says what
// each figure means. Figures of the ceilings and intake are
// the median of -runs runs with min and max; the others are one run. Everything is on
// loopback; the databases are created on the server at DATABASE_URL and dropped
// afterwards.
//
//	go run ./cmd/bench [flags]
//	bench noop-server -addr 127.0.0.1:0     (internal: the HTTP ceiling's server)
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}
