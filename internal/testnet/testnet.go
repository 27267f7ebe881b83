// Package testnet hands out addresses for servers that bind them later: a service
// started through service.Run or as a subprocess by a test, or by cmd/bench, and the
// throwaway PostgreSQL clusters of the fault tests.
//
// A port taken with Listen(":0") and closed again can be handed by the kernel to the
// next Listen(":0"), of another test, or to an outgoing connection, before its owner
// binds it: one test's sender then posts into another test's service (seen in CI:
// TestSIGTERM's callbacks landed in TestPostgresRestart's table). So ports come from
// below the kernel's ephemeral range (32768-60999 by default), and each is handed out
// once per process.
//
// A server that binds its own listener, and keeps it, needs none of this: it listens
// on 127.0.0.1:0 and reports the address it got.
package testnet

import (
	"errors"
	"math/rand/v2"
	"net"
	"strconv"
	"sync/atomic"
	"testing"
)

const (
	portMin = 20000
	portMax = 32000
)

// cursor starts at a random place, so that test binaries running side by side or one
// after another rarely meet on a port (and never on one still in TIME_WAIT).
var cursor = func() *atomic.Int64 {
	var c atomic.Int64
	c.Store(int64(portMin + rand.IntN(portMax-portMin)))
	return &c
}()

// errNoPort: every port of the range is taken or was handed out already.
var errNoPort = errors.New("no free port for the server under test")

// Next returns 127.0.0.1:port, free right now and not handed out before by this
// process. FreeAddr is the same for a test.
func Next() (string, error) {
	for range portMax - portMin {
		port := portMin + int(cursor.Add(1)-portMin)%(portMax-portMin)
		addr := "127.0.0.1:" + strconv.Itoa(port)
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			continue
		}
		ln.Close()
		return addr, nil
	}
	return "", errNoPort
}

// FreeAddr returns 127.0.0.1:port, free right now and not handed out before by this
// process; the test fails if there is none.
func FreeAddr(t testing.TB) string {
	t.Helper()
	addr, err := Next()
	if err != nil {
		t.Fatal(err)
	}
	return addr
}

// FreePort is FreeAddr's port, for a server that is given a port alone (a PostgreSQL
// cluster listening on 127.0.0.1).
func FreePort(t testing.TB) int {
	t.Helper()
	_, port, _ := net.SplitHostPort(FreeAddr(t))
	n, _ := strconv.Atoi(port)
	return n
}
