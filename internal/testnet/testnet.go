// Package testnet hands tests addresses for servers that bind them later (a service
// started through service.Run or as a subprocess).
//
// A port taken with Listen(":0") and closed again can be handed by the kernel to the
// next Listen(":0"), of another test, or to an outgoing connection, before its owner
// binds it: one test's sender then posts into another test's service (seen in CI:
// TestSIGTERM's callbacks landed in TestPostgresRestart's table). So ports come from
// below the kernel's ephemeral range (32768-60999 by default), and each is handed out
// once per test binary.
package testnet

import (
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

// FreeAddr returns 127.0.0.1:port, free right now and not handed out before by this
// process.
func FreeAddr(t testing.TB) string {
	t.Helper()
	for range portMax - portMin {
		port := portMin + int(cursor.Add(1)-portMin)%(portMax-portMin)
		ln, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port))
		if err != nil {
			continue
		}
		ln.Close()
		return "127.0.0.1:" + strconv.Itoa(port)
	}
	t.Fatal("no free port for the server under test")
	return ""
}
