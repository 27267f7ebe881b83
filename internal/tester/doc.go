// Package tester plays the two parties around the callback service, in process, so that
// cmd/tester, the end-to-end tests and the benchmark all drive the same code:
//
//   - ObjectService answers GET /objects/{id} like the original tester's object service
//     (slow, deterministic status), plus injected faults and an optional capacity
//     (503 with Retry-After beyond it), and counts what it served and rejected.
//   - Sender posts callbacks like the original sender (one every 5 s, 1 s timeout, no
//     retries), or as fast as many keep-alive senders can, and counts the replies.
//   - Diff and Verify compare the service's objects table with what was sent and served.
//
// Defaults reproduce the original task's tester; none of its defects are kept (it
// shared one unlocked random generator between goroutines, caught os.Kill, ignored
// server errors and had no timeouts): randomness is seeded and per goroutine, servers
// report start errors, have timeouts and shut down gracefully.
package tester
