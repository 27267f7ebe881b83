// Package faulttest breaks the real service on purpose and checks that it keeps its
// promises: kill -9 under load, Postgres cut, blackholed and restarted, an
// unwritable spool, a failing or dead object service, two replicas on one database,
// SIGTERM, and bad input. Every test drives the service the way production does (the
// binary built from cmd/callback as a subprocess, or service.Run in process), with the
// tester's sender and object service, and judges the objects table with tester.Diff
// against what the sender was told was accepted.
//
// The package holds only test code, apart from Proxy: a TCP proxy that can refuse,
// blackhole and restore the connections to Postgres. Each test gets the service's
// surroundings from setup (harness_test.go) and starts the service with startProc or
// startInproc.
package faulttest
