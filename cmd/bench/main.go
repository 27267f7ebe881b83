// Command bench measures the service beside the ceilings of the machine it runs on, in
// one run, and prints one markdown table (also written to bin/bench.md):
//
//  1. ceilings: the same HTTP server with a no-op durable write, in its own process,
//     under the tester's sender; and the cheapest durable write of one callback
//     straight through pgx (one row, one transaction, 16 connections);
//  2. intake: the real service binary (fresh database, spool in a temp dir) under 16 and
//     64 keep-alive senders posting 200 ids as fast as they can;
//  3. end to end, through the tester's object service at its real latency: coalescing
//     and freshness below lookup capacity, then lookups/s against Little's law with a
//     backlog, and the time to drain it;
//  4. cost: peak RSS and goroutines of the service in each phase and with 1,000,000
//     pending ids, plus EXPLAIN of the claim query on that table.
//
// Every figure is the median of -runs runs with min and max. Everything is on loopback;
// the databases are created on the server at DATABASE_URL and dropped afterwards.
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
